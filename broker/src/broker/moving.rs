//! A persistent session moving between nodes of a cluster, as its client reconnects on
//! another node: the old node lets it go ([`Broker::hand_over`]), the new one takes it
//! in and makes its subscriptions ([`Broker::bring`]), then the old one hands over
//! what reached the session meanwhile and ends it there ([`Broker::hand_over_rest`]).
//!
//! For a while both nodes route to the session: until the new node's subscriptions are
//! in, only the old one receives what is published. The new node merges what the old
//! one received after letting go with what it routed itself, each publishing node's
//! messages in the order that node numbered them, and leaves out the messages (by
//! [`Origin`](crate::message::Origin)) that reached it both ways, so nothing is lost,
//! doubled or reordered for one publisher.

use super::Broker;
use crate::message::{now_secs, Delivery};
use crate::session::Session;
use crate::store::{log_write, StoredSession};
use std::sync::Arc;
use std::time::Duration;

/// How long the new node waits for its copy and subscriptions to be durable and in
/// NATS before it asks for the rest anyway.
const SETTLE: Duration = Duration::from_secs(10);

impl Broker {
    /// Brings the session of `client_id` here from the node that holds it, if one does,
    /// before the client's connection attaches (and so resumes it).
    pub async fn bring(&self, client_id: &Arc<str>) {
        if self.sessions.find(client_id).is_some() {
            return;
        }
        let Some(moving) = self.sessions.fetch(client_id).await else {
            return;
        };
        let Some(session) = self.take_in(moving.session) else {
            return;
        };
        let ticket = self.commit();
        let mut durable = self.durable();
        let settled = tokio::time::timeout(SETTLE, durable.wait_for(|d| *d >= ticket))
            .await
            .is_ok_and(|r| r.is_ok());
        if !settled {
            tracing::warn!(client_id = %client_id, "a moving session's subscriptions are not confirmed yet");
        }
        let rest = moving.rest.await;
        let journal = self.journal(client_id);
        {
            let mut st = session.lock();
            st.land(rest, &journal);
            st.spill_excess(self.queue_limits().high_water, &journal);
        }
        // Again with what it owes now: a cluster's record of it must reach back that far.
        self.record_session(&session);
        self.commit();
    }

    /// Keeps a session that arrived from another node: stores it, registers it and
    /// makes its subscriptions. `None` if a session of its client id appeared here
    /// meanwhile (that one stays).
    fn take_in(&self, stored: StoredSession) -> Option<Arc<Session>> {
        let client_id: Arc<str> = Arc::from(stored.meta.client_id.as_str());
        let _claim = self.sessions.claim(&client_id);
        if self.sessions.find(&client_id).is_some() {
            return None;
        }
        let journal = self.journal(&client_id);
        let deliveries = (stored.deliveries.into_iter())
            .map(|(_, d)| {
                let seq = crate::session::Journal::next_seq(&journal);
                log_write(self.store.save_delivery(&client_id, seq, &d), &client_id);
                (seq, d)
            })
            .collect();
        for pid in &stored.incoming {
            let saved = self.store.save_incoming(&client_id, *pid, true);
            log_write(saved, &client_id);
        }
        let session = Arc::new(Session::restore(StoredSession {
            deliveries,
            ..stored
        }));
        {
            let mut st = session.lock();
            st.begin_landing();
            for (filter, sub) in st.subscriptions() {
                self.fanout
                    .subscribe(&client_id, filter, sub.options, sub.id);
            }
        }
        self.sessions.register(session.clone());
        self.record_session(&session);
        tracing::info!(client_id = %client_id, "session arrived from another node");
        Some(session)
    }

    /// This node restarted: `owed` is what other nodes published for the session of
    /// `client_id`, restored from the store, while the node was down. It lands like the
    /// rest of a move, and the cluster's record of the session is written again.
    pub fn catch_up(&self, client_id: &str, owed: Vec<Delivery>) {
        let _claim = self.sessions.claim(client_id);
        let Some(session) = self.sessions.find(client_id) else {
            return;
        };
        let journal = self.journal(client_id);
        {
            let mut st = session.lock();
            st.land(owed, &journal);
            st.spill_excess(self.queue_limits().high_water, &journal);
        }
        session.wake();
        self.record_session(&session);
        self.commit();
    }

    /// Another node asks for `client_id`'s session: the connection here goes as a
    /// taken-over one, and everything the session owes is handed over. `None` if there
    /// is no persistent session here.
    pub fn hand_over(&self, client_id: &str) -> Option<StoredSession> {
        let _claim = self.sessions.claim(client_id);
        let session = self.sessions.find(client_id)?;
        let (conn, stored) = {
            let mut st = session.lock();
            if st.expiry_interval() == 0 {
                return None;
            }
            let conn = st.connection().cloned();
            if let Some(c) = &conn {
                st.detach(c.id, now_secs());
            }
            (conn, st.hand_over(client_id, &self.journal(client_id)))
        };
        if let Some(old) = conn {
            let _ = old.control.send(crate::session::Control::TakenOver);
        }
        self.sessions.settle_will(session.client_id(), None);
        tracing::info!(client_id, "session handed over to another node");
        Some(stored)
    }

    /// The session handed over has arrived and is subscribed where it went: what
    /// reached it here since, and it ends here.
    pub fn hand_over_rest(&self, client_id: &str) -> Vec<Delivery> {
        let _claim = self.sessions.claim(client_id);
        let Some(session) = self.sessions.find(client_id) else {
            return Vec::new();
        };
        let rest = session.lock().take_queue(&self.journal(client_id));
        self.end_session(&session);
        rest
    }
}
