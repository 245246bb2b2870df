//! The `host` interface plugins import: logging, a key-value store, token buckets and a
//! clock. The state lives in [`SharedState`], one per plugin name, shared by all of that
//! plugin's instances and kept when the plugin is reloaded.

use super::bindings::weir::plugin::{host, types};
use super::instance::PluginCtx;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A plugin's key-value data may not grow past this; further writes are refused.
const KV_MAX_BYTES: usize = 64 << 20;
/// A plugin's token buckets may not grow past this many; the least recently used go.
const MAX_BUCKETS: usize = 250_000;
/// Bucket operations between two sweeps of the buckets that have refilled.
const SWEEP_EVERY: u64 = 4096;
/// A log line from a plugin is cut here.
const LOG_MAX: usize = 4096;

pub struct SharedState {
    kv: Mutex<Kv>,
    buckets: Mutex<Buckets>,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            kv: Mutex::default(),
            buckets: Mutex::new(Buckets::new(MAX_BUCKETS)),
        }
    }
}

#[derive(Default)]
struct Kv {
    entries: HashMap<String, Entry>,
    bytes: usize,
    writes: u64,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    capacity: f64,
    per_second: f64,
}

impl Bucket {
    /// Whether it has refilled by `now`: then it is what a new bucket would be, and
    /// forgetting it changes nothing.
    fn is_full_by(&self, now: Instant) -> bool {
        let earned = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens + earned >= self.capacity
    }

    /// `bucket-take`: `n` tokens if there are that many.
    fn take(&mut self, n: u64) -> bool {
        let enough = self.tokens >= n as f64;
        if enough {
            self.tokens -= n as f64;
        }
        enough
    }

    /// `bucket-charge`: `n` tokens, into debt if need be; the milliseconds until the
    /// bucket is out of debt.
    fn charge(&mut self, n: u64) -> u64 {
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            0
        } else if self.per_second == 0.0 {
            u64::MAX
        } else {
            ((-self.tokens / self.per_second) * 1000.0).ceil() as u64
        }
    }
}

/// A plugin's token buckets by key. Keys are typically client ids or addresses, so
/// without eviction the map would grow with every client ever seen: buckets that have
/// refilled are swept out every [`SWEEP_EVERY`] operations, and past `max` buckets the
/// least recently used go too (they come back full: lenient, but bounded).
struct Buckets {
    /// foldhash, seeded per process: keys come from clients, and SipHash was a tenth of
    /// a rate-limit call.
    map: crate::FastMap<String, Bucket>,
    max: usize,
    operations: u64,
}

impl Buckets {
    fn new(max: usize) -> Buckets {
        Buckets {
            map: crate::FastMap::default(),
            max,
            operations: 0,
        }
    }

    /// The bucket `key`, created full, with the tokens earned since it was last touched.
    fn refilled(&mut self, key: String, capacity: u64, per_second: f64) -> &mut Bucket {
        let now = Instant::now();
        self.operations += 1;
        if self.operations.is_multiple_of(SWEEP_EVERY) {
            self.map.retain(|_, b| !b.is_full_by(now));
        }
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            self.evict(now);
        }
        let capacity = capacity as f64;
        let per_second = rate(per_second);
        let b = self.map.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
            capacity,
            per_second,
        });
        b.capacity = capacity;
        b.per_second = per_second;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * per_second).min(capacity);
        b.last = now;
        b
    }

    /// Makes room: the refilled buckets, and if that is not enough, the least recently
    /// used eighth.
    fn evict(&mut self, now: Instant) {
        self.map.retain(|_, b| !b.is_full_by(now));
        if self.map.len() < self.max {
            return;
        }
        let mut ages: Vec<Instant> = self.map.values().map(|b| b.last).collect();
        let mut going = (self.max / 8).max(1).min(ages.len());
        let (_, newest_going, _) = ages.select_nth_unstable(going - 1);
        let newest_going = *newest_going;
        self.map.retain(|_, b| {
            let go = going > 0 && b.last <= newest_going;
            going -= go as usize;
            !go
        });
        tracing::warn!(
            buckets = self.max,
            "token buckets full; the least recently used were forgotten"
        );
    }
}

impl Kv {
    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| Instant::now() >= t));
        if expired {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(e) => {
                self.bytes -= key.len() + e.value.len();
                true
            }
            None => false,
        }
    }

    fn put(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        self.writes += 1;
        if self.writes.is_multiple_of(4096) {
            let now = Instant::now();
            let dead: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| e.expires.is_some_and(|t| now >= t))
                .map(|(k, _)| k.clone())
                .collect();
            for k in dead {
                self.remove(&k);
            }
        }
        let old = self
            .entries
            .get(&key)
            .map_or(0, |e| key.len() + e.value.len());
        if self.bytes - old + key.len() + value.len() > KV_MAX_BYTES {
            return false;
        }
        self.bytes = self.bytes - old + key.len() + value.len();
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.entries.insert(key, Entry { value, expires });
        true
    }
}

impl SharedState {
    fn kv(&self) -> MutexGuard<'_, Kv> {
        lock(&self.kv)
    }
}

impl types::Host for PluginCtx {}

fn rate(per_second: f64) -> f64 {
    if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        0.0
    }
}

