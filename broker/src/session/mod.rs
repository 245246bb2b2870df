//! A session: what one client is owed, whether or not it is connected.
//!
//! Publishers push deliveries into the session's queue (never blocking: the queue is
//! bounded and overflow is dropped and counted); the connection attached to the
//! session, if any, is woken and moves deliveries from the queue into the in-flight
//! window as the client's Receive Maximum allows. For a persistent session every QoS 1/2
//! delivery is also recorded in a [`Journal`], and the record follows each state change
//! under the session's lock, so a restart resumes exactly where the broker stopped.
//!
//! The state is private: the broker changes it through the verbs of [`SessionState`]
//! while it holds the lock, and everyone else asks [`Session`].

mod inflight;
mod registry;
mod state;

pub use inflight::{Inflight, InflightWindow};
pub use registry::{Announced, BoxFuture, Claim, Directory, Moving, Sessions};
pub use state::{Outgoing, Owed, PushOutcome, QueueLimits, SessionState, Taken};

use crate::codec::{ReasonCode, SubscriptionOptions, Version, Will};
use crate::hooks::Identity;
use crate::message::{now_secs, Delivery, Message};
use crate::store::{DeliveryState, SessionMeta, StoredSession};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// "Never expires": 5.0's 0xFFFFFFFF, and a 3.1.1 session without Clean Session.
pub const NEVER: u32 = u32::MAX;

/// What another part of the broker can ask of the connection attached to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A new connection with the same client id took the session over.
    TakenOver,
    /// Disconnect with this reason code (an operator's action, for example).
    Kick(ReasonCode),
}

/// The connection currently attached to a session.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Unique per connection; lets a connection tell whether the session is still its own.
    pub id: u64,
    pub control: mpsc::UnboundedSender<Control>,
    /// What the admin API shows about the connection.
    pub listener: Arc<str>,
    pub peer: std::net::SocketAddr,
    pub version: Version,
    pub since: std::time::SystemTime,
}

/// A subscription as the session remembers it (the router has the routing copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// A session as the admin API shows it.
#[derive(Debug, Clone)]
pub struct Overview {
    pub connected: bool,
    pub expiry_interval: u32,
    /// Waiting to be sent, in memory and on disk.
    pub queued: usize,
    /// Sent and not yet acknowledged.
    pub inflight: usize,
    /// Unix seconds; `None` while connected.
    pub disconnected_at: Option<u64>,
    /// Filter and maximum QoS, by filter.
    pub subscriptions: Vec<(String, u8)>,
}

/// A will waiting for its Will Delay Interval (5.0) to pass.
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub due_at: u64,
    pub message: Arc<Message>,
}

/// Where a persistent session records what it owes, so that a restart resumes it. The
/// broker implements it over the store; the session decides what to record, and does
/// so under its own lock, so that records are made in the order of the changes.
pub trait Journal {
    /// A key for a new recorded delivery, unique across restarts.
    fn next_seq(&self) -> u64;
    /// Records the delivery under `seq` in `state`; whether the record was made (an
    /// acknowledgement that promises durability waits for it).
    fn save(&self, seq: u64, d: &Delivery, state: DeliveryState) -> bool;
    fn delete(&self, seq: u64);
    /// A QoS 2 packet id received (`true`) or released (`false`); whether recorded.
    fn incoming(&self, pid: u16, present: bool) -> bool;
    /// Whether a delivery may go to disk instead of memory now (the store can, and the
    /// broker-wide quota has room).
    fn can_spill(&self) -> bool {
        false
    }
    /// Keeps a batch of queued deliveries on disk; where, or `None` if it could not.
    fn spill(&self, _batch: &[Delivery]) -> Option<Spilled> {
        None
    }
    /// Reads a spilled batch back (and frees its place); empty if it was lost.
    fn unspill(&self, _s: Spilled) -> Vec<Delivery> {
        Vec::new()
    }
    /// Frees a spilled batch's place unread (the session ended).
    fn forget_spilled(&self, _s: Spilled) {}
}

/// A batch of deliveries a slow session keeps on disk: its key, its size for the
/// quota, and how many deliveries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spilled {
    pub key: u64,
    pub bytes: u32,
    pub count: u32,
}

