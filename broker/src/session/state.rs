//! The state behind a session's lock, and the verbs that change it. Every change to
//! what a persistent session owes is recorded in the [`Journal`] here, under the lock,
//! so that the records follow the state in order.

use super::{ConnHandle, InflightWindow, Journal, PendingWill, Spilled, Subscription, NEVER};
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};
use crate::config::OverflowPolicy;
use crate::hooks::Identity;
use crate::message::{now_secs, Delivery, Origin};
use crate::store::{
    DeliveryState, SessionMeta, StoredDelivery, StoredSession, StoredSubscription, StoredWill,
};
use crate::{FastMap, FastSet};
use std::collections::VecDeque;
use std::sync::Arc;

/// What the connection should write next, produced by [`SessionState::take_sendable`].
#[derive(Debug)]
pub enum Outgoing {
    Publish {
        pid: u16,
        dup: bool,
        delivery: Delivery,
    },
    PubRel {
        pid: u16,
    },
}

/// What [`SessionState::take_sendable`] did besides filling `out`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Taken {
    pub expired: u32,
    /// A recorded delivery changed state: the packet id it is sent under must be
    /// durable before it goes out, or a crash could resend it under another id and
    /// break exactly-once.
    pub stored: bool,
    /// The queue went from over its high-water mark to half of it: producers held
    /// for this session may go on.
    pub drained: bool,
}

/// Queue bounds for [`SessionState::push`].
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued: usize,
    pub high_water: usize,
    pub overflow: OverflowPolicy,
    pub queue_qos0_offline: bool,
}

/// What happened to a pushed delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Deliveries dropped by the overflow policy (this one or an older one).
    pub dropped: u32,
    /// A record was made that the publisher's acknowledgement must wait for.
    pub stored: bool,
    /// The session was offline and this was not queued (QoS 0).
    pub skipped: bool,
    /// A connection is attached and should be woken.
    pub wake: bool,
    /// The session is over its high-water mark: a publisher that fed only sessions
    /// like it should wait until it drains ([`crate::session::Session::drained`]).
    pub over: bool,
    /// The queue is full and the policy is `block`: the publisher should wait whatever
    /// else it fed.
    pub blocking: bool,
    /// The delivery went to disk (the session is slower than its publishers).
    pub spilled: bool,
    /// The drop was a `block` queue's whose consumer is away or stuck.
    pub stalled: bool,
    /// Deliveries the session had taken from its queue when this was pushed: a
    /// publisher held for it tells a slow consumer from a stuck one by this.
    pub progress: u64,
}

#[derive(Debug)]
pub struct SessionState {
    conn: Option<ConnHandle>,
    /// Who the client was when it last connected; deliveries to it are authorized as
    /// this identity (unknown for a session restored from the store until it reconnects).
    identity: Option<Arc<Identity>>,
    expiry_interval: u32,
    subscriptions: FastMap<String, Subscription>,
    queue: VecDeque<Delivery>,
    inflight: InflightWindow,
    /// QoS 2 packet ids received and acknowledged with PUBREC but not yet released:
    /// a resent PUBLISH with one of these is not routed again (exactly once).
    incoming: FastSet<u16>,
    disconnected_at: Option<u64>,
    will: Option<PendingWill>,
    /// In-flight messages still to be resent after a reconnect.
    resend: Vec<u16>,
    /// Something of this session was ever recorded, so ending it must delete records.
    recorded: bool,
    /// While the session moves here from another node of the cluster: what reached it
    /// here so far, so that what reached it there meanwhile is not queued twice.
    landing: Option<Landing>,
    /// Deliveries queued so far: whether anything reached the session since a look.
    pushed: u64,
    /// The queue goes on on disk (a slow client): these batches come after `queue`, in
    /// order, `spilled_count` deliveries in all, each with how far back what it owes
    /// goes (a cluster's record of the session must reach back that far)...
    spilled: VecDeque<(Spilled, Owed)>,
    spilled_count: usize,
    /// ...then these, to be written as the next batch...
    spilling: Vec<Delivery>,
    /// ...and then these, which came while the store could take no more.
    tail: VecDeque<Delivery>,
    /// Deliveries taken from the queue so far (sent or expired): the consumer's progress.
    taken: u64,
    /// Over the high-water mark (`mark`, as of the last push) while a connection takes from the queue:
    /// publishers that feed only such sessions are held until it is down to half.
    over: bool,
    mark: usize,
    /// The consumer took nothing for as long as a held publisher would wait: it holds
    /// nobody until it takes something again (a stuck client, or publishers and
    /// consumers waiting on each other in a cycle).
    stalled: bool,
}

/// How far back what a session owes goes, by when each message was published in the
/// cluster ([`Origin::at`]): a node that resumes the session after its node died reads
/// the cluster's stream from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    Nothing,
    /// Unix seconds of the oldest publish.
    Since(u64),
    /// Something owed carries no origin (restored from this node's store).
    Unknown,
}

impl Owed {
    /// What is owed with `deliveries` too. QoS 0 deliveries do not count.
    fn with<'a>(self, deliveries: impl Iterator<Item = &'a Delivery>) -> Owed {
        let owed = deliveries.filter(|d| d.qos != QoS::AtMostOnce).map(|d| {
            d.message
                .origin
                .as_ref()
                .map_or(Owed::Unknown, |o| Owed::Since(o.at))
        });
        owed.fold(self, Owed::and)
    }

    /// What is owed in two parts together.
    fn and(self, other: Owed) -> Owed {
        match (self, other) {
            (Owed::Unknown, _) | (_, Owed::Unknown) => Owed::Unknown,
            (Owed::Nothing, o) | (o, Owed::Nothing) => o,
            (Owed::Since(a), Owed::Since(b)) => Owed::Since(a.min(b)),
        }
    }
}

