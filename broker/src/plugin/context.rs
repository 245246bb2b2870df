//! `weir:plugin/context` (0.3.0): the client and the message a hook call is about, as
//! handles the guest asks for fields. Lowering the whole client record into the guest
//! on every call (four strings and a list, each a separate allocation in the guest) was
//! most of what a hook call cost before the plugin did anything; now a field crosses
//! only when the plugin asks for it.
//!
//! A handle carries no state of its own: a call is about one client and one message or
//! a run of them, and they sit in the store's [`Scope`] for the call. A message
//! handle's number carries the call's number, so a handle used past its call stands for
//! nothing in a later call: it reads as empty and its edits go nowhere. A
//! `transform-many` call reads its run through one `messages` handle and answers each
//! message's edits as data: no call into the broker per message.

use super::bindings::weir::plugin::context::{self, HostClient, HostMessage, HostMessages};
use super::bindings::weir::plugin::types as wit;
use super::instance::PluginCtx;
use crate::codec::{Properties, QoS};
use crate::message::{now_secs, Message};
use bytes::Bytes;
use std::sync::Arc;
use wasmtime::component::Resource;

/// What a `context.client` handle stands for: the client of the current call.
pub struct ClientRef;

/// What a `context.message` handle stands for: the message of the current call.
pub struct MessageRef;

/// What a `context.messages` handle stands for: the messages of the current
/// `transform-many` call.
pub struct MessagesRef;

/// The client and message of the store's current call.
#[derive(Default)]
pub struct Scope {
    /// Kept after the call: the next call on this instance is most often for the same
    /// connection, and then setting it costs a pointer comparison.
    client: Option<Arc<wit::Client>>,
    /// The call's messages (taken when applied), each with why an edit made to it
    /// cannot be applied.
    messages: Vec<(Option<Message>, Option<String>)>,
    /// Which call this is, in the upper half of message handles' numbers.
    call: u16,
}

/// The most messages one call is about: the lower half of a handle's number.
const HANDLES_PER_CALL: usize = 1 << 16;

