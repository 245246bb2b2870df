//! Session records: what a node needs to resume a persistent session whose node died.
//!
//! While its node runs, a session moves whole ([`super::handover`]). A node that dies
//! takes with it what its sessions owed, but every QoS 1 and 2 message is in the
//! stream `WEIR_MSGS`, so nothing is lost if another node knows what each session
//! wanted and from when. Each node keeps, in the bucket `weir_sessions`, one record per
//! persistent session it holds: the session as the store keeps it (subscriptions,
//! expiry, disconnect time) and its floor, a time before which the session owes
//! nothing (by when messages were published, [`crate::message::Origin::at`], less
//! [`MARGIN`] for clocks and for messages still on their way).
//!
//! A node whose client reconnects while the node named as its owner does not answer
//! builds the session from the record and reads back from the floor every message its
//! subscriptions match: session present, subscriptions in place, nothing acknowledged
//! lost. What the client had already acknowledged since the floor comes again (at
//! least once, for QoS 2 too).
//!
//! A record is written when the broker records the session (connect, subscribe,
//! unsubscribe, disconnect; a SUBACK waits for the write), and, for a session that was
//! sent something, once its floor has moved [`REFRESH`] on. It is deleted when the
//! session ends here, unless another node has written it since.
//!
//! A node that restarts has its sessions back from its store, but not what was
//! published for them while it was down: before it takes connections, it reads that
//! back the same way, from the floors of its records, leaving out its own messages
//! (its store has those) and what the store holds (by origin).

use super::owners::key;
use super::tickets::{Done, Tickets};
use super::{envelope, replay, subject, MESSAGES_STREAM};
use crate::message::{now_secs, Delivery, Origin};
use crate::session::{Directory, Moving, Owed, Session, Sessions};
use crate::store::{SessionMeta, StoredSession, StoredSubscription};
use async_nats::jetstream::{self, consumer, consumer::DeliverPolicy, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The bucket of session records.
pub const SESSIONS_BUCKET: &str = "weir_sessions";
/// Seconds a floor lies before the oldest publish a session owes: clocks of different
/// machines, and a message published before a record was written that reaches the
/// node only after it.
const MARGIN: u64 = 10;
/// Seconds a session's floor moves before its record is written again: what a resumed
/// session may get twice, against a write per session that often.
const REFRESH: u64 = 30;
/// How often floors are looked at.
const EVERY: Duration = Duration::from_secs(5);
/// How long a read-back for one session waits for its next message before it starts
/// again, and the longest it reads.
const STALLED: Duration = Duration::from_secs(5);
const LONGEST: Duration = Duration::from_secs(120);

pub(super) fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: SESSIONS_BUCKET.into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    node: String,
    floor: u64,
    meta: SessionMeta,
}

/// What the broker asks of the keeper.
pub(super) enum Change {
    /// The session as recorded now, with [`crate::session::SessionState::owed`]; the
    /// ticket, if any, is done once written (or dropped unwritten).
    Kept(SessionMeta, (u64, Owed), Option<Done>),
    /// The session ended here.
    Gone(Arc<str>),
}

/// The session's record as the broker writes it, for a cluster's [`Directory`].
pub(super) fn kept(session: &Session, tickets: &Arc<Tickets>) -> Change {
    let done = Done::new(tickets.clone(), tickets.issue());
    as_now(session, Some(done))
}

fn as_now(session: &Session, done: Option<Done>) -> Change {
    let (meta, owed) = {
        let st = session.lock();
        (st.meta(session.client_id()), st.owed())
    };
    Change::Kept(SessionMeta { will: None, ..meta }, owed, done)
}

/// What this node last wrote of a session.
struct Written {
    revision: u64,
    floor: u64,
    pushed: u64,
}

/// Writes and deletes this node's records, for as long as the process runs.
pub(super) struct Keeper {
    pub store: kv::Store,
    pub node: Arc<str>,
    pub sessions: Arc<Sessions>,
}

