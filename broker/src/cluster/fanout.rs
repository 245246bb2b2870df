//! The cluster's [`Fanout`]: the local trie, plus NATS interest for every filter a
//! client of this node holds, plus forwarding of what is published here.

use super::subject;
use super::tickets::Tickets;
use super::ClusterStats;
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::{Message, Origin};
use crate::router::{Fanout, Matches, Router, SharedGroup, Subscribed};
use crate::sync;
use crate::topic;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// QoS 0 messages that may wait for NATS before more are dropped.
pub const MAX_QUEUED_ONCE: u64 = 65_536;

/// What the link to NATS is asked to do, in order.
pub(super) enum Out {
    /// Publish into JetStream, then mark the ticket done.
    Kept(Arc<Message>, u64),
    /// Keep as the topic's retained message in JetStream, then mark the ticket done.
    Retain(Arc<Message>, u64),
    /// Subscribe to a subject (or join a queue group), then mark the ticket done.
    Want(Interest, u64),
    /// Unsubscribe (or leave the queue group).
    Drop(Interest),
    /// Write this node as the owner of a client id (its connection's id), then say so.
    Own(Arc<str>, u64, tokio::sync::oneshot::Sender<()>),
}

/// One subject of a shared subscription `$share/group/filter`, as a NATS queue group:
/// NATS gives each message to one node among those with members.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct Shared {
    pub subject: String,
    /// The NATS queue group: the same name on every node for one group and filter.
    pub queue: String,
    /// `$share/group/filter`, to find this node's members.
    pub share: Arc<str>,
}

/// QoS 0 messages for other nodes, waiting for the link, which takes all that wait at
/// once: a publisher pays a lock and a push per message, not a channel's bookkeeping
/// (that was a fifth of what the publishing node spent on one).
#[derive(Default)]
pub(super) struct OnceQueue {
    waiting: Mutex<Vec<Arc<Message>>>,
    arrived: tokio::sync::Notify,
}

impl OnceQueue {
    fn push(&self, msg: Arc<Message>) {
        let first = {
            let mut waiting = sync::lock(&self.waiting);
            waiting.push(msg);
            waiting.len() == 1
        };
        if first {
            // Kept as a permit if the link is not waiting yet: no wake-up is lost.
            self.arrived.notify_one();
        }
    }

    /// Every message waiting, in the order pushed (none when woken for those a turn
    /// before took already).
    pub(super) async fn take(&self) -> Vec<Arc<Message>> {
        self.arrived.notified().await;
        std::mem::take(&mut *sync::lock(&self.waiting))
    }
}

pub struct ClusterFanout {
    router: Router,
    node: Arc<str>,
    /// The number of the last message published here ([`Message::origin`]).
    published: AtomicU64,
    tickets: Arc<Tickets>,
    stats: Arc<ClusterStats>,
    outbox: mpsc::UnboundedSender<Out>,
    once: Arc<OnceQueue>,
    /// How many local subscriptions want each NATS subject or queue group.
    interest: Mutex<HashMap<Interest, usize>>,
}

/// What this node subscribes to in NATS for its clients' filters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Interest {
    Plain(String),
    Queue(Shared),
}

/// The NATS queue group of `$share/group/filter`: a hash, as a group name and filter
/// may hold characters a queue name may not.
fn queue_name(share: &str) -> String {
    format!(
        "weir_{}",
        crate::hex(&Sha256::digest(share.as_bytes())[..12])
    )
}

impl ClusterFanout {
    pub(super) fn new(
        node: Arc<str>,
        numbered_from: u64,
        tickets: Arc<Tickets>,
        stats: Arc<ClusterStats>,
        outbox: mpsc::UnboundedSender<Out>,
        once: Arc<OnceQueue>,
    ) -> ClusterFanout {
        ClusterFanout {
            router: Router::default(),
            node,
            published: AtomicU64::new(numbered_from),
            tickets,
            stats,
            outbox,
            once,
            interest: Mutex::default(),
        }
    }

    /// What this node subscribes to in NATS for `filter`: plain subjects, or for a
    /// shared subscription, queue groups.
    fn interests(filter: &str) -> Vec<Interest> {
        match topic::parse_shared(filter) {
            Ok(Some(shared)) => {
                let share: Arc<str> = Arc::from(filter);
                let queue = queue_name(filter);
                subject::filter_subjects(shared.filter)
                    .into_iter()
                    .map(|subject| {
                        Interest::Queue(Shared {
                            subject,
                            queue: queue.clone(),
                            share: share.clone(),
                        })
                    })
                    .collect()
            }
            _ => subject::filter_subjects(filter)
                .into_iter()
                .map(Interest::Plain)
                .collect(),
        }
    }

