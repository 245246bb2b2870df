//! Answers a plugin said may be reused (`host.reuse-answer`), so that a client
//! publishing to the same topic again does not cost another call into WebAssembly.
//! A connection keeps its own copies too (`kept`), and its rate-limit leases only
//! there; this cache is what deliveries to stored sessions and reconnecting clients
//! find.
//!
//! Each loaded plugin version has its own cache, so a reload, a reconfiguration or
//! disabling the plugin forgets every reused answer at once. An entry is found by a
//! keyed hash of (client id, topic, kind) and checked against the full client id and
//! topic, and against a fingerprint of everything else a plugin sees of the client
//! (username, address, listener, attributes): a client that reconnects as someone else
//! gets no answer given to its predecessor.

use crate::codec::{Properties, QoS};
use crate::hooks::{Action, ClientInfo, Decision};
use crate::message::{now_secs, Message};
use crate::FastMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Entries per shard before the shard is emptied: bounds memory whatever clients do.
const SHARD_CAPACITY: usize = 8192;
/// The longest a plugin may ask an answer to be reused.
pub const MAX_REUSE: Duration = Duration::from_secs(600);

/// What can be reused: an authorization decision (`None` is defer), or a transform's
/// `keep` or payload-preserving `replace`.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Authorize(Option<Decision>),
    Keep,
    Replace(Arc<Replacement>),
}

/// The question asked, besides client and topic.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
pub enum Question {
    Authorize(Action, QoS, bool),
    /// A transform of a message with this [`header`].
    Transform(u64),
    /// A delivery of a message with this [`header`] (to the client asked about).
    Deliver(u64),
}

/// What identifies a message to a transform besides client and topic: everything the
/// plugin sees except the payload. Keyed once per process, like the caches' own hashes.
pub fn header(m: &Message) -> u64 {
    static SEED: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);
    SEED.hash_one((m.qos, m.retain, m.remaining_expiry_now(), &m.properties))
}

/// A transform's replacement with everything but the payload, which is the message's
/// own each time it is applied.
#[derive(Debug, PartialEq)]
pub struct Replacement {
    topic: Arc<str>,
    qos: QoS,
    retain: bool,
    properties: Properties,
    /// Seconds, as the plugin returned them.
    expiry: Option<u32>,
}

impl Replacement {
    /// The reusable part of `replaced`, if it kept the payload of `original`.
    pub fn of(replaced: &Message, original: &Message) -> Option<Replacement> {
        (replaced.payload == original.payload).then(|| Replacement {
            topic: replaced.topic.clone(),
            qos: replaced.qos,
            retain: replaced.retain,
            properties: replaced.properties.clone(),
            expiry: replaced.remaining_expiry_now(),
        })
    }

    /// Makes `m` the replacement with its own payload, unless that payload makes it one
    /// the plugin's own answer would not have been accepted as (too large, or not the
    /// UTF-8 it claims); whether it did.
    pub fn apply(&self, m: &mut Message, max_packet: usize) -> bool {
        let unfit = super::convert::unfit(&self.topic, &m.payload, &self.properties, max_packet);
        if unfit.is_some() {
            return false;
        }
        m.topic = self.topic.clone();
        m.qos = self.qos;
        m.retain = self.retain;
        m.properties = self.properties.clone();
        m.expires_at = self.expiry.map(|s| now_secs() + s as u64);
        true
    }
}

struct Entry {
    client_id: Box<str>,
    topic: Box<str>,
    question: Question,
    fingerprint: u64,
    answer: Answer,
    /// On the [`clock`].
    until_ms: u64,
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);
static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Advances the clock entries expire by; the plugin runtime's epoch thread calls this
/// every tick.
pub fn tick() {
    NOW_MS.store(START.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// Milliseconds on a clock that advances once a tick. A lookup happens for each plugin
/// on each message, and reading the system clock there cost more than the rest of the
/// check; this is one load. An answer may live a tick or so longer or shorter than
/// asked, which reuse times in milliseconds and leases bounded in events and bytes
/// allow for.
pub fn clock() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

#[derive(Default)]
pub struct Answers {
    /// Most plugins never reuse an answer; for them a lookup is this one load, not two
    /// hashes and a lock on every message.
    used: AtomicBool,
    shards: [Mutex<FastMap<u64, Entry>>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

impl Answers {
    fn key(&self, client_id: &str, topic: &str, q: Question) -> u64 {
        let mut h = self.hasher.build_hasher();
        client_id.hash(&mut h);
        topic.hash(&mut h);
        q.hash(&mut h);
        h.finish()
    }

    fn fingerprint(&self, c: &ClientInfo<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (c.username, c.peer, c.listener).hash(&mut h);
        for (k, v) in c.attributes {
            (k, v).hash(&mut h);
        }
        h.finish()
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, FastMap<u64, Entry>> {
        crate::sync::lock(&self.shards[(key >> 56) as usize % SHARDS])
    }

    /// Whether the plugin ever allowed an answer to be reused.
    pub fn in_use(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// The reusable answer to `q` for this client and topic, if one is still valid,
    /// and until when (on the [`clock`]).
    pub fn get(&self, c: &ClientInfo<'_>, topic: &str, q: Question) -> Option<(Answer, u64)> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let key = self.key(c.client_id, topic, q);
        let shard = self.shard(key);
        let e = shard.get(&key)?;
        let valid = e.until_ms > clock()
            && e.question == q
            && &*e.client_id == c.client_id
            && &*e.topic == topic
            && e.fingerprint == self.fingerprint(c);
        valid.then(|| (e.answer.clone(), e.until_ms))
    }

    /// Keeps `answer` for `ttl_ms` (at most [`MAX_REUSE`]); returns until when, on the
    /// [`clock`], unless the time is zero and nothing was kept.
    pub fn put(
        &self,
        c: &ClientInfo<'_>,
        topic: &str,
        q: Question,
        answer: Answer,
        ttl_ms: u32,
    ) -> Option<u64> {
        let until_ms = until(ttl_ms)?;
        self.used.store(true, Ordering::Relaxed);
        let key = self.key(c.client_id, topic, q);
        let entry = Entry {
            client_id: c.client_id.into(),
            topic: topic.into(),
            question: q,
            fingerprint: self.fingerprint(c),
            answer,
            until_ms,
        };
        let mut shard = self.shard(key);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&key) {
            shard.clear();
        }
        shard.insert(key, entry);
        Some(until_ms)
    }
}

/// When something kept for `ttl_ms` (at most [`MAX_REUSE`]) from now expires on the
/// [`clock`]; `None` for zero, which keeps nothing.
pub fn until(ttl_ms: u32) -> Option<u64> {
    let ttl = Duration::from_millis(ttl_ms as u64).min(MAX_REUSE);
    (!ttl.is_zero()).then(|| clock() + ttl.as_millis() as u64)
}
