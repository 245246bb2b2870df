//! The `host` interface plugins import: logging, a key-value store, token buckets and a
//! clock. The state lives in [`SharedState`], one per plugin name, shared by all of that
//! plugin's instances and kept when the plugin is reloaded.

use super::bindings::weir::plugin::{host, types};
use super::instance::PluginCtx;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A plugin's key-value data may not grow past this; further writes are refused.
const KV_MAX_BYTES: usize = 64 << 20;
/// A log line from a plugin is cut here.
const LOG_MAX: usize = 4096;

#[derive(Default)]
pub struct SharedState {
    kv: Mutex<Kv>,
    buckets: Mutex<HashMap<String, Bucket>>,
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
        if self.writes % 4096 == 0 {
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
    fn kv(&self) -> std::sync::MutexGuard<'_, Kv> {
        self.kv.lock().unwrap_or_else(|e| e.into_inner())
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

/// The bucket `key`, created full, with the tokens earned since it was last touched.
fn refilled(
    buckets: &mut HashMap<String, Bucket>,
    key: String,
    capacity: u64,
    per_second: f64,
) -> &mut Bucket {
    let now = Instant::now();
    let capacity = capacity as f64;
    let b = buckets.entry(key).or_insert(Bucket {
        tokens: capacity,
        last: now,
    });
    b.tokens =
        (b.tokens + now.duration_since(b.last).as_secs_f64() * rate(per_second)).min(capacity);
    b.last = now;
    b
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
        let mut buckets = self.state.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = refilled(&mut buckets, key, capacity, refill_per_second);
        if b.tokens >= n as f64 {
            b.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    fn bucket_charge(&mut self, key: String, capacity: u64, refill_per_second: f64, n: u64) -> u64 {
        let mut buckets = self.state.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refill = rate(refill_per_second);
        let b = refilled(&mut buckets, key, capacity, refill_per_second);
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            0
        } else if refill == 0.0 {
            u64::MAX
        } else {
            ((-b.tokens / refill) * 1000.0).ceil() as u64
        }
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
