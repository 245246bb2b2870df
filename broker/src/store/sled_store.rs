//! The sled implementation of [`Store`], with the group-commit flusher.

use super::{
    Commit, RetainedStore, SessionMeta, SessionStore, SpillStore, StoreError, StoredDelivery,
    StoredSession,
};
use crate::config::Durability;
use crate::message::Message;
use crate::metrics::Histogram;
use bytes::Bytes;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct SledStore {
    db: sled::Db,
    retained: sled::Tree,
    sessions: sled::Tree,
    deliveries: sled::Tree,
    incoming: sled::Tree,
    /// Overflow of slow sessions' queues, by a key unique across restarts; emptied at
    /// open (see [`SpillStore`]).
    spill: sled::Tree,
    durability: Durability,
    commit: Arc<GroupCommit>,
    flusher: Option<JoinHandle<()>>,
}

/// Tickets handed out vs. tickets made durable. The flusher thread syncs whenever the
/// first runs ahead of the second, so one sync covers every write made before it began.
struct GroupCommit {
    issued: AtomicU64,
    durable: watch::Sender<u64>,
    stop: AtomicBool,
    /// Each sync's time: what an acknowledgement that promises durability waits for.
    synced: Histogram,
}

impl SledStore {
    pub fn open(
        dir: &Path,
        durability: Durability,
        flush_interval_ms: u64,
    ) -> Result<SledStore, StoreError> {
        let periodic = (durability == Durability::Periodic).then_some(flush_interval_ms);
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(periodic)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.display().to_string(),
                source,
            })?;
        let commit = Arc::new(GroupCommit {
            issued: AtomicU64::new(0),
            durable: watch::channel(0).0,
            stop: AtomicBool::new(false),
            synced: Histogram::default(),
        });
        let flusher = match durability {
            Durability::Sync => {
                let (db, commit) = (db.clone(), commit.clone());
                let spawned = thread::Builder::new()
                    .name("weir-group-commit".into())
                    .spawn(move || flush_loop(db, commit))
                    .map_err(StoreError::Thread)?;
                Some(spawned)
            }
            Durability::Periodic => None,
        };
        Ok(SledStore {
            retained: db.open_tree("retained")?,
            sessions: db.open_tree("sessions")?,
            deliveries: db.open_tree("deliveries")?,
            incoming: db.open_tree("incoming")?,
            spill: {
                db.drop_tree("spill")?;
                db.open_tree("spill")?
            },
            db,
            durability,
            commit,
            flusher,
        })
    }
}

fn flush_loop(db: sled::Db, commit: Arc<GroupCommit>) {
    let mut done = 0;
    loop {
        let target = commit.issued.load(Ordering::Acquire);
        if target > done {
            let began = Instant::now();
            let flushed = db.flush();
            commit.synced.observe(began.elapsed());
            if let Err(e) = flushed {
                // Nothing is acknowledged until a sync succeeds; keep trying.
                tracing::error!(error = %e, "store sync failed; acknowledgements are held back");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            done = target;
            commit.durable.send_replace(done);
        } else if commit.stop.load(Ordering::Acquire) {
            return;
        } else {
            thread::park_timeout(Duration::from_millis(50));
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.commit.stop.store(true, Ordering::Release);
        if let Some(t) = self.flusher.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.db.flush();
    }
}

fn session_key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1 + suffix.len());
    k.extend_from_slice(client_id.as_bytes());
    // Client ids never contain U+0000 (the codec rejects it), so 0 ends the id.
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn prefix(client_id: &str) -> Vec<u8> {
    session_key(client_id, &[])
}

fn corrupt(key: &[u8], what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        what: what.into(),
    }
}

impl RetainedStore for SledStore {
    fn save_retained(&self, topic: &str, msg: Option<&Message>) -> Result<(), StoreError> {
        match msg {
            Some(m) => self
                .retained
                .insert(topic.as_bytes(), super::encode_message(m)?)?,
            None => self.retained.remove(topic.as_bytes())?,
        };
        Ok(())
    }

    fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        let mut out = Vec::new();
        for item in self.retained.iter() {
            let (k, v) = item?;
            match super::decode_message(Bytes::from(v.to_vec())) {
                Ok(m) => out.push(m),
                Err(e) => tracing::error!(error = %corrupt(&k, e), "skipping retained message"),
            }
        }
        Ok(out)
    }
}

impl SessionStore for SledStore {
    fn save_session(&self, meta: &SessionMeta) -> Result<(), StoreError> {
        let json = serde_json::to_vec(meta)
            .map_err(|e| corrupt(meta.client_id.as_bytes(), e.to_string()))?;
        self.sessions.insert(meta.client_id.as_bytes(), json)?;
        Ok(())
    }

    fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id.as_bytes())?;
        for tree in [&self.deliveries, &self.incoming] {
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(prefix(client_id)).keys() {
                batch.remove(k?);
            }
            tree.apply_batch(batch)?;
        }
        Ok(())
    }

    fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let mut out = Vec::new();
        for item in self.sessions.iter() {
            let (k, v) = item?;
            let meta: SessionMeta = match serde_json::from_slice(&v) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %corrupt(&k, e.to_string()), "skipping stored session");
                    continue;
                }
            };
            let p = prefix(&meta.client_id);
            let mut deliveries = Vec::new();
            for item in self.deliveries.scan_prefix(&p) {
                let (k, v) = item?;
                let Ok(seq) = <[u8; 8]>::try_from(&k[p.len()..]) else {
                    tracing::error!(error = %corrupt(&k, "bad key"), "skipping stored message");
                    continue;
                };
                match StoredDelivery::decode(Bytes::from(v.to_vec())) {
                    Ok(d) => deliveries.push((u64::from_be_bytes(seq), d)),
                    Err(e) => tracing::error!(error = %corrupt(&k, e), "skipping stored message"),
                }
            }
            let mut incoming = Vec::new();
            for k in self.incoming.scan_prefix(&p).keys() {
                let k = k?;
                if let Ok(pid) = <[u8; 2]>::try_from(&k[p.len()..]) {
                    incoming.push(u16::from_be_bytes(pid));
                }
            }
            out.push(StoredSession {
                meta,
                deliveries,
                incoming,
            });
        }
        Ok(out)
    }

    fn save_delivery(
        &self,
        client_id: &str,
        seq: u64,
        d: &StoredDelivery,
    ) -> Result<(), StoreError> {
        self.deliveries
            .insert(session_key(client_id, &seq.to_be_bytes()), d.encode()?)?;
        Ok(())
    }

    fn delete_delivery(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.deliveries
            .remove(session_key(client_id, &seq.to_be_bytes()))?;
        Ok(())
    }

    fn save_incoming(&self, client_id: &str, pid: u16, present: bool) -> Result<(), StoreError> {
        let key = session_key(client_id, &pid.to_be_bytes());
        if present {
            self.incoming.insert(key, &[])?;
        } else {
            self.incoming.remove(key)?;
        }
        Ok(())
    }
}

impl SpillStore for SledStore {
    fn spills(&self) -> bool {
        true
    }

    fn spill(&self, key: u64, record: &[u8]) -> Result<(), StoreError> {
        self.spill.insert(key.to_be_bytes(), record)?;
        Ok(())
    }

    fn unspill(&self, key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.spill.remove(key.to_be_bytes())?.map(|v| v.to_vec()))
    }

    fn forget_spilled(&self, key: u64) -> Result<(), StoreError> {
        self.spill.remove(key.to_be_bytes())?;
        Ok(())
    }
}

impl Commit for SledStore {
    fn commit(&self) -> u64 {
        if self.durability != Durability::Sync {
            return 0;
        }
        let ticket = self.commit.issued.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(t) = &self.flusher {
            t.thread().unpark();
        }
        ticket
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.commit.durable.subscribe()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn sync_latency(&self) -> Option<&Histogram> {
        Some(&self.commit.synced)
    }
}
