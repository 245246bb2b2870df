//! Catching up from JetStream on what plain NATS subscriptions missed. A QoS 1 or 2
//! message reaches other nodes through their plain subscriptions, which NATS serves
//! only while it knows of them and the node is connected; the stream `WEIR_MSGS` has
//! every one, so a node reads back the stretch in which it could have missed some:
//!
//! - after subscribing: NATS confirms a subscription on this node's server at once, but
//!   the other servers of a NATS cluster learn of it a moment later, and what is
//!   published there meanwhile does not come here. The node reads the subject from the
//!   stream position it took before subscribing, for a moment.
//! - after its connection to NATS was lost: from a second before it was lost until a
//!   moment after it is back, every subject (the topic trie keeps what this node wants).
//!
//! A message read back that had arrived already is recognised by its origin (the seen
//! window of [`super::seen`]) and dropped; this node's own are skipped. Each read-back
//! uses an ordered consumer that lives only as long as the read.

use super::{subject, Connection, Link, MESSAGES_STREAM};
use crate::message::{Message, Origin};
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a read-back after subscribing lasts: well past the time NATS needs to
/// spread a subscription to the servers of its cluster (milliseconds).
pub(super) const AFTER_SUBSCRIBING: Duration = Duration::from_secs(1);
/// How long a read-back after a reconnect reads on once it has caught up.
pub(super) const AFTER_RECONNECT: Duration = Duration::from_secs(2);
/// How far before a lost connection a read-back starts.
pub(super) const BEFORE_LOSS: Duration = Duration::from_secs(1);
/// The longest a read-back reads before it gives up on catching up.
const LONGEST: Duration = Duration::from_secs(30);
/// Read-backs running at once; more wait (each starts where its gap began, so one that
/// waits still reads all it must).
pub(super) const AT_ONCE: usize = 16;
/// Tries of a read-back JetStream does not answer (about two minutes in all).
const ATTEMPTS: u32 = 12;

/// What a new subscription brought live first, per publishing node: its read-back
/// wants only what came before. The rest came live, and a read-back that waited its
/// turn would bring it again after later messages, perhaps older than the window that
/// tells copies apart.
#[derive(Default)]
pub(super) struct FirstLive {
    firsts: std::sync::Mutex<crate::FastMap<Arc<str>, u64>>,
    over: std::sync::atomic::AtomicBool,
}

impl FirstLive {
    /// Messages arrived live on the subscription: the lowest number of each node's
    /// (one note per node and batch, not per message: this runs under load).
    pub(super) fn note(&self, messages: &[Message]) {
        if self.over.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut run: Option<(&Arc<str>, u64)> = None;
        for o in messages.iter().filter_map(|m| m.origin.as_ref()) {
            match &mut run {
                Some((node, low)) if Arc::ptr_eq(node, &o.node) => *low = (*low).min(o.seq),
                _ => {
                    if let Some((node, low)) = run {
                        self.note_one(node, low);
                    }
                    run = Some((&o.node, o.seq));
                }
            }
        }
        if let Some((node, low)) = run {
            self.note_one(node, low);
        }
    }

    /// Two publishers' numbers interleave: the lowest that came live counts.
    fn note_one(&self, node: &Arc<str>, seq: u64) {
        let mut firsts = crate::sync::lock(&self.firsts);
        let first = firsts.entry(node.clone()).or_insert(seq);
        *first = (*first).min(seq);
    }

    /// Whether a message read back came live too (or will).
    pub(super) fn came_live(&self, o: &Origin) -> bool {
        let firsts = crate::sync::lock(&self.firsts);
        firsts.get(&o.node).is_some_and(|first| o.seq >= *first)
    }

    fn end(&self) {
        self.over.store(true, std::sync::atomic::Ordering::Relaxed);
        crate::sync::lock(&self.firsts).clear();
    }
}

/// Where a read-back starts.
pub(super) enum From {
    Sequence(u64),
    Time(SystemTime),
}

/// Reads back, after every reconnect, what was published from shortly before the
/// connection was lost, for as long as the process runs.
pub(super) async fn after_reconnects(link: Arc<Link>, mut events: UnboundedReceiver<Connection>) {
    let mut lost = None;
    while let Some(event) = events.recv().await {
        match event {
            Connection::Lost(at) => {
                lost.get_or_insert(at);
            }
            Connection::Back => {
                if let Some(at) = lost.take() {
                    let from = From::Time(at - BEFORE_LOSS);
                    let filter = format!("{}.{}.>", subject::ROOT, subject::KEPT);
                    let read = read_back(link.clone(), filter, from, AFTER_RECONNECT, None);
                    tokio::spawn(read);
                }
            }
        }
    }
}