/// A session on its way from another node: where in the queue what was routed here
/// began, and the messages routed here (by origin). Once landed, the set (with the
/// old node's rest) drops late copies for a while: this node may still read back from
/// JetStream, for the new subscriptions, what the old node handed over.
#[derive(Debug)]
struct Landing {
    from: usize,
    seen: FastSet<Origin>,
    /// Set once landed: until when copies are dropped.
    until: Option<std::time::Instant>,
}

/// At most this many deliveries are read back from disk at a time.
const REFILL_MAX: usize = 1_000;
/// Deliveries written to disk together: one store write for many messages.
const SPILL_BATCH: usize = 256;

/// How long a landed session drops copies of what it already has.
const LANDED: std::time::Duration = std::time::Duration::from_secs(10);

impl SessionState {
    pub(super) fn new(expiry_interval: u32) -> SessionState {
        SessionState {
            conn: None,
            identity: None,
            expiry_interval,
            subscriptions: FastMap::default(),
            queue: VecDeque::new(),
            inflight: InflightWindow::default(),
            incoming: FastSet::default(),
            disconnected_at: None,
            will: None,
            resend: Vec::new(),
            recorded: false,
            landing: None,
            pushed: 0,
            spilled: VecDeque::new(),
            spilled_count: 0,
            spilling: Vec::new(),
            tail: VecDeque::new(),
            taken: 0,
            over: false,
            mark: usize::MAX,
            stalled: false,
        }
    }

    pub(super) fn restore(
        meta: &SessionMeta,
        deliveries: Vec<(u64, StoredDelivery)>,
        incoming: Vec<u16>,
    ) -> SessionState {
        let mut st = SessionState::new(meta.expiry_interval);
        st.recorded = true;
        st.disconnected_at = Some(meta.disconnected_at.unwrap_or_else(now_secs));
        for sub in &meta.subscriptions {
            st.subscriptions
                .insert(sub.filter.clone(), stored_to_subscription(sub));
        }
        st.incoming = incoming.into_iter().collect();
        let mut deliveries = deliveries;
        deliveries.sort_unstable_by_key(|(seq, _)| *seq);
        let mut inflight = Vec::new();
        for (seq, d) in deliveries {
            let delivery = Delivery {
                message: Arc::new(d.message),
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids,
                store_seq: Some(seq),
            };
            match d.state {
                DeliveryState::Queued => st.queue.push_back(delivery),
                DeliveryState::Sent(pid) => inflight.push((pid, delivery, false)),
                DeliveryState::Released(pid) => inflight.push((pid, delivery, true)),
            }
        }
        st.inflight.restore(inflight);
        if let Some(w) = &meta.will {
            match crate::store::decode_message(bytes::Bytes::from(w.message.clone())) {
                Ok(m) => {
                    st.will = Some(PendingWill {
                        due_at: w.due_at,
                        message: Arc::new(m),
                    })
                }
                Err(e) => {
                    tracing::error!(client_id = %meta.client_id, error = %e, "dropping corrupt stored will")
                }
            }
        }
        st
    }

    // ---- who is attached

    pub fn connection(&self) -> Option<&ConnHandle> {
        self.conn.as_ref()
    }

