//! What happened, for observers (plugins that export `observer`): a client connected or
//! disconnected, subscribed or unsubscribed, messages dropped, a session expired, a will
//! published.
//!
//! Emitting never waits: an event goes into a bounded queue (`plugins.events_queue`), and
//! one that does not fit is counted and lost. A thread of its own takes the events in
//! batches and hands each batch to the hooks, so a slow or failing observer slows no
//! client. Nothing is built or queued while no observer is enabled.

use crate::hooks::{Hooks, Identity};
use crate::metrics::DropCause;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Events handed to the observers at once, at most.
const BATCH_MAX: usize = 256;
/// How long the first event of a batch waits for more.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How often a batch being gathered looks for more.
const GATHER_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected(Arc<Identity>),
    Disconnected {
        client_id: Arc<str>,
        reason_code: u8,
        reason: String,
    },
    Subscribed {
        client_id: Arc<str>,
        filter: String,
        qos: u8,
    },
    Unsubscribed {
        client_id: Arc<str>,
        filter: String,
    },
    MessageDropped {
        client_id: Option<Arc<str>>,
        topic: Option<Arc<str>>,
        cause: DropCause,
        count: u32,
    },
    SessionExpired(Arc<str>),
    WillPublished {
        client_id: Arc<str>,
        topic: Arc<str>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub event: Event,
}

/// Counters `/metrics` shows.
#[derive(Debug, Default)]
pub struct EventStats {
    pub emitted: AtomicU64,
    /// Lost because the queue was full.
    pub overflow: AtomicU64,
    pub batches: AtomicU64,
}

/// The sending end of the event queue, and whether anyone observes.
pub struct Events {
    hooks: Arc<dyn Hooks>,
    queue: SyncSender<Timed>,
    stats: Arc<EventStats>,
}

impl Events {
    /// The queue, holding at most `capacity` events, and the thread that drains it into
    /// `hooks`; the thread ends when the `Events` is dropped. It holds the hooks only
    /// while it hands a batch over: the broker's owners decide when they go (a plugin
    /// chain logs its totals then).
    pub fn start(hooks: Arc<dyn Hooks>, capacity: usize) -> Events {
        let (queue, rx) = mpsc::sync_channel(capacity);
        let stats = Arc::new(EventStats::default());
        let (observers, counts) = (Arc::downgrade(&hooks), stats.clone());
        let spawned = std::thread::Builder::new()
            .name("weir-events".into())
            .spawn(move || dispatch(rx, &observers, &counts));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the event thread; events are not observed");
        }
        Events {
            hooks,
            queue,
            stats,
        }
    }

    /// Queues the event `make` builds, if anyone observes; never waits.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if !self.hooks.observes() {
            return;
        }
        let timed = Timed {
            at_ms: now_ms(),
            event: make(),
        };
        match self.queue.try_send(timed) {
            Ok(()) => self.stats.emitted.fetch_add(1, Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.overflow.fetch_add(1, Relaxed)
            }
        };
    }

    pub fn stats(&self) -> &EventStats {
        &self.stats
    }
}

/// Takes events in batches (up to [`BATCH_MAX`], or what came within [`BATCH_WAIT`] of
/// the first) and hands them over, until the queue's sender is gone.
fn dispatch(rx: mpsc::Receiver<Timed>, hooks: &Weak<dyn Hooks>, stats: &EventStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let open = gather(&rx, &mut batch, Instant::now() + BATCH_WAIT);
        if let Some(hooks) = hooks.upgrade() {
            stats.batches.fetch_add(1, Relaxed);
            hooks.observe(&batch);
        }
        if !open {
            return;
        }
    }
}

/// Adds to `batch` what comes until it is full or `until`; false once the senders are
/// gone. It looks every [`GATHER_POLL`] rather than waiting on the queue: a receiver
/// waiting is woken by every event sent, a thread switch per event that cost the
/// clients a quarter of their connects a second in `bench/src/bin/hooks.rs`.
fn gather(rx: &mpsc::Receiver<Timed>, batch: &mut Vec<Timed>, until: Instant) -> bool {
    loop {
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        let now = Instant::now();
        if batch.len() >= BATCH_MAX || now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(GATHER_POLL));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