/// The sequence number the next message of the stream will get: what is published
/// after this call is there or later. `None` if JetStream cannot say (NATS away).
pub(super) async fn position(link: &Link) -> Option<u64> {
    let stream = link.js.get_stream(MESSAGES_STREAM).await.ok()?;
    Some(stream.cached_info().state.last_sequence + 1)
}

/// Reads the stream for `filter` from `from`, handing each message to the node as if it
/// had arrived, until `linger` has passed and the read has caught up with what was
/// published by then; for a new subscription, only what did not come live (`first`).
/// Tried again while JetStream does not answer (a NATS server that went away may have
/// led the stream: JetStream elects another within seconds).
pub(super) async fn read_back(
    link: Arc<Link>,
    filter: String,
    from: From,
    linger: Duration,
    first: Option<Arc<FirstLive>>,
) {
    let link = &link;
    let _end = Ended(first.clone());
    let first = first.as_deref();
    let Ok(_turn) = link.read_backs.acquire().await else {
        return;
    };
    let mut delay = Duration::from_millis(500);
    for attempt in 1.. {
        match read(link, &filter, &from, linger, first).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::debug!(%filter, messages = n, "read back from JetStream");
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, %filter, "reading back from JetStream again");
            }
            Err(e) => {
                link.stats
                    .replay_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, %filter,
                    "cannot read back from JetStream what may have been missed");
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Ends the noting of what comes live once the read-back is over, however it ends.
struct Ended(Option<Arc<FirstLive>>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            f.end();
        }
    }
}

async fn read(
    link: &Link,
    filter: &str,
    from: &From,
    linger: Duration,
    first: Option<&FirstLive>,
) -> Result<u64, String> {
    let deliver_policy = match *from {
        From::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        From::Time(t) => DeliverPolicy::ByStartTime {
            start_time: datetime(t)?,
        },
    };
    let stream = (link.js.get_stream(MESSAGES_STREAM).await).map_err(|e| e.to_string())?;
    let config = consumer::pull::OrderedConfig {
        filter_subject: filter.to_owned(),
        deliver_policy,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await;
    let mut messages =
        (consumer.map_err(|e| e.to_string())?.messages().await).map_err(|e| e.to_string())?;
    let started = Instant::now();
    // What was published after this was published after the read-back's purpose.
    let cutoff = datetime(SystemTime::now() + linger)?;
    let mut read = 0;
    loop {
        let left = (started + linger).saturating_duration_since(Instant::now());
        let wait = left.max(Duration::from_millis(200));
        match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(Ok(m))) => {
                let late = m.info().map(|i| i.published > cutoff).unwrap_or(true);
                if late && left.is_zero() {
                    break;
                }
                read += 1;
                link.arrived(m.message, first, false);
            }
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => break,
            // Nothing more published: caught up.
            Err(_) if left.is_zero() => break,
            Err(_) => {}
        }
        if started.elapsed() > LONGEST {
            return Err(format!(
                "still behind after {}s; gave up",
                LONGEST.as_secs()
            ));
        }
    }
    link.stats
        .replayed
        .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
    Ok(read)
}

pub(super) fn datetime(t: SystemTime) -> Result<async_nats::datetime::DateTime, String> {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_nanos();
    async_nats::datetime::from_nanos(nanos as i128).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(node: &Arc<str>, seq: u64) -> Message {
        Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::new(),
            qos: crate::codec::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            origin: Some(Origin {
                node: node.clone(),
                seq,
                at: 0,
            }),
            received: None,
        }
    }

    #[test]
    fn the_lowest_number_that_came_live_counts_per_node() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let first = FirstLive::default();
        // Two publishers on `a` interleave their numbers; `b` comes between.
        first.note(&[from(&a, 11), from(&a, 10), from(&b, 5), from(&a, 12)]);
        first.note(&[from(&a, 9)]);
        let live = |node: &Arc<str>, seq| first.came_live(from(node, seq).origin.as_ref().unwrap());
        assert!(!live(&a, 8), "before the first that came live: read back");
        assert!(live(&a, 9) && live(&a, 10) && live(&a, 30));
        assert!(!live(&b, 4) && live(&b, 5));
        let c: Arc<str> = Arc::from("c");
        assert!(!live(&c, 1), "nothing came live from c");
        first.end();
        first.note(&[from(&c, 1)]);
        assert!(!live(&c, 1), "nothing is noted once the read-back ended");
    }
}