impl Scope {
    /// The call is about `client`; a borrow of handle 0 stands for it.
    pub fn enter(&mut self, client: &Arc<wit::Client>) -> Resource<ClientRef> {
        if !self.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            self.client = Some(client.clone());
        }
        Resource::new_borrow(0)
    }

    /// A new call about `messages`, which the plugin may edit.
    fn start<'m>(&mut self, messages: impl Iterator<Item = &'m Message>) {
        self.call = self.call.wrapping_add(1);
        self.messages.clear();
        let each = messages
            .take(HANDLES_PER_CALL)
            .map(|m| (Some(m.clone()), None));
        self.messages.extend(each);
    }

    /// The number of the handle of the call's message `i`.
    fn handle(&self, i: usize) -> u32 {
        (self.call as u32) << 16 | i as u32
    }

    /// The call is also about `messages` (`transform-many`): one borrowed handle for
    /// them all, the call's number in it.
    pub fn enter_run<'m>(
        &mut self,
        messages: impl Iterator<Item = &'m Message>,
    ) -> Resource<MessagesRef> {
        self.start(messages);
        Resource::new_borrow(self.handle(0))
    }

    /// The call is also about `message` alone, as a borrowed handle.
    pub fn enter_message(&mut self, message: &Message) -> Resource<MessageRef> {
        self.start(std::iter::once(message));
        Resource::new_borrow(self.handle(0))
    }

    /// Message `i` with `edits` made, in order, or why one of them cannot be made.
    pub fn edited_by(&mut self, i: usize, edits: Vec<wit::Edit>) -> Result<Message, String> {
        let mut m = self.edited(i)?;
        for e in edits {
            edit(&mut m, e)?;
        }
        Ok(m)
    }

    /// Message `i` with the edits another message of the call had made, given its
    /// properties `before` and `after` them: a message whose properties were the very
    /// same set gets the other's result shared, and only the other edits made.
    pub fn edited_like(
        &mut self,
        i: usize,
        edits: &[wit::Edit],
        (before, after): (&Properties, Option<&Properties>),
    ) -> Result<Message, String> {
        let mut m = self.edited(i)?;
        let shared = after.filter(|_| m.properties.shares(before));
        for e in edits {
            if shared.is_none() || !touches_properties(e) {
                edit(&mut m, e.clone())?;
            }
        }
        if let Some(after) = shared {
            m.properties = after.clone();
        }
        Ok(m)
    }

    /// Message `i`'s properties as it came.
    pub fn properties_of(&self, i: usize) -> Option<Properties> {
        let (m, _) = self.messages.get(i)?;
        m.as_ref().map(|m| m.properties.clone())
    }

    /// Message `i` as the call's edits left it, or why they cannot be applied.
    pub fn edited(&mut self, i: usize) -> Result<Message, String> {
        let gone = || "no such message in this call".to_string();
        match self.messages.get_mut(i) {
            Some((_, Some(why))) => Err(std::mem::take(why)),
            Some((m, None)) => m.take().ok_or_else(gone),
            None => Err(gone()),
        }
    }

    /// Forgets the call's messages.
    pub fn leave_messages(&mut self) {
        self.messages.clear();
    }

    fn client(&self) -> Option<&wit::Client> {
        self.client.as_deref()
    }

    /// The message a handle stands for, if it is one of this call's.
    fn message(&mut self, rep: u32) -> Option<&mut (Option<Message>, Option<String>)> {
        if rep >> 16 != self.call as u32 {
            return None;
        }
        self.messages.get_mut((rep & 0xFFFF) as usize)
    }

    /// Makes an edit to message `rep`, or remembers the first that cannot be made.
    fn edit(&mut self, rep: u32, e: wit::Edit) {
        if let Some((Some(m), invalid)) = self.message(rep) {
            if invalid.is_none() {
                if let Err(why) = edit(m, e) {
                    *invalid = Some(why);
                }
            }
        }
    }

    /// Message `i` of the run whose handle is `rep`, as it came (or as a single call's
    /// edits left it).
    fn in_run(&self, rep: u32, i: u32) -> Option<&Message> {
        if rep >> 16 != self.call as u32 {
            return None;
        }
        let (m, _) = self.messages.get(i as usize)?;
        m.as_ref()
    }
}

/// One edit of a message, checked as an inbound PUBLISH's field is: a topic that is not
/// a valid topic name, a QoS above 2, or an invalid response topic cannot be made.
fn edit(m: &mut Message, e: wit::Edit) -> Result<(), String> {
    use wit::Edit as E;
    match e {
        E::Topic(topic) => {
            crate::topic::validate_name(&topic)
                .map_err(|e| format!("set an invalid topic: {e}"))?;
            m.topic = Arc::from(topic);
        }
        E::Payload(payload) => m.payload = Bytes::from(payload),
        E::Qos(qos) => m.qos = QoS::from_u8(qos).ok_or_else(|| format!("set QoS {qos}"))?,
        E::Retain(retain) => m.retain = retain,
        E::MessageExpiry(seconds) => m.expires_at = seconds.map(|s| now_secs() + s as u64),
        E::PayloadUtf8(utf8) => m.properties.payload_format_indicator = utf8.then_some(1),
        E::ContentType(content_type) => m.properties.content_type = content_type,
        E::ResponseTopic(topic) => {
            if topic
                .as_deref()
                .is_some_and(|t| crate::topic::validate_name(t).is_err())
            {
                return Err("set an invalid response topic".into());
            }
            m.properties.response_topic = topic;
        }
        E::CorrelationData(data) => m.properties.correlation_data = data.map(Bytes::from),
        E::AddUserProperty(p) => m.properties.user_properties.push((p.name, p.value)),
        E::RemoveUserProperty(name) => m.properties.user_properties.retain(|(n, _)| *n != name),
    }
    Ok(())
}

/// Does the edit change the message's properties (rather than its topic, payload,
/// QoS, retain flag or expiry)?
fn touches_properties(e: &wit::Edit) -> bool {
    use wit::Edit as E;
    !matches!(
        e,
        E::Topic(_) | E::Payload(_) | E::Qos(_) | E::Retain(_) | E::MessageExpiry(_)
    )
}