impl Keeper {
    pub(super) async fn run(self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut written = HashMap::new();
        let restored = self.restored().await;
        self.apply(restored, &mut written).await;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                first = changes.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    while let Ok(c) = changes.try_recv() {
                        batch.push(c);
                    }
                    self.apply(batch, &mut written).await;
                }
                _ = tick.tick() => self.refresh(&mut written).await,
            }
        }
    }

    /// Sessions restored from this node's store, to record again: so that they are this
    /// node's to refresh and to delete when they end (a record left behind would let a
    /// client of the same id resume what ended). Their floor stays where the record had
    /// it: what was published while this node was down is owed too. A session whose
    /// record names another node moved there meanwhile, and ends here.
    async fn restored(&self) -> Vec<Change> {
        let persistent = self
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.is_persistent());
        let looked = futures_util::stream::iter(persistent).map(|s| async move {
            let theirs = read(&self.store, s.client_id()).await;
            if theirs.is_some_and(|(r, _)| *r.node != *self.node) {
                return None;
            }
            match as_now(&s, None) {
                Change::Kept(meta, (pushed, _), _) => {
                    Some(Change::Kept(meta, (pushed, Owed::Unknown), None))
                }
                Change::Gone(_) => None,
            }
        });
        looked
            .buffer_unordered(64)
            .filter_map(|c| async { c })
            .collect()
            .await
    }

    /// Carries out a batch of changes, the last per client id, all at once.
    async fn apply(&self, batch: Vec<Change>, written: &mut HashMap<Arc<str>, Written>) {
        let mut last: HashMap<Arc<str>, Change> = HashMap::new();
        // Done once every write of the batch is: an earlier change of a client id
        // stands for nothing the last does not.
        let mut tickets = Vec::new();
        for change in batch {
            let client: Arc<str> = match &change {
                Change::Kept(meta, _, _) => Arc::from(meta.client_id.as_str()),
                Change::Gone(client) => client.clone(),
            };
            if let Some(Change::Kept(_, _, done)) = last.insert(client, change) {
                tickets.push(done);
            }
        }
        let work = last.into_iter().map(|(client, change)| {
            let before = written.remove(&client);
            async move {
                let after = match change {
                    Change::Kept(meta, (pushed, owed), done) => {
                        let floor = self.floor(&client, owed, before.as_ref()).await;
                        let w = self.write(&client, meta, floor, pushed).await;
                        drop(done);
                        w
                    }
                    Change::Gone(_) => {
                        self.delete(&client, before).await;
                        None
                    }
                };
                (client, after)
            }
        });
        for (client, after) in futures_util::future::join_all(work).await {
            if let Some(w) = after {
                written.insert(client, w);
            }
        }
        drop(tickets);
    }

    /// Writes again the records of sessions sent something since, whose floor moved on.
    async fn refresh(&self, written: &mut HashMap<Arc<str>, Written>) {
        let now = now_secs();
        let mut due = Vec::new();
        for s in self.sessions.all() {
            let Some(w) = written.get(s.client_id()) else {
                continue;
            };
            let (pushed, owed) = s.lock().owed();
            let floor = match owed {
                Owed::Nothing => now.saturating_sub(MARGIN),
                Owed::Since(t) => t.saturating_sub(MARGIN),
                Owed::Unknown => continue,
            };
            if pushed != w.pushed && floor >= w.floor + REFRESH && s.is_persistent() {
                due.push((s, floor, pushed));
            }
        }
        let work = due.iter().map(|(s, floor, pushed)| {
            let meta = SessionMeta {
                will: None,
                ..s.meta()
            };
            self.write(s.client_id(), meta, *floor, *pushed)
        });
        let results = futures_util::future::join_all(work).await;
        for ((s, _, _), after) in due.iter().zip(results) {
            if let Some(w) = after {
                written.insert(s.client_id().clone(), w);
            }
        }
    }

    /// The floor for a record: before the oldest publish owed; where it was if that is
    /// not known (the record written before this node restarted has it).
    async fn floor(&self, client: &str, owed: Owed, before: Option<&Written>) -> u64 {
        let now = now_secs();
        match owed {
            Owed::Nothing => now.saturating_sub(MARGIN),
            Owed::Since(t) => t.saturating_sub(MARGIN),
            Owed::Unknown => match before {
                Some(w) => w.floor,
                None => match read(&self.store, client).await {
                    Some((r, _)) => r.floor,
                    None => now.saturating_sub(MARGIN),
                },
            },
        }
    }

    async fn write(
        &self,
        client: &str,
        meta: SessionMeta,
        floor: u64,
        pushed: u64,
    ) -> Option<Written> {
        let record = Record {
            node: self.node.to_string(),
            floor,
            meta,
        };
        let body = serde_json::to_vec(&record).ok()?;
        match self.store.put(key(client), body.into()).await {
            Ok(revision) => Some(Written {
                revision,
                floor,
                pushed,
            }),
            Err(e) => {
                tracing::warn!(error = %e, client_id = client,
                    "a session's record could not be written: if this node dies, the session restarts elsewhere from an older record or afresh");
                None
            }
        }
    }

    async fn delete(&self, client: &str, before: Option<Written>) {
        let Some(w) = before else {
            return;
        };
        // Fails if another node wrote the record since: the session lives there now.
        let _ = (self.store)
            .purge_expect_revision(key(client), Some(w.revision))
            .await;
    }
}

