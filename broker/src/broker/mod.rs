//! The state every connection shares, behind verbs: sessions and the directory that
//! claims them, the router, the retained index and the store, and the operations that
//! must keep them consistent with one another. Nothing outside this module writes the
//! store.
//!
//! Files: `mod.rs` (the broker, startup recovery, what operators ask), `publish.rs`
//! (routing a message to sessions), `sessions.rs` (attach, detach, takeover, expiry,
//! wills), `owed.rs` (what one session is owed, changed as its client acknowledges, and
//! its subscriptions).
//!
//! The parts a cluster will replace are reached through small traits, each with this
//! process's implementation as the only one today: [`Directory`] (where sessions are
//! registered and claimed: [`Sessions`]), [`Fanout`] (where a publish goes: the topic
//! trie, [`Router`]), and [`Store`] (where retained messages and session state are
//! kept: sled or memory).

mod moving;
mod owed;
mod publish;
mod sessions;
mod spill;

pub use publish::{Hold, Routed};
pub use spill::SpillQuota;

use crate::codec::{ReasonCode, Version};
use crate::config::Config;
use crate::events::{Event, Events};
use crate::hooks::Hooks;
use crate::message::{now_secs, Message};
use crate::metrics::{DropCause, Metrics};
use crate::router::{Fanout, Retained, Router};
use crate::session::{Control, Directory, QueueLimits, Session, Sessions};
use crate::store::{Commit, MemoryStore, SledStore, Store, StoreError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

pub struct Broker {
    config: Config,
    fanout: Arc<dyn Fanout>,
    retained: Retained,
    sessions: Box<dyn Directory>,
    store: Arc<dyn Store>,
    /// What acknowledgements wait for: the store's commit, or in a cluster the store's
    /// and JetStream's together.
    commits: Arc<dyn Commit + Send + Sync>,
    hooks: Arc<dyn Hooks>,
    metrics: Metrics,
    /// What happened, for observer plugins.
    events: Events,
    /// What slow sessions keep on disk, broker-wide.
    spill: SpillQuota,
    /// Key of the next stored delivery; unique across restarts.
    seq: AtomicU64,
    next_conn_id: AtomicU64,
}

/// The parts a cluster replaces: where a publish fans out, what acknowledgements wait
/// for, and where sessions are registered and claimed.
pub struct Parts {
    pub fanout: Arc<dyn Fanout>,
    pub commits: Arc<dyn Commit + Send + Sync>,
    pub sessions: Box<dyn Directory>,
}

/// A connected client, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct ConnectedClient {
    pub client_id: Arc<str>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub version: Version,
    pub since: SystemTime,
}

impl Broker {
    /// Opens the configured store and restores retained messages and sessions from it.
    pub fn open(config: Config, hooks: Arc<dyn Hooks>) -> Result<Arc<Broker>, StoreError> {
        let store = Broker::open_store(&config)?;
        Broker::with_store(config, hooks, store)
    }

