//! The state every connection shares: router, retained index, sessions and store, and
//! the operations that must keep them consistent with one another.

use crate::codec::{QoS, SubscriptionOptions};
use crate::config::Config;
use crate::hooks::{Action, Decision, Hooks, Identity, Memo};
use crate::message::{now_secs, Delivery, Message};
use crate::metrics::Metrics;
use crate::router::{Retained, Router, Target};
use crate::session::{
    log_store, ConnHandle, Control, PendingWill, QueueLimits, Session, Sessions, Subscription,
    NEVER,
};
use crate::store::{MemoryStore, SledStore, Store, StoreError};
use crate::FastMap;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Broker {
    pub config: Config,
    pub router: Router,
    pub retained: Retained,
    pub sessions: Sessions,
    pub store: Arc<dyn Store>,
    pub hooks: Arc<dyn Hooks>,
    pub metrics: Metrics,
    /// Key of the next stored delivery; unique across restarts.
    seq: AtomicU64,
    next_conn_id: AtomicU64,
    /// Serialises session takeover, so two connections with one client id cannot both
    /// believe they own the session.
    attach_lock: Mutex<()>,
}

impl Broker {
    /// Opens the store and restores retained messages and sessions from it.
    pub fn open(config: Config, hooks: Arc<dyn Hooks>) -> Result<Arc<Broker>, StoreError> {
        let store: Arc<dyn Store> = if config.storage.persistence {
            Arc::new(SledStore::open(
                &config.storage.dir,
                config.storage.durability,
                config.storage.flush_interval_ms,
            )?)
        } else {
            Arc::new(MemoryStore::default())
        };
        let broker = Broker {
            config,
            router: Router::default(),
            retained: Retained::default(),
            sessions: Sessions::default(),
            store,
            hooks,
            metrics: Metrics::default(),
            seq: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            attach_lock: Mutex::new(()),
        };
        broker.restore()?;
        Ok(Arc::new(broker))
    }

