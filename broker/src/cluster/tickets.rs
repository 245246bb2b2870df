//! Acknowledgements that wait for JetStream: every write a publisher's PUBACK depends
//! on gets a ticket, and the highest ticket below which every write is durable is
//! published on a `watch` channel, the way the store's group commit does it. JetStream
//! acknowledges out of order, so the outstanding tickets are kept in a set.

use crate::store::{Commit, Store, StoreError};
use crate::sync;
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Marks a ticket done when dropped: whichever way the work it stands for ends
/// (done, or its task aborted), nothing waits for it for ever.
pub(super) struct Done {
    tickets: Arc<Tickets>,
    ticket: u64,
}

impl Done {
    pub(super) fn new(tickets: Arc<Tickets>, ticket: u64) -> Done {
        Done { tickets, ticket }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.tickets.done(self.ticket);
    }
}

/// Tickets for the cluster's own writes (JetStream publishes, interest changes).
pub struct Tickets {
    state: Mutex<Outstanding>,
    durable: watch::Sender<u64>,
}

#[derive(Default)]
struct Outstanding {
    issued: u64,
    open: BTreeSet<u64>,
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            state: Mutex::default(),
            durable: watch::channel(0).0,
        }
    }
}

impl Tickets {
    /// A new ticket, outstanding until [`Tickets::done`].
    pub fn issue(&self) -> u64 {
        let mut s = sync::lock(&self.state);
        s.issued += 1;
        let t = s.issued;
        s.open.insert(t);
        t
    }

    pub fn done(&self, ticket: u64) {
        let mut s = sync::lock(&self.state);
        s.open.remove(&ticket);
        let durable = s.open.first().map_or(s.issued, |first| first - 1);
        drop(s);
        self.durable.send_if_modified(|d| {
            let moved = durable > *d;
            *d = (*d).max(durable);
            moved
        });
    }

    /// The last ticket issued: waiting for it covers every write made so far.
    pub fn last(&self) -> u64 {
        sync::lock(&self.state).issued
    }

    /// Writes not yet known durable.
    pub fn outstanding(&self) -> usize {
        sync::lock(&self.state).open.len()
    }

    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }
}

/// The store's commit and the cluster's tickets as one [`Commit`]: a ticket of this is
/// durable once both of its parts are.
pub struct Joint {
    store: Arc<dyn Store>,
    cluster: Arc<Tickets>,
    /// Both parts' durable marks, read on every commit without subscribing anew.
    store_mark: watch::Receiver<u64>,
    cluster_mark: watch::Receiver<u64>,
    waiting: Mutex<Waiting>,
    added: Notify,
    durable: watch::Sender<u64>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    /// (joint ticket, store ticket, cluster ticket), in issue order.
    queue: VecDeque<(u64, u64, u64)>,
}

impl Joint {
    /// Starts the task that follows both parts; it ends when the runtime does.
    pub fn start(store: Arc<dyn Store>, cluster: Arc<Tickets>) -> Arc<Joint> {
        let joint = Arc::new(Joint {
            store_mark: store.durable(),
            cluster_mark: cluster.durable(),
            store,
            cluster,
            waiting: Mutex::default(),
            added: Notify::new(),
            durable: watch::channel(0).0,
        });
        tokio::spawn(joint.clone().follow());
        joint
    }

    async fn follow(self: Arc<Self>) {
        let mut store = self.store.durable();
        let mut cluster = self.cluster.durable();
        loop {
            let (s, c) = (*store.borrow_and_update(), *cluster.borrow_and_update());
            let mut released = None;
            {
                let mut w = sync::lock(&self.waiting);
                while w
                    .queue
                    .front()
                    .is_some_and(|&(_, st, ct)| st <= s && ct <= c)
                {
                    released = w.queue.pop_front().map(|(j, _, _)| j);
                }
            }
            if let Some(j) = released {
                self.durable.send_replace(j);
            }
            tokio::select! {
                r = store.changed() => if r.is_err() { return },
                r = cluster.changed() => if r.is_err() { return },
                _ = self.added.notified() => {}
            }
        }
    }
}

impl Commit for Joint {
    fn commit(&self) -> u64 {
        let s = self.store.commit();
        let c = self.cluster.last();
        if s <= *self.store_mark.borrow() && c <= *self.cluster_mark.borrow() {
            return 0;
        }
        let mut w = sync::lock(&self.waiting);
        w.next += 1;
        let j = w.next;
        w.queue.push_back((j, s, c));
        drop(w);
        self.added.notify_one();
        j
    }

    fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_mark_waits_for_the_oldest_outstanding_ticket() {
        let t = Tickets::default();
        let d = t.durable();
        let (a, b, c) = (t.issue(), t.issue(), t.issue());
        t.done(b);
        assert_eq!(*d.borrow(), 0);
        t.done(a);
        assert_eq!(*d.borrow(), b);
        t.done(c);
        assert_eq!(*d.borrow(), c);
        assert_eq!(t.outstanding(), 0);
    }
}
