//! Counters the broker keeps about itself. Plain atomics: cheap enough for the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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

/// Why a connection ended, as `/metrics` counts it (the log line says more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// DISCONNECT from the client (5.0 reason 0x04 included).
    Client,
    /// The socket closed without a DISCONNECT.
    Closed,
    NetworkError,
    ProtocolError,
    KeepAlive,
    /// The client stopped reading its messages.
    WriteStalled,
    TakenOver,
    /// The admin API (or a plugin's order) sent it away.
    Kicked,
    Shutdown,
}

impl Ending {
    pub const ALL: [Ending; 9] = [
        Ending::Client,
        Ending::Closed,
        Ending::NetworkError,
        Ending::ProtocolError,
        Ending::KeepAlive,
        Ending::WriteStalled,
        Ending::TakenOver,
        Ending::Kicked,
        Ending::Shutdown,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Ending::Client => "client_disconnect",
            Ending::Closed => "closed_without_disconnect",
            Ending::NetworkError => "network_error",
            Ending::ProtocolError => "protocol_error",
            Ending::KeepAlive => "keep_alive_timeout",
            Ending::WriteStalled => "write_stalled",
            Ending::TakenOver => "session_taken_over",
            Ending::Kicked => "kicked",
            Ending::Shutdown => "server_shutdown",
        }
    }
}

/// What checking a client's credentials at CONNECT (or re-authentication) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Allowed,
    /// Wrong or missing credentials, a banned or unauthorized client.
    Denied,
    /// The check itself failed: a plugin error, an unreachable service.
    Failed,
}

impl AuthResult {
    pub const ALL: [AuthResult; 3] = [AuthResult::Allowed, AuthResult::Denied, AuthResult::Failed];

    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Allowed => "allowed",
            AuthResult::Denied => "denied",
            AuthResult::Failed => "failed",
        }
    }
}

/// Upper bounds of the latency histograms' buckets, nanoseconds: 50 µs to 10 s, then
/// +Inf. Wide enough for a delivery on the same machine and a sync on a slow disk.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    u64::MAX,
];

/// A latency histogram in Prometheus's shape (cumulative when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len()],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Adds what a [`Tally`] collected, one atomic per bucket it touched.
    pub fn add(&self, t: &Tally) {
        for (i, n) in t.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            self.buckets[i].fetch_add(*n as u64, Relaxed);
        }
        self.sum_ns.fetch_add(t.sum_ns, Relaxed);
    }

    /// Per bucket: its upper bound (ns, `u64::MAX` for +Inf) and the observations at or
    /// below it (cumulative).
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut total = 0;
        LATENCY_BOUNDS_NS
            .iter()
            .zip(&self.buckets)
            .map(move |(b, n)| {
                total += n.load(Relaxed);
                (*b, total)
            })
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Relaxed) as f64 / 1e9
    }
}

fn bucket_of(ns: u64) -> usize {
    LATENCY_BOUNDS_NS.partition_point(|b| *b < ns)
}

/// Observations gathered without atomics (one connection's deliveries in one write),
/// then added to a [`Histogram`] at once.
#[derive(Debug, Default)]
pub struct Tally {
    counts: [u32; LATENCY_BOUNDS_NS.len()],
    sum_ns: u64,
}

impl Tally {
    pub fn observe(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.counts[bucket_of(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn is_empty(&self) -> bool {
        self.sum_ns == 0 && self.counts.iter().all(|n| *n == 0)
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
    /// CONNACKs sent, by reason code (0: accepted).
    connacks: ConnAcks,
    endings: [AtomicU64; Ending::ALL.len()],
    auth: [AtomicU64; AuthResult::ALL.len()],
    /// A message's PUBLISH read → its copy written for a subscriber.
    delivery_latency: Histogram,
}

/// One counter per possible reason code byte.
#[derive(Debug)]
struct ConnAcks([AtomicU64; 256]);

impl Default for ConnAcks {
    fn default() -> Self {
        ConnAcks(std::array::from_fn(|_| AtomicU64::new(0)))
    }
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

    /// A CONNACK went out with `code` (0: the client is in).
    pub fn connack(&self, code: u8) {
        self.connacks.0[code as usize].fetch_add(1, Relaxed);
    }

    pub fn ended(&self, e: Ending) {
        self.endings[e as usize].fetch_add(1, Relaxed);
    }

    pub fn authenticated(&self, o: AuthResult) {
        self.auth[o as usize].fetch_add(1, Relaxed);
    }

    pub fn delivery_latency(&self) -> &Histogram {
        &self.delivery_latency
    }

    /// CONNACKs sent per reason code, the codes sent at least once (and 0).
    pub fn connacks(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..=255u8)
            .map(|c| (c, self.connacks.0[c as usize].load(Relaxed)))
            .filter(|(c, n)| *c == 0 || *n > 0)
    }

    pub fn endings(&self, e: Ending) -> u64 {
        self.endings[e as usize].load(Relaxed)
    }

    pub fn auth_outcomes(&self, o: AuthResult) -> u64 {
        self.auth[o as usize].load(Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60));
        let mut t = Tally::default();
        t.observe(Duration::from_millis(3));
        assert!(!t.is_empty());
        h.add(&t);
        let c: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (50_000, 1));
        assert_eq!(c[1], (100_000, 2));
        assert_eq!(c[5], (2_500_000, 2));
        assert_eq!(c[6], (5_000_000, 3));
        assert_eq!(c.last(), Some(&(u64::MAX, 4)));
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 60.003101).abs() < 1e-9);
    }
}