/// What `transform` and `deliver` are handed with the message handle.
pub fn header(m: &Message) -> wit::MessageHeader {
    wit::MessageHeader {
        topic: m.topic.to_string(),
        qos: m.qos as u8,
        retain: m.retain,
        payload_len: m.payload.len().min(u32::MAX as usize) as u32,
        message_expiry: m.remaining_expiry_now(),
        payload_utf8: m.properties.payload_format_indicator == Some(1),
    }
}

impl context::Host for PluginCtx {}

impl HostClient for PluginCtx {
    fn client_id(&mut self, _: Resource<ClientRef>) -> String {
        let c = self.scope.client();
        c.map(|c| c.client_id.clone()).unwrap_or_default()
    }

    fn username(&mut self, _: Resource<ClientRef>) -> Option<String> {
        self.scope.client().and_then(|c| c.username.clone())
    }

    fn peer(&mut self, _: Resource<ClientRef>) -> String {
        let c = self.scope.client();
        c.map(|c| c.peer.clone()).unwrap_or_default()
    }

    fn listener(&mut self, _: Resource<ClientRef>) -> String {
        let c = self.scope.client();
        c.map(|c| c.listener.clone()).unwrap_or_default()
    }

    fn attribute(&mut self, _: Resource<ClientRef>, name: String) -> Option<String> {
        let c = self.scope.client()?;
        let found = c.attributes.iter().find(|p| p.name == name);
        found.map(|p| p.value.clone())
    }

    fn attributes(&mut self, _: Resource<ClientRef>) -> Vec<wit::Pair> {
        let c = self.scope.client();
        c.map(|c| c.attributes.clone()).unwrap_or_default()
    }