    /// Counts one more local subscription to `filter`; subscribes this node in NATS to
    /// what no other local subscription wanted yet.
    fn want(&self, filter: &str) {
        let mut interest = sync::lock(&self.interest);
        for i in ClusterFanout::interests(filter) {
            let n = interest.entry(i.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.stats.subjects.fetch_add(1, Relaxed);
                let ticket = self.tickets.issue();
                if self.outbox.send(Out::Want(i, ticket)).is_err() {
                    self.tickets.done(ticket);
                }
            }
        }
    }

    fn unwant(&self, filter: &str) {
        let mut interest = sync::lock(&self.interest);
        for i in ClusterFanout::interests(filter) {
            if let Some(n) = interest.get_mut(&i) {
                *n -= 1;
                if *n == 0 {
                    interest.remove(&i);
                    self.stats.subjects.fetch_sub(1, Relaxed);
                    let _ = self.outbox.send(Out::Drop(i));
                }
            }
        }
    }
}

impl Fanout for ClusterFanout {
    fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Subscribed {
        let existed = self.router.subscribe(client_id, filter, options, id);
        // Every new subscription waits, even one whose subjects another local
        // subscription asked for already: that request may not be confirmed yet, and
        // waiting for the next commit covers it.
        if !existed {
            self.want(filter);
        }
        let needs_sync = !existed;
        Subscribed {
            existed,
            needs_sync,
        }
    }

    fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let existed = self.router.unsubscribe(client_id, filter);
        if existed {
            self.unwant(filter);
        }
        existed
    }

    /// This node's shared groups are left out: NATS picks the node of a group's member
    /// ([`Interest::Queue`]), and that node picks the member.
    fn matches(&self, topic: &str, out: &mut Matches) {
        self.router.matches(topic, out);
        out.groups.clear();
    }

    fn group(&self, share: &str) -> Option<SharedGroup> {
        self.router.group(share)
    }

    fn subscriptions(&self) -> usize {
        self.router.count()
    }

    fn stamp(&self, msg: Arc<Message>) -> Arc<Message> {
        if msg.origin.is_some() {
            return msg;
        }
        let origin = Origin {
            node: self.node.clone(),
            seq: self.published.fetch_add(1, Relaxed) + 1,
            at: crate::message::coarse_secs(),
        };
        let mut msg = msg;
        // In place when nothing else holds the message yet (the usual case).
        Arc::make_mut(&mut msg).origin = Some(origin);
        msg
    }

    /// Publishers here wait while more QoS 0 messages wait for NATS than it takes in
    /// a moment: the link sends them no faster than NATS takes them.
    fn pace(&self) -> Option<&crate::pace::Backlog> {
        Some(&self.stats.queued_once)
    }

    /// QoS 0 is sent once; QoS 1 and 2 go into JetStream and the acknowledgement waits,
    /// for the topic's retained record too.
    fn forward(&self, msg: &Arc<Message>) -> bool {
        if msg.retain {
            let ticket = self.tickets.issue();
            let _ = self.outbox.send(Out::Retain(msg.clone(), ticket));
        }
        if msg.qos == QoS::AtMostOnce {
            // QoS 0 waits for nobody. While NATS takes them its publishers are paced
            // ([`Fanout::pace`]); while NATS is away nothing else bounds how many queue
            // up here: past the bound they are dropped, as QoS 0 may be. (QoS 1
            // and 2 are bounded by every publisher's Receive Maximum: their
            // acknowledgements wait.)
            let waiting = &self.stats.queued_once;
            if waiting.gauge().load(Relaxed) >= MAX_QUEUED_ONCE {
                self.stats.dropped_once.fetch_add(1, Relaxed);
                return false;
            }
            waiting.add();
            self.once.push(msg.clone());
            return false;
        }
        let ticket = self.tickets.issue();
        // If the link is gone (shutdown), the ticket stays open: nothing will make the
        // message durable, so its publisher is never told it is.
        let _ = self.outbox.send(Out::Kept(msg.clone(), ticket));
        true
    }
}
