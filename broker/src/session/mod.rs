//! A session: what one client is owed, whether or not it is connected.
//!
//! Publishers push deliveries into the session's queue (never blocking: the queue is
//! bounded and overflow is dropped and counted); the connection attached to the
//! session, if any, is woken through `notify` and moves deliveries from the queue into
//! the in-flight window as the client's Receive Maximum allows. For a persistent
//! session every QoS 1/2 delivery is also in the store, and its record follows each
//! state change, so a restart resumes exactly where the broker stopped.

mod inflight;
mod registry;

pub use inflight::{Inflight, InflightWindow};
pub use registry::Sessions;

use crate::codec::{QoS, SubscriptionOptions, Will};
use crate::config::OverflowPolicy;
use crate::message::{Delivery, Message};
use crate::store::{
    DeliveryState, SessionMeta, Store, StoredDelivery, StoredSubscription, StoredWill,
};
use crate::{FastMap, FastSet};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// "Never expires": 5.0's 0xFFFFFFFF, and a 3.1.1 session without Clean Session.
pub const NEVER: u32 = u32::MAX;

/// What another part of the broker can ask of the connection attached to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A new connection with the same client id took the session over.
    TakenOver,
    /// Disconnect with this reason code (an operator's action, for example).
    Kick(u8),
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
    pub version: crate::codec::Version,
    pub since: std::time::SystemTime,
}

/// A subscription as the session remembers it (the router has the routing copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// A will waiting for its Will Delay Interval (5.0) to pass.
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub due_at: u64,
    pub message: Arc<Message>,
}

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
    pub stored: bool,
}

#[derive(Debug)]
pub struct SessionState {
    pub conn: Option<ConnHandle>,
    /// Who the client was when it last connected; deliveries to it are authorized as
    /// this identity (unknown for a session restored from the store until it reconnects).
    pub identity: Option<Arc<crate::hooks::Identity>>,
    pub expiry_interval: u32,
    pub subscriptions: FastMap<String, Subscription>,
    pub queue: VecDeque<Delivery>,
    pub inflight: InflightWindow,
    /// QoS 2 packet ids received and acknowledged with PUBREC but not yet released:
    /// a resent PUBLISH with one of these is not routed again (exactly once).
    pub incoming: FastSet<u16>,
    pub disconnected_at: Option<u64>,
    pub will: Option<PendingWill>,
    /// In-flight messages still to be resent after a reconnect.
    resend: Vec<u16>,
}

pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Wakes the attached connection when deliveries were queued.
    pub notify: Notify,
}

/// Queue bounds for [`Session::push`].
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued: usize,
    pub overflow: OverflowPolicy,
    pub queue_qos0_offline: bool,
}

/// What happened to a pushed delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Deliveries dropped by the overflow policy (this one or an older one).
    pub dropped: u32,
    /// A store write was made that the publisher's acknowledgement must wait for.
    pub stored: bool,
    /// The session was offline and this was not queued (QoS 0).
    pub skipped: bool,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState {
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
            }),
            notify: Notify::new(),
        }
    }

    /// Rebuilds a session from the store (startup).
    pub fn restore(
        meta: &SessionMeta,
        deliveries: Vec<(u64, StoredDelivery)>,
        incoming: Vec<u16>,
    ) -> Session {
        let s = Session::new(Arc::from(meta.client_id.as_str()), meta.expiry_interval);
        {
            let mut st = s.lock();
            st.disconnected_at = Some(
                meta.disconnected_at
                    .unwrap_or_else(crate::message::now_secs),
            );
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
        }
        s
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery. Never blocks; a full queue applies the overflow policy.
    pub fn push(
        &self,
        mut d: Delivery,
        limits: QueueLimits,
        store: &dyn Store,
        seq: &dyn Fn() -> u64,
    ) -> PushOutcome {
        let mut out = PushOutcome::default();
        let mut st = self.lock();
        let online = st.conn.is_some();
        if !online && d.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            out.skipped = true;
            return out;
        }
        if st.queue.len() >= limits.max_queued {
            out.dropped += 1;
            match limits.overflow {
                OverflowPolicy::DropNewest => return out,
                OverflowPolicy::DropOldest => {
                    if let Some(old) = st.queue.pop_front() {
                        if let Some(s) = old.store_seq {
                            log_store(store.delete_delivery(&self.client_id, s), &self.client_id);
                        }
                    }
                }
            }
        }
        if st.expiry_interval > 0 && d.qos != QoS::AtMostOnce {
            let s = seq();
            let rec = stored(&d, DeliveryState::Queued);
            if log_store(
                store.save_delivery(&self.client_id, s, &rec),
                &self.client_id,
            ) {
                d.store_seq = Some(s);
                out.stored = true;
            }
        }
        st.queue.push_back(d);
        drop(st);
        if online {
            self.notify.notify_one();
        }
        out
    }

    /// The session as the store keeps it.
    pub fn meta(&self) -> SessionMeta {
        let st = self.lock();
        SessionMeta {
            client_id: self.client_id.to_string(),
            expiry_interval: st.expiry_interval,
            subscriptions: st
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
            disconnected_at: st.disconnected_at,
            will: st.will.as_ref().map(|w| StoredWill {
                due_at: w.due_at,
                message: crate::store::encode_message(&w.message),
            }),
        }
    }
}

