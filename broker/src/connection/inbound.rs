//! What the client sends after CONNECT: a handler per packet type.

use super::exit::Exit;
use super::Connection;
use crate::broker::Hold;
use crate::codec::{
    self, Ack, AckKind, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Version, Will,
};
use crate::events::Event;
use crate::hooks::{Action, Decision, PublishOutcome, RateEvent, RateOutcome, SubscribeOutcome};
use crate::message::{Delivery, Message};
use crate::metrics::DropCause;
use crate::session::Session;
use crate::topic;
use crate::FastMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// How long a held publisher waits on a session that takes nothing before it goes on.
const STALLED: std::time::Duration = std::time::Duration::from_secs(2);

/// Sessions a publisher waits for ([`Inbound::wait_for`]).
pub(super) struct Waiting {
    sessions: Vec<Hold>,
    checked: Instant,
}

impl Waiting {
    /// Completes once the publisher may go on: every full `block` queue it waits for
    /// has drained, or, if none, any one of the sessions has: the next message then
    /// reaches a session keeping up, and one slow session holds nobody.
    pub(super) async fn drained(&self) {
        // Plain loops: iterator adapters' closures held across an await make the
        // connection's future not `Send`.
        let mut blocking = false;
        for h in &self.sessions {
            if h.is_blocking() {
                blocking = true;
                h.session.drained().await;
            }
        }
        if blocking {
            return;
        }
        let mut each = Vec::with_capacity(self.sessions.len());
        for h in &self.sessions {
            each.push(Box::pin(h.session.drained()));
        }
        futures_util::future::select_all(each).await;
    }

    /// When to look for sessions that took nothing ([`Inbound::check_stalled`]).
    pub(super) fn next_check(&self) -> Instant {
        self.checked + STALLED
    }
}

/// The state of what the client sends.
pub(super) struct Inbound {
    /// Topic aliases the client established towards us.
    aliases: FastMap<u16, Arc<str>>,
    /// A rate-limit plugin throttled the client: nothing is read before this.
    paused_until: Option<Instant>,
    /// What this client publishes waits for others over the broker's mark: nothing is
    /// read until it drains ([`crate::pace`]).
    held: bool,
    /// Its last message went only to sessions over their high-water mark (or to a
    /// full `block` queue): nothing is read until they drain.
    waiting: Option<Waiting>,
    /// The session expiry asked at CONNECT: 0 may not become more at DISCONNECT.
    connect_expiry: u32,
    will: Option<Will>,
    /// A client mostly publishes to a few topics, often one: see [`codec::LastTopic`].
    last_topic: codec::LastTopic,
    /// PUBLISHes read together, checked and waiting for the hooks to answer for all of
    /// them at once (see [`ClientHooks::publish_many`]).
    pub(super) gathered: super::gather::Gathered,
}

impl Inbound {
    pub(super) fn new(connect_expiry: u32, will: Option<Will>) -> Inbound {
        Inbound {
            aliases: FastMap::default(),
            paused_until: None,
            held: false,
            waiting: None,
            connect_expiry,
            will,
            last_topic: codec::LastTopic::default(),
            gathered: Default::default(),
        }
    }

    pub(super) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    pub(super) fn resume(&mut self) {
        self.paused_until = None;
    }

    pub(super) fn is_held(&self) -> bool {
        self.held || self.waiting.is_some()
    }

    pub(super) fn let_go(&mut self) {
        self.held = false;
    }

    /// The sessions this client waits for, if it does.
    pub(super) fn waiting(&self) -> Option<&Waiting> {
        self.waiting.as_ref()
    }

    /// Waits for `hold`, but never for its own session: only this connection, which
    /// would not be reading its acknowledgements, drains that.
    fn wait_for(&mut self, mut hold: Vec<Hold>, own: &Arc<Session>) {
        hold.retain(|h| !Arc::ptr_eq(&h.session, own));
        if !hold.is_empty() {
            self.waiting = Some(Waiting {
                sessions: hold,
                checked: Instant::now(),
            });
        }
    }

    pub(super) fn stop_waiting(&mut self) {
        self.waiting = None;
    }

    /// Every [`STALLED`] of waiting: a session that took nothing since the last look
    /// holds nobody any more (a stuck client, or a cycle of publishers waiting on each
    /// other's consumers), so this client goes on and the policy applies there.
    pub(super) fn check_stalled(&mut self) {
        let Some(w) = &mut self.waiting else {
            return;
        };
        for h in &mut w.sessions {
            let now = h.session.progress();
            if now == h.progress {
                h.session.mark_stalled(now);
            }
            h.progress = now;
        }
        w.checked = Instant::now();
    }

