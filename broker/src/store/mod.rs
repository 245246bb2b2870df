//! Durable state: sessions, their queued and in-flight messages, and retained messages.
//!
//! The broker talks to this small trait, never to sled, so the hot path does not depend
//! on the database's API. Writes go to the database at once (they are cheap, in memory);
//! what makes them durable is a group commit: [`Store::commit`] hands out a ticket, one
//! background sync covers every ticket issued before it, and [`Store::durable`] tells
//! when. A connection holds back a PUBACK or PUBREC until its ticket is durable, so an
//! acknowledged message survives `kill -9` without one disk sync per message.
//!
//! This is the seam where retained messages and session state are kept: three small
//! traits, [`RetainedStore`], [`SessionStore`] and [`Commit`], that sled and memory
//! implement today and a cluster's shared storage would implement next.

mod record;
mod sled_store;

pub use record::{DeliveryState, StoredDelivery};
pub use sled_store::SledStore;

use crate::message::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt record under key {key:?}: {what}")]
    Corrupt { key: String, what: String },
    #[error("cannot start the group-commit thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot open the data directory {dir}: {source}")]
    Open { dir: String, source: sled::Error },
    #[error("cannot encode the record: {0}")]
    Encode(#[from] crate::codec::Error),
}

/// A session as persisted: everything but its messages, which are stored one key each
/// so that acknowledging one does not rewrite the others.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub client_id: String,
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
    /// Unix seconds of the disconnect; `None` while connected.
    pub disconnected_at: Option<u64>,
    pub will: Option<StoredWill>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

/// A will waiting for its delay to pass; it must survive a restart too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWill {
    /// Unix seconds at which it is due.
    pub due_at: u64,
    /// The message in the store's record encoding.
    pub message: Vec<u8>,
}

/// Everything stored for one session, as loaded at startup.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub meta: SessionMeta,
    pub deliveries: Vec<(u64, StoredDelivery)>,
    /// Packet ids of QoS 2 messages received but not yet released (PUBREL).
    pub incoming: Vec<u16>,
}

/// Where retained messages are kept.
pub trait RetainedStore {
    /// Stores or (with `None`) deletes the retained message of a topic.
    fn save_retained(&self, topic: &str, msg: Option<&Message>) -> Result<(), StoreError>;
    fn load_retained(&self) -> Result<Vec<Message>, StoreError>;
}

/// Where session state is kept: each session's record, and what it is owed, one key
/// per message so that acknowledging one does not rewrite the others.
pub trait SessionStore {
    fn save_session(&self, meta: &SessionMeta) -> Result<(), StoreError>;
    /// Deletes the session with its messages and incoming packet ids.
    fn delete_session(&self, client_id: &str) -> Result<(), StoreError>;
    fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError>;
    fn save_delivery(
        &self,
        client_id: &str,
        seq: u64,
        d: &StoredDelivery,
    ) -> Result<(), StoreError>;
    fn delete_delivery(&self, client_id: &str, seq: u64) -> Result<(), StoreError>;
    fn save_incoming(&self, client_id: &str, pid: u16, present: bool) -> Result<(), StoreError>;
}

/// When what was written is durable: group commit.
pub trait Commit {
    /// A ticket covering every write made so far; 0 means "already durable".
    fn commit(&self) -> u64;
    /// The highest ticket known durable.
    fn durable(&self) -> watch::Receiver<u64>;
    /// Syncs everything now (shutdown).
    fn flush(&self) -> Result<(), StoreError>;
    /// How long the group commit's syncs take; `None` where nothing is synced (the
    /// memory store).
    fn sync_latency(&self) -> Option<&crate::metrics::Histogram> {
        None
    }
}

/// Where a session's queue overflows to when its client is slower than its publishers,
/// so that memory holds only the head of the queue. Not durable and not kept across a
/// restart (what a persistent session owes is in its own records as well).
pub trait SpillStore {
    /// Whether this store can take spilled deliveries at all; by default it cannot,
    /// and the methods below are never called.
    fn spills(&self) -> bool {
        false
    }
    fn spill(&self, _key: u64, _record: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Reads back and removes a spilled record.
    fn unspill(&self, _key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn forget_spilled(&self, _key: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Everything the broker keeps: what sled and memory implement.
pub trait Store:
    RetainedStore + SessionStore + SpillStore + Commit + Send + Sync + 'static
{
}

impl<T: RetainedStore + SessionStore + SpillStore + Commit + Send + Sync + 'static> Store for T {}

/// `storage.persistence = false`: nothing outlives the process, every ticket is durable.
pub struct MemoryStore {
    durable: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            durable: watch::channel(0).0,
        }
    }
}

impl RetainedStore for MemoryStore {
    fn save_retained(&self, _: &str, _: Option<&Message>) -> Result<(), StoreError> {
        Ok(())
    }
    fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        Ok(Vec::new())
    }
}

impl SessionStore for MemoryStore {
    fn save_session(&self, _: &SessionMeta) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_session(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        Ok(Vec::new())
    }
    fn save_delivery(&self, _: &str, _: u64, _: &StoredDelivery) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_delivery(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn save_incoming(&self, _: &str, _: u16, _: bool) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Nothing outlives the process and nothing goes to disk: queues stay in memory, up to
/// `max_queued`.
impl SpillStore for MemoryStore {}

impl Commit for MemoryStore {
    fn commit(&self) -> u64 {
        0
    }
    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub(crate) use record::{
    decode_message, decode_message_with, encode_delivery_into, encode_message, encode_message_into,
};

/// Store failures must not take the broker down; they are logged with the client id.
/// Returns whether the write succeeded.
pub(crate) fn log_write(r: Result<(), StoreError>, client_id: &str) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(client_id, error = %e, "store write failed");
            false
        }
    }
}