impl SessionState {
    pub fn is_attached(&self, conn_id: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == conn_id)
    }

    /// Marks every in-flight message for resending, as a resumed session must
    /// (MQTT-4.4.0-1): PUBLISH again with DUP, or PUBREL again.
    pub fn prepare_resend(&mut self) {
        self.resend = self.inflight.in_order_of_sending();
    }

    /// Moves what may be sent now into `out`: first the resends, then queued deliveries
    /// while fewer than `window` QoS 1/2 messages are in flight. Expired messages are
    /// dropped and counted. At most `max` items per call, so one wake-up cannot build an
    /// unbounded write buffer. `stored` in the result says a stored delivery changed
    /// state: the packet id it is sent under must be durable before it goes out, or a
    /// crash could resend it under another id and break exactly-once.
    pub fn take_sendable(
        &mut self,
        client_id: &str,
        window: usize,
        max: usize,
        now: u64,
        store: &dyn Store,
        out: &mut Vec<Outgoing>,
    ) -> Taken {
        let mut taken = Taken::default();
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
        while out.len() < max {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.message.is_expired(now) {
                if let Some(d) = self.queue.pop_front() {
                    if let Some(s) = d.store_seq {
                        log_store(store.delete_delivery(client_id, s), client_id);
                    }
                }
                taken.expired += 1;
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                if let Some(d) = self.queue.pop_front() {
                    out.push(Outgoing::Publish {
                        pid: 0,
                        dup: false,
                        delivery: d,
                    });
                }
                continue;
            }
            if self.inflight.len() >= window {
                break;
            }
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let Some(pid) = self.inflight.push(d.clone()) else {
                self.queue.push_front(d);
                break;
            };
            if let Some(s) = d.store_seq {
                taken.stored |= log_store(
                    store.save_delivery(client_id, s, &stored(&d, DeliveryState::Sent(pid))),
                    client_id,
                );
            }
            out.push(Outgoing::Publish {
                pid,
                dup: false,
                delivery: d,
            });
        }
        taken
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) or a failing PUBREC: the message is done.
    /// Returns false if no such message was in flight.
    pub fn complete(&mut self, client_id: &str, pid: u16, store: &dyn Store) -> bool {
        match self.inflight.remove(pid) {
            Some(f) => {
                if let Some(s) = f.delivery.store_seq {
                    log_store(store.delete_delivery(client_id, s), client_id);
                }
                true
            }
            None => false,
        }
    }

    /// PUBREC: the client has the QoS 2 message; from now on only PUBREL is resent.
    pub fn release(&mut self, client_id: &str, pid: u16, store: &dyn Store) -> bool {
        let Some(f) = self.inflight.get_mut(pid) else {
            return false;
        };
        if !f.released {
            f.released = true;
            if let Some(s) = f.delivery.store_seq {
                log_store(
                    store.save_delivery(
                        client_id,
                        s,
                        &stored(&f.delivery, DeliveryState::Released(pid)),
                    ),
                    client_id,
                );
            }
        }
        true
    }

    /// Forgets every message still owed (a session that ends).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.incoming.clear();
        self.resend.clear();
    }
}

fn stored(d: &Delivery, state: DeliveryState) -> StoredDelivery {
    StoredDelivery {
        state,
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids.clone(),
        message: (*d.message).clone(),
    }
}

fn stored_to_subscription(s: &StoredSubscription) -> Subscription {
    use crate::codec::RetainHandling;
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

/// Store failures must not take the broker down; they are logged with the client id.
/// Returns whether the write succeeded.
pub(crate) fn log_store(r: Result<(), crate::store::StoreError>, client_id: &str) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(client_id, error = %e, "store write failed");
            false
        }
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
            .map(|s| crate::message::now_secs() + s as u64);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Properties;
    use crate::store::MemoryStore;

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
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            store_seq: None,
        }
    }

    /// Acknowledged packet ids are reused; a resumed session must still resend in the
    /// order the messages were first sent (MQTT-4.6.0-1), not in packet id order.
    #[test]
    fn resends_keep_the_order_of_sending_when_packet_ids_are_reused() {
        let store = MemoryStore::default();
        let s = Session::new(Arc::from("c"), 60);
        let mut st = s.lock();
        let pids = |out: &[Outgoing]| -> Vec<(u16, bool, u8)> {
            out.iter()
                .map(|o| match o {
                    Outgoing::Publish { pid, dup, delivery } => {
                        (*pid, *dup, delivery.message.payload[0])
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        for n in 0..3 {
            st.queue.push_back(delivery(n));
        }
        let mut out = Vec::new();
        st.take_sendable("c", 10, 10, 0, &store, &mut out);
        assert_eq!(pids(&out), [(1, false, 0), (2, false, 1), (3, false, 2)]);
        assert!(st.complete("c", 1, &store));
        assert!(!st.complete("c", 1, &store), "acknowledged twice");
        st.queue.push_back(delivery(3));
        out.clear();
        st.take_sendable("c", 10, 10, 0, &store, &mut out);
        assert_eq!(pids(&out), [(1, false, 3)], "the freed id is reused");
        st.prepare_resend();
        out.clear();
        st.take_sendable("c", 10, 10, 0, &store, &mut out);
        assert_eq!(pids(&out), [(2, true, 1), (3, true, 2), (1, true, 3)]);
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
}