    pub fn is_attached(&self, conn_id: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == conn_id)
    }

    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.clone()
    }

    /// Attaches a connection, resuming the session: a will still waiting for its delay
    /// is cancelled (MQTT-3.1.3-9) and every in-flight message is marked for resending
    /// (MQTT-4.4.0-1). Returns the connection that was attached before, if any.
    pub fn attach(
        &mut self,
        conn: ConnHandle,
        identity: Arc<Identity>,
        expiry: u32,
    ) -> Option<ConnHandle> {
        let previous = self.conn.replace(conn);
        self.identity = Some(identity);
        self.expiry_interval = expiry;
        self.disconnected_at = None;
        self.will = None;
        self.resend = self.inflight.in_order_of_sending();
        previous
    }

    /// Takes the attached connection away (a takeover), cancelling a waiting will.
    pub fn take_connection(&mut self) -> Option<ConnHandle> {
        self.will = None;
        self.conn.take()
    }

    /// The connection `conn_id` has gone: whether it was the one attached.
    pub fn detach(&mut self, conn_id: u64, now: u64) -> bool {
        if !self.is_attached(conn_id) {
            return false;
        }
        self.conn = None;
        self.disconnected_at = Some(now);
        // Nobody takes from the queue now: it holds no publisher.
        self.over = false;
        true
    }

    // ---- pace

    /// Whether publishers that fed only this session should wait for it.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Deliveries taken from the queue so far.
    pub fn progress(&self) -> u64 {
        self.taken
    }

    /// A held publisher found the session took nothing since `seen`: it stops holding
    /// anyone until it takes something. Whether it was over (and now is not).
    pub fn mark_stalled(&mut self, seen: u64) -> bool {
        if !self.over || self.taken != seen {
            return false;
        }
        self.stalled = true;
        self.over = false;
        true
    }

    // ---- expiry and wills

    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    pub fn set_expiry(&mut self, secs: u32) {
        self.expiry_interval = secs;
    }

    /// Whether the session, disconnected, has outlived its expiry interval.
    pub fn is_expired(&self, now: u64) -> bool {
        self.conn.is_none()
            && self.expiry_interval != NEVER
            && self
                .disconnected_at
                .is_some_and(|t| now >= t + self.expiry_interval as u64)
    }

    /// Keeps a will for its delay, never past the session's end (MQTT-3.1.2-8 note).
    pub fn schedule_will(&mut self, message: Arc<crate::message::Message>, delay: u32, now: u64) {
        let wait = delay.min(self.expiry_interval) as u64;
        self.will = Some(PendingWill {
            due_at: now + wait,
            message,
        });
    }

    /// The will, if it is due now (or the session has expired, which makes it due).
    pub fn take_due_will(&mut self, now: u64) -> Option<PendingWill> {
        let expired = self.is_expired(now);
        let due = self.conn.is_none()
            && self
                .will
                .as_ref()
                .is_some_and(|w| expired || now >= w.due_at);
        if due {
            self.will.take()
        } else {
            None
        }
    }

    /// The will whatever its delay (a session that ends now).
    pub fn take_will(&mut self) -> Option<PendingWill> {
        self.will.take()
    }

    // ---- subscriptions

    pub fn subscriptions(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.subscriptions.iter()
    }

    pub fn remember_subscription(&mut self, filter: &str, sub: Subscription) {
        self.subscriptions.insert(filter.to_owned(), sub);
    }

    pub fn forget_subscription(&mut self, filter: &str) {
        self.subscriptions.remove(filter);
    }

    // ---- what is owed

    /// What the admin API shows of the session.
    pub fn overview(&self) -> super::Overview {
        let mut subscriptions: Vec<(String, u8)> = self
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), s.options.qos as u8))
            .collect();
        subscriptions.sort();
        super::Overview {
            connected: self.conn.is_some(),
            expiry_interval: self.expiry_interval,
            queued: self.queued(),
            inflight: self.inflight.len(),
            disconnected_at: self.disconnected_at,
            subscriptions,
        }
    }

    /// Deliveries waiting, in memory and on disk.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.spilled_count + self.spilling.len() + self.tail.len()
    }

    pub fn is_receiving_qos2(&self, pid: u16) -> bool {
        self.incoming.contains(&pid)
    }

    pub fn qos2_receipts(&self) -> usize {
        self.incoming.len()
    }

    /// Queues a delivery. Never blocks; a full queue applies the overflow policy, and
    /// the outcome tells the publisher whether to wait for this session to drain.
    pub fn push(&mut self, mut d: Delivery, limits: QueueLimits, j: &dyn Journal) -> PushOutcome {
        let mut out = PushOutcome {
            wake: self.conn.is_some(),
            ..PushOutcome::default()
        };
        if self.is_landed_copy(&d) {
            return out;
        }
        if self.conn.is_none() && d.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            out.skipped = true;
            return out;
        }
        let flowing = self.conn.is_some() && !self.stalled;
        self.mark = limits.high_water;
        if self.queued() + 1 >= limits.high_water && flowing {
            self.over = true;
        }
        (out.over, out.progress) = (self.over, self.taken);
        if self.queued() >= limits.max_queued {
            match limits.overflow {
                // The publisher waits; what it already sent is taken, a bounded excess.
                OverflowPolicy::Block if flowing => out.blocking = true,
                OverflowPolicy::Block => {
                    (out.dropped, out.stalled) = (1, true);
                    return out;
                }
                OverflowPolicy::DropNewest => {
                    out.dropped += 1;
                    return out;
                }
                OverflowPolicy::DropOldest => {
                    out.dropped += 1;
                    self.drop_oldest(j);
                }
            }
        }
        if self.expiry_interval > 0 && d.qos != QoS::AtMostOnce {
            let seq = j.next_seq();
            if j.save(seq, &d, DeliveryState::Queued) {
                d.store_seq = Some(seq);
                out.stored = true;
                self.recorded = true;
            }
        }
        self.pushed += 1;
        out.spilled = self.enqueue(d, limits.high_water, j);
        out
    }

    /// Puts a delivery at the end of the queue: in memory up to the high-water mark,
    /// then on disk (in batches) while the store has room, then in memory again behind
    /// what is on disk. Whether it went the disk's way.
    /// While the session is landing everything stays in memory: the landing merges it.
    fn enqueue(&mut self, d: Delivery, high_water: usize, j: &dyn Journal) -> bool {
        let roomy = self.queue.len() < high_water || !j.can_spill();
        if self.is_landing() || (!self.has_overflow() && roomy) {
            self.queue.push_back(d);
            return false;
        }
        if !self.tail.is_empty() {
            self.tail.push_back(d);
            return false;
        }
        self.spilling.push(d);
        if self.spilling.len() >= SPILL_BATCH {
            self.write_spill(j);
        }
        true
    }

    /// Whether the session is on its way here and its queue is being merged.
    fn is_landing(&self) -> bool {
        self.landing.as_ref().is_some_and(|l| l.until.is_none())
    }

    /// Whether anything waits behind the part of the queue in memory.
    fn has_overflow(&self) -> bool {
        self.spilled_count > 0 || !self.spilling.is_empty() || !self.tail.is_empty()
    }

    /// Writes the next batch to disk; if the store cannot take it, it waits in memory
    /// at the head of the tail.
    fn write_spill(&mut self, j: &dyn Journal) {
        if let Some(s) = j.can_spill().then(|| j.spill(&self.spilling)).flatten() {
            let owed = Owed::Nothing.with(self.spilling.iter());
            self.spilled.push_back((s, owed));
            self.spilled_count += self.spilling.len();
            self.spilling.clear();
            return;
        }
        let mut tail: VecDeque<Delivery> = self.spilling.drain(..).collect();
        tail.append(&mut self.tail);
        self.tail = tail;
    }

    /// Reads the oldest batch back from disk into memory.
    fn read_spill(&mut self, j: &dyn Journal) -> bool {
        let Some((s, _)) = self.spilled.pop_front() else {
            return false;
        };
        self.spilled_count -= s.count as usize;
        // A batch that cannot be read back is logged by the journal; the rest go on.
        self.queue.extend(j.unspill(s));
        true
    }

    /// Drops the oldest waiting delivery (the overflow policy `drop-oldest`).
    fn drop_oldest(&mut self, j: &dyn Journal) {
        if self.queue.is_empty() {
            self.read_spill(j);
        }
        let oldest = if let Some(d) = self.queue.pop_front() {
            Some(d)
        } else if !self.spilling.is_empty() {
            Some(self.spilling.remove(0))
        } else {
            self.tail.pop_front()
        };
        if let Some(seq) = oldest.and_then(|d| d.store_seq) {
            j.delete(seq);
        }
    }

    /// Brings deliveries back from disk, in order, once the part in memory is down to
    /// half of the high-water mark; and what waited behind them once none is left.
    fn refill(&mut self, j: &dyn Journal) {
        let high = self.mark.min(REFILL_MAX);
        if !self.has_overflow() || self.queue.len() > high / 2 || self.is_landing() {
            return;
        }
        while self.queue.len() < high && self.read_spill(j) {}
        if self.spilled.is_empty() {
            self.queue.extend(self.spilling.drain(..));
            self.queue.append(&mut self.tail);
        }
    }

    /// Brings everything on disk and behind it back into memory, in order (the session
    /// moves to another node, whole).
    fn recall_overflow(&mut self, j: &dyn Journal) {
        while self.read_spill(j) {}
        self.queue.extend(self.spilling.drain(..));
        self.queue.append(&mut self.tail);
    }

    /// Moves what is in memory past the high-water mark to disk, newest first, in front
    /// of what is there already: a session restored from the store, or arrived whole
    /// from another node, keeps no more in memory than one that filled up here.
    pub fn spill_excess(&mut self, high_water: usize, j: &dyn Journal) {
        self.mark = high_water;
        if self.is_landing() {
            return;
        }
        while self.queue.len() >= high_water.saturating_add(SPILL_BATCH) && j.can_spill() {
            let batch: Vec<Delivery> = self.queue.drain(self.queue.len() - SPILL_BATCH..).collect();
            let Some(s) = j.spill(&batch) else {
                self.queue.extend(batch);
                return;
            };
            self.spilled_count += batch.len();
            self.spilled
                .push_front((s, Owed::Nothing.with(batch.iter())));
        }
    }

    /// Forgets what is on disk (the session ends).
    pub fn drop_spilled(&mut self, j: &dyn Journal) {
        for (s, _) in self.spilled.drain(..) {
            j.forget_spilled(s);
        }
        self.spilled_count = 0;
        self.queue.extend(self.spilling.drain(..));
        self.queue.append(&mut self.tail);
    }

    /// Deliveries queued so far, and how far back what the session owes goes. QoS 0
    /// deliveries do not count: a session resumed elsewhere would not get those again.
    /// Unknown while the session is landing: what it owes is still on its way here.
    pub fn owed(&self) -> (u64, Owed) {
        if self.is_landing() {
            return (self.pushed, Owed::Unknown);
        }
        let in_memory = (self.queue.iter().chain(self.inflight.deliveries()))
            .chain(self.spilling.iter().chain(self.tail.iter()));
        let owed = (self.spilled.iter()).fold(Owed::Nothing.with(in_memory), |o, (_, b)| o.and(*b));
        (self.pushed, owed)
    }

    /// Moves what may be sent now into `out`: first the resends, then queued deliveries
    /// while fewer than `window` QoS 1/2 messages are in flight. Expired messages are
    /// dropped and counted. At most `max` items per call, so one wake-up cannot build an
    /// unbounded write buffer.
    pub fn take_sendable(
        &mut self,
        window: usize,
        max: usize,
        now: u64,
        j: &dyn Journal,
        out: &mut Vec<Outgoing>,
    ) -> Taken {
        let mut taken = Taken::default();
        if !self.resend.is_empty() {
            self.take_resends(out);
        }
        self.refill(j);
        let before = self.queued();
        self.take_queued(window, max, now, j, out, &mut taken);
        self.refill(j);
        if self.queued() < before {
            self.taken += (before - self.queued()) as u64;
            self.stalled = false;
            if self.over && self.queued() <= self.mark / 2 {
                self.over = false;
                taken.drained = true;
            }
        }
        taken
    }

    fn take_queued(
        &mut self,
        window: usize,
        max: usize,
        now: u64,
        j: &dyn Journal,
        out: &mut Vec<Outgoing>,
        taken: &mut Taken,
    ) {
        while out.len() < max {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.message.is_expired(now) {
                if let Some(seq) = self.queue.pop_front().and_then(|d| d.store_seq) {
                    j.delete(seq);
                }
                taken.expired += 1;
                continue;
            }
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            if d.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    pid: 0,
                    dup: false,
                    delivery: d,
                });
                continue;
            }
            let Some(pid) = self.inflight.push(d.clone()) else {
                self.queue.push_front(d);
                break;
            };
            if let Some(seq) = d.store_seq {
                taken.stored |= j.save(seq, &d, DeliveryState::Sent(pid));
            }
            out.push(Outgoing::Publish {
                pid,
                dup: false,
                delivery: d,
            });
        }
    }

    fn take_resends(&mut self, out: &mut Vec<Outgoing>) {
        for pid in std::mem::take(&mut self.resend) {
            if let Some(f) = self.inflight.get(pid) {
                out.push(if f.released {
                    Outgoing::PubRel { pid }
                } else {
                    Outgoing::Publish {
                        pid,
                        dup: true,
                        delivery: f.delivery.clone(),
                    }
                });
            }
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) or a failing PUBREC: the message is done.
    /// Returns false if no such message was in flight.
    pub fn complete(&mut self, pid: u16, j: &dyn Journal) -> bool {
        match self.inflight.remove(pid) {
            Some(f) => {
                if let Some(seq) = f.delivery.store_seq {
                    j.delete(seq);
                }
                true
            }
            None => false,
        }
    }

    /// PUBREC: the client has the QoS 2 message; from now on only PUBREL is resent.
    /// Returns false if no such message was in flight.
    pub fn release(&mut self, pid: u16, j: &dyn Journal) -> Option<bool> {
        let f = self.inflight.get_mut(pid)?;
        let mut stored = false;
        if !f.released {
            f.released = true;
            if let Some(seq) = f.delivery.store_seq {
                stored = j.save(seq, &f.delivery, DeliveryState::Released(pid));
            }
        }
        Some(stored)
    }

    /// A QoS 2 PUBLISH was routed and will be acknowledged with PUBREC; whether a
    /// record was made that the PUBREC must wait for.
    pub fn receive_qos2(&mut self, pid: u16, j: &dyn Journal) -> bool {
        self.incoming.insert(pid);
        if self.expiry_interval == 0 {
            return false;
        }
        self.recorded = true;
        j.incoming(pid, true)
    }

    /// PUBREL: the QoS 2 message `pid` is released; whether it had been received.
    pub fn release_qos2(&mut self, pid: u16, j: &dyn Journal) -> (bool, bool) {
        let had = self.incoming.remove(&pid);
        let stored = had && self.expiry_interval > 0 && j.incoming(pid, false);
        (had, stored)
    }

    /// Forgets every message still owed and every subscription (a session that ends);
    /// returns the subscriptions' filters, for the router, and whether anything of the
    /// session was ever recorded, for the store.
    pub fn end(&mut self) -> (Vec<String>, bool) {
        self.queue.clear();
        self.inflight.clear();
        self.incoming.clear();
        self.resend.clear();
        let filters = std::mem::take(&mut self.subscriptions)
            .into_keys()
            .collect();
        (filters, std::mem::take(&mut self.recorded))
    }

    /// Lets the session go to another node: everything it owes (in flight in the order
    /// sent, then queued) and the QoS 2 packet ids it holds, as the store would keep
    /// them, numbered in that order. The waiting will is cancelled (the client is back,
    /// elsewhere); the subscriptions stay until the move completes
    /// ([`SessionState::take_queue`]).
    pub fn hand_over(&mut self, client_id: &str, j: &dyn Journal) -> StoredSession {
        self.recall_overflow(j);
        self.will = None;
        self.resend.clear();
        let record = |d: &Delivery, state| StoredDelivery {
            state,
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            message: crate::message::Message::clone(&d.message),
        };
        let mut deliveries = Vec::new();
        for pid in self.inflight.in_order_of_sending() {
            if let Some(f) = self.inflight.get(pid) {
                let state = match f.released {
                    true => DeliveryState::Released(pid),
                    false => DeliveryState::Sent(pid),
                };
                deliveries.push(record(&f.delivery, state));
            }
        }
        self.inflight.clear();
        deliveries.extend(
            self.queue
                .drain(..)
                .map(|d| record(&d, DeliveryState::Queued)),
        );
        StoredSession {
            meta: self.meta(client_id),
            deliveries: (1..).zip(deliveries).collect(),
            incoming: self.incoming.drain().collect(),
        }
    }

    /// What was queued since [`SessionState::hand_over`]: the rest to send after it.
    pub fn take_queue(&mut self, j: &dyn Journal) -> Vec<Delivery> {
        self.recall_overflow(j);
        self.queue.drain(..).collect()
    }

    /// The session has just arrived from another node and its subscriptions are being
    /// made here (or this node restarted and reads back what it missed): what is routed
    /// to it from now on is noted, for [`SessionState::land`], and what it holds
    /// already is not taken twice.
    pub fn begin_landing(&mut self) {
        let held = self.queue.iter().chain(self.inflight.deliveries());
        let seen = held.filter_map(|d| d.message.origin.clone()).collect();
        self.landing = Some(Landing {
            from: self.queue.len(),
            seen,
            until: None,
        });
    }

    /// Whether `d` is a copy of what a session on the move (or just landed) has; notes
    /// it otherwise, while the session is on the move.
    fn is_landed_copy(&mut self, d: &Delivery) -> bool {
        let (Some(l), Some(o)) = (&mut self.landing, &d.message.origin) else {
            return false;
        };
        match l.until {
            None => !l.seen.insert(o.clone()),
            Some(t) if std::time::Instant::now() < t => l.seen.contains(o),
            Some(_) => {
                self.landing = None;
                false
            }
        }
    }

    /// The rest the old node queued after handing the session over, merged with what
    /// was routed here meanwhile: the messages of each publishing node in the order it
    /// numbered them (the rest was published earlier than most of what came here, and
    /// a message read back from JetStream here comes late), each once.
    pub fn land(&mut self, rest: Vec<Delivery>, j: &dyn Journal) {
        let Some(landing) = self.landing.as_mut().filter(|l| l.until.is_none()) else {
            return;
        };
        landing.until = Some(std::time::Instant::now() + LANDED);
        let from = landing.from.min(self.queue.len());
        let mut arrived: Vec<Delivery> = self.queue.drain(from..).collect();
        for mut d in rest {
            if let Some(o) = &d.message.origin {
                if !landing.seen.insert(o.clone()) {
                    continue;
                }
            }
            if self.expiry_interval > 0 && d.qos != QoS::AtMostOnce {
                let seq = j.next_seq();
                if j.save(seq, &d, DeliveryState::Queued) {
                    d.store_seq = Some(seq);
                    self.recorded = true;
                }
            }
            self.pushed += 1;
            arrived.push(d);
        }
        arrived.sort_by(|a, b| {
            let key = |d: &Delivery| d.message.origin.as_ref().map(|o| (o.node.clone(), o.seq));
            key(a).cmp(&key(b))
        });
        for d in arrived {
            self.enqueue(d, self.mark, j);
        }
    }

    /// Notes that the session's own record was written.
    pub fn note_recorded(&mut self) {
        self.recorded = true;
    }

    /// The session as the store keeps it.
    pub fn meta(&self, client_id: &str) -> SessionMeta {
        SessionMeta {
            client_id: client_id.to_owned(),
            expiry_interval: self.expiry_interval,
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(filter, s)| StoredSubscription {
                    filter: filter.clone(),
                    qos: s.options.qos as u8,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    retain_handling: s.options.retain_handling as u8,
                    id: s.id,
                })
                .collect(),
            disconnected_at: self.disconnected_at,
            will: self.will.as_ref().and_then(|w| {
                let message = crate::store::encode_message(&w.message).ok()?;
                Some(StoredWill {
                    due_at: w.due_at,
                    message,
                })
            }),
        }
    }
}