pub struct Session {
    client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Wakes the attached connection when deliveries were queued.
    notify: Notify,
    /// Wakes the publishers held for this session ([`Session::drained`]).
    drained: Notify,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState::new(expiry_interval)),
            notify: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// Rebuilds a session from the store (startup).
    pub fn restore(stored: StoredSession) -> Session {
        let meta = &stored.meta;
        let state = SessionState::restore(meta, stored.deliveries, stored.incoming);
        Session {
            client_id: Arc::from(meta.client_id.as_str()),
            state: Mutex::new(state),
            notify: Notify::new(),
            drained: Notify::new(),
        }
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// The state, for the broker's verbs that change it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        crate::sync::lock(&self.state)
    }

    /// Tells the attached connection there is something to send.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Completes when [`Session::wake`] was called (or had been, since the last time).
    pub async fn woken(&self) {
        self.notify.notified().await
    }

    /// Completes once the session no longer holds its publishers: its queue is down to
    /// half its high-water mark, its client went away, or it was found stalled.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().is_over() {
                return;
            }
            notified.await;
        }
    }

    /// Lets the publishers held for this session go on (it drained, or went away).
    pub fn let_publishers_go(&self) {
        self.drained.notify_waiters();
    }

    /// Deliveries taken from the queue so far: a held publisher's measure of progress.
    pub fn progress(&self) -> u64 {
        self.lock().progress()
    }

    /// A publisher held since the session had taken `seen` found it took nothing
    /// since: it holds nobody until it takes something again.
    pub fn mark_stalled(&self, seen: u64) {
        if self.lock().mark_stalled(seen) {
            tracing::debug!(client_id = %self.client_id, "consumer took nothing while publishers waited: they go on");
            self.let_publishers_go();
        }
    }

    /// Whether the session outlives its connection (a non-zero expiry interval).
    pub fn is_persistent(&self) -> bool {
        self.lock().expiry_interval() > 0
    }

    /// Whether the connection `conn_id` is the one attached.
    pub fn is_attached(&self, conn_id: u64) -> bool {
        self.lock().is_attached(conn_id)
    }

    /// The attached connection, if any.
    pub fn connection(&self) -> Option<ConnHandle> {
        self.lock().connection().cloned()
    }

    /// Whether a connection is attached, and who the client was when it last connected
    /// (unknown for a session restored from the store until it reconnects).
    pub fn holder(&self) -> (bool, Option<Arc<Identity>>) {
        let st = self.lock();
        (st.connection().is_some(), st.identity())
    }

    /// Whether a QoS 2 message with this packet id was received and not yet released:
    /// a resend of it must not be routed again (exactly once).
    pub fn is_receiving_qos2(&self, pid: u16) -> bool {
        self.lock().is_receiving_qos2(pid)
    }

    /// QoS 2 messages received and not yet released.
    pub fn qos2_receipts(&self) -> usize {
        self.lock().qos2_receipts()
    }

    /// What the admin API shows of it.
    pub fn overview(&self) -> Overview {
        self.lock().overview()
    }

    /// Messages waiting in the queue (not in flight).
    pub fn queued(&self) -> usize {
        self.lock().queued()
    }

    /// A new expiry interval (5.0 DISCONNECT may change it); recorded at detach.
    pub fn set_expiry(&self, secs: u32) {
        self.lock().set_expiry(secs)
    }

    /// The session as the store keeps it.
    pub fn meta(&self) -> SessionMeta {
        self.lock().meta(&self.client_id)
    }
}

/// Builds the will message a connection leaves behind.
pub fn will_message(w: &Will, client_id: &Arc<str>) -> Message {
    let mut properties = w.properties.clone();
    let mut expires_at = None;
    if let Some(set) = properties.get_mut() {
        expires_at = set
            .message_expiry_interval
            .take()
            .map(|s| now_secs() + s as u64);
        set.will_delay_interval = None;
    }
    let properties = properties.compact();
    Message {
        topic: Arc::from(w.topic.as_str()),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        properties,
        expires_at,
        publisher: Some(client_id.clone()),
        origin: None,
        received: None,
    }
}
