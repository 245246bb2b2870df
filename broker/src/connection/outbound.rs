//! What goes to the client: acknowledgements, held until the store has made durable
//! what they promise, and deliveries moved from the session into the write buffer.

use super::framed::WRITE_HIGH_WATER;
use super::Connection;
use crate::codec::{self, Ack, AckKind, Packet, PropertySet, QoS};
use crate::hooks::DeliverOutcome;
use crate::message::{now_secs, Delivery, Message};
use crate::metrics::{DropCause, Histogram, Tally};
use crate::session::Outgoing;
use crate::FastMap;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::exit::Exit;

/// Deliveries moved into the write buffer per wake-up, at most.
const MAX_BATCH: usize = 512;

/// Output held back until the store has made what it promises durable: an
/// acknowledgement (with deliveries that must follow it, such as retained messages after
/// a SUBACK), or encoded deliveries whose packet ids were just stored.
struct Pending {
    ticket: u64,
    held: Held,
    then: Vec<Delivery>,
}

enum Held {
    Packet(Box<Packet>),
    Bytes(BytesMut),
}

/// The state of what goes to the client.
pub(super) struct Outbound {
    /// Held output, in order: nothing overtakes what is held.
    pending: VecDeque<Pending>,
    durable: watch::Receiver<u64>,
    /// Topic aliases we assigned towards the client.
    aliases: FastMap<Arc<str>, u16>,
    /// Reused between wake-ups so draining the session allocates nothing.
    batch: Vec<Outgoing>,
    /// The client's Receive Maximum, Maximum Packet Size and Topic Alias Maximum.
    receive_max: u16,
    max_packet: usize,
    alias_max: u16,
}

impl Outbound {
    /// For a client that asked for these limits in its CONNECT.
    pub(super) fn new(connect: &PropertySet, durable: watch::Receiver<u64>) -> Outbound {
        Outbound {
            pending: VecDeque::new(),
            durable,
            aliases: FastMap::default(),
            batch: Vec::new(),
            receive_max: connect.receive_maximum.unwrap_or(u16::MAX),
            max_packet: connect
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            alias_max: connect.topic_alias_maximum.unwrap_or(0),
        }
    }

    pub(super) fn client_max_packet(&self) -> usize {
        self.max_packet
    }

    /// Whether output waits for a commit.
    pub(super) fn is_holding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Completes when the store has made more durable.
    pub(super) async fn durable_changed(&mut self) {
        let _ = self.durable.changed().await;
    }

    /// PUBACKs held, for the Receive Maximum the broker announced.
    pub(super) fn held_pubacks(&self) -> usize {
        let is_puback = |p: &Pending| match &p.held {
            Held::Packet(p) => matches!(&**p, Packet::Ack(a) if a.kind == AckKind::PubAck),
            Held::Bytes(_) => false,
        };
        self.pending.iter().filter(|p| is_puback(p)).count()
    }

    /// The alias for `topic` towards the client, and whether it is new (the topic must
    /// go with it then). Most clients take no aliases: that case is inlined into every
    /// delivery, the lookup is not.
    #[inline]
    fn alias(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if self.alias_max == 0 {
            return None;
        }
        self.assign_alias(topic)
    }

