//! The broker-wide quota on what slow sessions keep on disk (`storage.max_spill_mb`),
//! and the gauges `/metrics` shows of it.

use crate::session::Spilled;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct SpillQuota {
    /// The store can spill and the quota is not 0. A cluster node spills to its own
    /// store too: a session that moves to another node reads its batches back first
    /// and goes whole.
    enabled: bool,
    max_bytes: u64,
    bytes: AtomicU64,
    messages: AtomicU64,
}

impl SpillQuota {
    pub fn new(enabled: bool, max_bytes: u64) -> SpillQuota {
        SpillQuota {
            enabled: enabled && max_bytes > 0,
            max_bytes,
            bytes: AtomicU64::new(0),
            messages: AtomicU64::new(0),
        }
    }

    /// Whether one more delivery may be spilled (it may take the total a little past
    /// the quota: one message per session at most).
    pub fn has_room(&self) -> bool {
        self.enabled && self.bytes.load(Relaxed) < self.max_bytes
    }

    pub fn add(&self, s: Spilled) {
        self.bytes.fetch_add(s.bytes as u64, Relaxed);
        self.messages.fetch_add(s.count as u64, Relaxed);
    }

    pub fn remove(&self, s: Spilled) {
        self.bytes.fetch_sub(s.bytes as u64, Relaxed);
        self.messages.fetch_sub(s.count as u64, Relaxed);
    }

    /// Messages on disk now (a gauge).
    pub fn messages(&self) -> &AtomicU64 {
        &self.messages
    }

    /// Bytes on disk now (a gauge).
    pub fn bytes(&self) -> &AtomicU64 {
        &self.bytes
    }
}
