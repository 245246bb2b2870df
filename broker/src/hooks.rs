//! The decisions the core asks of the outside world: may this client connect, may it
//! publish or subscribe here, what becomes of its message, how fast may it go. The core
//! calls these traits and nothing else; the WebAssembly plugin chain (`plugin`)
//! implements them. [`DefaultHooks`] applies the listener's `allow_anonymous` (a
//! verified client certificate counts as credentials) and allows everything else.
//!
//! A connection asks through its own [`ClientHooks`], which [`Hooks::open`] hands out
//! once the client is authenticated: what the hooks keep between one client's calls
//! (answers a plugin let them reuse, rate-limit leases) lives there, touched by no other
//! thread. A question with no connection behind it (a delivery to a stored session)
//! goes to [`Hooks::authorize`], which keeps nothing.

use crate::codec::{QoS, ReasonCode, SubscriptionOptions, Version};
use crate::message::Message;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Who a verified TLS client certificate says the client is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// Subject alternative names, prefixed by type: `DNS:`, `IP:`, `email:`, `URI:`.
    pub sans: Vec<String>,
}

/// What a client presented in its CONNECT.
#[derive(Debug)]
pub struct ConnectInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a Bytes>,
    pub version: Version,
    pub peer: SocketAddr,
    pub listener: &'a str,
    pub allow_anonymous: bool,
    pub user_properties: &'a [(String, String)],
    /// Present when the client authenticated with a certificate the listener's client CA
    /// verified during the TLS handshake.
    pub certificate: Option<&'a PeerIdentity>,
}

/// Who is asking, for the hooks after authentication.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    /// `address:port`; empty for a session restored from the store.
    pub peer: &'a str,
    pub listener: &'a str,
    /// Attached by the authenticating plugin.
    pub attributes: &'a [(String, String)],
}

/// An owned [`ClientInfo`], kept with a session so deliveries to it can be authorized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: String,
    pub listener: String,
    pub attributes: Vec<(String, String)>,
}

impl Identity {
    pub fn info(&self) -> ClientInfo<'_> {
        ClientInfo {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            peer: &self.peer,
            listener: &self.listener,
            attributes: &self.attributes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    /// Subscribing to a filter, or receiving a retained or shared-subscription message
    /// on a topic.
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refuse with a 5.0 reason code (mapped for 3.1.1 clients by the codec).
    Deny(ReasonCode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Let the client in, possibly under another username, with attributes for later hooks.
    Allow {
        username: Option<String>,
        attributes: Vec<(String, String)>,
    },
    Deny {
        code: ReasonCode,
        reason: String,
    },
}

/// A step of an MQTT 5 enhanced authentication (CONNECT with an Authentication Method,
/// the AUTH exchange, re-authentication): what the hooks are asked.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// For a re-authentication, the CONNECT's, without the password.
    pub info: &'a ConnectInfo<'a>,
    pub method: &'a str,
    pub data: Option<&'a [u8]>,
    pub reauth: bool,
}

/// What the hooks answer a step of an enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send the client AUTH 0x18 with `data`; its answer goes to
    /// [`Hooks::auth_continue`] with `state`.
    Continue {
        data: Vec<u8>,
        state: AuthState,
    },
    /// In, possibly under another username, with attributes; `data` for the CONNACK
    /// (or the AUTH 0x00 of a re-authentication).
    Success {
        username: Option<String>,
        attributes: Vec<(String, String)>,
        data: Option<Vec<u8>>,
    },
    Failure {
        code: ReasonCode,
        reason: String,
    },
}

/// Where an enhanced authentication stands, as the hooks keep it: opaque to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// Who carries the exchange on (a plugin's name).
    pub handler: Arc<str>,
    pub data: Vec<u8>,
}

/// What becomes of a PUBLISH once every hook has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Route the message as the hooks left it; with a throttle, stop reading from the
    /// client for that long after it.
    Route { throttle: Option<Duration> },
    /// Do not route; tell a 5.0 publisher this reason code. `why` is for the log.
    Refuse { code: ReasonCode, why: &'static str },
}

/// What becomes of one filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    AsAsked,
    /// Refuse the filter with this reason code in the SUBACK.
    Deny(ReasonCode),
    /// Subscribe to this filter instead, at this (lower or equal) QoS.
    Rewrite {
        filter: String,
        qos: QoS,
    },
}

/// What becomes of one message about to be sent to one subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliverOutcome {
    Keep,
    /// Not sent (a QoS 1 or 2 delivery is done with as if acknowledged).
    Drop,
    /// Send this instead: same QoS and retain flag, anything else may differ.
    Replace(Message),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateEvent {
    Connect,
    /// A PUBLISH with this many payload bytes.
    Publish(u64),
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    Allow,
    Reject(ReasonCode),
    /// Allow, and stop reading from the client for this long.
    Throttle(Duration),
}