    /// Stops reading until `until`, or until a later pause already set ends.
    pub(super) fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    pub(super) fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    /// Resolves a 5.0 topic alias into the PUBLISH's topic, or records a new one.
    fn resolve_alias(&mut self, p: &mut Publish, maximum: u16) -> Result<(), Exit> {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(());
        };
        if alias > maximum {
            return Err(Exit::protocol(
                ReasonCode::TopicAliasInvalid,
                format!("topic alias {alias} exceeds the maximum {maximum}"),
            ));
        }
        if !p.topic.is_empty() {
            self.aliases.insert(alias, p.topic.clone());
            return Ok(());
        }
        match self.aliases.get(&alias) {
            Some(t) => {
                p.topic = t.clone();
                Ok(())
            }
            None => Err(Exit::protocol(
                ReasonCode::ProtocolError,
                format!("unknown topic alias {alias}"),
            )),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Parses and handles every complete packet in the read buffer, after what was
    /// read before and held back (see [`super::gather`]).
    pub(super) fn process_input(&mut self) -> Result<(), Exit> {
        self.settle_gathered()?;
        let read = self.read_packets(self.client.hooks.batches());
        let settled = self.publish_gathered();
        read.and(settled)
    }

    /// Whether the client's input is read: not while a rate limit throttles it or what
    /// it publishes waits for others.
    pub(super) fn reading(&self) -> bool {
        self.inbound.paused_until.is_none() && !self.inbound.is_held()
    }

    fn read_packets(&mut self, gather: bool) -> Result<(), Exit> {
        let max = self.client.listener.max_packet_size as usize;
        while self.reading() {
            let Some(frame) = self.io.next_frame(max)? else {
                break;
            };
            let packet =
                codec::decode_with(frame, self.client.version, &mut self.inbound.last_topic)?;
            match packet {
                Packet::Publish(p) if gather && p.qos != QoS::ExactlyOnce => self.gather(p)?,
                other if self.inbound.gathered.is_empty() => self.handle(other)?,
                other => self.gather_after(other)?,
            }
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Ack(a) => {
                self.on_ack(a);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.emit(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) => Err(Exit::protocol(ReasonCode::ProtocolError, "second CONNECT")),
            Packet::Auth(a) => self.on_auth(a),
            other => Err(Exit::protocol(
                ReasonCode::ProtocolError,
                format!("{} may only be sent by a server", other.name()),
            )),
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Exit> {
        let (qos, pid) = (p.qos, p.pid);
        if let Some(mut msg) = self.admit_publish(p, 0)? {
            let outcome = self.client.hooks.publish(&mut msg);
            self.settle_publish(msg, pid, qos, outcome, Instant::now());
        }
        Ok(())
    }

    /// The checks a PUBLISH passes before the hooks see it, `pending` more of the
    /// client's messages being gathered before it: the message, or `None` for a QoS 2
    /// resend, acknowledged again and routed no more.
    pub(super) fn admit_publish(
        &mut self,
        mut p: Publish,
        pending: usize,
    ) -> Result<Option<Message>, Exit> {
        let limits = &self.broker.config().limits;
        self.inbound
            .resolve_alias(&mut p, limits.topic_alias_maximum)?;
        if p.topic.len() > limits.max_topic_length
            || topic::levels(&p.topic) > limits.max_topic_levels
        {
            return Err(Exit::protocol(
                ReasonCode::TopicNameInvalid,
                "topic exceeds the configured length or levels",
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Exit::protocol(
                ReasonCode::ProtocolError,
                "subscription identifier in a client PUBLISH",
            ));
        }
        let (qos, pid) = (p.qos, p.pid);
        self.broker.metrics().received_message();
        if qos == QoS::ExactlyOnce && self.session.is_receiving_qos2(pid) {
            // A resend of a message already routed: acknowledge again, route nothing.
            self.ack(
                Packet::Ack(Ack::new(AckKind::PubRec, pid)),
                false,
                Vec::new(),
            );
            return Ok(None);
        }
        if qos != QoS::AtMostOnce {
            self.check_receive_maximum(pending)?;
        }
        let mut msg = Message::from_publish(p, Some(self.client.client_id.clone()));
        msg.received = Some(self.last_read.into_std());
        Ok(Some(msg))
    }

    /// Routes or refuses a PUBLISH as the hooks said at `answered`; `qos` is the one it
    /// came with.
    pub(super) fn settle_publish(
        &mut self,
        msg: Message,
        pid: u16,
        qos: QoS,
        outcome: PublishOutcome,
        answered: Instant,
    ) {
        match outcome {
            PublishOutcome::Route { .. } if !crate::sys::client_may_publish(&msg.topic) => {
                let why = "refused: only the broker publishes under $SYS/";
                self.refuse_publish(qos, pid, ReasonCode::NotAuthorized, &msg.topic, why)
            }
            PublishOutcome::Route { throttle } => {
                if let Some(d) = throttle {
                    self.inbound.pause_until(answered + d);
                }
                self.route(Arc::new(msg), pid, qos);
                self.inbound.held = self.broker.pace().is_some_and(|b| b.is_over());
            }
            PublishOutcome::Refuse { code, why } => {
                self.refuse_publish(qos, pid, code, &msg.topic, why)
            }
        }
    }

    /// QoS 1 messages whose PUBACK is held, plus QoS 2 messages not yet released, may
    /// not exceed the Receive Maximum the broker announced. A 3.1.1 client was told no
    /// maximum (its packet ids bound what it can have open), and a 3.1.1 library may
    /// rightly send everything it queued at once after a reconnect (paho does; found by
    /// the chaos script).
    fn check_receive_maximum(&self, pending: usize) -> Result<(), Exit> {
        if self.client.version != Version::V5 {
            return Ok(());
        }
        let unacked = self.outbound.held_pubacks() + self.session.qos2_receipts() + pending;
        if unacked >= self.broker.config().limits.max_inflight as usize {
            return Err(Exit::protocol(
                ReasonCode::ReceiveMaximumExceeded,
                "client exceeded our Receive Maximum",
            ));
        }
        Ok(())
    }

    /// Routes an accepted message and acknowledges it once what it changed is durable,
    /// as the QoS it came with asks (a transform may have changed the message's).
    fn route(&mut self, msg: Arc<Message>, pid: u16, qos: QoS) {
        let routed = self.broker.publish(msg);
        let mut stored = routed.stored;
        self.inbound.wait_for(routed.hold, &self.session);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(
                Packet::Ack(Ack::new(AckKind::PubAck, pid)),
                stored,
                Vec::new(),
            ),
            QoS::ExactlyOnce => {
                stored |= self.broker.receive_qos2(&self.session, pid);
                self.ack(
                    Packet::Ack(Ack::new(AckKind::PubRec, pid)),
                    stored,
                    Vec::new(),
                );
            }
        }
    }

    /// Answers a PUBLISH that is not routed: a 5.0 publisher gets the reason code in its
    /// PUBACK or PUBREC; a 3.1.1 publisher (no way to say no) and QoS 0 get nothing.
    fn refuse_publish(&mut self, qos: QoS, pid: u16, code: ReasonCode, topic: &str, why: &str) {
        let who = Some(&self.client.client_id);
        self.broker.dropped(DropCause::Denied, 1, who, Some(topic));
        tracing::debug!(client_id = %self.client.client_id, topic, code = %code, "publish {why}");
        let kind = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => AckKind::PubAck,
            QoS::ExactlyOnce => AckKind::PubRec,
        };
        self.ack(
            Packet::Ack(Ack::with_code(kind, pid, code)),
            false,
            Vec::new(),
        );
    }

    fn on_ack(&mut self, a: Ack) {
        let v5 = self.client.version == Version::V5;
        let not_found = |known: bool| match known || !v5 {
            true => ReasonCode::Success,
            false => ReasonCode::PacketIdentifierNotFound,
        };
        match a.kind {
            AckKind::PubAck | AckKind::PubComp => {
                self.broker.acknowledged(&self.session, a.pid);
            }
            AckKind::PubRec if a.code.is_failure() => {
                self.broker.acknowledged(&self.session, a.pid);
            }
            AckKind::PubRec => {
                let known = self.broker.received(&self.session, a.pid);
                let code = not_found(known.is_some());
                let pubrel = Packet::Ack(Ack::with_code(AckKind::PubRel, a.pid, code));
                self.ack(pubrel, known == Some(true), Vec::new());
            }
            AckKind::PubRel => {
                let (had, stored) = self.broker.release_qos2(&self.session, a.pid);
                let code = not_found(had);
                let pubcomp = Packet::Ack(Ack::with_code(AckKind::PubComp, a.pid, code));
                self.ack(pubcomp, stored, Vec::new());
            }
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let sub_id = s.properties.subscription_identifiers.first().copied();
        if self.broker.hooks().limits_rate() {
            match self.client.hooks.rate_limit(RateEvent::Subscribe) {
                RateOutcome::Allow => {}
                RateOutcome::Reject(code) => {
                    let codes = vec![code; s.filters.len()];
                    self.suback(s.pid, codes, false, Vec::new());
                    return Ok(());
                }
                RateOutcome::Throttle(d) => self.inbound.pause_until(Instant::now() + d),
            }
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut then = Vec::new();
        let mut wait = false;
        for (filter, opts) in s.filters {
            codes.push(self.subscribe_one(&filter, opts, sub_id, &mut then, &mut wait)?);
        }
        let changed = codes.iter().any(|c| !c.is_failure());
        let stored = changed && self.broker.record_session(&self.session);
        self.suback(s.pid, codes, stored || wait, then);
        Ok(())
    }

    /// One filter of a SUBSCRIBE: its reason code, and the retained messages it gets
    /// added to `then`; sets `wait` if the SUBACK must wait for the next commit.
    fn subscribe_one(
        &mut self,
        filter: &str,
        opts: SubscriptionOptions,
        sub_id: Option<u32>,
        then: &mut Vec<Delivery>,
        wait: &mut bool,
    ) -> Result<ReasonCode, Exit> {
        let limits = &self.broker.config().limits;
        let shared = match topic::parse_shared(filter) {
            Ok(Some(_)) => true,
            Ok(None) if topic::validate_filter(filter).is_ok() => false,
            _ => return Ok(ReasonCode::TopicFilterInvalid),
        };
        if filter.len() > limits.max_topic_length || topic::levels(filter) > limits.max_topic_levels
        {
            return Ok(ReasonCode::TopicFilterInvalid);
        }
        let (filter, opts, shared) = match self.client.hooks.subscribe(filter, opts) {
            SubscribeOutcome::AsAsked => (filter.to_owned(), opts, shared),
            SubscribeOutcome::Deny(code) => return Ok(code),
            SubscribeOutcome::Rewrite { filter, qos } => {
                let shared = matches!(topic::parse_shared(&filter), Ok(Some(_)));
                (filter, SubscriptionOptions { qos, ..opts }, shared)
            }
        };
        let filter = filter.as_str();
        if shared && opts.no_local && self.client.version == Version::V5 {
            return Err(Exit::protocol(
                ReasonCode::ProtocolError,
                "No Local set on a shared subscription",
            ));
        }
        let decision = self
            .client
            .hooks
            .authorize(Action::Subscribe, filter, opts.qos, false);
        if let Decision::Deny(code) = decision {
            return Ok(code);
        }
        let done = self.broker.subscribe(&self.session, filter, opts, sub_id);
        *wait |= done.needs_sync;
        let send_retained = match opts.retain_handling {
            RetainHandling::SendAlways => true,
            RetainHandling::SendIfNew => !done.existed,
            RetainHandling::Never => false,
        };
        if send_retained && !shared {
            let authorizes = self.broker.hooks().authorizes();
            let hooks = &mut self.client.hooks;
            // A wildcard filter may cover topics this client may not read.
            let mut readable = |d: &Delivery| {
                let t = &d.message.topic;
                !authorizes || hooks.authorize(Action::Subscribe, t, d.qos, true) == Decision::Allow
            };
            let retained = self.broker.retained_for(filter, opts, sub_id);
            then.extend(retained.into_iter().filter(|d| readable(d)));
        }
        self.broker.events().emit(|| Event::Subscribed {
            client_id: self.client.client_id.clone(),
            filter: filter.to_owned(),
            qos: opts.qos as u8,
        });
        Ok(ReasonCode::granted(opts.qos as u8))
    }

    fn suback(&mut self, pid: u16, codes: Vec<ReasonCode>, stored: bool, then: Vec<Delivery>) {
        let suback = SubAck {
            pid,
            codes,
            properties: Properties::default(),
        };
        self.ack(Packet::SubAck(suback), stored, then);
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                let asked = SubscriptionOptions::default();
                let f = match self.client.hooks.subscribe(f, asked) {
                    SubscribeOutcome::Rewrite { filter, .. } => filter,
                    _ => f.clone(),
                };
                if !self.broker.unsubscribe(&self.session, &f) {
                    return ReasonCode::NoSubscriptionExisted;
                }
                self.broker.events().emit(|| Event::Unsubscribed {
                    client_id: self.client.client_id.clone(),
                    filter: f,
                });
                ReasonCode::Success
            })
            .collect();
        let stored = self.broker.record_session(&self.session);
        let unsuback = UnsubAck {
            pid: u.pid,
            codes,
            properties: Properties::default(),
        };
        self.ack(Packet::UnsubAck(unsuback), stored, Vec::new());
    }

    /// DISCONNECT always ends the connection: why.
    fn on_disconnect(&mut self, d: Disconnect) -> Exit {
        if let Some(e) = d.properties.session_expiry_interval {
            if self.inbound.connect_expiry == 0 && e != 0 {
                return Exit::protocol(
                    ReasonCode::ProtocolError,
                    "session expiry set on DISCONNECT after 0 at CONNECT",
                );
            }
            let max = self.broker.config().limits.max_session_expiry_secs;
            self.session.set_expiry(e.min(max));
        }
        Exit::ClientDisconnect {
            will: d.code == ReasonCode::DisconnectWithWill,
        }
    }
}
