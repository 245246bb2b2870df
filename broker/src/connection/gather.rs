//! PUBLISHes read together, handed to the hooks together. A plugin chain asks each
//! plugin once for a run of messages instead of once per message
//! ([`ClientHooks::publish_many`](crate::hooks::ClientHooks::publish_many)), which is
//! most of what asking plugins about every message costs.
//!
//! What the client sees is what it would see one message at a time: each message is
//! routed or refused in the order it came, and what stops reading after a message (a
//! rate limit's throttle, the pace, a slow consumer) stops the messages after it too.
//! Those wait here, answered, and go on in order when reading resumes; so does the
//! packet that ended the run, which must not overtake them.

use super::exit::Exit;
use super::Connection;
use crate::codec::{Packet, Publish, QoS};
use crate::hooks::PublishOutcome;
use crate::message::Message;
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// The most PUBLISHes gathered before the hooks are asked.
const GATHER_MAX: usize = 32;

#[derive(Default)]
pub(in crate::connection) struct Gathered {
    /// Read and checked, not yet asked about: each message, and the packet id and QoS
    /// it came with (a transform may change the message's QoS, not the acknowledgement).
    messages: Vec<Message>,
    acks: Vec<(u16, QoS)>,
    outcomes: Vec<PublishOutcome>,
    /// Answered, not yet routed or refused, held back by what stopped reading.
    answered: VecDeque<Answered>,
    /// The packet that ended the run, handled after it.
    after: Option<Packet>,
    /// The QoS 1 messages among them, not yet acknowledged: they count against the
    /// client's Receive Maximum as those already routed do.
    unacknowledged: usize,
}

struct Answered {
    message: Message,
    pid: u16,
    qos: QoS,
    outcome: PublishOutcome,
    at: Instant,
}

impl Gathered {
    pub(in crate::connection) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.answered.is_empty() && self.after.is_none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Checks a QoS 0 or 1 PUBLISH and gathers it; a full run is asked about.
    pub(super) fn gather(&mut self, p: Publish) -> Result<(), Exit> {
        let (qos, pid) = (p.qos, p.pid);
        let pending = self.inbound.gathered.unacknowledged;
        let Some(message) = self.admit_publish(p, pending)? else {
            return Ok(());
        };
        let g = &mut self.inbound.gathered;
        g.messages.push(message);
        g.acks.push((pid, qos));
        g.unacknowledged += (qos != QoS::AtMostOnce) as usize;
        if g.messages.len() >= GATHER_MAX {
            self.publish_gathered()?;
        }
        Ok(())
    }

    /// A packet that ends a run: handled once the run is.
    pub(super) fn gather_after(&mut self, packet: Packet) -> Result<(), Exit> {
        self.inbound.gathered.after = Some(packet);
        self.publish_gathered()
    }

    /// Asks the hooks about the gathered PUBLISHes, then routes or refuses them in
    /// order, as far as reading may go on.
    pub(super) fn publish_gathered(&mut self) -> Result<(), Exit> {
        let g = &mut self.inbound.gathered;
        if !g.messages.is_empty() {
            let (mut messages, mut outcomes) = (
                std::mem::take(&mut g.messages),
                std::mem::take(&mut g.outcomes),
            );
            self.client.hooks.publish_many(&mut messages, &mut outcomes);
            let g = &mut self.inbound.gathered;
            let at = Instant::now();
            let each = messages.drain(..).zip(g.acks.drain(..));
            for ((message, (pid, qos)), outcome) in each.zip(outcomes.drain(..)) {
                g.answered.push_back(Answered {
                    message,
                    pid,
                    qos,
                    outcome,
                    at,
                });
            }
            (g.messages, g.outcomes) = (messages, outcomes);
        }
        self.settle_gathered()
    }

    /// Routes or refuses the answered PUBLISHes in order while reading may go on, then
    /// handles the packet after them.
    pub(super) fn settle_gathered(&mut self) -> Result<(), Exit> {
        while self.reading() {
            let g = &mut self.inbound.gathered;
            let Some(a) = g.answered.pop_front() else {
                return match self.inbound.gathered.after.take() {
                    Some(packet) => self.handle(packet),
                    None => Ok(()),
                };
            };
            g.unacknowledged -= (a.qos != QoS::AtMostOnce) as usize;
            self.settle_publish(a.message, a.pid, a.qos, a.outcome, a.at);
        }
        Ok(())
    }
}