pub trait Hooks: Send + Sync + 'static {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthOutcome;
    /// The first step of an enhanced authentication. By default nobody takes any
    /// method: 0x8C.
    fn auth_start(&self, request: &AuthRequest<'_>) -> AuthStep {
        AuthStep::Failure {
            code: ReasonCode::BadAuthenticationMethod,
            reason: format!("no plugin takes authentication method {:?}", request.method),
        }
    }
    /// The client's answer to a [`AuthStep::Continue`].
    fn auth_continue(&self, request: &AuthRequest<'_>, state: &AuthState) -> AuthStep {
        let _ = state;
        self.auth_start(request)
    }
    /// The hooks of one authenticated connection, for all its later questions.
    fn open(self: Arc<Self>, identity: Arc<Identity>) -> Box<dyn ClientHooks>;
    /// Authorization with no connection to ask through (a delivery to a stored
    /// session, a shared subscription's member): nothing is kept for a next time.
    fn authorize(
        &self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision;
    /// Whether anything would ever deny an authorization: the per-delivery checks
    /// (retained messages, shared subscriptions) are skipped when not.
    fn authorizes(&self) -> bool;
    /// Whether `rate_limit` can do anything but allow.
    fn limits_rate(&self) -> bool;
    /// Whether `authenticate` may wait on something outside the broker (an HTTP
    /// service): then it is called off the runtime's worker threads.
    fn authenticate_waits(&self) -> bool {
        false
    }
    /// Whether anything observes events ([`crate::events`]): none are made if not.
    fn observes(&self) -> bool {
        false
    }
    /// A batch of events, from the event thread.
    fn observe(&self, events: &[crate::events::Timed]) {
        let _ = events;
    }
}

/// One connection's hooks, owned by its task: what they keep is theirs alone.
pub trait ClientHooks: Send {
    fn authorize(&mut self, action: Action, topic: &str, qos: QoS, retain: bool) -> Decision;
    /// Everything a PUBLISH passes, in this order: authorization of its topic, the rate
    /// limit (one publish of its payload's size), and the transforms, which may change
    /// `message` in place. One call per message rather than one per hook, so the
    /// implementation sets up once.
    fn publish(&mut self, message: &mut Message) -> PublishOutcome;
    /// Several PUBLISHes the client sent together, in order: what `publish` says of
    /// each, into `outcomes`, the messages changed in place. Worth gathering them for
    /// only where [`batches`](ClientHooks::batches) says so.
    fn publish_many(&mut self, messages: &mut [Message], outcomes: &mut Vec<PublishOutcome>) {
        outcomes.clear();
        outcomes.extend(messages.iter_mut().map(|m| self.publish(m)));
    }
    /// Whether `publish_many` costs less than `publish` on each message (a plugin chain
    /// asks each plugin once for all of them).
    fn batches(&self) -> bool {
        false
    }
    fn rate_limit(&mut self, event: RateEvent) -> RateOutcome;
    /// One filter of a SUBSCRIBE, before it is authorized: what is subscribed (and
    /// authorized) may be another filter at a lower QoS. Also asked, with QoS 0, for each
    /// filter of an UNSUBSCRIBE, so that a client unsubscribes with the filter it knows.
    fn subscribe(&mut self, filter: &str, options: SubscriptionOptions) -> SubscribeOutcome {
        let _ = (filter, options);
        SubscribeOutcome::AsAsked
    }
    /// A message about to be sent to this connection's client, with the delivery's QoS
    /// and retain flag.
    fn deliver(&mut self, message: &Message, qos: QoS, retain: bool) -> DeliverOutcome {
        let _ = (message, qos, retain);
        DeliverOutcome::Keep
    }
}

/// The listener's rule: anonymous clients if it allows them, certificate holders always,
/// everyone else refused (no credential store exists without a plugin).
pub fn listener_rule(info: &ConnectInfo<'_>) -> AuthOutcome {
    if info.allow_anonymous || info.certificate.is_some() {
        return AuthOutcome::Allow {
            username: None,
            attributes: Vec::new(),
        };
    }
    let (code, reason) = if info.username.is_some() {
        (
            ReasonCode::BadUserNameOrPassword,
            "no authentication plugin can check these credentials",
        )
    } else {
        (
            ReasonCode::NotAuthorized,
            "anonymous clients are not allowed on this listener",
        )
    };
    AuthOutcome::Deny {
        code,
        reason: reason.into(),
    }
}

pub struct DefaultHooks;

impl Hooks for DefaultHooks {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthOutcome {
        listener_rule(info)
    }

    fn open(self: Arc<Self>, _: Arc<Identity>) -> Box<dyn ClientHooks> {
        Box::new(AllowAll)
    }

    fn authorize(&self, _: &ClientInfo<'_>, _: Action, _: &str, _: QoS, _: bool) -> Decision {
        Decision::Allow
    }

    fn authorizes(&self) -> bool {
        false
    }

    fn limits_rate(&self) -> bool {
        false
    }
}

/// A connection's hooks when nothing decides: everything is allowed, nothing kept.
pub struct AllowAll;

impl ClientHooks for AllowAll {
    fn authorize(&mut self, _: Action, _: &str, _: QoS, _: bool) -> Decision {
        Decision::Allow
    }

    fn publish(&mut self, _: &mut Message) -> PublishOutcome {
        PublishOutcome::Route { throttle: None }
    }

    fn rate_limit(&mut self, _: RateEvent) -> RateOutcome {
        RateOutcome::Allow
    }
}
