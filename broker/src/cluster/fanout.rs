//! The cluster's [`Fanout`]: the local trie, plus NATS interest for every filter a
//! client of this node holds, plus forwarding of what is published here.

use super::subject;
use super::tickets::Tickets;
use super::ClusterStats;
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::router::{Fanout, Matches, Router, Subscribed};
use crate::sync;
use crate::topic;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What the link to NATS is asked to do, in order.
pub(super) enum Out {
    /// Publish a QoS 0 message once.
    Once(Arc<Message>),
    /// Publish into JetStream, then mark the ticket done.
    Kept(Arc<Message>, u64),
    /// Keep as the topic's retained message in JetStream, then mark the ticket done.
    Retain(Arc<Message>, u64),
    /// Subscribe to a subject, then mark the ticket done.
    Want(String, u64),
    /// Unsubscribe from a subject.
    Drop(String),
}

pub struct ClusterFanout {
    router: Router,
    tickets: Arc<Tickets>,
    stats: Arc<ClusterStats>,
    outbox: mpsc::UnboundedSender<Out>,
    /// How many local subscriptions want each NATS subject.
    interest: Mutex<HashMap<String, usize>>,
}

impl ClusterFanout {
    pub(super) fn new(
        tickets: Arc<Tickets>,
        stats: Arc<ClusterStats>,
        outbox: mpsc::UnboundedSender<Out>,
    ) -> ClusterFanout {
        ClusterFanout {
            router: Router::default(),
            tickets,
            stats,
            outbox,
            interest: Mutex::default(),
        }
    }

    /// The subjects of a filter, shared or not.
    fn subjects(filter: &str) -> Vec<String> {
        match topic::parse_shared(filter) {
            Ok(Some(shared)) => subject::filter_subjects(shared.filter),
            _ => subject::filter_subjects(filter),
        }
    }

    /// Counts one more local subscription to `filter`; subscribes this node in NATS to
    /// the subjects no other local subscription wanted yet. Whether the SUBACK must wait.
    fn want(&self, filter: &str) -> bool {
        let mut waits = false;
        let mut interest = sync::lock(&self.interest);
        for s in ClusterFanout::subjects(filter) {
            let n = interest.entry(s.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.stats.subjects.fetch_add(1, Relaxed);
                let ticket = self.tickets.issue();
                if self.outbox.send(Out::Want(s, ticket)).is_err() {
                    self.tickets.done(ticket);
                } else {
                    waits = true;
                }
            }
        }
        waits
    }

    fn unwant(&self, filter: &str) {
        let mut interest = sync::lock(&self.interest);
        for s in ClusterFanout::subjects(filter) {
            if let Some(n) = interest.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    interest.remove(&s);
                    self.stats.subjects.fetch_sub(1, Relaxed);
                    let _ = self.outbox.send(Out::Drop(s));
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
        let needs_sync = !existed && self.want(filter);
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

    fn matches(&self, topic: &str, out: &mut Matches) {
        self.router.matches(topic, out)
    }

    /// QoS 0 is sent once; QoS 1 and 2 go into JetStream and the acknowledgement waits,
    /// for the topic's retained record too.
    fn forward(&self, msg: &Arc<Message>) -> bool {
        if msg.retain {
            let ticket = self.tickets.issue();
            let _ = self.outbox.send(Out::Retain(msg.clone(), ticket));
        }
        if msg.qos == QoS::AtMostOnce {
            let _ = self.outbox.send(Out::Once(msg.clone()));
            return false;
        }
        let ticket = self.tickets.issue();
        // If the link is gone (shutdown), the ticket stays open: nothing will make the
        // message durable, so its publisher is never told it is.
        let _ = self.outbox.send(Out::Kept(msg.clone(), ticket));
        true
    }
}
