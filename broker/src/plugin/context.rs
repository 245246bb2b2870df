//! `weir:plugin/context` (0.3.0): the client and the message a hook call is about, as
//! handles the guest asks for fields. Lowering the whole client record into the guest
//! on every call (four strings and a list, each a separate allocation in the guest) was
//! most of what a hook call cost before the plugin did anything; now a field crosses
//! only when the plugin asks for it.
//!
//! A handle carries no state of its own: a call is about one client and one message or
//! a batch of them, and they sit in the store's [`Scope`] for the call. A message
//! handle's number is its place in the batch and the call's number, so a handle a
//! plugin keeps past its call (`transform-many` hands out owned ones) stands for
//! nothing in a later call: it reads as empty and its edits go nowhere.

use super::bindings::weir::plugin::context::{self, HostClient, HostMessage};
use super::bindings::weir::plugin::types as wit;
use super::instance::PluginCtx;
use crate::codec::QoS;
use crate::message::{now_secs, Message};
use bytes::Bytes;
use std::sync::Arc;
use wasmtime::component::Resource;

/// What a `context.client` handle stands for: the client of the current call.
pub struct ClientRef;

/// What a `context.message` handle stands for: the message of the current call.
pub struct MessageRef;

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

    /// The call is also about `messages` (`transform-many`): an owned handle for each.
    pub fn enter_messages<'m>(
        &mut self,
        messages: impl Iterator<Item = &'m Message>,
    ) -> Vec<Resource<MessageRef>> {
        self.start(messages);
        let each = (0..self.messages.len()).map(|i| Resource::new_own(self.handle(i)));
        each.collect()
    }

    /// The call is also about `message` alone, as a borrowed handle.
    pub fn enter_message(&mut self, message: &Message) -> Resource<MessageRef> {
        self.start(std::iter::once(message));
        Resource::new_borrow(self.handle(0))
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

    /// Remembers the first edit to message `rep` that cannot be applied.
    fn refuse(&mut self, rep: u32, why: String) {
        if let Some((_, invalid)) = self.message(rep) {
            invalid.get_or_insert(why);
        }
    }
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
        self.with_message(r, |m| {
            m.properties.correlation_data.as_ref().map(|c| c.to_vec())
        })
    }

    fn user_properties(&mut self, r: Resource<MessageRef>) -> Vec<wit::Pair> {
        self.with_message(r, |m| {
            let pairs = m.properties.user_properties.iter();
            pairs
                .map(|(name, value)| wit::Pair {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        })
    }

    fn user_property(&mut self, r: Resource<MessageRef>, name: String) -> Option<String> {
        self.with_message(r, |m| {
            let mut pairs = m.properties.user_properties.iter();
            pairs.find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        })
    }

    fn set_topic(&mut self, r: Resource<MessageRef>, topic: String) {
        if let Err(e) = crate::topic::validate_name(&topic) {
            return self
                .scope
                .refuse(r.rep(), format!("set an invalid topic: {e}"));
        }
        self.with_message(r, |m| m.topic = Arc::from(topic));
    }

    fn set_payload(&mut self, r: Resource<MessageRef>, payload: Vec<u8>) {
        self.with_message(r, |m| m.payload = Bytes::from(payload));
    }

    fn set_qos(&mut self, r: Resource<MessageRef>, qos: u8) {
        match QoS::from_u8(qos) {
            Some(q) => self.with_message(r, |m| m.qos = q),
            None => self.scope.refuse(r.rep(), format!("set QoS {qos}")),
        }
    }

    fn set_retain(&mut self, r: Resource<MessageRef>, retain: bool) {
        self.with_message(r, |m| m.retain = retain);
    }

    fn set_message_expiry(&mut self, r: Resource<MessageRef>, seconds: Option<u32>) {
        self.with_message(r, |m| m.expires_at = seconds.map(|s| now_secs() + s as u64));
    }

    fn set_payload_utf8(&mut self, r: Resource<MessageRef>, utf8: bool) {
        self.with_message(r, |m| {
            m.properties.payload_format_indicator = utf8.then_some(1)
        });
    }

    fn set_content_type(&mut self, r: Resource<MessageRef>, content_type: Option<String>) {
        self.with_message(r, |m| m.properties.content_type = content_type);
    }

    fn set_response_topic(&mut self, r: Resource<MessageRef>, topic: Option<String>) {
        if let Some(t) = &topic {
            if crate::topic::validate_name(t).is_err() {
                return self
                    .scope
                    .refuse(r.rep(), "set an invalid response topic".into());
            }
        }
        self.with_message(r, |m| m.properties.response_topic = topic);
    }

    fn set_correlation_data(&mut self, r: Resource<MessageRef>, data: Option<Vec<u8>>) {
        self.with_message(r, |m| m.properties.correlation_data = data.map(Bytes::from));
    }

    fn add_user_property(&mut self, r: Resource<MessageRef>, name: String, value: String) {
        self.with_message(r, |m| m.properties.user_properties.push((name, value)));
    }

    fn remove_user_property(&mut self, r: Resource<MessageRef>, name: String) {
        self.with_message(r, |m| {
            m.properties.user_properties.retain(|(n, _)| *n != name)
        });
    }

    /// `transform-many`'s owned handles are dropped by the plugin; the messages are
    /// the call's, forgotten when it ends.
    fn drop(&mut self, _: Resource<MessageRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}