    fn assign_alias(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if let Some(a) = self.aliases.get(topic) {
            return Some((*a, false));
        }
        if self.aliases.len() >= self.alias_max as usize {
            return None;
        }
        let a = self.aliases.len() as u16 + 1;
        self.aliases.insert(topic.clone(), a);
        Some((a, true))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Encodes a packet the broker builds itself into the write buffer.
    pub(super) fn emit(&mut self, packet: &Packet) {
        if let Err(e) = packet.encode(self.client.version, self.io.out()) {
            tracing::error!(client_id = %self.client.client_id, packet = packet.name(), error = %e, "packet not sent");
        }
    }

    /// Sends an acknowledgement now, or once the store has synced what it covers when
    /// `needs_sync`. Order is kept: nothing overtakes an acknowledgement that waits.
    pub(super) fn ack(&mut self, packet: Packet, needs_sync: bool, then: Vec<Delivery>) {
        let ticket = if needs_sync { self.broker.commit() } else { 0 };
        if ticket == 0 && !self.outbound.is_holding() {
            self.emit(&packet);
            for d in then {
                self.broker.queue_for(&self.session, d);
            }
        } else {
            self.outbound.pending.push_back(Pending {
                ticket,
                held: Held::Packet(Box::new(packet)),
                then,
            });
        }
    }

    /// Writes what the store has made durable by now.
    pub(super) fn release_acks(&mut self) -> Result<(), Exit> {
        if !self.outbound.is_holding() {
            return Ok(());
        }
        let durable = *self.outbound.durable.borrow_and_update();
        while self
            .outbound
            .pending
            .front()
            .is_some_and(|p| p.ticket <= durable)
        {
            let Some(p) = self.outbound.pending.pop_front() else {
                break;
            };
            match p.held {
                Held::Packet(packet) => self.emit(&packet),
                Held::Bytes(bytes) => self.io.out().extend_from_slice(&bytes),
            }
            for d in p.then {
                self.broker.queue_for(&self.session, d);
            }
        }
        Ok(())
    }

    /// Moves what the session may send now into the write buffer.
    pub(super) fn drain(&mut self) -> Result<(), Exit> {
        if self.io.out().len() >= WRITE_HIGH_WATER {
            // Write first; come back for more on the next turn.
            self.session.wake();
            return Ok(());
        }
        let window = self
            .outbound
            .receive_max
            .min(self.broker.config().limits.max_inflight) as usize;
        let now = now_secs();
        let mut batch = std::mem::take(&mut self.outbound.batch);
        let conn_id = self.client.conn_id;
        let taken = self
            .broker
            .take_sendable(&self.session, conn_id, window, MAX_BATCH, now, &mut batch)
            .ok_or(Exit::TakenOver)?;
        if batch.len() >= MAX_BATCH {
            self.session.wake();
        }
        let start = self.io.out().len();
        let mut latency = Latency::default();
        for o in batch.drain(..) {
            match o {
                Outgoing::PubRel { pid } => {
                    self.emit(&Packet::Ack(Ack::new(AckKind::PubRel, pid)));
                }
                Outgoing::Publish { pid, dup, delivery } => {
                    if let Some(d) = self.delivered(pid, delivery) {
                        if self.write_publish(pid, dup, &d, now) {
                            latency.observe(&d.message);
                        }
                    }
                }
            }
        }
        latency.record(self.broker.metrics().delivery_latency());
        self.outbound.batch = batch;
        // Stored packet ids must be durable before the client sees them; and nothing
        // may overtake output that is already held.
        let written = self.io.out().len() > start;
        if written && (taken.stored || self.outbound.is_holding()) {
            let ticket = if taken.stored {
                self.broker.commit()
            } else {
                0
            };
            let bytes = self.io.out().split_off(start);
            self.outbound.pending.push_back(Pending {
                ticket,
                held: Held::Bytes(bytes),
                then: Vec::new(),
            });
            self.release_acks()?;
        }
        Ok(())
    }

    /// The delivery as the `deliver` hooks leave it for this client; `None` if they drop
    /// it, which is done with it as if the client had acknowledged it.
    fn delivered(&mut self, pid: u16, d: Delivery) -> Option<Delivery> {
        match self.client.hooks.deliver(&d.message, d.qos, d.retain) {
            DeliverOutcome::Keep => Some(d),
            DeliverOutcome::Replace(m) => Some(Delivery {
                message: Arc::new(m),
                ..d
            }),
            DeliverOutcome::Drop => {
                let (who, topic) = (Some(&self.client.client_id), Some(&*d.message.topic));
                self.broker.dropped(DropCause::Delivery, 1, who, topic);
                if d.qos != QoS::AtMostOnce {
                    self.broker.acknowledged(&self.session, pid);
                }
                None
            }
        }
    }

    /// Encodes the PUBLISH; false if it was dropped as larger than the client takes.
    fn write_publish(&mut self, pid: u16, dup: bool, d: &Delivery, now: u64) -> bool {
        let msg = &d.message;
        let alias = self.outbound.alias(&msg.topic);
        // A resend must carry the topic itself: the alias mapping may be from a
        // connection that no longer exists.
        let topic: &str = match alias {
            Some((_, false)) if !dup => "",
            _ => &msg.topic,
        };
        let per = codec::PerDelivery {
            message_expiry_interval: msg.remaining_expiry(now),
            subscription_identifiers: &d.subscription_ids,
            topic_alias: alias.map(|(a, _)| a),
        };
        let header = codec::PublishHeader {
            dup,
            qos: d.qos,
            retain: d.retain,
            pid,
        };
        let version = self.client.version;
        let out = self.io.out();
        let before = out.len();
        let encoded = codec::encode_publish(
            out,
            version,
            header,
            topic,
            &msg.properties,
            Some(per),
            &msg.payload,
        );
        let fits = encoded.is_ok() && out.len() - before <= self.outbound.max_packet;
        if fits {
            self.broker.metrics().sent_message();
            return true;
        }
        out.truncate(before);
        if let Some((_, true)) = alias {
            self.outbound.aliases.remove(&msg.topic);
        }
        let who = Some(&self.client.client_id);
        self.broker
            .dropped(DropCause::TooLarge, 1, who, Some(&msg.topic));
        tracing::debug!(client_id = %self.client.client_id, topic = %msg.topic, "message larger than the client's maximum packet size dropped");
        if d.qos != QoS::AtMostOnce {
            self.broker.acknowledged(&self.session, pid);
        }
        false
    }
}

/// The delivery latencies of one write: one clock read for all of it, one atomic per
/// bucket touched when it is recorded.
#[derive(Default)]
struct Latency {
    now: Option<std::time::Instant>,
    tally: Tally,
}

impl Latency {
    fn observe(&mut self, msg: &Message) {
        let Some(received) = msg.received else { return };
        let now = *self.now.get_or_insert_with(std::time::Instant::now);
        self.tally.observe(now.saturating_duration_since(received));
    }

    fn record(self, into: &Histogram) {
        if self.now.is_some() {
            into.add(&self.tally);
        }
    }
}
