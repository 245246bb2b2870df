//! The chain as the core sees it: [`Hooks`] for the broker, and for each connection a
//! [`PluginClient`] that owns what the chain keeps for it (its copies of reusable
//! answers and its rate-limit leases).

use super::bindings::weir::plugin::types as wit;
use super::call::Call;
use super::chain::PluginChain;
use super::kept::Kept;
use super::pipeline::Stage;
use super::Hook;
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::AllowDeny;
use crate::hooks::{
    Action, AuthOutcome, AuthRequest, AuthState, AuthStep, ClientHooks, ClientInfo, ConnectInfo,
    Decision, DeliverOutcome, Hooks, Identity, PublishOutcome, RateEvent, RateOutcome,
    SubscribeOutcome,
};
use crate::message::Message;
use std::sync::Arc;

impl Hooks for PluginChain {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthOutcome {
        self.call(None).authenticate(info)
    }

    fn auth_start(&self, request: &AuthRequest<'_>) -> AuthStep {
        self.call(None).auth_start(request)
    }

    fn auth_continue(&self, request: &AuthRequest<'_>, state: &AuthState) -> AuthStep {
        self.call(None).auth_continue(request, state)
    }

    fn open(self: Arc<Self>, identity: Arc<Identity>) -> Box<dyn ClientHooks> {
        Box::new(PluginClient::new(self, identity))
    }

    fn authorize(
        &self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision {
        self.call(None)
            .authorize(client, action, topic, qos, retain)
    }

    fn authorizes(&self) -> bool {
        self.defaults.authorize_default == AllowDeny::Deny || self.any_active(Hook::Authorize)
    }

    fn limits_rate(&self) -> bool {
        self.any_active(Hook::RateLimit)
    }

    fn authenticate_waits(&self) -> bool {
        self.any_waits(Hook::Authenticate)
    }

    fn observes(&self) -> bool {
        self.any_active(Hook::Observe)
    }

    fn observe(&self, events: &[crate::events::Timed]) {
        self.call(None).observe(events)
    }
}

/// One connection's view of the chain.
pub struct PluginClient {
    chain: Arc<PluginChain>,
    identity: Arc<Identity>,
    /// The client as plugins see it, converted once: every hook call of a published
    /// message hands it to a plugin.
    record: Arc<wit::Client>,
    /// Answers and leases kept for this connection; only its task touches them.
    kept: Kept,
}

impl PluginClient {
    pub fn new(chain: Arc<PluginChain>, identity: Arc<Identity>) -> PluginClient {
        PluginClient {
            record: Arc::new(super::convert::client(&identity.info())),
            chain,
            identity,
            kept: Kept::default(),
        }
    }

    /// A hook call on behalf of this connection, and the client it is made for.
    fn call(&mut self) -> (Call<'_>, ClientInfo<'_>) {
        let call = self.chain.call(Some(&mut self.kept));
        (call.for_record(&self.record), self.identity.info())
    }

    /// The transforms alone, as [`ClientHooks::publish`] runs them; for measuring them.
    pub fn transform(&mut self, message: &mut Message) -> Option<crate::codec::ReasonCode> {
        let (mut call, client) = self.call();
        call.transform(&client, message)
    }
}

impl ClientHooks for PluginClient {
    fn authorize(&mut self, action: Action, topic: &str, qos: QoS, retain: bool) -> Decision {
        let (mut call, client) = self.call();
        call.authorize(&client, action, topic, qos, retain)
    }

    fn publish(&mut self, message: &mut Message) -> PublishOutcome {
        let chain = &self.chain;
        let mut call = chain.call(Some(&mut self.kept)).for_record(&self.record);
        let client = self.identity.info();
        let (topic, qos, retain) = (&message.topic, message.qos, message.retain);
        if let Decision::Deny(code) = call.authorize(&client, Action::Publish, topic, qos, retain) {
            let why = "not authorized";
            return PublishOutcome::Refuse { code, why };
        }
        let mut throttle = None;
        if chain.any_active(Hook::RateLimit) {
            match call.rate_limit(&client, RateEvent::Publish(message.payload.len() as u64)) {
                RateOutcome::Allow => {}
                RateOutcome::Reject(code) => {
                    let why = "rate limited";
                    return PublishOutcome::Refuse { code, why };
                }
                // The message itself goes through; reading pauses after it.
                RateOutcome::Throttle(d) => throttle = Some(d),
            }
        }
        if chain.any_active(Hook::Transform) {
            if let Some(code) = call.transform(&client, message) {
                let why = "dropped by a transform plugin";
                return PublishOutcome::Refuse { code, why };
            }
        }
        PublishOutcome::Route { throttle }
    }

    fn publish_many(&mut self, messages: &mut [Message], outcomes: &mut Vec<PublishOutcome>) {
        let (mut call, client) = self.call();
        call.publish_many(&client, messages, outcomes)
    }

    fn batches(&self) -> bool {
        let c = &self.chain;
        [Hook::Authorize, Hook::RateLimit, Hook::Transform]
            .into_iter()
            .any(|h| c.any_active(h))
    }

    fn rate_limit(&mut self, event: RateEvent) -> RateOutcome {
        let (mut call, client) = self.call();
        call.rate_limit(&client, event)
    }

    fn subscribe(&mut self, filter: &str, options: SubscriptionOptions) -> SubscribeOutcome {
        if !self.chain.any_active(Hook::Subscribe) {
            return SubscribeOutcome::AsAsked;
        }
        let (mut call, client) = self.call();
        call.subscribe(&client, filter, options)
    }

    fn deliver(&mut self, message: &Message, qos: QoS, retain: bool) -> DeliverOutcome {
        if !self.chain.any_active(Hook::Deliver) {
            return DeliverOutcome::Keep;
        }
        let mut m = message.clone();
        let stage = Stage::Deliver { qos, retain };
        let (mut call, client) = self.call();
        match call.reshape(stage, &client, &mut m) {
            Err(_) => DeliverOutcome::Drop,
            Ok(false) => DeliverOutcome::Keep,
            Ok(true) => DeliverOutcome::Replace(m),
        }
    }
}
