//! The message `transform` and `deliver` are called about. In a single call it is the
//! broker's `message` handle, each getter and edit a call into the broker. In a batch
//! call (`transform-many`) the edits are kept here and go back with the answer, and the
//! getters ask the broker's `messages` handle for the message as it came and show the
//! edits made so far on top: a run of messages costs no call into the broker per
//! message. The plugin sees the same either way.

use super::context;
use super::types::{Edit, EditedOutcome, Pair, TransformOutcome};
use std::cell::RefCell;

/// A message being transformed or delivered: getters see the edits made so far, and
/// the edits count if the hook answers `Apply`.
pub struct Message<'a> {
    source: Source<'a>,
}

enum Source<'a> {
    Handle(&'a context::Message),
    Run {
        messages: &'a context::Messages,
        i: u32,
        edits: RefCell<Vec<Edit>>,
    },
}

impl<'a> Message<'a> {
    #[doc(hidden)]
    pub fn handle(message: &'a context::Message) -> Message<'a> {
        Message {
            source: Source::Handle(message),
        }
    }

    #[doc(hidden)]
    pub fn in_run(messages: &'a context::Messages, i: u32) -> Message<'a> {
        let edits = RefCell::new(Vec::new());
        Message {
            source: Source::Run { messages, i, edits },
        }
    }

    /// A batch call's answer: the hook's, with the edits it made.
    #[doc(hidden)]
    pub fn answer(self, outcome: TransformOutcome) -> EditedOutcome {
        match outcome {
            TransformOutcome::Keep => EditedOutcome::Keep,
            TransformOutcome::Drop(code) => EditedOutcome::Drop(code),
            TransformOutcome::Apply => EditedOutcome::Apply(match self.source {
                Source::Run { edits, .. } => edits.into_inner(),
                Source::Handle(_) => Vec::new(),
            }),
        }
    }

    /// A batch call's answers, each `apply` whose edits are the last `apply`'s answered
    /// `same-as` it instead: the broker reads a tag added to a whole run once.
    #[doc(hidden)]
    pub fn repeats_as_same<G>(answers: &mut [(EditedOutcome, G)]) {
        let mut last: Option<usize> = None;
        for i in 0..answers.len() {
            let EditedOutcome::Apply(edits) = &answers[i].0 else {
                continue;
            };
            if let Some(j) = last {
                if matches!(&answers[j].0, EditedOutcome::Apply(first) if first == edits) {
                    answers[i].0 = EditedOutcome::SameAs(j as u32);
                    continue;
                }
            }
            last = Some(i);
        }
    }

    /// An edit: made through the handle, or kept for the answer.
    fn edit(&self, handle: impl FnOnce(&context::Message), edit: impl FnOnce() -> Edit) {
        match &self.source {
            Source::Handle(m) => handle(m),
            Source::Run { edits, .. } => edits.borrow_mut().push(edit()),
        }
    }

    /// A field: the latest edit of it (`latest` picks it out), else as the message came.
    fn field<T>(
        &self,
        handle: impl FnOnce(&context::Message) -> T,
        latest: impl Fn(&Edit) -> Option<T>,
        came: impl FnOnce(&context::Messages, u32) -> T,
    ) -> T {
        match &self.source {
            Source::Handle(m) => handle(m),
            Source::Run { messages, i, edits } => {
                let edited = edits.borrow().iter().rev().find_map(latest);
                edited.unwrap_or_else(|| came(messages, *i))
            }
        }
    }

    pub fn topic(&self) -> String {
        self.field(
            |m| m.topic(),
            |e| match e {
                Edit::Topic(t) => Some(t.clone()),
                _ => None,
            },
            |ms, i| ms.topic(i),
        )
    }

    pub fn payload(&self) -> Vec<u8> {
        self.field(
            |m| m.payload(),
            |e| match e {
                Edit::Payload(p) => Some(p.clone()),
                _ => None,
            },
            |ms, i| ms.payload(i),
        )
    }

    pub fn content_type(&self) -> Option<String> {
        self.field(
            |m| m.content_type(),
            |e| match e {
                Edit::ContentType(c) => Some(c.clone()),
                _ => None,
            },
            |ms, i| ms.content_type(i),
        )
    }

    pub fn response_topic(&self) -> Option<String> {
        self.field(
            |m| m.response_topic(),
            |e| match e {
                Edit::ResponseTopic(t) => Some(t.clone()),
                _ => None,
            },
            |ms, i| ms.response_topic(i),
        )
    }

    pub fn correlation_data(&self) -> Option<Vec<u8>> {
        self.field(
            |m| m.correlation_data(),
            |e| match e {
                Edit::CorrelationData(d) => Some(d.clone()),
                _ => None,
            },
            |ms, i| ms.correlation_data(i),
        )
    }

    pub fn user_properties(&self) -> Vec<Pair> {
        match &self.source {
            Source::Handle(m) => m.user_properties(),
            Source::Run { messages, i, edits } => {
                let mut pairs = messages.user_properties(*i);
                for e in edits.borrow().iter() {
                    match e {
                        Edit::AddUserProperty(p) => pairs.push(p.clone()),
                        Edit::RemoveUserProperty(n) => pairs.retain(|p| p.name != *n),
                        _ => {}
                    }
                }
                pairs
            }
        }
    }

    /// The first user property called `name`.
    pub fn user_property(&self, name: &str) -> Option<String> {
        match &self.source {
            Source::Handle(m) => m.user_property(name),
            Source::Run { messages, i, edits } => {
                let touched = edits
                    .borrow()
                    .iter()
                    .any(|e| matches!(e, Edit::AddUserProperty(_) | Edit::RemoveUserProperty(_)));
                if !touched {
                    return messages.user_property(*i, name);
                }
                let pairs = self.user_properties().into_iter();
                pairs.filter(|p| p.name == name).map(|p| p.value).next()
            }
        }
    }

    pub fn set_topic(&self, topic: &str) {
        self.edit(|m| m.set_topic(topic), || Edit::Topic(topic.into()))
    }

    pub fn set_payload(&self, payload: &[u8]) {
        self.edit(|m| m.set_payload(payload), || Edit::Payload(payload.into()))
    }

    /// Ignored by `deliver`: a delivery's QoS and retain flag are the broker's.
    pub fn set_qos(&self, qos: u8) {
        self.edit(|m| m.set_qos(qos), || Edit::Qos(qos))
    }

    pub fn set_retain(&self, retain: bool) {
        self.edit(|m| m.set_retain(retain), || Edit::Retain(retain))
    }

    /// Seconds until it expires.
    pub fn set_message_expiry(&self, seconds: Option<u32>) {
        let edit = || Edit::MessageExpiry(seconds);
        self.edit(|m| m.set_message_expiry(seconds), edit)
    }

    /// The payload format indicator: true when the payload is UTF-8.
    pub fn set_payload_utf8(&self, utf8: bool) {
        self.edit(|m| m.set_payload_utf8(utf8), || Edit::PayloadUtf8(utf8))
    }

    pub fn set_content_type(&self, content_type: Option<&str>) {
        let edit = || Edit::ContentType(content_type.map(str::to_owned));
        self.edit(|m| m.set_content_type(content_type), edit)
    }

    pub fn set_response_topic(&self, topic: Option<&str>) {
        let edit = || Edit::ResponseTopic(topic.map(str::to_owned));
        self.edit(|m| m.set_response_topic(topic), edit)
    }

    pub fn set_correlation_data(&self, data: Option<&[u8]>) {
        let edit = || Edit::CorrelationData(data.map(<[u8]>::to_vec));
        self.edit(|m| m.set_correlation_data(data), edit)
    }

    pub fn add_user_property(&self, name: &str, value: &str) {
        let pair = || Pair {
            name: name.into(),
            value: value.into(),
        };
        let edit = || Edit::AddUserProperty(pair());
        self.edit(|m| m.add_user_property(name, value), edit)
    }

    /// Removes every user property called `name`.
    pub fn remove_user_property(&self, name: &str) {
        let edit = || Edit::RemoveUserProperty(name.into());
        self.edit(|m| m.remove_user_property(name), edit)
    }
}