    fn restore(&self) -> Result<(), StoreError> {
        let now = now_secs();
        let mut retained = 0;
        for m in self.store.load_retained()? {
            if m.is_expired(now) {
                log_store(self.store.save_retained(&m.topic, None), "-");
            } else {
                self.retained.set(Arc::new(m));
                retained += 1;
            }
        }
        let mut max_seq = 0;
        let mut restored = 0;
        let mut wills = Vec::new();
        for stored in self.store.load_sessions()? {
            let meta = &stored.meta;
            let since = meta.disconnected_at.unwrap_or(now);
            let expired = meta.expiry_interval == 0
                || (meta.expiry_interval != NEVER && now >= since + meta.expiry_interval as u64);
            max_seq = stored
                .deliveries
                .iter()
                .map(|d| d.0)
                .max()
                .unwrap_or(0)
                .max(max_seq);
            let session = Arc::new(Session::restore(meta, stored.deliveries, stored.incoming));
            if expired {
                if let Some(w) = session.lock().will.take() {
                    wills.push(w.message);
                }
                log_store(self.store.delete_session(&meta.client_id), &meta.client_id);
                continue;
            }
            for (filter, sub) in session.lock().subscriptions.iter() {
                self.router
                    .subscribe(&session.client_id, filter, sub.options, sub.id);
            }
            self.sessions.insert(session);
            restored += 1;
        }
        self.seq.store(max_seq + 1, Ordering::Relaxed);
        for w in wills {
            self.publish(w);
        }
        tracing::info!(
            sessions = restored,
            retained,
            "state restored from the store"
        );
        Ok(())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    fn queue_limits(&self) -> QueueLimits {
        let l = &self.config.limits;
        QueueLimits {
            max_queued: l.max_queued,
            overflow: l.overflow,
            queue_qos0_offline: l.queue_qos0_offline,
        }
    }

    /// Routes a message to every matching session and updates the retained index.
    /// Returns whether a store write was made that an acknowledgement must wait for.
    pub fn publish(&self, msg: Arc<Message>) -> bool {
        let mut stored = false;
        if msg.retain {
            // The payload is a slice of the publisher's read buffer; a retained message
            // lives indefinitely, so it gets its own copy rather than pinning that buffer.
            let own = Message {
                payload: Bytes::copy_from_slice(&msg.payload),
                ..(*msg).clone()
            };
            self.retained.set(Arc::new(own));
            let keep = (!msg.payload.is_empty()).then_some(&*msg);
            stored |= log_store(self.store.save_retained(&msg.topic, keep), "-");
        }
        let mut targets: Vec<Target> = Vec::new();
        let check = self.hooks.authorizes();
        // Shared subscriptions: a member is picked per message, so only now is it known
        // who would read this topic; a member that may not is passed over.
        let rank = |c: &str| -> u8 {
            let Some(s) = self.sessions.get(c) else {
                return 0;
            };
            let (online, identity) = {
                let st = s.lock();
                (st.conn.is_some(), st.identity.clone())
            };
            if check {
                let stranger;
                let who = match &identity {
                    Some(id) => id.info(),
                    None => {
                        stranger = Identity {
                            client_id: c.to_owned(),
                            ..Default::default()
                        };
                        stranger.info()
                    }
                };
                if self.hooks.authorize(
                    &mut Memo::none(),
                    &who,
                    Action::Subscribe,
                    &msg.topic,
                    msg.qos,
                    msg.retain,
                ) != Decision::Allow
                {
                    return 0;
                }
            }
            if online {
                2
            } else {
                1
            }
        };
        self.router.matches(&msg.topic, &rank, &mut |t| {
            let local = msg.publisher.as_deref() == Some(&*t.client_id);
            if !(t.options.no_local && !t.shared && local) {
                targets.push(t);
            }
        });
        for (client_id, want) in merge_overlapping(targets) {
            let Some(session) = self.sessions.get(&client_id) else {
                continue;
            };
            let d = Delivery {
                message: msg.clone(),
                qos: msg.qos.min(want.qos),
                retain: msg.retain && want.retain_as_published,
                subscription_ids: want.ids,
                store_seq: None,
            };
            stored |= self.deliver(&session, d);
        }
        stored
    }

    /// Queues one delivery for one session. Returns whether it was stored.
    pub fn deliver(&self, session: &Session, d: Delivery) -> bool {
        let seq = || self.seq.fetch_add(1, Ordering::Relaxed);
        let out = session.push(d, self.queue_limits(), &*self.store, &seq);
        if out.dropped > 0 {
            Metrics::add(&self.metrics.dropped_queue_full, out.dropped as u64);
        }
        out.stored
    }

    /// Attaches a new connection to the session of `client_id`, taking it over from an
    /// existing connection. Returns the session and whether it was resumed.
    pub fn attach(
        &self,
        client_id: Arc<str>,
        clean_start: bool,
        expiry: u32,
        conn: ConnHandle,
        identity: Arc<Identity>,
    ) -> (Arc<Session>, bool) {
        let _guard = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self.sessions.get(&client_id) {
            let mut st = existing.lock();
            if let Some(old) = st.conn.take() {
                let _ = old.control.send(Control::TakenOver);
            }
            // A reconnect cancels a will still waiting for its delay (MQTT-3.1.3-9).
            st.will = None;
            if !clean_start {
                st.conn = Some(conn);
                st.identity = Some(identity);
                st.expiry_interval = expiry;
                st.disconnected_at = None;
                st.prepare_resend();
                drop(st);
                self.save_meta(&existing);
                return (existing, true);
            }
            drop(st);
            self.end_session(&existing);
        }
        let session = Arc::new(Session::new(client_id, expiry));
        {
            let mut st = session.lock();
            st.conn = Some(conn);
            st.identity = Some(identity);
        }
        self.sessions.insert(session.clone());
        if expiry > 0 {
            self.save_meta(&session);
        }
        (session, false)
    }

    /// The connection `conn_id` has gone. Ends the session or keeps it for its expiry
    /// interval, and publishes or schedules the will.
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64, will: Option<(Arc<Message>, u32)>) {
        let _guard = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = session.lock();
        if !st.is_attached(conn_id) {
            return;
        }
        st.conn = None;
        let now = now_secs();
        if st.expiry_interval == 0 {
            drop(st);
            if let Some((m, _)) = will {
                self.publish(m);
            }
            self.end_session(session);
            return;
        }
        st.disconnected_at = Some(now);
        let mut publish_now = None;
        if let Some((m, delay)) = will {
            if delay == 0 {
                publish_now = Some(m);
            } else {
                // Never later than the session's end (MQTT-3.1.2-8 note).
                let wait = delay.min(st.expiry_interval) as u64;
                st.will = Some(PendingWill {
                    due_at: now + wait,
                    message: m,
                });
            }
        }
        drop(st);
        self.save_meta(session);
        if let Some(m) = publish_now {
            self.publish(m);
        }
        self.store.commit();
    }

