//! The hooks that reshape a message, each plugin seeing it as the one before left it:
//! `transform`, for every message a client publishes, and `deliver` (0.2.0), for every
//! message about to be sent to one subscriber. Both may keep, drop or replace it, and
//! both may let the broker reuse a `keep` or a payload-preserving `replace` for the
//! same client, topic and message header.

use super::answers::{self, Answer, Question, Replacement};
use super::call::{Ask, Call, Step};
use super::convert;
use super::guests::{Client, Guests, Reshaped, Reshaping};
use super::instance::Failure;
use super::instance::PluginCtx;
use super::kept::Kept;
use super::Hook;
use crate::codec::{QoS, ReasonCode};
use crate::config::OnError;
use crate::hooks::ClientInfo;
use crate::message::Message;
use std::sync::Arc;
use wasmtime::Store;

/// Which reshaping hook runs, and for a delivery, the QoS and retain flag the delivery
/// has whatever a plugin says.
#[derive(Clone, Copy)]
pub(super) enum Stage {
    Transform,
    Deliver { qos: QoS, retain: bool },
}

impl Stage {
    fn hook(self) -> Hook {
        match self {
            Stage::Transform => Hook::Transform,
            Stage::Deliver { .. } => Hook::Deliver,
        }
    }

    pub(super) fn question(self, header: u64) -> Question {
        match self {
            Stage::Transform => Question::Transform(header),
            Stage::Deliver { .. } => Question::Deliver(header),
        }
    }

    fn ask(
        self,
        g: &Guests,
        s: &mut Store<PluginCtx>,
        c: &Client,
        m: &Reshaping<'_>,
    ) -> wasmtime::Result<Reshaped> {
        match self {
            Stage::Transform => match &g.transformer {
                Some(h) => h.call_transform(s, c, m),
                None => Ok(Reshaped::Keep),
            },
            Stage::Deliver { .. } => match &g.deliverer {
                Some(h) => h.call_deliver(s, c, m),
                None => Ok(Reshaped::Keep),
            },
        }
    }

    /// What one plugin's answer does to `message`: kept (the answer kept for reuse if
    /// `reuse`), replaced in place, or dropped with the plugin's reason code.
    pub(super) fn apply(
        self,
        ask: &Ask<'_>,
        kept: &mut Kept,
        message: &mut Message,
        answer: Reshaped,
        reuse: Option<u32>,
        max_packet: usize,
    ) -> Result<Applied, Failure> {
        let question = |m: &Message| self.question(answers::header(m));
        let mut new = match answer {
            Reshaped::Keep => {
                if let Some(ms) = reuse {
                    ask.reuse(kept, &message.topic, question(message), Answer::Keep, ms);
                }
                return Ok(Applied::Kept);
            }
            Reshaped::Drop(code) => {
                let code = code.map(|c| convert::failure_code(c, "drop"));
                let code = code.transpose()?;
                ask.p.stats.denied();
                return Ok(Applied::Dropped(code));
            }
            Reshaped::Invalid(why) => {
                return Err(Failure::Invalid(format!("edited message {why}")))
            }
            Reshaped::Replace(m) => convert::replacement(m, message, max_packet)?,
            Reshaped::Edited(m) => edited(m, max_packet)?,
        };
        self.settle(&mut new);
        // Only an answer to be reused is kept (taking it clones the properties).
        let reusable = reuse.and_then(|ms| Some((ms, Replacement::of(&new, message)?)));
        if let Some((ms, r)) = reusable {
            let answer = Answer::Replace(Arc::new(r));
            ask.reuse(kept, &message.topic, question(message), answer, ms);
        }
        *message = new;
        Ok(Applied::Changed)
    }

    /// A delivery's QoS and retain flag are not a plugin's to change.
    fn settle(self, m: &mut Message) {
        if let Stage::Deliver { qos, retain } = self {
            (m.qos, m.retain) = (qos, retain);
        }
    }
}

/// What a plugin's answer did to a message.
pub(super) enum Applied {
    Kept,
    Changed,
    Dropped(Option<ReasonCode>),
}

/// Applies a reused answer to `message`: `Some(whether it changed it)`, or `None` if
/// there was none that fits (the plugin is asked).
pub(super) fn reapply(
    stage: Stage,
    reused: Option<Answer>,
    message: &mut Message,
    max: usize,
) -> Option<bool> {
    match reused? {
        Answer::Keep => Some(false),
        Answer::Replace(r) if r.apply(message, max) => {
            stage.settle(message);
            Some(true)
        }
        _ => None,
    }
}

/// A 0.3.0 plugin's edits, checked like an inbound PUBLISH (each edit was checked as it
/// was made; what is left is what only the whole message shows).
pub(super) fn edited(m: Message, max_packet: usize) -> Result<Message, Failure> {
    match convert::unfit(&m.topic, &m.payload, &m.properties, max_packet) {
        Some(why) => Err(Failure::Invalid(format!("edited message {why}"))),
        None => Ok(m),
    }
}

/// Why a message went no further: a transform's reason code for the publisher, or
/// `None` for a delivery (nobody is told).
pub(super) struct Dropped(pub Option<ReasonCode>);

impl Call<'_> {
    /// The transforms of a published message; the reason code for the publisher if one
    /// dropped it.
    pub(super) fn transform(
        &mut self,
        client: &ClientInfo<'_>,
        message: &mut Message,
    ) -> Option<ReasonCode> {
        let dropped = self.reshape(Stage::Transform, client, message).err()?;
        Some(dropped.0.unwrap_or(ReasonCode::ImplementationSpecificError))
    }

    /// Runs `stage` over `message`, changing it in place; whether anything changed it.
    pub(super) fn reshape(
        &mut self,
        stage: Stage,
        client: &ClientInfo<'_>,
        message: &mut Message,
    ) -> Result<bool, Dropped> {
        stage.settle(message);
        let max_packet = self.chain().max_packet;
        // A reused answer was given for the message as it came, not for what an earlier
        // plugin made of it: reuse stops at the first change.
        let mut changed = false;
        let mut record = self.client_record();
        let mut header = None;
        let mut question =
            |m: &Message| stage.question(*header.get_or_insert_with(|| answers::header(m)));
        let dropped = self.walk(
            stage.hook(),
            |kept, i, p| {
                let original = !changed;
                let ask = Ask { i, p, client };
                // Nothing is kept for a plugin that never allowed reuse.
                if original && p.answers.in_use() {
                    let reused = ask.reusable(kept, &message.topic, question(message));
                    if let Some(replaced) = reapply(stage, reused, message, max_packet) {
                        p.stats.reused();
                        changed |= replaced;
                        return Step::Next;
                    }
                }
                let c = record.of(client);
                let m = Reshaping::new(message);
                let answer = p.call_reusable(|g, s| stage.ask(g, s, c, &m));
                let decided = answer.and_then(|(r, grants)| {
                    let reuse = grants.reuse_ms.filter(|_| original);
                    Ok(
                        match stage.apply(&ask, kept, message, r, reuse, max_packet)? {
                            Applied::Kept => None,
                            Applied::Changed => {
                                changed = true;
                                None
                            }
                            Applied::Dropped(code) => Some(Dropped(code)),
                        },
                    )
                });
                Step::from(decided)
            },
            |_, policy| {
                let code = ReasonCode::ImplementationSpecificError;
                let code = matches!(stage, Stage::Transform).then_some(code);
                (policy == OnError::Deny).then_some(Dropped(code))
            },
        );
        dropped.map_or(Ok(changed), Err)
    }
}
