//! Cluster mode: several Weir nodes act as one broker through NATS with JetStream.
//!
//! What leaves this node goes through [`ClusterFanout`], the cluster's
//! [`crate::router::Fanout`]: it keeps the local topic trie, subscribes this node's NATS
//! connection to the subjects its clients' filters map to ([`subject`]), so NATS sends
//! a node only what its subscriptions want, and publishes what clients publish here.
//! QoS 0 is published once; QoS 1 and 2 go into the JetStream stream `WEIR_MSGS`, and
//! the publisher's acknowledgement waits for JetStream's ([`tickets`]). The connection
//! does not echo a node's own messages back to it.
//!
//! What arrives from NATS is handed to the broker by the task [`Cluster::serve`]
//! starts, as a listener hands over a client's packets: data still flows one way.

mod envelope;
mod fanout;
mod groups;
mod handover;
mod owners;
mod records;
mod replay;
mod retained;
mod seen;
pub mod subject;
pub mod tickets;
mod wills;

pub use fanout::ClusterFanout;
pub use owners::ClusterDirectory;

use crate::config::ClusterConfig;
use crate::message::Message;
use crate::store::encode_message;
use async_nats::jetstream;
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tickets::Tickets;
use tokio::sync::mpsc;

/// The JetStream stream that keeps messages published at QoS 1 and 2.
pub const MESSAGES_STREAM: &str = "WEIR_MSGS";
/// How long the stream keeps a message (the longest a session may be offline is
/// handled by later work on sessions; this bounds the stream's size).
const MESSAGES_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("config key `cluster.servers`: cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Option { key: &'static str, reason: String },
    #[error("config key `cluster.servers`: JetStream at {servers} is not usable: {reason}")]
    JetStream { servers: String, reason: String },
}

/// Counters the admin API shows.
#[derive(Default)]
pub struct ClusterStats {
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub publish_retries: AtomicU64,
    pub undecodable: AtomicU64,
    /// Extra copies of one message (overlapping subscriptions), dropped.
    pub copies: AtomicU64,
    pub disconnects: AtomicU64,
    /// NATS subjects this node subscribes to (a gauge).
    pub subjects: AtomicU64,
    /// QoS 0 messages waiting to be sent to NATS: publishers on this node are held
    /// while it is over its mark and NATS is there to drain it.
    pub queued_once: crate::pace::Backlog,
    /// QoS 0 messages for other nodes dropped because too many were waiting already.
    pub dropped_once: AtomicU64,
    /// Messages read back from JetStream after a subscription or a reconnect
    /// ([`replay`]), copies included.
    pub replayed: AtomicU64,
    /// Read-backs that failed (NATS away again, say).
    pub replay_failures: AtomicU64,
    /// Records of expired sessions that dead nodes left, deleted ([`records::sweep`]).
    pub records_swept: AtomicU64,
    /// 1 while the connection to NATS is up (a gauge).
    pub connected: AtomicU64,
    /// A QoS 1/2 message's first JetStream publish → its acknowledgement, retries
    /// included: what its publisher's PUBACK waits for.
    pub jetstream_publish: crate::metrics::Histogram,
}

/// Where what other nodes send is handed over: the broker, seen from the cluster.
pub trait Arrivals: Send + Sync + 'static {
    /// Messages published on other nodes that this node's subscriptions want, in order.
    fn messages(&self, msgs: Vec<Message>);
    /// A message for this node's members of the shared group `share`
    /// (`$share/group/filter`): NATS picked this node for it.
    fn shared(&self, share: &str, msg: Message);
    /// Another node now holds `client_id`'s connection: this node's must go (0x8E).
    fn taken_over(&self, client_id: &str);
    /// The retained message of `topic` as the cluster keeps it now (`None`: deleted).
    fn retained(&self, topic: &str, msg: Option<Message>);
    /// The will of a client of a dead node, for this node to publish (it won the claim).
    fn will(&self, msg: Message);
    /// Another node asks for `client_id`'s persistent session: let it go, and hand over
    /// what it owes (`None`: there is none here).
    fn hand_over(&self, client_id: &str) -> Option<crate::store::StoredSession>;
    /// The session handed over is subscribed where it went: what reached it here since,
    /// and end it here.
    fn hand_over_rest(&self, client_id: &str) -> Vec<crate::message::Delivery>;
    /// What other nodes published for a session restored from this node's store while
    /// the node was down: for it to take in (each message once, in order per node).
    fn caught_up(&self, client_id: &str, owed: Vec<crate::message::Delivery>);
}