    /// Forgets a session: its subscriptions, what it is owed, its stored copy.
    pub fn end_session(&self, session: &Arc<Session>) {
        let subs = {
            let mut st = session.lock();
            st.clear();
            std::mem::take(&mut st.subscriptions)
        };
        for filter in subs.keys() {
            self.router.unsubscribe(&session.client_id, filter);
        }
        self.sessions.remove_if_same(session);
        log_store(
            self.store.delete_session(&session.client_id),
            &session.client_id,
        );
    }

    pub fn save_meta(&self, session: &Session) {
        if session.lock().expiry_interval > 0 {
            log_store(self.store.save_session(&session.meta()), &session.client_id);
        }
    }

    /// Adds a subscription; returns whether one with this filter existed already.
    pub fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let existed = self
            .router
            .subscribe(&session.client_id, filter, options, id);
        session
            .lock()
            .subscriptions
            .insert(filter.to_owned(), Subscription { options, id });
        existed
    }

    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let existed = self.router.unsubscribe(&session.client_id, filter);
        session.lock().subscriptions.remove(filter);
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
            .map(|m| Delivery {
                qos: m.qos.min(options.qos),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                store_seq: None,
                message: m,
            })
            .collect()
    }

    /// One pass of the periodic work: expire sessions, publish due wills, drop expired
    /// retained messages.
    pub fn housekeeping(&self) {
        let now = now_secs();
        for s in self.sessions.all() {
            let mut st = s.lock();
            if st.conn.is_some() {
                continue;
            }
            let expired = st.expiry_interval != NEVER
                && st
                    .disconnected_at
                    .is_some_and(|t| now >= t + st.expiry_interval as u64);
            let will_due = st.will.as_ref().is_some_and(|w| expired || now >= w.due_at);
            let will = if will_due { st.will.take() } else { None };
            drop(st);
            if let Some(w) = will {
                self.publish(w.message);
                self.store.commit();
            }
            if expired {
                tracing::info!(client_id = %s.client_id, "session expired");
                let _guard = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.lock().conn.is_none() {
                    self.end_session(&s);
                }
            } else if will_due {
                self.save_meta(&s);
            }
        }
        for topic in self.retained.purge_expired() {
            log_store(self.store.save_retained(&topic, None), "-");
        }
    }
}

/// What one client gets for one message, after merging its matching subscriptions.
struct Wanted {
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
}

/// One delivery per client for overlapping subscriptions: the highest QoS and every
/// subscription identifier (MQTT-3.3.4-3, -5).
fn merge_overlapping(targets: Vec<Target>) -> Vec<(Arc<str>, Wanted)> {
    let wanted = |t: &Target| Wanted {
        qos: t.options.qos,
        retain_as_published: t.options.retain_as_published,
        ids: t.id.into_iter().collect(),
    };
    if targets.len() == 1 {
        return targets
            .iter()
            .map(|t| (t.client_id.clone(), wanted(t)))
            .collect();
    }
    let mut by_client: FastMap<Arc<str>, Wanted> =
        FastMap::with_capacity_and_hasher(targets.len(), Default::default());
    for t in &targets {
        match by_client.get_mut(&t.client_id) {
            None => {
                by_client.insert(t.client_id.clone(), wanted(t));
            }
            Some(m) => {
                m.qos = m.qos.max(t.options.qos);
                m.retain_as_published |= t.options.retain_as_published;
                m.ids.extend(t.id);
            }
        }
    }
    by_client.into_iter().collect()
}
