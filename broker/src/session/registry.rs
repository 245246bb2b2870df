use super::Session;
use crate::FastMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

const SHARDS: usize = 32;

/// Every session by client id. Sharded so that publishers looking up subscribers on
/// different threads, and clients connecting, rarely touch the same lock.
pub struct Sessions {
    shards: Vec<RwLock<FastMap<Arc<str>, Arc<Session>>>>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl Sessions {
    fn shard(&self, client_id: &str) -> &RwLock<FastMap<Arc<str>, Arc<Session>>> {
        &self.shards[self.hasher.hash_one(client_id) as usize % SHARDS]
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.shard(client_id)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
            .cloned()
    }

    pub fn insert(&self, s: Arc<Session>) -> Option<Arc<Session>> {
        self.shard(&s.client_id)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s.client_id.clone(), s)
    }

    /// Removes the session only if it is still `s` (not replaced meanwhile).
    pub fn remove_if_same(&self, s: &Arc<Session>) -> bool {
        let mut map = self
            .shard(&s.client_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map.get(&s.client_id).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&s.client_id);
            true
        } else {
            false
        }
    }

    /// A snapshot of every session, for housekeeping.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