/// A node's link to NATS.
pub struct Cluster {
    client: async_nats::Client,
    queues: async_nats::Client,
    node: Arc<str>,
    tickets: Arc<Tickets>,
    stats: Arc<ClusterStats>,
    fanout: Arc<ClusterFanout>,
    owners: async_nats::jetstream::kv::Store,
    claims: Arc<owners::Claims>,
    outbox_tx: mpsc::UnboundedSender<fanout::Out>,
    outbox: mpsc::UnboundedReceiver<fanout::Out>,
    once: Arc<fanout::OnceQueue>,
    connection: mpsc::UnboundedReceiver<Connection>,
    wills: [async_nats::jetstream::kv::Store; 2],
    me: wills::Me,
    will_changes: (
        mpsc::UnboundedSender<wills::Change>,
        mpsc::UnboundedReceiver<wills::Change>,
    ),
    /// The bucket of session records, and what the broker asks of their keeper.
    records: kv::Store,
    record_changes: (
        mpsc::UnboundedSender<records::Change>,
        mpsc::UnboundedReceiver<records::Change>,
    ),
    /// This node's sessions: the broker's, through the directory, and the keeper's.
    local: Arc<crate::session::Sessions>,
}

impl Cluster {
    /// Connects to NATS and makes sure the streams exist, retrying until
    /// `connect_timeout_secs`: a NATS cluster elects its JetStream leader after it starts.
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(config.connect_timeout_secs);
        let stats = Arc::new(ClusterStats::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        let watched = Watched {
            stats: stats.clone(),
            events: events_tx,
        };
        let client = connect_client(config, Some(watched), deadline).await?;
        stats.connected.store(1, Relaxed);
        // Queue subscriptions for shared groups use a connection of their own: the main
        // one does not echo, and a group's member on this node must get this node's
        // messages when NATS picks it.
        let queues = connect_client(config, None, deadline).await?;
        let js = jetstream::new(client.clone());
        ensure_streams(&js, config, deadline).await?;
        let owners = ensure_bucket(
            &js,
            owners::bucket_config(config.replicas),
            config,
            deadline,
        );
        let owners = owners.await?;
        let [wills, nodes] = wills::bucket_configs(config.replicas);
        let wills = ensure_bucket(&js, wills, config, deadline).await?;
        let nodes = ensure_bucket(&js, nodes, config, deadline).await?;
        let records = records::bucket_config(config.replicas);
        let records = ensure_bucket(&js, records, config, deadline).await?;
        let tickets = Arc::new(Tickets::default());
        let (tx, outbox) = mpsc::unbounded_channel();
        let node: Arc<str> = Arc::from(config.node.as_str());
        let life = life();
        let once = Arc::new(fanout::OnceQueue::default());
        let fanout = Arc::new(ClusterFanout::new(
            node.clone(),
            first_number(life),
            tickets.clone(),
            stats.clone(),
            tx.clone(),
            once.clone(),
        ));
        tracing::info!(node = %node, servers = %config.servers.join(", "), "joined the cluster");
        Ok(Cluster {
            client,
            queues,
            node,
            tickets,
            stats,
            fanout,
            owners,
            claims: Arc::default(),
            outbox_tx: tx,
            outbox,
            once,
            connection: events,
            wills: [wills, nodes],
            me: wills::Me {
                node: Arc::from(config.node.as_str()),
                life,
                liveness: Duration::from_secs(config.liveness_secs),
            },
            will_changes: mpsc::unbounded_channel(),
            records,
            record_changes: mpsc::unbounded_channel(),
            local: Arc::default(),
        })
    }

    /// The directory the broker registers and claims sessions in.
    pub fn directory(&self) -> Box<dyn crate::session::Directory> {
        Box::new(ClusterDirectory {
            local: self.local.clone(),
            claims: self.claims.clone(),
            outbox: self.outbox_tx.clone(),
            wills: self.will_changes.0.clone(),
            records: (self.record_changes.0.clone(), self.tickets.clone()),
            elsewhere: owners::Elsewhere {
                nats: self.client.clone(),
                owners: self.owners.clone(),
                sessions: self.records.clone(),
                nodes: self.wills[1].clone(),
                me: self.node.clone(),
            },
        })
    }