fn stored_to_subscription(s: &StoredSubscription) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: match s.retain_handling {
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::Never,
                _ => RetainHandling::SendAlways,
            },
        },
        id: s.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Properties;
    use crate::message::Message;
    use std::cell::Cell;

    /// Records nothing; counts keys so deliveries can be "stored".
    #[derive(Default)]
    struct Nothing(Cell<u64>);

    impl Journal for Nothing {
        fn next_seq(&self) -> u64 {
            self.0.set(self.0.get() + 1);
            self.0.get()
        }
        fn save(&self, _: u64, _: &Delivery, _: DeliveryState) -> bool {
            true
        }
        fn delete(&self, _: u64) {}
        fn incoming(&self, _: u16, _: bool) -> bool {
            true
        }
    }

    fn delivery(n: u8) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: bytes::Bytes::from(vec![n]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
                expires_at: None,
                publisher: None,
                origin: None,
                received: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            store_seq: None,
        }
    }

    fn pids(out: &[Outgoing]) -> Vec<(u16, bool, u8)> {
        out.iter()
            .map(|o| match o {
                Outgoing::Publish { pid, dup, delivery } => {
                    (*pid, *dup, delivery.message.payload[0])
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Acknowledged packet ids are reused; a resumed session must still resend in the
    /// order the messages were first sent (MQTT-4.6.0-1), not in packet id order.
    #[test]
    fn resends_keep_the_order_of_sending_when_packet_ids_are_reused() {
        let j = Nothing::default();
        let mut st = SessionState::new(60);
        for n in 0..3 {
            st.queue.push_back(delivery(n));
        }
        let mut out = Vec::new();
        st.take_sendable(10, 10, 0, &j, &mut out);
        assert_eq!(pids(&out), [(1, false, 0), (2, false, 1), (3, false, 2)]);
        assert!(st.complete(1, &j));
        assert!(!st.complete(1, &j), "acknowledged twice");
        st.queue.push_back(delivery(3));
        out.clear();
        st.take_sendable(10, 10, 0, &j, &mut out);
        assert_eq!(pids(&out), [(1, false, 3)], "the freed id is reused");
        st.resend = st.inflight.in_order_of_sending();
        out.clear();
        st.take_sendable(10, 10, 0, &j, &mut out);
        assert_eq!(pids(&out), [(2, true, 1), (3, true, 2), (1, true, 3)]);
    }

    /// What a session owes reaches back to the oldest publish, in flight or queued;
    /// QoS 0 does not count, and a message of unknown origin makes it unknown.
    #[test]
    fn owed_reaches_back_to_the_oldest_publish() {
        let j = Nothing::default();
        let mut st = SessionState::new(60);
        let published = |n: u8, at: u64, qos: QoS| {
            let mut d = delivery(n);
            let mut m = Message::clone(&d.message);
            m.origin = Some(Origin {
                node: Arc::from("w1"),
                seq: n as u64,
                at,
            });
            d.message = Arc::new(m);
            d.qos = qos;
            d
        };
        assert_eq!(st.owed(), (0, Owed::Nothing));
        st.queue.push_back(published(0, 100, QoS::AtLeastOnce));
        st.queue.push_back(published(1, 90, QoS::AtMostOnce));
        let mut out = Vec::new();
        st.take_sendable(10, 1, 0, &j, &mut out);
        st.queue.push_back(published(2, 120, QoS::ExactlyOnce));
        assert_eq!(st.owed().1, Owed::Since(100), "in flight, oldest");
        assert!(st.complete(1, &j));
        out.clear();
        st.take_sendable(10, 10, 0, &j, &mut out);
        assert_eq!(st.owed().1, Owed::Since(120), "QoS 0 sent, QoS 2 in flight");
        st.queue.push_back(delivery(3));
        assert_eq!(st.owed().1, Owed::Unknown);
    }

    #[test]
    fn restored_window_keeps_its_ids_and_order_and_hands_out_the_rest() {
        let mut w = InflightWindow::default();
        w.restore(vec![(5, delivery(0), false), (2, delivery(1), true)]);
        assert_eq!(w.len(), 2);
        assert!(w.get(2).is_some_and(|f| f.released));
        assert_eq!(w.in_order_of_sending(), [5, 2]);
        let fresh: Vec<u16> = (0..4).filter_map(|n| w.push(delivery(n))).collect();
        assert_eq!(fresh, [1, 3, 4, 6]);
        assert!(w.get(0).is_none() && w.remove(0).is_none());
        assert_eq!(w.in_order_of_sending(), [5, 2, 1, 3, 4, 6]);
    }

    #[test]
    fn a_full_window_has_no_packet_id_to_give_until_one_is_acknowledged() {
        let mut w = InflightWindow::default();
        for _ in 0..u16::MAX {
            assert!(w.push(delivery(0)).is_some());
        }
        assert_eq!(w.len(), u16::MAX as usize);
        assert_eq!(w.push(delivery(1)), None);
        assert!(w.remove(700).is_some());
        assert_eq!(w.push(delivery(2)), Some(700));
        w.clear();
        assert!(w.is_empty() && w.get(700).is_none());
    }

    #[test]
    fn a_clean_session_records_nothing_and_an_ended_one_says_whether_it_did() {
        let j = Nothing::default();
        let limits = QueueLimits {
            max_queued: 10,
            high_water: 10,
            overflow: OverflowPolicy::DropOldest,
            queue_qos0_offline: false,
        };
        let mut clean = SessionState::new(0);
        assert!(!clean.push(delivery(0), limits, &j).stored);
        assert!(!clean.receive_qos2(1, &j));
        assert!(!clean.end().1, "nothing recorded");
        let mut kept = SessionState::new(60);
        assert!(kept.push(delivery(0), limits, &j).stored);
        assert!(kept.end().1);
    }

    fn attached(expiry: u32) -> SessionState {
        let mut st = SessionState::new(expiry);
        let conn = ConnHandle {
            id: 1,
            control: tokio::sync::mpsc::unbounded_channel().0,
            listener: Arc::from("tcp"),
            peer: "127.0.0.1:1".parse().unwrap(),
            version: crate::codec::Version::V5,
            since: std::time::SystemTime::now(),
        };
        st.attach(conn, Arc::new(Identity::default()), expiry);
        st
    }

    fn limits(policy: OverflowPolicy) -> QueueLimits {
        QueueLimits {
            max_queued: 6,
            high_water: 4,
            overflow: policy,
            queue_qos0_offline: false,
        }
    }

    #[test]
    fn a_session_over_its_mark_holds_publishers_until_half_is_taken() {
        let j = Nothing::default();
        let mut st = attached(0);
        let l = limits(OverflowPolicy::DropOldest);
        let over: Vec<bool> = (0..4).map(|n| st.push(delivery(n), l, &j).over).collect();
        assert_eq!(over, [false, false, false, true]);
        let mut out = Vec::new();
        let t = st.take_sendable(1, 512, 0, &j, &mut out);
        assert!(!t.drained && st.is_over(), "3 left of a mark of 4");
        st.complete(1, &j);
        out.clear();
        let t = st.take_sendable(1, 512, 0, &j, &mut out);
        assert!(t.drained && !st.is_over(), "2 left: half the mark");
        assert_eq!(st.progress(), 2);

        // A consumer that takes nothing while a publisher waits stops holding anyone.
        st.push(delivery(5), l, &j);
        assert!(st.push(delivery(6), l, &j).over);
        assert!(!st.mark_stalled(1), "it took something since 1");
        assert!(st.mark_stalled(2));
        assert!(!st.push(delivery(7), l, &j).over, "stalled");
        for (pid, _, _) in pids(&out) {
            st.complete(pid, &j);
        }
        out.clear();
        st.take_sendable(1, 512, 0, &j, &mut out);
        assert!(st.push(delivery(8), l, &j).over, "taking again: over again");

        // Away: nobody takes, nobody is held.
        assert!(st.detach(1, 0));
        assert!(!st.is_over() && !st.push(delivery(9), l, &j).over);
    }

    #[test]
    fn block_holds_the_publisher_instead_of_dropping_while_the_consumer_takes() {
        let j = Nothing::default();
        let mut st = attached(0);
        let l = limits(OverflowPolicy::Block);
        let outs: Vec<PushOutcome> = (0..8).map(|n| st.push(delivery(n), l, &j)).collect();
        assert!(outs.iter().all(|o| o.dropped == 0));
        assert_eq!(outs.iter().filter(|o| o.blocking).count(), 2);
        assert_eq!(st.queued(), 8, "what was already sent is taken");
        assert!(st.mark_stalled(0));
        let o = st.push(delivery(9), l, &j);
        assert_eq!(
            (o.dropped, o.blocking),
            (1, false),
            "a stuck consumer drops the newest"
        );
    }

    /// A journal whose disk is a map, with room while `room` says so.
    #[derive(Default)]
    struct Disk {
        keys: Nothing,
        spilled: std::cell::RefCell<FastMap<u64, Vec<Delivery>>>,
        full: Cell<bool>,
    }

    impl Journal for Disk {
        fn next_seq(&self) -> u64 {
            self.keys.next_seq()
        }
        fn save(&self, _: u64, _: &Delivery, _: DeliveryState) -> bool {
            true
        }
        fn delete(&self, _: u64) {}
        fn incoming(&self, _: u16, _: bool) -> bool {
            true
        }
        fn can_spill(&self) -> bool {
            !self.full.get()
        }
        fn spill(&self, ds: &[Delivery]) -> Option<Spilled> {
            let key = self.next_seq();
            self.spilled.borrow_mut().insert(key, ds.to_vec());
            let count = ds.len() as u32;
            Some(Spilled {
                key,
                bytes: count,
                count,
            })
        }
        fn unspill(&self, s: Spilled) -> Vec<Delivery> {
            self.spilled.borrow_mut().remove(&s.key).unwrap_or_default()
        }
        fn forget_spilled(&self, s: Spilled) {
            self.spilled.borrow_mut().remove(&s.key);
        }
    }

    fn numbered(n: u32) -> Delivery {
        let mut d = delivery(0);
        let mut m = Message::clone(&d.message);
        m.payload = bytes::Bytes::copy_from_slice(&n.to_be_bytes());
        d.message = Arc::new(m);
        d
    }

    /// Takes everything, a few at a time; the numbers in the order sent.
    fn take_all(st: &mut SessionState, j: &dyn Journal) -> Vec<u32> {
        let (mut out, mut got) = (Vec::new(), Vec::new());
        while st.queued() > 0 {
            st.take_sendable(usize::MAX, 100, 0, j, &mut out);
            for o in out.drain(..) {
                if let Outgoing::Publish { delivery, .. } = o {
                    let p = &delivery.message.payload;
                    got.push(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
                }
            }
        }
        got
    }

    fn spilling_limits(max_queued: usize) -> QueueLimits {
        QueueLimits {
            max_queued,
            high_water: 4,
            overflow: OverflowPolicy::DropOldest,
            queue_qos0_offline: false,
        }
    }

    #[test]
    fn a_slow_session_spills_past_its_mark_and_drains_in_order() {
        let disk = Disk::default();
        let mut st = attached(0);
        let l = spilling_limits(10_000);
        let spilled: Vec<bool> = (0..600)
            .map(|n| st.push(numbered(n), l, &disk).spilled)
            .collect();
        assert_eq!(
            spilled.iter().filter(|s| **s).count(),
            596,
            "all past the mark"
        );
        assert_eq!(
            disk.spilled.borrow().len(),
            2,
            "two batches written, the rest pending"
        );
        // The disk is full: the rest waits in memory behind what is on disk, and so
        // does all that comes after it.
        disk.full.set(true);
        for n in 600..900 {
            st.push(numbered(n), l, &disk);
        }
        disk.full.set(false);
        assert!(
            !st.push(numbered(900), l, &disk).spilled,
            "never ahead of the tail"
        );
        assert_eq!((st.queued(), disk.spilled.borrow().len()), (901, 2));
        assert_eq!(
            take_all(&mut st, &disk),
            (0..901).collect::<Vec<u32>>(),
            "in order"
        );
        assert!(disk.spilled.borrow().is_empty());
    }

    fn from_node(n: u32, at: u64) -> Delivery {
        let mut d = numbered(n);
        let mut m = Message::clone(&d.message);
        m.origin = Some(Origin {
            node: Arc::from("w1"),
            seq: n as u64,
            at,
        });
        d.message = Arc::new(m);
        d
    }

    /// A cluster's record of a slow session reaches back to what waits on disk; the
    /// session moves whole, in order, disk and all.
    #[test]
    fn a_spilled_session_owes_what_is_on_disk_and_moves_whole() {
        let disk = Disk::default();
        let mut st = attached(60);
        let l = spilling_limits(100_000);
        for n in 0..2_000 {
            st.push(from_node(n, 1_000 + n as u64), l, &disk);
        }
        assert!(st.spilled_count > 0);
        // The part in memory goes; what is on disk still counts.
        st.queue.clear();
        assert_eq!(st.owed().1, Owed::Since(1_000 + l.high_water as u64));
        let before = st.queued();
        let moved = st.hand_over("c", &disk);
        assert_eq!(moved.deliveries.len(), before);
        let first = u32::from_be_bytes(
            moved.deliveries[0].1.message.payload[..4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(first, l.high_water as u32);
        assert_eq!((st.queued(), st.owed().1), (0, Owed::Nothing));
        assert!(disk.spilled.borrow().is_empty(), "read back from disk");
        // What came after the hand-over goes with the rest, disk included.
        for n in 0..2_000 {
            st.push(from_node(n, 5_000), l, &disk);
        }
        assert_eq!(st.take_queue(&disk).len(), 2_000);
        assert!(disk.spilled.borrow().is_empty());
    }

    /// A session restored (or arrived) with more than its mark keeps the rest on disk,
    /// in order, and an arriving rest goes behind it.
    #[test]
    fn a_restored_session_spills_its_excess_in_order() {
        let disk = Disk::default();
        let mut st = attached(60);
        let l = spilling_limits(100_000);
        st.queue.extend((0..3_000).map(numbered));
        st.spill_excess(l.high_water, &disk);
        assert!(st.queue.len() < l.high_water + SPILL_BATCH);
        assert_eq!(st.queued(), 3_000);
        st.push(numbered(3_000), l, &disk);
        assert_eq!(take_all(&mut st, &disk), (0..3_001).collect::<Vec<u32>>());
        assert!(disk.spilled.borrow().is_empty());
    }

    #[test]
    fn past_the_quota_the_oldest_goes_first_even_from_disk() {
        let disk = Disk::default();
        let mut st = attached(0);
        let l = spilling_limits(300);
        let dropped: u32 = (0..600)
            .map(|n| st.push(numbered(n), l, &disk).dropped)
            .sum();
        assert_eq!((dropped, st.queued()), (300, 300));
        assert_eq!(take_all(&mut st, &disk), (300..600).collect::<Vec<u32>>());
        for n in 0..600 {
            st.push(numbered(n), l, &disk);
        }
        st.drop_spilled(&disk);
        assert!(
            disk.spilled.borrow().is_empty(),
            "an ended session leaves nothing on disk"
        );
    }
}
