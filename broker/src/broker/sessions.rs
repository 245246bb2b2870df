//! Who owns a session, and when it ends: attach (with takeover), detach, expiry and
//! wills. Each holds the client id's claim from the [`Directory`] while it changes
//! who owns the session; claims of different clients never wait for one another, so
//! ending one client's session (deleting its stored backlog) delays nobody else.
//!
//! [`Directory`]: crate::session::Directory

use super::Broker;
use crate::events::Event;
use crate::hooks::Identity;
use crate::message::{now_secs, Message};
use crate::session::{Announced, ConnHandle, Control, Session};
use crate::store::log_write;
use std::sync::Arc;

/// Tells the connection a new one replaced that it no longer owns the session.
fn taken_over(previous: Option<ConnHandle>) {
    if let Some(old) = previous {
        let _ = old.control.send(Control::TakenOver);
    }
}

/// A connection attached to its session.
pub struct Attached {
    pub session: Arc<Session>,
    /// Whether the session was resumed.
    pub present: bool,
    /// Completes once the client id is claimed where a cluster's nodes see it; the
    /// CONNACK waits for it.
    pub announced: Announced,
}

impl Broker {
    /// Attaches a new connection to the session of `client_id`, taking it over from an
    /// existing connection. `will` is the connection's will and its delay, for a
    /// cluster to keep.
    pub fn attach(
        &self,
        client_id: Arc<str>,
        clean_start: bool,
        expiry: u32,
        conn: ConnHandle,
        identity: Arc<Identity>,
        will: Option<(Arc<Message>, u32)>,
    ) -> Attached {
        let _claim = self.sessions.claim(&client_id);
        let announced = self.sessions.announce(&client_id, conn.id);
        let will = will.map(|(m, delay)| (m, delay.min(expiry)));
        self.sessions.keep_will(&client_id, conn.id, will);
        if let Some(existing) = self.sessions.find(&client_id) {
            if !clean_start {
                taken_over(existing.lock().attach(conn, identity, expiry));
                self.record_session(&existing);
                return Attached {
                    session: existing,
                    present: true,
                    announced,
                };
            }
            taken_over(existing.lock().take_connection());
            self.end_session(&existing);
        }
        let session = Arc::new(Session::new(client_id, expiry));
        session.lock().attach(conn, identity, expiry);
        self.sessions.register(session.clone());
        self.record_session(&session);
        Attached {
            session,
            present: false,
            announced,
        }
    }

    /// The connection `conn_id` has gone. Ends the session or keeps it for its expiry
    /// interval, and publishes or schedules the will.
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64, will: Option<(Arc<Message>, u32)>) {
        let _claim = self.sessions.claim(session.client_id());
        let now = now_secs();
        let mut st = session.lock();
        if !st.detach(conn_id, now) {
            return;
        }
        session.let_publishers_go();
        let client_id = session.client_id();
        if st.expiry_interval() == 0 {
            drop(st);
            if let Some((m, _)) = will {
                self.publish_will(client_id, m);
            }
            self.sessions.settle_will(client_id, Some(conn_id));
            self.end_session(session);
            return;
        }
        let mut publish_now = None;
        match will {
            Some((m, 0)) => publish_now = Some(m),
            Some((m, delay)) => st.schedule_will(m, delay, now),
            None => self.sessions.settle_will(client_id, Some(conn_id)),
        }
        drop(st);
        self.record_session(session);
        if let Some(m) = publish_now {
            self.publish_will(client_id, m);
            self.sessions.settle_will(client_id, Some(conn_id));
        }
        self.store.commit();
    }

    /// The connection `conn_id` of `client_id`, which was taken over, leaves: its
    /// immediate will goes out now (a delayed one was cancelled by the reconnect that
    /// took over).
    pub fn leave_taken_over(
        &self,
        client_id: &Arc<str>,
        conn_id: u64,
        will: Option<(Arc<Message>, u32)>,
    ) {
        if let Some((m, 0)) = will {
            self.publish_will(client_id, m);
            self.store.commit();
        }
        self.sessions.settle_will(client_id, Some(conn_id));
    }

    /// Another node took `client_id` over: the connection here goes as a taken-over
    /// one (5.0: DISCONNECT 0x8E; its immediate will is published, a delayed one
    /// dropped), and the session ends here. It moved to that node if the client
    /// resumed it ([`Broker::hand_over`]); otherwise the client started afresh there.
    pub fn taken_elsewhere(&self, client_id: &str) {
        let _claim = self.sessions.claim(client_id);
        let Some(session) = self.sessions.find(client_id) else {
            return;
        };
        taken_over(session.lock().take_connection());
        self.sessions.settle_will(session.client_id(), None);
        self.end_session(&session);
    }

    /// Forgets a session: its subscriptions, what it is owed, its stored copy. The
    /// caller holds the client id's claim.
    pub(super) fn end_session(&self, session: &Arc<Session>) {
        let (filters, recorded) = {
            let mut st = session.lock();
            st.drop_spilled(&self.journal(session.client_id()));
            st.end()
        };
        for filter in &filters {
            self.fanout.unsubscribe(session.client_id(), filter);
        }
        self.sessions.unregister(session);
        if recorded {
            let client_id = session.client_id();
            log_write(self.store.delete_session(client_id), client_id);
        }
    }

    /// Writes the session's record if it outlives its connection; whether it did (an
    /// acknowledgement of what changed it then waits for the commit).
    pub fn record_session(&self, session: &Session) -> bool {
        let meta = {
            let mut st = session.lock();
            if st.expiry_interval() == 0 {
                return false;
            }
            st.note_recorded();
            st.meta(session.client_id())
        };
        let kept = self.sessions.record(session);
        log_write(self.store.save_session(&meta), session.client_id()) | kept
    }

    /// One pass of the periodic work: expire sessions, publish due wills, drop expired
    /// retained messages. Runs on a thread of its own (store writes, plugin calls).
    pub fn housekeeping(&self) {
        let now = now_secs();
        for s in self.sessions.all() {
            let (will, expired) = {
                let mut st = s.lock();
                (st.take_due_will(now), st.is_expired(now))
            };
            if let Some(w) = &will {
                self.publish_will(s.client_id(), w.message.clone());
                self.store.commit();
                self.sessions.settle_will(s.client_id(), None);
            }
            if expired {
                let _claim = self.sessions.claim(s.client_id());
                // Still expired under the claim: not resumed meanwhile.
                if s.lock().is_expired(now) {
                    tracing::info!(client_id = %s.client_id(), "session expired");
                    let id = s.client_id();
                    self.events().emit(|| Event::SessionExpired(id.clone()));
                    self.end_session(&s);
                }
            } else if will.is_some() {
                self.record_session(&s);
            }
        }
        for topic in self.retained.purge_expired() {
            log_write(self.store.save_retained(&topic, None), "-");
        }
    }
}
