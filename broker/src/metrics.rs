//! Counters the broker keeps about itself. Plain atomics: cheap enough for the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// A session's queue was full (overflow policy applied).
    QueueFull,
    /// Larger than the receiving client's Maximum Packet Size.
    TooLarge,
    /// Message expiry interval passed before delivery.
    Expired,
    /// Refused by authorization (or a transform or rate limit).
    Denied,
    /// A `block` queue was full and its consumer away or taking nothing.
    Stalled,
    /// A `deliver` plugin dropped it for one subscriber.
    Delivery,
}

impl DropCause {
    pub const ALL: [DropCause; 6] = [
        DropCause::QueueFull,
        DropCause::TooLarge,
        DropCause::Expired,
        DropCause::Denied,
        DropCause::Stalled,
        DropCause::Delivery,
    ];

    /// The `cause` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::QueueFull => "queue_full",
            DropCause::TooLarge => "too_large",
            DropCause::Expired => "expired",
            DropCause::Denied => "denied",
            DropCause::Stalled => "consumer_stalled",
            DropCause::Delivery => "deliver_hook",
        }
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    connections: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: [AtomicU64; DropCause::ALL.len()],
    /// Connections closed at once because too many over-limit clients were already
    /// being told so.
    refused_busy: AtomicU64,
}

impl Metrics {
    pub fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn disconnected(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub fn received_message(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }

    pub fn sent_message(&self) {
        self.messages_out.fetch_add(1, Relaxed);
    }

    pub fn read_bytes(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    pub fn wrote_bytes(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }

    pub fn dropped(&self, cause: DropCause, n: u64) {
        self.dropped[cause as usize].fetch_add(n, Relaxed);
    }

    pub fn refused_busy(&self) {
        self.refused_busy.fetch_add(1, Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    pub fn messages_received(&self) -> u64 {
        self.messages_in.load(Relaxed)
    }

    pub fn messages_sent(&self) -> u64 {
        self.messages_out.load(Relaxed)
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_in.load(Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_out.load(Relaxed)
    }

    pub fn drops(&self, cause: DropCause) -> u64 {
        self.dropped[cause as usize].load(Relaxed)
    }

    pub fn busy_refusals(&self) -> u64 {
        self.refused_busy.load(Relaxed)
    }
}
