//! Counters the broker keeps about itself. Plain atomics: cheap enough for the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// A session's queue was full (overflow policy applied).
    pub dropped_queue_full: AtomicU64,
    /// Larger than the receiving client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Message expiry interval passed before delivery.
    pub dropped_expired: AtomicU64,
    /// Refused by authorization.
    pub dropped_denied: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
