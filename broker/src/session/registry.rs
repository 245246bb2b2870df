//! Where sessions are registered and claimed: the [`Directory`] seam, and [`Sessions`],
//! its implementation for one process.

use super::Session;
use crate::message::{Delivery, Message};
use crate::store::StoredSession;
use crate::sync::{lock, read, write};
use crate::FastMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, RwLock};

/// Where sessions are registered and claimed. Attach, detach and expiry hold a
/// client id's [`Claim`] while they change who owns its session, so two connections
/// with one client id can never both own it.
///
/// The broker asks only this trait. [`Sessions`] is the implementation for a single
/// process; a cluster's would also claim the client id where the nodes can see it
/// (compare-and-swap on the session record's revision) and look there for a session
/// this process does not hold.
pub trait Directory: Send + Sync + 'static {
    /// Waits for, and takes, the claim on `client_id`.
    fn claim(&self, client_id: &str) -> Claim<'_>;
    fn find(&self, client_id: &str) -> Option<Arc<Session>>;
    /// Adds or replaces the session of its client id.
    fn register(&self, session: Arc<Session>);
    /// Removes `session`, unless another session of its client id replaced it meanwhile;
    /// whether it was removed.
    fn unregister(&self, session: &Arc<Session>) -> bool;
    /// A snapshot of every session.
    fn all(&self) -> Vec<Arc<Session>>;
    fn count(&self) -> usize;
    /// The client id's connection is now this process's connection `conn_id`. A
    /// cluster claims the client id cluster-wide, so a connection on another node is
    /// taken over; one process has nothing more to do. The CONNACK waits for what is
    /// returned: a client that connects elsewhere after this CONNACK must find the
    /// claim in place, or the older connection could outlast the newer one.
    fn announce(&self, _client_id: &Arc<str>, _conn_id: u64) -> Announced {
        None
    }
    /// The connection `conn_id` attached with this will and delay, or without one. One
    /// process keeps wills in its sessions; a cluster also keeps them where the other
    /// nodes publish them if this one dies.
    fn keep_will(&self, _client_id: &Arc<str>, _conn_id: u64, _will: Option<(Arc<Message>, u32)>) {}
    /// The will of `client_id`'s connection `conn_id` (`None`: of whichever connection
    /// left one) was published or dropped here.
    fn settle_will(&self, _client_id: &Arc<str>, _conn_id: Option<u64>) {}
    /// The broker recorded the persistent session. A cluster keeps a record of it where
    /// another node finds it if this one dies; whether an acknowledgement of what
    /// changed it must wait for the next commit.
    fn record(&self, _session: &Session) -> bool {
        false
    }
    /// The session of `client_id` where another process holds it, let go there and on
    /// its way here; `None` where none does (one process: never).
    fn fetch(&self, _client_id: &Arc<str>) -> BoxFuture<'_, Option<Moving>> {
        Box::pin(std::future::ready(None))
    }
}

/// A boxed future, as a trait object's method returns one.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Completes once a client id's claim is in place where every process sees it;
/// `None` where that is already so.
pub type Announced = Option<BoxFuture<'static, ()>>;

/// A session moving here from another process of the cluster.
pub struct Moving {
    /// What it owed there when it was let go.
    pub session: StoredSession,
    /// Completes the move once the session's subscriptions are made here: ends it
    /// there, and yields what reached it there meanwhile.
    pub rest: BoxFuture<'static, Vec<Delivery>>,
}

const SHARDS: usize = 32;

type Shard = RwLock<FastMap<Arc<str>, Arc<Session>>>;
type ClaimShard = Mutex<FastMap<Arc<str>, Arc<ClaimLock>>>;

/// The lock of one claimed client id: held across calls, so a flag and a condition
/// variable rather than a guard.
#[derive(Default)]
struct ClaimLock {
    held: Mutex<bool>,
    released: Condvar,
}

/// Every session of this process by client id. Sharded so that publishers looking up
/// subscribers on different threads, and clients connecting, rarely touch the same
/// lock.
pub struct Sessions {
    shards: Vec<Shard>,
    /// One lock per client id being claimed, made on demand and dropped with the last
    /// claim: claims of different clients never wait for each other, whatever they do
    /// while they hold them (ending a session deletes its records from the store).
    claims: Vec<ClaimShard>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            claims: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

/// Held while a client id's session changes hands; dropping it releases the claim.
pub struct Claim<'a> {
    lock: Arc<ClaimLock>,
    client_id: Arc<str>,
    shard: &'a ClaimShard,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        *lock(&self.lock.held) = false;
        self.lock.released.notify_one();
        let mut locks = lock(self.shard);
        // Only the map and this claim hold it: nobody else holds or waits for it.
        if locks
            .get(&self.client_id)
            .is_some_and(|l| Arc::strong_count(l) == 2)
        {
            locks.remove(&self.client_id);
        }
    }
}

impl Sessions {
    fn index(&self, client_id: &str) -> usize {
        self.hasher.hash_one(client_id) as usize % SHARDS
    }

    fn shard(&self, client_id: &str) -> &Shard {
        &self.shards[self.index(client_id)]
    }
}

impl Directory for Sessions {
    fn claim(&self, client_id: &str) -> Claim<'_> {
        let shard = &self.claims[self.index(client_id)];
        let (client_id, claimed) = {
            let mut locks = lock(shard);
            match locks.get_key_value(client_id) {
                Some((k, l)) => (k.clone(), l.clone()),
                None => {
                    let k: Arc<str> = Arc::from(client_id);
                    let l = Arc::new(ClaimLock::default());
                    locks.insert(k.clone(), l.clone());
                    (k, l)
                }
            }
        };
        let mut held = lock(&claimed.held);
        while *held {
            held = claimed
                .released
                .wait(held)
                .unwrap_or_else(|e| e.into_inner());
        }
        *held = true;
        drop(held);
        Claim {
            lock: claimed,
            client_id,
            shard,
        }
    }

    fn find(&self, client_id: &str) -> Option<Arc<Session>> {
        read(self.shard(client_id)).get(client_id).cloned()
    }

    fn register(&self, s: Arc<Session>) {
        write(self.shard(s.client_id())).insert(s.client_id().clone(), s);
    }

    fn unregister(&self, s: &Arc<Session>) -> bool {
        let mut map = write(self.shard(s.client_id()));
        if map
            .get(s.client_id())
            .is_some_and(|cur| Arc::ptr_eq(cur, s))
        {
            map.remove(s.client_id());
            true
        } else {
            false
        }
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.shards
            .iter()
            .flat_map(|s| read(s).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn claims_of_one_client_wait_for_each_other_and_others_do_not() {
        let sessions = Arc::new(Sessions::default());
        let held = sessions.claim("a");
        let (tx, rx) = mpsc::channel();
        let s = sessions.clone();
        let waiter = std::thread::spawn(move || {
            let _b = s.claim("b");
            tx.send("b").unwrap();
            let _a = s.claim("a");
            tx.send("a").unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("b"));
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a is held"
        );
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("a"));
        waiter.join().unwrap();
        let left: usize = sessions.claims.iter().map(|c| lock(c).len()).sum();
        assert_eq!(left, 0, "released claims leave nothing behind");
    }
}