    /// The store the configuration asks for.
    pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
        Ok(if config.storage.persistence {
            Arc::new(SledStore::open(
                &config.storage.dir,
                config.storage.durability,
                config.storage.flush_interval_ms,
            )?)
        } else {
            Arc::new(MemoryStore::default())
        })
    }

    /// A broker over the given store, restored from it (in-process tests give their
    /// own).
    pub fn with_store(
        config: Config,
        hooks: Arc<dyn Hooks>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Broker>, StoreError> {
        let parts = Parts {
            fanout: Arc::new(Router::default()),
            commits: store.clone(),
            sessions: Box::new(Sessions::default()),
        };
        Broker::assemble(config, hooks, store, parts)
    }

    /// A broker from its parts: where publishes fan out and what acknowledgements wait
    /// for are the cluster's in cluster mode.
    pub fn assemble(
        config: Config,
        hooks: Arc<dyn Hooks>,
        store: Arc<dyn Store>,
        parts: Parts,
    ) -> Result<Arc<Broker>, StoreError> {
        let spill = SpillQuota::new(
            store.spills(),
            config.storage.max_spill_mb.saturating_mul(1 << 20),
        );
        let broker = Broker {
            spill,
            events: Events::start(hooks.clone(), config.plugins.events_queue),
            config,
            fanout: parts.fanout,
            retained: Retained::default(),
            sessions: parts.sessions,
            store,
            commits: parts.commits,
            hooks,
            metrics: Metrics::default(),
            seq: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
        };
        broker.restore()?;
        Ok(Arc::new(broker))
    }

    fn restore(&self) -> Result<(), StoreError> {
        let now = now_secs();
        let mut retained = 0;
        for m in self.store.load_retained()? {
            if m.is_expired(now) {
                crate::store::log_write(self.store.save_retained(&m.topic, None), "-");
            } else {
                self.retained.set(Arc::new(m));
                retained += 1;
            }
        }
        let mut max_seq = 0;
        let mut restored = 0;
        let mut wills = Vec::new();
        for stored in self.store.load_sessions()? {
            let last = stored.deliveries.iter().map(|d| d.0).max().unwrap_or(0);
            max_seq = max_seq.max(last);
            let session = Arc::new(Session::restore(stored));
            let mut st = session.lock();
            let expired = st.expiry_interval() == 0 || st.is_expired(now);
            if expired {
                let id = session.client_id();
                wills.extend(st.take_will().map(|w| (id.clone(), w.message)));
                drop(st);
                self.events.emit(|| Event::SessionExpired(id.clone()));
                self.end_session(&session);
                continue;
            }
            for (filter, sub) in st.subscriptions() {
                self.fanout
                    .subscribe(session.client_id(), filter, sub.options, sub.id);
            }
            drop(st);
            self.sessions.register(session);
            restored += 1;
        }
        self.seq.store(max_seq + 1, Ordering::Relaxed);
        // A cluster node first reads back what its sessions missed while it was down,
        // which tells copies from what a session holds by looking at all of it: their
        // excess goes to disk once that is done ([`Broker::catch_up`]).
        if self.config.cluster.is_none() {
            self.spill_restored_excess();
        }
        for (client_id, w) in wills {
            self.publish_will(&client_id, w);
        }
        tracing::info!(
            sessions = restored,
            retained,
            "state restored from the store"
        );
        Ok(())
    }

    /// Sessions restored with more queued than the high-water mark keep the rest on
    /// disk, as they would have had the node not restarted.
    fn spill_restored_excess(&self) {
        let high_water = self.queue_limits().high_water;
        for session in self.sessions.all() {
            let journal = self.journal(session.client_id());
            session.lock().spill_excess(high_water, &journal);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn hooks(&self) -> &Arc<dyn Hooks> {
        &self.hooks
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Counts messages that will not reach a client, by cause, and tells observers
    /// (`client_id`: who would have received them, or who published them).
    pub fn dropped(
        &self,
        cause: DropCause,
        count: u64,
        client_id: Option<&Arc<str>>,
        topic: Option<&str>,
    ) {
        self.metrics.dropped(cause, count);
        self.events.emit(|| Event::MessageDropped {
            client_id: client_id.cloned(),
            topic: topic.map(Arc::from),
            cause,
            count: count.min(u32::MAX as u64) as u32,
        });
    }

    /// Publishes the will of `client_id`, and tells observers.
    pub fn publish_will(&self, client_id: &Arc<str>, will: Arc<Message>) {
        self.events.emit(|| Event::WillPublished {
            client_id: client_id.clone(),
            topic: will.topic.clone(),
        });
        self.publish(will);
    }

    /// What a publisher's connection waits on, once over its mark, before it reads
    /// more ([`crate::pace`]).
    pub fn pace(&self) -> Option<&crate::pace::Backlog> {
        self.fanout.pace()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A ticket covering every store write made so far (0: already durable); an
    /// acknowledgement that promises durability waits until [`Broker::durable`] reaches
    /// it.
    pub fn commit(&self) -> u64 {
        self.commits.commit()
    }

    /// The highest ticket known durable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.commits.durable()
    }

    /// Syncs everything now (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    fn queue_limits(&self) -> QueueLimits {
        let l = &self.config.limits;
        QueueLimits {
            max_queued: l.max_queued,
            high_water: l.queue_high_water.min(l.max_queued),
            overflow: l.overflow,
            queue_qos0_offline: l.queue_qos0_offline,
        }
    }

    // ---- what operators ask (admin API)

    /// Disconnects the client connected with this id, telling a 5.0 client `code`;
    /// whether one was connected.
    pub fn kick(&self, client_id: &str, code: ReasonCode) -> bool {
        let conn = self.sessions.find(client_id).and_then(|s| s.connection());
        match conn {
            Some(c) => c.control.send(Control::Kick(code)).is_ok(),
            None => false,
        }
    }

    pub fn connected_clients(&self) -> Vec<ConnectedClient> {
        let sessions = self.sessions.all();
        sessions
            .iter()
            .filter_map(|s| {
                let c = s.connection()?;
                Some(ConnectedClient {
                    client_id: s.client_id().clone(),
                    listener: c.listener,
                    peer: c.peer,
                    version: c.version,
                    since: c.since,
                })
            })
            .collect()
    }

    /// Every session of this node with what the admin API shows of it, by client id.
    pub fn session_overviews(&self) -> Vec<(Arc<str>, crate::session::Overview)> {
        let mut all: Vec<_> = (self.sessions.all().iter())
            .map(|s| (s.client_id().clone(), s.overview()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Retained messages matching `filter`, by topic.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut all = self.retained.matching(filter);
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        all
    }

    /// Sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions.count()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// How long the store's syncs take (`None` without persistence).
    pub fn store_sync_latency(&self) -> Option<&crate::metrics::Histogram> {
        self.store.sync_latency()
    }

    /// Subscriptions of this node's sessions (connected or not).
    pub fn subscription_count(&self) -> usize {
        self.fanout.subscriptions()
    }

    /// Messages waiting in session queues.
    /// What slow sessions keep on disk.
    pub fn spilled(&self) -> &SpillQuota {
        &self.spill
    }

    pub fn queued_messages(&self) -> usize {
        self.sessions.all().iter().map(|s| s.queued()).sum()
    }
}