/// When a recorded session whose node is gone expires, given that node's last
/// heartbeat: a session connected when its node died has been without its client
/// since then. `None`: it cannot be told.
fn ends_at(meta: &SessionMeta, last_alive: Option<u64>) -> Option<u64> {
    let since = meta.disconnected_at.or(last_alive)?;
    Some(since.saturating_add(meta.expiry_interval as u64))
}

/// Heartbeat periods (`liveness_secs`) between two sweeps of the bucket.
const SWEEP_PERIODS: u32 = 10;

/// Deletes, for as long as the process runs, the records that dead nodes left of
/// sessions that have expired since. Nobody else would: the node that would have
/// deleted each at its expiry is gone, and a client that never comes back never has its
/// record read. Every node sweeps; a purge by revision lets one delete each record, and
/// none delete a record written again meanwhile.
pub(super) async fn sweep(
    store: kv::Store,
    nodes: kv::Store,
    me: Arc<str>,
    liveness: Duration,
    stats: Arc<super::ClusterStats>,
) {
    let period = liveness * SWEEP_PERIODS;
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        // A pass that NATS leaves hanging gives way to the next.
        let pass = tokio::time::timeout(period, sweep_once(&store, &nodes, &me, liveness));
        match pass.await {
            Ok(Ok(swept)) => {
                (stats.records_swept).fetch_add(swept, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(error = %e,
                "cannot sweep the session records of dead nodes; trying again later"),
            Err(_) => tracing::warn!(
                "a sweep of the session records of dead nodes did not finish; trying again later"
            ),
        }
    }
}

/// One pass over the bucket: how many records it deleted.
async fn sweep_once(
    store: &kv::Store,
    nodes: &kv::Store,
    me: &str,
    liveness: Duration,
) -> Result<u64, String> {
    use futures_util::TryStreamExt;
    let keys = store.keys().await.map_err(|e| e.to_string())?;
    let keys: Vec<String> = keys.try_collect().await.map_err(|e| e.to_string())?;
    let mut beats: HashMap<String, Option<u64>> = HashMap::new();
    let mut swept = 0;
    for k in keys {
        let Some((record, revision)) = read_key(store, &k).await else {
            continue;
        };
        if record.node == me {
            continue;
        }
        let last = match beats.get(&record.node) {
            Some(last) => *last,
            None => {
                let last = last_alive(nodes, &record.node).await;
                beats.insert(record.node.clone(), last);
                last
            }
        };
        let now = now_secs();
        // Alive (twice the period, for clocks): the node deletes its own records.
        if last.is_none_or(|l| l + 2 * liveness.as_secs() > now) {
            continue;
        }
        if ends_at(&record.meta, last).is_none_or(|end| end > now) {
            continue;
        }
        if store
            .purge_expect_revision(&k, Some(revision))
            .await
            .is_ok()
        {
            tracing::info!(node = %record.node, "deleted the record of an expired session its dead node left");
            swept += 1;
        }
    }
    Ok(swept)
}

/// Unix seconds of `node`'s last heartbeat, if the bucket has it.
async fn last_alive(nodes: &kv::Store, node: &str) -> Option<u64> {
    let entry = nodes.entry(node).await.ok()??;
    u64::try_from(entry.created.unix_timestamp()).ok()
}

async fn read(store: &kv::Store, client: &str) -> Option<(Record, u64)> {
    read_key(store, &key(client)).await
}

async fn read_key(store: &kv::Store, key: &str) -> Option<(Record, u64)> {
    let entry = store.entry(key).await.ok()??;
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let record = serde_json::from_slice(&entry.value).ok()?;
    Some((record, entry.revision))
}

/// The session of `client_id` as its record left it, if there is one (written by
/// `only_of`, if given) and it has not expired: its subscriptions, and, once they are
/// made here, what it is owed from its floor on.
pub(super) async fn resume(
    e: &super::owners::Elsewhere,
    client_id: Arc<str>,
    only_of: Option<&str>,
) -> Option<Moving> {
    let (record, _) = read(&e.sessions, &client_id).await?;
    if only_of.is_some_and(|node| node != record.node) {
        return None;
    }
    let now = now_secs();
    let meta = record.meta;
    let last = match meta.disconnected_at {
        Some(_) => None,
        None => last_alive(&e.nodes, &record.node).await,
    };
    if ends_at(&meta, last).is_some_and(|end| end <= now) {
        tracing::info!(client_id = %client_id, node = %record.node, "the session's record has expired");
        return None;
    }
    let js = jetstream::new(e.nats.clone());
    tracing::info!(client_id = %client_id, node = %record.node, floor = record.floor,
        "resuming a session from its record: the node that held it does not answer");
    let subscriptions = meta.subscriptions.clone();
    let session = StoredSession {
        meta: SessionMeta {
            disconnected_at: Some(now),
            will: None,
            ..meta
        },
        deliveries: Vec::new(),
        incoming: Vec::new(),
    };
    let rest = Box::pin(async move {
        let owed = Owing {
            client_id,
            subscriptions,
            not_of: None,
        };
        owed.read_back(&js, record.floor).await
    });
    Some(Moving { session, rest })
}

/// A session restored from this node's store that its record names, with the
/// record's floor: it is owed what other nodes published while this node was down.
pub(super) struct Restarted {
    session: Arc<Session>,
    floor: u64,
}

/// The persistent sessions restored from this node's store whose records name this
/// node. Each begins landing ([`crate::session::SessionState::begin_landing`]) before
/// its subscriptions go live, so what they bring is told from what is read back.
pub(super) async fn restarted(store: &kv::Store, me: &str, sessions: &Sessions) -> Vec<Restarted> {
    let persistent = (sessions.all().into_iter()).filter(|s| s.is_persistent());
    let looked = futures_util::stream::iter(persistent).map(|session| async move {
        let (record, _) = read(store, session.client_id()).await?;
        (record.node == me).then(|| {
            session.lock().begin_landing();
            Restarted {
                session,
                floor: record.floor,
            }
        })
    });
    let found = looked.buffer_unordered(64).filter_map(|r| async { r });
    found.collect().await
}

/// Reads back, for each restarted session, what other nodes published for it from its
/// floor on, and hands it to `arrivals` to land (nothing, if nothing was: the session
/// stops landing).
pub(super) async fn catch_up(
    js: &jetstream::Context,
    me: &Arc<str>,
    restarted: Vec<Restarted>,
    arrivals: &dyn super::Arrivals,
) {
    if restarted.is_empty() {
        return;
    }
    let sessions = restarted.len();
    let started = std::time::Instant::now();
    let reads = restarted.into_iter().map(|r| async move {
        let owing = Owing {
            client_id: r.session.client_id().clone(),
            subscriptions: r.session.meta().subscriptions,
            not_of: Some(me.clone()),
        };
        let owed = owing.read_back(js, r.floor).await;
        (r.session, owed)
    });
    let mut reads = futures_util::stream::iter(reads).buffer_unordered(replay::AT_ONCE);
    let mut messages = 0;
    while let Some((session, owed)) = reads.next().await {
        messages += owed.len();
        arrivals.caught_up(session.client_id(), owed);
    }
    tracing::info!(sessions, messages, took = ?started.elapsed(),
        "restored sessions caught up on what was published while this node was down");
}

/// A session's subscriptions, to pick from the stream what it is owed.
struct Owing {
    client_id: Arc<str>,
    subscriptions: Vec<StoredSubscription>,
    /// A node whose messages the session has already (this one, restarted).
    not_of: Option<Arc<str>>,
}

impl Owing {
    /// Every message of the stream from `floor` on that the subscriptions match, as
    /// deliveries (each once, by origin). Tried again while JetStream does not answer.
    async fn read_back(&self, js: &jetstream::Context, floor: u64) -> Vec<Delivery> {
        let subjects: HashSet<String> = (self.subscriptions.iter())
            .filter(|s| !matches!(crate::topic::parse_shared(&s.filter), Ok(Some(_))))
            .flat_map(|s| subject::filter_subjects(&s.filter))
            .map(|s| subject::kept(&s))
            .collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for filter in subjects {
            for attempt in 1.. {
                match self.read(js, &filter, floor, &mut seen, &mut out).await {
                    Ok(()) => break,
                    Err(e) if attempt < 6 => {
                        tracing::debug!(error = %e, %filter, "reading a resumed session's messages again");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, client_id = %self.client_id, %filter,
                            "cannot read back what a resumed session is owed");
                        break;
                    }
                }
            }
        }
        out
    }

    async fn read(
        &self,
        js: &jetstream::Context,
        filter: &str,
        floor: u64,
        seen: &mut HashSet<Origin>,
        out: &mut Vec<Delivery>,
    ) -> Result<(), String> {
        let start_time = replay::datetime(UNIX_EPOCH + Duration::from_secs(floor))?;
        let stream = (js.get_stream(MESSAGES_STREAM).await).map_err(|e| e.to_string())?;
        let config = consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        };
        let consumer = (stream.create_consumer(config).await).map_err(|e| e.to_string())?;
        // What matched when the consumer was made: once that is read, the session's
        // subscriptions (made before this read) bring the rest.
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        while started.elapsed() < LONGEST {
            let m = match tokio::time::timeout(STALLED, messages.next()).await {
                Ok(Some(m)) => m.map_err(|e| e.to_string())?,
                Ok(None) => return Err("the stream ended the read".into()),
                Err(_) => return Err(format!("no message for {}s", STALLED.as_secs())),
            };
            let last = m.info().map(|i| i.pending == 0).unwrap_or(false);
            if let Some(d) = envelope::unwrap(m.message.payload)
                .ok()
                .and_then(|msg| self.wanted(msg))
            {
                let fresh = d.message.origin.clone().is_none_or(|o| seen.insert(o));
                if fresh {
                    out.push(d);
                }
            }
            if last {
                return Ok(());
            }
        }
        Err(format!("still reading after {}s", LONGEST.as_secs()))
    }

    /// The delivery of `msg` the subscriptions want (highest QoS, every identifier;
    /// not back to its publisher under No Local), if any and not expired.
    fn wanted(&self, msg: crate::message::Message) -> Option<Delivery> {
        if msg.is_expired(now_secs()) {
            return None;
        }
        let skipped = self.not_of.as_ref();
        if skipped.is_some_and(|n| msg.origin.as_ref().is_some_and(|o| o.node == *n)) {
            return None;
        }
        let own = msg.publisher.as_deref() == Some(&*self.client_id);
        let mut want: Option<Delivery> = None;
        let msg = Arc::new(msg);
        for s in &self.subscriptions {
            let shared = matches!(crate::topic::parse_shared(&s.filter), Ok(Some(_)));
            if shared || (s.no_local && own) || !crate::topic::matches(&s.filter, &msg.topic) {
                continue;
            }
            let granted =
                crate::codec::QoS::from_u8(s.qos).unwrap_or(crate::codec::QoS::AtMostOnce);
            let qos = msg.qos.min(granted);
            let d = want.get_or_insert_with(|| Delivery {
                message: msg.clone(),
                qos,
                retain: false,
                subscription_ids: Vec::new(),
                store_seq: None,
            });
            d.qos = d.qos.max(qos);
            d.retain |= msg.retain && s.retain_as_published;
            d.subscription_ids.extend(s.id);
        }
        want
    }
}