    /// The fan-out the broker routes through.
    pub fn fanout(&self) -> Arc<ClusterFanout> {
        self.fanout.clone()
    }

    /// Tickets the broker's acknowledgements wait on besides the store's.
    pub fn tickets(&self) -> Arc<Tickets> {
        self.tickets.clone()
    }

    pub fn stats(&self) -> Arc<ClusterStats> {
        self.stats.clone()
    }

    /// Starts the tasks that carry out what the fan-out asks for (publishes,
    /// subscriptions) and hand what arrives from other nodes to `arrivals`, that follow
    /// the cluster's buckets and retained messages, and that keep this node's records.
    /// Returns once the sessions restored from the store have caught up on what was
    /// published while this node was down ([`records`]); only then does the node hand
    /// sessions over to other nodes, and should it take connections.
    pub async fn serve(self, arrivals: Arc<dyn Arrivals>) {
        let restarted = records::restarted(&self.records, &self.node, &self.local).await;
        let js = jetstream::new(self.client.clone());
        let (client, node, tickets) =
            (self.client.clone(), self.node.clone(), self.tickets.clone());
        self.start(arrivals.clone());
        // The restored sessions' subscriptions in NATS first: what a read-back started
        // after them does not find comes live.
        let last = tickets.last();
        let mut durable = tickets.durable();
        let subscribed =
            tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|d| *d >= last));
        if !subscribed.await.is_ok_and(|r| r.is_ok()) {
            tracing::warn!("the restored sessions' subscriptions are not confirmed by NATS yet");
        }
        records::catch_up(&js, &node, restarted, &*arrivals).await;
        tokio::spawn(handover::serve(client, node, arrivals));
    }

    fn start(self, arrivals: Arc<dyn Arrivals>) {
        let msg_ids = format!("{}-{}-", self.node, self.me.life);
        let [wills, nodes] = self.wills;
        tokio::spawn(records::sweep(
            self.records.clone(),
            nodes.clone(),
            self.node.clone(),
            self.me.liveness,
            self.stats.clone(),
        ));
        wills::start(wills, nodes, self.me, self.will_changes.1, arrivals.clone());
        let keeper = records::Keeper {
            store: self.records,
            node: self.node.clone(),
            sessions: self.local,
        };
        tokio::spawn(keeper.run(self.record_changes.1));
        tokio::spawn(retained::follow(
            jetstream::new(self.client.clone()),
            arrivals.clone(),
        ));
        tokio::spawn(owners::watch(
            self.owners.clone(),
            self.claims.clone(),
            self.node.clone(),
            arrivals.clone(),
        ));
        let link = Link {
            js: jetstream::new(self.client.clone()),
            client: self.client,
            queues: self.queues,
            owners: self.owners,
            claims: self.claims,
            node: self.node,
            tickets: self.tickets,
            stats: self.stats,
            arrivals,
            unnumbered: AtomicU64::new(0),
            msg_ids,
            seen: std::sync::Mutex::default(),
            names: envelope::Names::default(),
            read_backs: tokio::sync::Semaphore::new(replay::AT_ONCE),
        };
        let link = Arc::new(link);
        tokio::spawn(replay::after_reconnects(link.clone(), self.connection));
        tokio::spawn(link.clone().send_once_all(self.once));
        tokio::spawn(link.run(self.outbox));
    }
}

