//! What one session is owed and what it wants, changed as its client acknowledges and
//! subscribes. Each verb changes the session under its lock and records the change
//! through a [`Journal`] over the store, so records follow the state in order.

use super::Broker;
use crate::codec::SubscriptionOptions;
use crate::message::{Delivery, Message};
use crate::metrics::DropCause;
use crate::router::Subscribed;
use crate::session::{Journal, Outgoing, Session, Spilled, Subscription, Taken};
use crate::store::{encode_delivery_into, log_write, DeliveryState, StoredDelivery};
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

    fn can_spill(&self) -> bool {
        self.broker.spill.has_room()
    }

    fn spill(&self, batch: &[Delivery]) -> Option<Spilled> {
        let record = spill_record(batch)
            .map_err(|e| tracing::warn!(client_id = self.client_id, error = %e, "not spilled"))
            .ok()?;
        let key = self.next_seq();
        let stored = self.broker.store.spill(key, &record);
        if !log_write(stored, self.client_id) {
            return None;
        }
        let s = Spilled {
            key,
            bytes: record.len() as u32,
            count: batch.len() as u32,
        };
        self.broker.spill.add(s);
        Some(s)
    }

    fn unspill(&self, s: Spilled) -> Vec<Delivery> {
        self.broker.spill.remove(s);
        let lost = |why: String| {
            tracing::error!(
                client_id = self.client_id,
                key = s.key,
                count = s.count,
                "spilled messages lost: {why}"
            );
            Vec::new()
        };
        match self.broker.store.unspill(s.key) {
            Ok(Some(record)) => read_spill_record(record).unwrap_or_else(lost),
            Ok(None) => lost("missing".into()),
            Err(e) => lost(e.to_string()),
        }
    }

    fn forget_spilled(&self, s: Spilled) {
        self.broker.spill.remove(s);
        log_write(self.broker.store.forget_spilled(s.key), self.client_id);
    }
}

/// A spilled batch: for each delivery, its length, the key of its own record if it
/// has one (`u64::MAX` if not), and the delivery as the store keeps it.
fn spill_record(batch: &[Delivery]) -> Result<Vec<u8>, crate::codec::Error> {
    let mut out = bytes::BytesMut::with_capacity(batch.len() * 64);
    for d in batch {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&d.store_seq.unwrap_or(u64::MAX).to_be_bytes());
        let (ids, queued) = (&d.subscription_ids, DeliveryState::Queued);
        encode_delivery_into(&mut out, queued, d.qos, d.retain, ids, &d.message)?;
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(out.to_vec())
}

fn read_spill_record(record: Vec<u8>) -> Result<Vec<Delivery>, String> {
    let mut b = bytes::Bytes::from(record);
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 12 {
            return Err("spill record cut short".into());
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 8 || b.len() < 4 + len {
            return Err("spill record cut short".into());
        }
        let mut one = b.split_to(4 + len).split_off(4);
        let seq = one.split_to(8);
        let seq = u64::from_be_bytes(seq[..].try_into().unwrap_or([0xFF; 8]));
        let stored = StoredDelivery::decode(one)?;
        out.push(Delivery {
            message: Arc::new(stored.message),
            qos: stored.qos,
            retain: stored.retain,
            subscription_ids: stored.subscription_ids,
            store_seq: (seq != u64::MAX).then_some(seq),
        });
    }
    Ok(out)
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
            let n = taken.expired as u64;
            self.dropped(DropCause::Expired, n, Some(session.client_id()), None);
        }
        if taken.drained {
            session.let_publishers_go();
        }
        Some(taken)
    }

    /// PUBACK, PUBCOMP or a failing PUBREC for `pid`: the message is done. Whether it
    /// was in flight.
    pub fn acknowledged(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().complete(pid, &journal)
    }

    /// PUBREC for `pid`: from now on only PUBREL is resent. `None` if it was not in
    /// flight; else whether a record was made that the PUBREL must wait for (were the
    /// PUBREL to go first, a crash could leave the PUBLISH to be sent again after the
    /// client has completed it: a QoS 2 message twice; found by the chaos script).
    pub fn received(&self, session: &Session, pid: u16) -> Option<bool> {
        let journal = self.journal(session.client_id());
        session.lock().release(pid, &journal)
    }

    /// A QoS 2 PUBLISH `pid` was routed; whether a record was made that the PUBREC
    /// must wait for.
    pub fn receive_qos2(&self, session: &Session, pid: u16) -> bool {
        let journal = self.journal(session.client_id());
        session.lock().receive_qos2(pid, &journal)
    }

    /// PUBREL for `pid`: whether that QoS 2 message had been received, and whether a
    /// record was made that the PUBCOMP must wait for (once the client has PUBCOMP it
    /// may use the packet id again, which must not then look like a resend).
    pub fn release_qos2(&self, session: &Session, pid: u16) -> (bool, bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    #[test]
    fn a_spilled_batch_reads_back_as_it_was() {
        let d = |n: u8, store_seq| Delivery {
            message: Arc::new(Message {
                topic: Arc::from("t/x"),
                payload: bytes::Bytes::from(vec![n; n as usize]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                expires_at: Some(99),
                publisher: None,
                origin: None,
                received: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: n.is_multiple_of(2),
            subscription_ids: vec![n as u32],
            store_seq,
        };
        let batch = vec![d(1, None), d(2, Some(7)), d(3, None)];
        let back = read_spill_record(spill_record(&batch).unwrap()).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in batch.iter().zip(&back) {
            assert_eq!(
                (a.qos, a.retain, &a.subscription_ids, a.store_seq),
                (b.qos, b.retain, &b.subscription_ids, b.store_seq)
            );
            assert_eq!(
                (&a.message.payload, a.message.expires_at),
                (&b.message.payload, b.message.expires_at)
            );
        }
        let mut cut = spill_record(&batch).unwrap();
        cut.truncate(cut.len() - 1);
        assert!(read_spill_record(cut).is_err());
    }
}
