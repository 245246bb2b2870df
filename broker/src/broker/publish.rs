//! Routing a message: the retained index, the matching subscriptions (a shared group's
//! member picked only after the router's lock is released), one delivery per session.

use super::Broker;
use crate::codec::QoS;
use crate::hooks::{Action, Decision, Identity};
use crate::message::{Delivery, Message};
use crate::metrics::DropCause;
use crate::router::{Matches, Target};
use crate::session::{PushOutcome, Session};
use crate::store::log_write;
use crate::FastMap;
use bytes::Bytes;
use std::sync::Arc;

impl Broker {
    /// Routes a message to every matching session and updates the retained index.
    pub fn publish(&self, msg: Arc<Message>) -> Routed {
        let msg = self.fanout.stamp(msg);
        let mut stored = false;
        if msg.retain {
            stored |= self.retain(&msg);
        }
        let mut routed = self.route(&msg);
        routed.stored |= stored | self.fanout.forward(&msg);
        routed
    }

    /// Publishes one of the broker's own `$SYS` values: retained in this node's index
    /// (not in the store, not in the cluster: each node describes itself, and a
    /// restart publishes afresh) and sent to this node's subscribers.
    pub fn publish_sys(&self, topic: &str, payload: Bytes) {
        let msg = Arc::new(Message {
            topic: Arc::from(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            origin: None,
            received: None,
        });
        self.retained.set(msg.clone());
        self.route(&msg);
    }

    /// Routes messages another node of the cluster forwarded to this one, in order, to
    /// this node's subscribers only (the node they were published on keeps them
    /// retained). A run of messages on one topic from one publisher, as a batch from
    /// another node mostly is, goes to the same sessions: they are found once per run.
    pub fn arrive(&self, msgs: Vec<Message>) {
        let mut run: Option<Run> = None;
        for msg in msgs {
            let msg = Arc::new(msg);
            let run = match run.take() {
                Some(r) if r.serves(&msg) => run.insert(r),
                _ => {
                    let mut recipients = Vec::new();
                    let lasting = self.recipients(&msg, |s, w| recipients.push((s, w)));
                    run.insert(Run {
                        topic: msg.topic.clone(),
                        publisher: msg.publisher.clone(),
                        recipients,
                        lasting,
                    })
                }
            };
            for (session, want) in &run.recipients {
                self.queue_for(session, want.clone().delivery(&msg));
            }
        }
    }

    /// Gives a message to one of this node's members of the shared group `share`
    /// (`$share/group/filter`), which the cluster picked this node for.
    pub fn arrive_shared(&self, share: &str, msg: Message) {
        let Ok(Some(s)) = crate::topic::parse_shared(share) else {
            return;
        };
        // NATS matched the subject; MQTT's rule for `$` topics is applied here.
        if !crate::topic::matches(s.filter, &msg.topic) {
            return;
        }
        let msg = Arc::new(msg);
        let rank = |client_id: &str| self.rank(client_id, &msg);
        match self.fanout.group(share).and_then(|g| g.pick(&rank)) {
            Some(t) => self.deliver(&t.client_id, &msg, Wanted::of(&t)),
            None => self.dropped(DropCause::Denied, 1, None, Some(&msg.topic)),
        }
    }

    /// Takes the cluster's retained message of `topic` (`None`: it was deleted) into
    /// this node's index and store.
    pub fn keep_retained(&self, topic: &str, msg: Option<Message>) {
        let now = crate::message::now_secs();
        match msg.filter(|m| !m.is_expired(now)) {
            Some(m) => {
                let m = Arc::new(Message { retain: true, ..m });
                self.retained.set(m.clone());
                log_write(self.store.save_retained(topic, Some(&m)), "-");
            }
            None => {
                self.retained.remove(topic);
                log_write(self.store.save_retained(topic, None), "-");
            }
        }
    }

    /// Queues `msg` for every matching session of this node.
    fn route(&self, msg: &Arc<Message>) -> Routed {
        let mut routed = Routed::default();
        let mut keeping_up = false;
        self.recipients(msg, |session, want| {
            let out = self.queue_for(&session, want.delivery(msg));
            routed.stored |= out.stored;
            keeping_up |= !out.over;
            if out.over || out.blocking {
                routed.hold.push(Hold {
                    session,
                    progress: out.progress,
                    blocking: out.blocking,
                });
            }
        });
        // A message that also reached a session keeping up holds its publisher only
        // for a `block` queue: the others are not to be slowed by one slow consumer.
        if keeping_up {
            routed.hold.retain(|h| h.blocking);
        }
        routed
    }

    /// Calls `to` with each session of this node that gets `msg`, and how its
    /// subscriptions want it. Returns whether the same sessions get the next message on
    /// the topic from the same publisher: not when a shared group picked a member.
    fn recipients(&self, msg: &Arc<Message>, mut to: impl FnMut(Arc<Session>, Wanted)) -> bool {
        let mut matches = Matches::default();
        self.fanout.matches(&msg.topic, &mut matches);
        let distinct = matches.distinct();
        let lasting = matches.groups.is_empty();
        let mut targets = matches.targets;
        if !lasting {
            // Shared subscriptions: a member is picked per message, so only now is it
            // known who would read this topic; a member that may not is passed over.
            let rank = |client_id: &str| self.rank(client_id, msg);
            targets.extend(matches.groups.iter().filter_map(|g| g.pick(&rank)));
        }
        // No Local: not back to the publisher (a shared subscription ignores it).
        let publisher = msg.publisher.as_deref();
        let own = |t: &Target| t.options.no_local && !t.shared && publisher == Some(&*t.client_id);
        let mut found = |client_id: &str, want| {
            if let Some(session) = self.sessions.find(client_id) {
                to(session, want)
            }
        };
        if distinct {
            for t in targets.iter().filter(|t| !own(t)) {
                found(&t.client_id, Wanted::of(t));
            }
        } else {
            targets.retain(|t| !own(t));
            for (client_id, want) in merge_overlapping(targets) {
                found(&client_id, want);
            }
        }
        lasting
    }

    /// Keeps the message as its topic's retained message (or deletes that, for an
    /// empty payload); whether a store write was made.
    fn retain(&self, msg: &Message) -> bool {
        // The payload is a slice of the publisher's read buffer; a retained message
        // lives indefinitely, so it gets its own copy rather than pinning that buffer.
        let own = Message {
            payload: Bytes::copy_from_slice(&msg.payload),
            received: None,
            ..msg.clone()
        };
        self.retained.set(Arc::new(own));
        let keep = (!msg.payload.is_empty()).then_some(msg);
        log_write(self.store.save_retained(&msg.topic, keep), "-")
    }

    /// How good a receiver of `msg` a shared group's member is: 0 may not read the
    /// topic, 1 may but is offline, 2 may and is connected.
    fn rank(&self, client_id: &str, msg: &Message) -> u8 {
        let Some(s) = self.sessions.find(client_id) else {
            return 0;
        };
        let (online, identity) = s.holder();
        if self.hooks.authorizes() {
            let stranger;
            let who = match &identity {
                Some(id) => id.info(),
                None => {
                    stranger = Identity {
                        client_id: client_id.to_owned(),
                        ..Default::default()
                    };
                    stranger.info()
                }
            };
            let decision =
                self.hooks
                    .authorize(&who, Action::Subscribe, &msg.topic, msg.qos, msg.retain);
            if decision != Decision::Allow {
                return 0;
            }
        }
        if online {
            2
        } else {
            1
        }
    }

    /// Queues `msg` for the session of `client_id` as its subscriptions want it.
    fn deliver(&self, client_id: &str, msg: &Arc<Message>, want: Wanted) {
        if let Some(session) = self.sessions.find(client_id) {
            self.queue_for(&session, want.delivery(msg));
        }
    }

    /// Queues one delivery for one session and wakes its connection. The outcome says
    /// whether it was stored (an acknowledgement must wait for the commit) and whether
    /// the session holds its publishers.
    pub fn queue_for(&self, session: &Session, d: Delivery) -> PushOutcome {
        let journal = self.journal(session.client_id());
        let topic = d.message.topic.clone();
        let out = session.lock().push(d, self.queue_limits(), &journal);
        if out.dropped > 0 {
            let cause = match out.stalled {
                true => DropCause::Stalled,
                false => DropCause::QueueFull,
            };
            let n = out.dropped as u64;
            self.dropped(cause, n, Some(session.client_id()), Some(&topic));
        }
        if out.wake {
            session.wake();
        }
        out
    }
}

/// What routing a message did: whether a store write was made that an acknowledgement
/// must wait for, and the sessions its publisher should wait for ([`crate::pace`]):
/// every recipient if none keeps up, else those whose `block` queue is full.
#[derive(Default)]
pub struct Routed {
    pub stored: bool,
    pub hold: Vec<Hold>,
}

/// A session a publisher waits for, and how far its consumer had got.
pub struct Hold {
    pub session: Arc<Session>,
    pub progress: u64,
    blocking: bool,
}

impl Hold {
    /// The session's `block` queue is full: the publisher waits for it whatever else.
    pub fn is_blocking(&self) -> bool {
        self.blocking
    }
}

/// The sessions a message on `topic` from `publisher` went to: the same for the next
/// such message, unless a shared group picked one of them (not `lasting`).
struct Run {
    topic: Arc<str>,
    publisher: Option<Arc<str>>,
    recipients: Vec<(Arc<Session>, Wanted)>,
    lasting: bool,
}

impl Run {
    fn serves(&self, msg: &Message) -> bool {
        // The cluster's reader shares one topic string for a run: a pointer compare.
        self.lasting && Arc::ptr_eq(&self.topic, &msg.topic) && self.publisher == msg.publisher
    }
}

/// What one client gets for one message, after merging its matching subscriptions.
#[derive(Clone)]
struct Wanted {
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
}

impl Wanted {
    fn of(t: &Target) -> Wanted {
        Wanted {
            qos: t.options.qos,
            retain_as_published: t.options.retain_as_published,
            ids: t.id.into_iter().collect(),
        }
    }

    fn delivery(self, msg: &Arc<Message>) -> Delivery {
        Delivery {
            message: msg.clone(),
            qos: msg.qos.min(self.qos),
            retain: msg.retain && self.retain_as_published,
            subscription_ids: self.ids,
            store_seq: None,
        }
    }
}

/// One delivery per client for overlapping subscriptions: the highest QoS and every
/// subscription identifier (MQTT-3.3.4-3, -5).
fn merge_overlapping(targets: Vec<Target>) -> Vec<(Arc<str>, Wanted)> {
    let mut by_client: FastMap<Arc<str>, Wanted> =
        FastMap::with_capacity_and_hasher(targets.len(), Default::default());
    for t in &targets {
        match by_client.get_mut(&t.client_id) {
            None => {
                by_client.insert(t.client_id.clone(), Wanted::of(t));
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