    /// Only borrows are ever handed out, and those the component model ends itself.
    fn drop(&mut self, _: Resource<ClientRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl PluginCtx {
    /// Runs `f` on the call's message, if there is one (there always is while a
    /// message handle can be used).
    fn with_message<R: Default>(
        &mut self,
        r: Resource<MessageRef>,
        f: impl FnOnce(&mut Message) -> R,
    ) -> R {
        let m = self.scope.message(r.rep()).and_then(|(m, _)| m.as_mut());
        m.map(f).unwrap_or_default()
    }
}

/// The user properties, as pairs.
fn pairs(m: &Message) -> Vec<wit::Pair> {
    let pairs = m.properties.user_properties.iter();
    let pair = |(name, value): &(String, String)| wit::Pair {
        name: name.clone(),
        value: value.clone(),
    };
    pairs.map(pair).collect()
}

/// The first user property called `name`.
fn first(m: &Message, name: &str) -> Option<String> {
    let mut pairs = m.properties.user_properties.iter();
    pairs.find(|(n, _)| *n == name).map(|(_, v)| v.clone())
}

fn correlation(m: &Message) -> Option<Vec<u8>> {
    m.properties.correlation_data.as_ref().map(|c| c.to_vec())
}

impl HostMessage for PluginCtx {
    fn topic(&mut self, r: Resource<MessageRef>) -> String {
        self.with_message(r, |m| m.topic.to_string())
    }

    fn payload(&mut self, r: Resource<MessageRef>) -> Vec<u8> {
        self.with_message(r, |m| m.payload.to_vec())
    }

    fn content_type(&mut self, r: Resource<MessageRef>) -> Option<String> {
        self.with_message(r, |m| m.properties.content_type.clone())
    }

    fn response_topic(&mut self, r: Resource<MessageRef>) -> Option<String> {
        self.with_message(r, |m| m.properties.response_topic.clone())
    }

    fn correlation_data(&mut self, r: Resource<MessageRef>) -> Option<Vec<u8>> {
        self.with_message(r, |m| correlation(m))
    }

    fn user_properties(&mut self, r: Resource<MessageRef>) -> Vec<wit::Pair> {
        self.with_message(r, |m| pairs(m))
    }

    fn user_property(&mut self, r: Resource<MessageRef>, name: String) -> Option<String> {
        self.with_message(r, |m| first(m, &name))
    }

    fn set_topic(&mut self, r: Resource<MessageRef>, topic: String) {
        self.scope.edit(r.rep(), wit::Edit::Topic(topic))
    }

    fn set_payload(&mut self, r: Resource<MessageRef>, payload: Vec<u8>) {
        self.scope.edit(r.rep(), wit::Edit::Payload(payload))
    }

    fn set_qos(&mut self, r: Resource<MessageRef>, qos: u8) {
        self.scope.edit(r.rep(), wit::Edit::Qos(qos))
    }

    fn set_retain(&mut self, r: Resource<MessageRef>, retain: bool) {
        self.scope.edit(r.rep(), wit::Edit::Retain(retain))
    }

    fn set_message_expiry(&mut self, r: Resource<MessageRef>, seconds: Option<u32>) {
        self.scope.edit(r.rep(), wit::Edit::MessageExpiry(seconds))
    }

    fn set_payload_utf8(&mut self, r: Resource<MessageRef>, utf8: bool) {
        self.scope.edit(r.rep(), wit::Edit::PayloadUtf8(utf8))
    }

    fn set_content_type(&mut self, r: Resource<MessageRef>, content_type: Option<String>) {
        self.scope
            .edit(r.rep(), wit::Edit::ContentType(content_type))
    }

    fn set_response_topic(&mut self, r: Resource<MessageRef>, topic: Option<String>) {
        self.scope.edit(r.rep(), wit::Edit::ResponseTopic(topic))
    }

    fn set_correlation_data(&mut self, r: Resource<MessageRef>, data: Option<Vec<u8>>) {
        self.scope.edit(r.rep(), wit::Edit::CorrelationData(data))
    }

    fn add_user_property(&mut self, r: Resource<MessageRef>, name: String, value: String) {
        let pair = wit::Pair { name, value };
        self.scope.edit(r.rep(), wit::Edit::AddUserProperty(pair))
    }

    fn remove_user_property(&mut self, r: Resource<MessageRef>, name: String) {
        self.scope
            .edit(r.rep(), wit::Edit::RemoveUserProperty(name))
    }

    /// Only borrows are handed out.
    fn drop(&mut self, _: Resource<MessageRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl PluginCtx {
    /// Runs `f` on message `i` of the call's run, if there is one.
    fn with_run<R: Default>(
        &self,
        r: Resource<MessagesRef>,
        i: u32,
        f: impl FnOnce(&Message) -> R,
    ) -> R {
        self.scope.in_run(r.rep(), i).map(f).unwrap_or_default()
    }
}

impl HostMessages for PluginCtx {
    fn topic(&mut self, r: Resource<MessagesRef>, i: u32) -> String {
        self.with_run(r, i, |m| m.topic.to_string())
    }

    fn payload(&mut self, r: Resource<MessagesRef>, i: u32) -> Vec<u8> {
        self.with_run(r, i, |m| m.payload.to_vec())
    }

    fn content_type(&mut self, r: Resource<MessagesRef>, i: u32) -> Option<String> {
        self.with_run(r, i, |m| m.properties.content_type.clone())
    }

    fn response_topic(&mut self, r: Resource<MessagesRef>, i: u32) -> Option<String> {
        self.with_run(r, i, |m| m.properties.response_topic.clone())
    }

    fn correlation_data(&mut self, r: Resource<MessagesRef>, i: u32) -> Option<Vec<u8>> {
        self.with_run(r, i, correlation)
    }

    fn user_properties(&mut self, r: Resource<MessagesRef>, i: u32) -> Vec<wit::Pair> {
        self.with_run(r, i, pairs)
    }

    fn user_property(&mut self, r: Resource<MessagesRef>, i: u32, name: String) -> Option<String> {
        self.with_run(r, i, |m| first(m, &name))
    }

    /// Only borrows are handed out.
    fn drop(&mut self, _: Resource<MessagesRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}
