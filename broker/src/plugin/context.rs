//! `weir:plugin/context` (0.3.0): the client and the message a hook call is about, as
//! handles the guest asks for fields. Lowering the whole client record into the guest
//! on every call (four strings and a list, each a separate allocation in the guest) was
//! most of what a hook call cost before the plugin did anything; now a field crosses
//! only when the plugin asks for it.
//!
//! A handle carries no state of its own: a call is about one client and at most one
//! message, and they sit in the store's [`Scope`] for the call. The guest only ever
//! receives `borrow`s, which the component model ends with the call, so a handle can
//! never outlive what it stands for.

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
    message: Option<Message>,
    /// Why an edit made during this call cannot be applied.
    invalid: Option<String>,
}

impl Scope {
    /// The call is about `client`; a borrow of handle 0 stands for it.
    pub fn enter(&mut self, client: &Arc<wit::Client>) -> Resource<ClientRef> {
        if !self.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            self.client = Some(client.clone());
        }
        Resource::new_borrow(0)
    }

    /// The call is also about `message`, which the plugin may edit.
    pub fn enter_message(&mut self, message: &Message) -> Resource<MessageRef> {
        self.message = Some(message.clone());
        self.invalid = None;
        Resource::new_borrow(0)
    }

    /// The message as the call's edits left it, or why they cannot be applied.
    pub fn edited(&mut self) -> Result<Message, String> {
        let m = self.message.take();
        match self.invalid.take() {
            Some(why) => Err(why),
            None => m.ok_or_else(|| "no message in this call".to_string()),
        }
    }

    /// Forgets the call's message (its edits are not applied).
    pub fn leave_message(&mut self) {
        self.message = None;
        self.invalid = None;
    }

    fn client(&self) -> Option<&wit::Client> {
        self.client.as_deref()
    }

    fn message(&mut self) -> Option<&mut Message> {
        self.message.as_mut()
    }

    /// Remembers the first edit that cannot be applied.
    fn refuse(&mut self, why: String) {
        self.invalid.get_or_insert(why);
    }
}

/// What `transform` and `deliver` are handed with the message handle.
pub fn header(m: &Message) -> wit::MessageHeader {
    wit::MessageHeader {
        topic: m.topic.to_string(),
        qos: m.qos as u8,
        retain: m.retain,
        payload_len: m.payload.len().min(u32::MAX as usize) as u32,
        message_expiry: m.remaining_expiry(now_secs()),
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
    fn with_message<R: Default>(&mut self, f: impl FnOnce(&mut Message) -> R) -> R {
        self.scope.message().map(f).unwrap_or_default()
    }
}

impl HostMessage for PluginCtx {
    fn topic(&mut self, _: Resource<MessageRef>) -> String {
        self.with_message(|m| m.topic.to_string())
    }

    fn payload(&mut self, _: Resource<MessageRef>) -> Vec<u8> {
        self.with_message(|m| m.payload.to_vec())
    }

    fn content_type(&mut self, _: Resource<MessageRef>) -> Option<String> {
        self.with_message(|m| m.properties.content_type.clone())
    }

    fn response_topic(&mut self, _: Resource<MessageRef>) -> Option<String> {
        self.with_message(|m| m.properties.response_topic.clone())
    }

    fn correlation_data(&mut self, _: Resource<MessageRef>) -> Option<Vec<u8>> {
        self.with_message(|m| m.properties.correlation_data.as_ref().map(|c| c.to_vec()))
    }

    fn user_properties(&mut self, _: Resource<MessageRef>) -> Vec<wit::Pair> {
        self.with_message(|m| {
            let pairs = m.properties.user_properties.iter();
            pairs
                .map(|(name, value)| wit::Pair {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        })
    }

    fn user_property(&mut self, _: Resource<MessageRef>, name: String) -> Option<String> {
        self.with_message(|m| {
            let mut pairs = m.properties.user_properties.iter();
            pairs.find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        })
    }

    fn set_topic(&mut self, _: Resource<MessageRef>, topic: String) {
        if let Err(e) = crate::topic::validate_name(&topic) {
            return self.scope.refuse(format!("set an invalid topic: {e}"));
        }
        self.with_message(|m| m.topic = Arc::from(topic));
    }

    fn set_payload(&mut self, _: Resource<MessageRef>, payload: Vec<u8>) {
        self.with_message(|m| m.payload = Bytes::from(payload));
    }

    fn set_qos(&mut self, _: Resource<MessageRef>, qos: u8) {
        match QoS::from_u8(qos) {
            Some(q) => self.with_message(|m| m.qos = q),
            None => self.scope.refuse(format!("set QoS {qos}")),
        }
    }

    fn set_retain(&mut self, _: Resource<MessageRef>, retain: bool) {
        self.with_message(|m| m.retain = retain);
    }

    fn set_message_expiry(&mut self, _: Resource<MessageRef>, seconds: Option<u32>) {
        self.with_message(|m| m.expires_at = seconds.map(|s| now_secs() + s as u64));
    }

    fn set_payload_utf8(&mut self, _: Resource<MessageRef>, utf8: bool) {
        self.with_message(|m| m.properties.payload_format_indicator = utf8.then_some(1));
    }

    fn set_content_type(&mut self, _: Resource<MessageRef>, content_type: Option<String>) {
        self.with_message(|m| m.properties.content_type = content_type);
    }

    fn set_response_topic(&mut self, _: Resource<MessageRef>, topic: Option<String>) {
        if let Some(t) = &topic {
            if crate::topic::validate_name(t).is_err() {
                return self.scope.refuse("set an invalid response topic".into());
            }
        }
        self.with_message(|m| m.properties.response_topic = topic);
    }

    fn set_correlation_data(&mut self, _: Resource<MessageRef>, data: Option<Vec<u8>>) {
        self.with_message(|m| m.properties.correlation_data = data.map(Bytes::from));
    }

    fn add_user_property(&mut self, _: Resource<MessageRef>, name: String, value: String) {
        self.with_message(|m| m.properties.user_properties.push((name, value)));
    }

    fn remove_user_property(&mut self, _: Resource<MessageRef>, name: String) {
        self.with_message(|m| m.properties.user_properties.retain(|(n, _)| *n != name));
    }

    fn drop(&mut self, _: Resource<MessageRef>) -> wasmtime::Result<()> {
        Ok(())
    }
}