/// Tries `attempt` until it succeeds or `deadline` passes; then the last error. A NATS
/// cluster that has just started elects its JetStream leader first.
async fn until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        match attempt().await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What a watched NATS connection reports to: the counters, and the link (which reads
/// back what it may have missed while the connection was lost).
struct Watched {
    stats: Arc<ClusterStats>,
    events: mpsc::UnboundedSender<Connection>,
}

/// What happened to the watched connection.
enum Connection {
    Lost(std::time::SystemTime),
    Back,
}

/// Follows a bucket for as long as the process runs, handing each entry to `each`.
pub(super) async fn follow(
    store: jetstream::kv::Store,
    what: &str,
    mut each: impl FnMut(jetstream::kv::Entry),
) {
    loop {
        match store.watch_all().await {
            Ok(mut entries) => {
                while let Some(entry) = futures_util::StreamExt::next(&mut entries).await {
                    match entry {
                        Ok(entry) => each(entry),
                        Err(_) => break,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, bucket = what, "cannot follow a cluster bucket"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A connection to NATS, tried until `deadline`; `watched` hears of its losses.
async fn connect_client(
    config: &ClusterConfig,
    watched: Option<Watched>,
    deadline: Instant,
) -> Result<async_nats::Client, ClusterError> {
    let options = options(config, watched).await?;
    until(deadline, || {
        let options = options.clone();
        async move {
            let client = options.connect(config.servers.clone()).await;
            client.map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|reason| ClusterError::Connect {
        servers: config.servers.join(", "),
        reason,
    })
}

/// Creates Weir's streams where they do not exist yet.
async fn ensure_streams(
    js: &jetstream::Context,
    config: &ClusterConfig,
    deadline: Instant,
) -> Result<(), ClusterError> {
    let messages = jetstream::stream::Config {
        name: MESSAGES_STREAM.into(),
        subjects: vec![format!("{}.{}.>", subject::ROOT, subject::KEPT)],
        num_replicas: config.replicas,
        max_age: MESSAGES_MAX_AGE,
        ..Default::default()
    };
    for stream in [messages, retained::stream_config(config.replicas)] {
        until(deadline, || async {
            let created = js.get_or_create_stream(stream.clone()).await;
            created.map(|_| ()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|reason| jetstream_error(config, reason))?;
    }
    Ok(())
}

/// A key-value bucket, created if it does not exist yet.
async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: jetstream::kv::Config,
    config: &ClusterConfig,
    deadline: Instant,
) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    until(deadline, || async {
        match js.get_key_value(&bucket.bucket).await {
            Ok(s) => Ok(s),
            Err(_) => js
                .create_key_value(bucket.clone())
                .await
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .map_err(|reason| jetstream_error(config, reason))
}

fn jetstream_error(config: &ClusterConfig, reason: String) -> ClusterError {
    ClusterError::JetStream {
        servers: config.servers.join(", "),
        reason,
    }
}

/// The number of this process's first message: above every number the node gave out
/// before it restarted (unless it published more than a million messages a
/// millisecond), as other nodes tell a message from a copy by its number, and below
/// the numbers of unnumbered messages.
fn first_number(life: u64) -> u64 {
    life << 20
}

/// This process's incarnation: milliseconds since the epoch at startup.
fn life() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connection options from the `[cluster]` table.
async fn options(
    config: &ClusterConfig,
    watched: Option<Watched>,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("weir-{}", config.node))
        .no_echo()
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs.min(5)));
    if let Some(path) = &config.credentials {
        o = o
            .credentials_file(path)
            .await
            .map_err(|e| ClusterError::Option {
                key: "cluster.credentials",
                reason: e.to_string(),
            })?;
    }
    if let (Some(u), Some(p)) = (&config.user, &config.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &config.token {
        o = o.token(t.clone());
    }
    if let Some(ca) = &config.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&config.tls_cert, &config.tls_key) {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    let Some(watched) = watched else {
        return Ok(o);
    };
    let watched = Arc::new(watched);
    Ok(o.event_callback(move |event| {
        let watched = watched.clone();
        async move {
            match event {
                async_nats::Event::Disconnected => {
                    watched.stats.disconnects.fetch_add(1, Relaxed);
                    watched.stats.connected.store(0, Relaxed);
                    watched.stats.queued_once.set_flowing(false);
                    let _ = (watched.events).send(Connection::Lost(std::time::SystemTime::now()));
                    tracing::warn!("lost the connection to NATS; reconnecting");
                }
                async_nats::Event::Connected => {
                    watched.stats.connected.store(1, Relaxed);
                    watched.stats.queued_once.set_flowing(true);
                    let _ = watched.events.send(Connection::Back);
                    tracing::info!("connected to NATS");
                }
                other => tracing::warn!(event = %other, "NATS connection event"),
            }
        }
    }))
}

/// A message on its way into JetStream, as it is sent again.
struct Kept {
    subject: String,
    headers: HeaderMap,
    body: Bytes,
    ticket: u64,
    /// When it was first sent.
    sent_at: Instant,
}

/// The running side of [`Cluster`].
struct Link {
    client: async_nats::Client,
    /// For the queue subscriptions of shared groups.
    queues: async_nats::Client,
    owners: async_nats::jetstream::kv::Store,
    claims: Arc<owners::Claims>,
    js: jetstream::Context,
    node: Arc<str>,
    tickets: Arc<Tickets>,
    stats: Arc<ClusterStats>,
    arrivals: Arc<dyn Arrivals>,
    /// Messages sent that were not numbered when published (none are: the broker
    /// stamps every one), numbered apart from those that were.
    unnumbered: AtomicU64,
    /// What JetStream's message ids start with here: node and incarnation. Tickets
    /// start again at 1 in each process, and JetStream drops as a duplicate a message
    /// whose id it saw in the last two minutes.
    msg_ids: String,
    seen: std::sync::Mutex<seen::Seen>,
    names: envelope::Names,
    /// Read-backs from JetStream running at once, at most: each is an ordered consumer
    /// NATS keeps while it reads.
    read_backs: tokio::sync::Semaphore,
}

impl Link {
    async fn run(self: Arc<Self>, mut outbox: mpsc::UnboundedReceiver<fanout::Out>) {
        let link = self;
        let mut subscriptions = std::collections::HashMap::new();
        while let Some(out) = outbox.recv().await {
            match out {
                fanout::Out::Kept(msg, ticket) => link.send_kept(msg, ticket, false).await,
                fanout::Out::Retain(msg, ticket) => link.send_kept(msg, ticket, true).await,
                fanout::Out::Want(interest, ticket) => {
                    let task = link.want(interest.clone(), ticket);
                    if let Some(old) = subscriptions.insert(interest, task) {
                        old.abort();
                    }
                }
                fanout::Out::Drop(interest) => {
                    if let Some(task) = subscriptions.remove(&interest) {
                        task.abort();
                    }
                }
                fanout::Out::Own(client_id, conn, written) => {
                    let link = link.clone();
                    tokio::spawn(async move {
                        owners::own(&link.owners, &link.claims, &link.node, client_id, conn).await;
                        let _ = written.send(());
                    });
                }
            }
        }
    }

    /// The message in its envelope, numbered as the broker numbered it when it was
    /// published here; `None` (logged) if it cannot be encoded.
    fn wrapped(&self, msg: &Message) -> Option<Bytes> {
        let wrapped = envelope::wrap(&self.node, self.number(msg), msg);
        wrapped.map_err(|e| cannot_send(msg, e)).ok()
    }

    /// The number and time a message goes out with.
    fn number(&self, msg: &Message) -> (u64, u64) {
        match &msg.origin {
            Some(o) => (o.seq, o.at),
            None => (
                self.unnumbered.fetch_add(1, Relaxed) + (1 << 62),
                crate::message::now_secs(),
            ),
        }
    }

    /// Sends QoS 0 messages as they come, as long as the node runs.
    async fn send_once_all(self: Arc<Self>, once: Arc<fanout::OnceQueue>) {
        loop {
            let msgs = once.take().await;
            if !msgs.is_empty() {
                self.publish_once(msgs).await;
            }
        }
    }

    /// Sends the QoS 0 messages that waited together, one NATS message per subject
    /// ([`envelope::Batch`]), each subject's in the order published.
    async fn publish_once(&self, msgs: Vec<Arc<Message>>) {
        // While NATS is away, QoS 0 messages wait in the queue, where they are
        // counted and bounded ([`fanout::MAX_QUEUED_ONCE`]), not in the NATS client,
        // which would take a thousand batches of them.
        self.stats.queued_once.flowing().await;
        let mut batches: Vec<(String, envelope::Batch)> = Vec::new();
        let mut by_topic: crate::FastMap<Arc<str>, usize> = Default::default();
        let taken = msgs.len() as u64;
        for msg in msgs {
            let i = *by_topic.entry(msg.topic.clone()).or_insert_with(|| {
                let subject = subject::topic_subject(subject::ONCE, &msg.topic);
                batches.push((subject, envelope::Batch::new(&self.node)));
                batches.len() - 1
            });
            let batch = &mut batches[i].1;
            let number = self.number(&msg);
            let pushed = batch.push(number, &msg);
            if let Err(e) = pushed {
                cannot_send(&msg, e);
            }
            if batch.is_full() {
                let full = std::mem::replace(batch, envelope::Batch::new(&self.node));
                self.send_once(batches[i].0.clone(), full).await;
            }
        }
        for (subject, batch) in batches {
            self.send_once(subject, batch).await;
        }
        self.stats.queued_once.remove(taken);
    }

    async fn send_once(&self, subject: String, batch: envelope::Batch) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        match self.client.publish(subject, batch.finish()).await {
            Ok(()) => {
                self.stats.published.fetch_add(n, Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = n, "QoS 0 messages not sent to the cluster")
            }
        }
    }

    /// Sends a QoS 1 or 2 message into JetStream, in the order the broker forwarded it,
    /// and leaves waiting for JetStream's acknowledgement to a task of its own.
    /// With `retained`, the message is the topic's retained record instead (an empty
    /// record for an empty payload: the retained message is deleted).
    async fn send_kept(self: &Arc<Self>, msg: Arc<Message>, ticket: u64, retained: bool) {
        // A retained record is the bare record (an empty one deletes), as the stream
        // keeps it for nodes that start later.
        let body = match (retained, msg.payload.is_empty()) {
            (true, true) => Some(Bytes::new()),
            (true, false) => encoded(&msg),
            (false, _) => self.wrapped(&msg),
        };
        let Some(body) = body else {
            self.tickets.done(ticket);
            return;
        };
        let subject = match retained {
            true => subject::retained_subject(&msg.topic),
            false => subject::topic_subject(subject::KEPT, &msg.topic),
        };
        let mut headers = HeaderMap::new();
        // The same id on every attempt: JetStream keeps one copy of a retried publish.
        headers.insert("Nats-Msg-Id", format!("{}{ticket}", self.msg_ids).as_str());
        let sent_at = Instant::now();
        let first = self
            .js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await;
        let link = self.clone();
        tokio::spawn(async move {
            let kept = Kept {
                subject,
                headers,
                body,
                ticket,
                sent_at,
            };
            link.confirm(kept, first, &msg.topic).await
        });
    }

    /// Waits for JetStream to acknowledge, publishing again until it does, then marks
    /// the ticket done: the publisher's acknowledgement waits for that, however long
    /// NATS is away.
    async fn confirm(
        &self,
        kept: Kept,
        mut sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
        topic: &str,
    ) {
        let mut delay = Duration::from_millis(50);
        loop {
            let acked = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => break,
                Err(e) => {
                    self.stats.publish_retries.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, %topic, "JetStream did not take a message; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
            sent = self
                .js
                .publish_with_headers(
                    kept.subject.clone(),
                    kept.headers.clone(),
                    kept.body.clone(),
                )
                .await;
        }
        self.stats.published.fetch_add(1, Relaxed);
        self.stats.jetstream_publish.observe(kept.sent_at.elapsed());
        self.tickets.done(kept.ticket);
    }

    /// Starts the task that subscribes to a subject (or joins a shared group's queue
    /// group), makes sure the server has it before `ticket` is done (so a SUBACK means
    /// other nodes' messages are on their way here), reads back what NATS may not send
    /// (see [`replay`]) and hands over what arrives. Dropping the interest aborts the
    /// task; its ticket is done then too. Nothing here waits on NATS in the link's own
    /// loop, so a storm of new subscriptions, or NATS being away, holds up no publish.
    fn want(
        self: &Arc<Self>,
        interest: fanout::Interest,
        ticket: u64,
    ) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let done = tickets::Done::new(link.tickets.clone(), ticket);
            let mut read_back = None;
            let mut group = None;
            let (client, sub) = match &interest {
                fanout::Interest::Plain(subject) => {
                    read_back = replay::position(&link)
                        .await
                        .map(|p| (subject::kept(subject), p));
                    (&link.client, link.client.subscribe(subject.clone()).await)
                }
                fanout::Interest::Queue(q) => {
                    let once = subject::once(&q.subject);
                    let sub = (link.queues).queue_subscribe(once, q.queue.clone());
                    group = Some(groups::consumer(&link, q).await.map_err(|e| {
                        tracing::warn!(error = %e, share = %q.share,
                            "cannot make the shared group's JetStream consumer yet");
                    }));
                    (&link.queues, sub.await)
                }
            };
            if let Err(e) = client.flush().await {
                tracing::warn!(error = %e, "NATS did not confirm a subscription yet");
            }
            drop(done);
            // Noted only while a read-back is to come: nothing else asks.
            let first = read_back.is_some().then(Arc::<replay::FirstLive>::default);
            let catch_up = async {
                if let Some((filter, from)) = read_back {
                    let from = replay::From::Sequence(from);
                    let linger = replay::AFTER_SUBSCRIBING;
                    replay::read_back(link.clone(), filter, from, linger, first.clone()).await
                }
            };
            let kept = async {
                if let (Some(consumer), fanout::Interest::Queue(q)) = (group, &interest) {
                    groups::receive(link.clone(), q.clone(), consumer.ok()).await
                }
            };
            let live = link.clone().receive(interest.clone(), sub, first.clone());
            tokio::join!(catch_up, live, kept);
        })
    }

    /// Hands what a subscription receives to the broker, as long as it lasts.
    async fn receive(
        self: Arc<Self>,
        interest: fanout::Interest,
        sub: Result<async_nats::Subscriber, async_nats::SubscribeError>,
        first: Option<Arc<replay::FirstLive>>,
    ) {
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe in NATS");
                return;
            }
        };
        use futures_util::StreamExt;
        while let Some(m) = sub.next().await {
            match &interest {
                fanout::Interest::Queue(q) => self.arrived_shared(&q.share, m),
                fanout::Interest::Plain(_) => self.arrived(m, first.as_deref(), true),
            }
        }
    }

    /// The messages a NATS message carries (one, or a batch), with their publishers
    /// and origins; what cannot be read is counted and logged.
    fn decoded(&self, m: async_nats::Message) -> Vec<Message> {
        let undecodable = |e: String| {
            self.stats.undecodable.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, subject = %m.subject, "undecodable message from the cluster");
        };
        let mut out = Vec::new();
        let mut reader = envelope::Reader::new(&self.names);
        reader.read_all(m.payload.clone(), |read| match read {
            Ok(msg) => out.push(msg),
            Err(e) => undecodable(e),
        });
        out
    }

    /// A message NATS gave this node for its members of the shared group `share`:
    /// from its queue group (QoS 0) or its JetStream consumer (QoS 1/2, which may give
    /// one again that was not acknowledged in time: at least once).
    fn arrived_shared(&self, share: &str, m: async_nats::Message) {
        for msg in self.decoded(m) {
            self.stats.received.fetch_add(1, Relaxed);
            self.arrivals.shared(share, msg);
        }
    }

    /// Routes a message from another node unless it is a copy of one already routed.
    /// The check and the routing happen under one lock: each subscription's task sees
    /// one node's messages in the order sent, and routing them in lock order keeps that
    /// order even when the first copy of one message and of the next come through
    /// different subscriptions.
    /// `first`: what a new subscription brought live first (`live`: `m` came so), for
    /// its read-back to leave out.
    fn arrived(&self, m: async_nats::Message, first: Option<&replay::FirstLive>, live: bool) {
        let mut messages = self.decoded(m);
        if let (true, Some(first)) = (live, first) {
            first.note(&messages);
        }
        // Once for a batch.
        let mut seen = crate::sync::lock(&self.seen);
        messages.retain(|msg| self.is_new(msg, first, live, &mut seen));
        self.stats
            .received
            .fetch_add(messages.len() as u64, Relaxed);
        self.arrivals.messages(messages);
    }

    /// Whether `msg` is to be routed: not this node's own, not a copy of one routed.
    fn is_new(
        &self,
        msg: &Message,
        first: Option<&replay::FirstLive>,
        live: bool,
        seen: &mut seen::Seen,
    ) -> bool {
        if let (Some(o), Some(first), false) = (&msg.origin, first, live) {
            if first.came_live(o) {
                return false;
            }
        }
        // Read back from JetStream, this node's own messages come too.
        if msg.origin.as_ref().is_some_and(|o| o.node == self.node) {
            return false;
        }
        if let Some(o) = &msg.origin {
            if seen.arrive(&o.node, o.seq) == seen::Arrival::Copy {
                self.stats.copies.fetch_add(1, Relaxed);
                return false;
            }
        }
        true
    }
}

fn cannot_send(msg: &Message, e: String) {
    tracing::error!(error = %e, topic = %msg.topic, "message cannot be sent to the cluster");
}

fn encoded(msg: &Message) -> Option<Bytes> {
    match encode_message(msg) {
        Ok(b) => Some(Bytes::from(b)),
        Err(e) => {
            tracing::error!(error = %e, topic = %msg.topic, "message cannot be encoded for the cluster");
            None
        }
    }
}
