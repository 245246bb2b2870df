//! Per-plugin counters. Kept by plugin name, so they continue across reloads.

use super::instance::Failure;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the call-latency histogram buckets, in nanoseconds.
pub const LATENCY_BUCKETS_NS: [u64; 12] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    u64::MAX,
];

#[derive(Debug)]
pub struct Stats {
    /// Whether the plugin takes part in the chain (the admin API can switch it off).
    enabled: std::sync::atomic::AtomicBool,
    /// New versions swapped in.
    pub reloads: AtomicU64,
    /// New versions that failed to load while the previous one kept serving.
    pub rejections: AtomicU64,
    last_rejection: std::sync::Mutex<Option<String>>,
    pub calls: Striped,
    /// Answers given again from the plugin's reuse cache (or a lease) instead of
    /// calling it.
    pub reused: Striped,
    pub denials: AtomicU64,
    pub errors_deadline: AtomicU64,
    pub errors_memory: AtomicU64,
    pub errors_fuel: AtomicU64,
    pub errors_trap: AtomicU64,
    pub errors_invalid: AtomicU64,
    pub errors_instantiate: AtomicU64,
    /// Calls that found every slot for waiting calls taken until their deadline.
    pub errors_busy: AtomicU64,
    /// HTTP requests sent, and refused by the allow-list.
    pub http_sent: AtomicU64,
    pub http_refused: AtomicU64,
    pub latency_ns_sum: AtomicU64,
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_NS.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            enabled: std::sync::atomic::AtomicBool::new(true),
            reloads: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            last_rejection: std::sync::Mutex::new(None),
            calls: Striped::default(),
            reused: Striped::default(),
            denials: AtomicU64::new(0),
            errors_deadline: AtomicU64::new(0),
            errors_memory: AtomicU64::new(0),
            errors_fuel: AtomicU64::new(0),
            errors_trap: AtomicU64::new(0),
            errors_invalid: AtomicU64::new(0),
            errors_instantiate: AtomicU64::new(0),
            errors_busy: AtomicU64::new(0),
            http_sent: AtomicU64::new(0),
            http_refused: AtomicU64::new(0),
            latency_ns_sum: AtomicU64::new(0),
            latency_buckets: Default::default(),
        }
    }
}

impl Stats {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed)
    }

    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Relaxed);
    }

    /// A new version was refused, for this reason.
    pub fn rejected(&self, why: String) {
        self.rejections.fetch_add(1, Relaxed);
        *crate::sync::lock(&self.last_rejection) = Some(why);
    }

    pub fn last_rejection(&self) -> Option<String> {
        crate::sync::lock(&self.last_rejection).clone()
    }

    /// A call about `items` things (a batch counts as that many calls), and how long
    /// each took if it was timed (see [`sampled`]).
    /// The mean of the timed calls, microseconds (0 before the first). Calls are timed
    /// one in several, so this divides by the timed ones, not by `calls`.
    pub fn mean_call_us(&self) -> f64 {
        let timed: u64 = self.latency_buckets.iter().map(|b| b.load(Relaxed)).sum();
        match timed {
            0 => 0.0,
            n => self.latency_ns_sum.load(Relaxed) as f64 / n as f64 / 1000.0,
        }
    }

    pub fn called(&self, items: u32, took: Option<Duration>) {
        self.calls.add(items as u64);
        let Some(took) = took else { return };
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        self.latency_ns_sum.fetch_add(ns, Relaxed);
        let i = LATENCY_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BUCKETS_NS.len() - 1);
        self.latency_buckets[i].fetch_add(1, Relaxed);
    }

    pub fn failed(&self, f: &Failure) {
        let c = match f {
            Failure::Deadline => &self.errors_deadline,
            Failure::Memory => &self.errors_memory,
            Failure::Fuel => &self.errors_fuel,
            Failure::Trap(_) => &self.errors_trap,
            Failure::Invalid(_) => &self.errors_invalid,
            Failure::Instantiate(_) => &self.errors_instantiate,
            Failure::Busy => &self.errors_busy,
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn reused(&self) {
        self.reused.add(1);
    }

    pub fn http_sent(&self) {
        self.http_sent.fetch_add(1, Relaxed);
    }

    pub fn http_refused(&self) {
        self.http_refused.fetch_add(1, Relaxed);
    }

    pub fn denied(&self) {
        self.denials.fetch_add(1, Relaxed);
    }

    /// Errors by kind, for logs and metrics.
    pub fn errors(&self) -> [(&'static str, u64); 7] {
        [
            ("deadline", self.errors_deadline.load(Relaxed)),
            ("memory", self.errors_memory.load(Relaxed)),
            ("fuel", self.errors_fuel.load(Relaxed)),
            ("trap", self.errors_trap.load(Relaxed)),
            ("invalid", self.errors_invalid.load(Relaxed)),
            ("instantiate", self.errors_instantiate.load(Relaxed)),
            ("busy", self.errors_busy.load(Relaxed)),
        ]
    }
}

/// One call in this many, per thread, is timed for the latency histogram.
pub const SAMPLE_EVERY: u32 = 8;

/// Whether to time this call: one in [`SAMPLE_EVERY`] of the calls each thread makes,
/// at random (xorshift), whichever plugin and hook: a plugin called rarely is sampled as
/// often as one called for every message, and plugins called in turn (a chain) are not
/// always the same one sampled. The histogram is a sample; `calls` counts every call.
pub fn sampled() -> bool {
    thread_local! {
        static STATE: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9E37_79B9) };
    }
    STATE.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        c.set(x);
        x % SAMPLE_EVERY == 0
    })
}

/// A counter bumped by every worker thread for every message. A single atomic would
/// move its cache line between cores on each bump, and with it the line of every field
/// next to it; each thread bumps a stripe of its own instead, and a reader sums them.
#[derive(Debug, Default)]
pub struct Striped([Padded; STRIPES]);

const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    pub fn add(&self, n: u64) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Relaxed) as usize % STRIPES;
        }
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(n, Relaxed);
    }

    pub fn load(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed)).sum()
    }
}