impl host::Host for PluginCtx {
    fn log(&mut self, level: types::Level, message: String) {
        let mut message = message;
        if message.len() > LOG_MAX {
            let mut cut = LOG_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            types::Level::Trace => tracing::trace!(plugin, "{message}"),
            types::Level::Debug => tracing::debug!(plugin, "{message}"),
            types::Level::Info => tracing::info!(plugin, "{message}"),
            types::Level::Warn => tracing::warn!(plugin, "{message}"),
            types::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.kv().live(&key).map(|e| e.value.clone())
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        if !self.state.kv().put(key, value, ttl_ms) {
            tracing::warn!(
                plugin = &*self.plugin,
                "key-value store full ({KV_MAX_BYTES} bytes); write refused"
            );
        }
    }

    fn kv_delete(&mut self, key: String) -> bool {
        self.state.kv().remove(&key)
    }

    fn kv_increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let mut kv = self.state.kv();
        let current = kv
            .live(&key)
            .and_then(|e| <[u8; 8]>::try_from(e.value.as_slice()).ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0);
        let next = current.wrapping_add(delta);
        // A counter keeps the expiry it was created with.
        let ttl = match kv.live(&key).and_then(|e| e.expires) {
            Some(t) => Some(t.saturating_duration_since(Instant::now()).as_millis() as u64),
            None if current == 0 => ttl_ms,
            None => None,
        };
        kv.put(key, next.to_le_bytes().to_vec(), ttl);
        next
    }

    fn bucket_take(&mut self, key: String, capacity: u64, refill_per_second: f64, n: u64) -> bool {
        let mut buckets = lock(&self.state.buckets);
        buckets.refilled(key, capacity, refill_per_second).take(n)
    }

    fn bucket_charge(&mut self, key: String, capacity: u64, refill_per_second: f64, n: u64) -> u64 {
        let mut buckets = lock(&self.state.buckets);
        buckets.refilled(key, capacity, refill_per_second).charge(n)
    }

    fn bucket_take_each(
        &mut self,
        key: String,
        capacity: u64,
        refill_per_second: f64,
        amounts: Vec<u64>,
    ) -> Vec<bool> {
        let mut buckets = lock(&self.state.buckets);
        let b = buckets.refilled(key, capacity, refill_per_second);
        amounts.into_iter().map(|n| b.take(n)).collect()
    }

    fn bucket_charge_each(
        &mut self,
        key: String,
        capacity: u64,
        refill_per_second: f64,
        amounts: Vec<u64>,
    ) -> Vec<u64> {
        let mut buckets = lock(&self.state.buckets);
        let b = buckets.refilled(key, capacity, refill_per_second);
        amounts.into_iter().map(|n| b.charge(n)).collect()
    }

    fn reuse_answer(&mut self, ttl_ms: u32) {
        self.grants.reuse_ms = Some(ttl_ms);
    }

    fn lease(&mut self, events: u32, bytes: u64, ttl_ms: u32) {
        self.grants.lease = Some((events, bytes, ttl_ms));
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Components built against 0.1.0 and 0.2.0 import the same host under their names.
macro_rules! older_host {
    ($($version:ident),+) => {$(
impl super::bindings::$version::weir::plugin::host::Host for PluginCtx {
    fn log(&mut self, level: types::Level, message: String) {
        host::Host::log(self, level, message)
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        host::Host::kv_get(self, key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        host::Host::kv_set(self, key, value, ttl_ms)
    }

    fn kv_delete(&mut self, key: String) -> bool {
        host::Host::kv_delete(self, key)
    }

    fn kv_increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        host::Host::kv_increment(self, key, delta, ttl_ms)
    }

    fn bucket_take(&mut self, key: String, capacity: u64, refill_per_second: f64, n: u64) -> bool {
        host::Host::bucket_take(self, key, capacity, refill_per_second, n)
    }

    fn bucket_charge(&mut self, key: String, capacity: u64, refill_per_second: f64, n: u64) -> u64 {
        host::Host::bucket_charge(self, key, capacity, refill_per_second, n)
    }

    fn reuse_answer(&mut self, ttl_ms: u32) {
        host::Host::reuse_answer(self, ttl_ms)
    }

    fn lease(&mut self, events: u32, bytes: u64, ttl_ms: u32) {
        host::Host::lease(self, events, bytes, ttl_ms)
    }

    fn now_ms(&mut self) -> u64 {
        host::Host::now_ms(self)
    }
}
    )+};
}

older_host!(v0_1, v0_2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refilled_buckets_are_swept_out() {
        let mut b = Buckets::new(1_000);
        for i in 0..100 {
            // A huge rate: each bucket is full again at once.
            b.refilled(format!("client-{i}"), 10, 1e12).tokens -= 5.0;
        }
        assert_eq!(b.map.len(), 100);
        b.operations = SWEEP_EVERY - 1;
        b.refilled("one-more".into(), 10, 0.0);
        assert_eq!(b.map.len(), 1, "only the bucket that cannot refill is kept");
    }

    #[test]
    fn buckets_stop_at_their_cap_and_keep_the_recently_used() {
        let mut b = Buckets::new(64);
        for i in 0..1_000 {
            // No refill: nothing is ever full again, only the cap bounds the map.
            b.refilled(format!("client-{i}"), 10, 0.0).tokens = 0.0;
            assert!(b.map.len() <= 64, "{} buckets", b.map.len());
        }
        assert!(b.map.contains_key("client-999"));
        assert_eq!(
            b.map["client-999"].tokens, 0.0,
            "a used bucket keeps its debt"
        );
    }
}
