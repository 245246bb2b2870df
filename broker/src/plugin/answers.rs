//! Answers a plugin said may be reused (`host.reuse-answer`), so that a client
//! publishing to the same topic again does not cost another call into WebAssembly.
//!
//! Each loaded plugin version has its own cache, so a reload, a reconfiguration or
//! disabling the plugin forgets every reused answer at once. An entry is found by a
//! keyed hash of (client id, topic, kind) and checked against the full client id and
//! topic, and against a fingerprint of everything else a plugin sees of the client
//! (username, address, listener, attributes): a client that reconnects as someone else
//! gets no answer given to its predecessor.

use crate::codec::QoS;
use crate::hooks::{Action, ClientInfo, Decision};
use crate::FastMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Entries per shard before the shard is emptied: bounds memory whatever clients do.
const SHARD_CAPACITY: usize = 8192;
/// The longest a plugin may ask an answer to be reused.
pub const MAX_REUSE: Duration = Duration::from_secs(600);

/// What can be reused: an authorization decision (`None` is defer), or a transform's
/// `keep`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Authorize(Option<Decision>),
    Keep,
}

/// The question asked, besides client and topic.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
pub enum Question {
    Authorize(Action, QoS, bool),
    Transform(QoS, bool),
}

struct Entry {
    client_id: Box<str>,
    topic: Box<str>,
    question: Question,
    fingerprint: u64,
    answer: Answer,
    until: Instant,
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

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, FastMap<u64, Entry>> {
        self.shards[(key >> 56) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The reusable answer to `q` for this client and topic, if one is still valid.
    pub fn get(&self, c: &ClientInfo<'_>, topic: &str, q: Question) -> Option<Answer> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let key = self.key(c.client_id, topic, q);
        let shard = self.shard(key);
        let e = shard.get(&key)?;
        let valid = e.until > Instant::now()
            && e.question == q
            && &*e.client_id == c.client_id
            && &*e.topic == topic
            && e.fingerprint == self.fingerprint(c);
        valid.then_some(e.answer)
    }

    pub fn put(&self, c: &ClientInfo<'_>, topic: &str, q: Question, answer: Answer, ttl_ms: u32) {
        let ttl = Duration::from_millis(ttl_ms as u64).min(MAX_REUSE);
        if ttl.is_zero() {
            return;
        }
        self.used.store(true, Ordering::Relaxed);
        let key = self.key(c.client_id, topic, q);
        let entry = Entry {
            client_id: c.client_id.into(),
            topic: topic.into(),
            question: q,
            fingerprint: self.fingerprint(c),
            answer,
            until: Instant::now() + ttl,
        };
        let mut shard = self.shard(key);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&key) {
            shard.clear();
        }
        shard.insert(key, entry);
    }
}
