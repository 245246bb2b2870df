//! What one session is owed and what it wants, changed as its client acknowledges and
//! subscribes. Each verb changes the session under its lock and records the change
//! through a [`Journal`] over the store, so records follow the state in order.

use super::Broker;
use crate::codec::SubscriptionOptions;
use crate::message::{Delivery, Message};
use crate::metrics::DropCause;
use crate::router::Subscribed;
use crate::session::{Journal, Outgoing, Session, Subscription, Taken};
use crate::store::{log_write, DeliveryState, StoredDelivery};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A session's journal: its records in the store, under its client id.
pub(super) struct StoreJournal<'a> {
    broker: &'a Broker,
    client_id: &'a str,
}

impl Journal for StoreJournal<'_> {
    fn next_seq(&self) -> u64 {
        self.broker.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn save(&self, seq: u64, d: &Delivery, state: DeliveryState) -> bool {
        let record = StoredDelivery {
            state,
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            message: Message::clone(&d.message),
        };
        let r = self
            .broker
            .store
            .save_delivery(self.client_id, seq, &record);
        log_write(r, self.client_id)
    }

    fn delete(&self, seq: u64) {
        let r = self.broker.store.delete_delivery(self.client_id, seq);
        log_write(r, self.client_id);
    }

    fn incoming(&self, pid: u16, present: bool) -> bool {
        let r = self
            .broker
            .store
            .save_incoming(self.client_id, pid, present);
        log_write(r, self.client_id)
    }
}

impl Broker {
    pub(super) fn journal<'a>(&'a self, client_id: &'a str) -> StoreJournal<'a> {
        StoreJournal {
            broker: self,
            client_id,
        }
    }

    /// Moves what the session may send now into `out` (see
    /// [`SessionState::take_sendable`](crate::session::SessionState::take_sendable));
    /// `None` if the connection `conn_id` no longer owns the session.
    pub fn take_sendable(
        &self,
        session: &Session,
        conn_id: u64,
        window: usize,
        max: usize,
        now: u64,
        out: &mut Vec<Outgoing>,
    ) -> Option<Taken> {
        let journal = self.journal(session.client_id());
        let taken = {
            let mut st = session.lock();
            if !st.is_attached(conn_id) {
                return None;
            }
            st.take_sendable(window, max, now, &journal, out)
        };
        if taken.expired > 0 {
            self.metrics
                .dropped(DropCause::Expired, taken.expired as u64);
        }
        Some(taken)
    }

    /// PUBACK, PUBCOMP or a failing PUBREC for `pid`: the message is done. Whether it
    /// was in flight.
    pub fn acknowledged(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().complete(pid, &journal)
    }

    /// PUBREC for `pid`: from now on only PUBREL is resent. Whether it was in flight.
    pub fn received(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().release(pid, &journal)
    }

    /// A QoS 2 PUBLISH `pid` was routed; whether a record was made that the PUBREC
    /// must wait for.
    pub fn receive_qos2(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().receive_qos2(pid, &journal)
    }

    /// PUBREL for `pid`; whether that QoS 2 message had been received.
    pub fn release_qos2(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().release_qos2(pid, &journal)
    }

    /// Adds a subscription: whether one with this filter existed already, and whether
    /// the SUBACK must wait for the next commit. The session's record is written by
    /// [`Broker::record_session`].
    pub fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Subscribed {
        let done = self
            .fanout
            .subscribe(session.client_id(), filter, options, id);
        let sub = Subscription { options, id };
        session.lock().remember_subscription(filter, sub);
        done
    }

    /// Removes a subscription; whether there was one.
    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let existed = self.fanout.unsubscribe(session.client_id(), filter);
        session.lock().forget_subscription(filter);
        existed
    }

    /// Retained messages for a new subscription, as deliveries (retain flag set).
    pub fn retained_for(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Vec<Delivery> {
        self.retained
            .matching(filter)
            .into_iter()
            .map(|m: Arc<Message>| Delivery {
                qos: m.qos.min(options.qos),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                store_seq: None,
                message: m,
            })
            .collect()
    }
}
