//! The decisions the core asks of the outside world: may this client connect, may it
//! publish or subscribe here, what becomes of its message, how fast may it go. The core
//! calls this trait and nothing else; the WebAssembly plugin chain (`plugin`) implements
//! it. [`DefaultHooks`] applies the listener's `allow_anonymous` (a verified client
//! certificate counts as credentials) and allows everything else.

use crate::codec::{reason, QoS, Version};
use crate::message::Message;
use bytes::Bytes;
use std::net::SocketAddr;
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
    /// Refuse with a 5.0 reason code (mapped for 3.1.1 clients by the connection).
    Deny(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Let the client in, possibly under another username, with attributes for later hooks.
    Allow {
        username: Option<String>,
        attributes: Vec<(String, String)>,
    },
    Deny {
        code: u8,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TransformOutcome {
    Keep,
    /// Do not route; tell a 5.0 publisher this reason code.
    Drop(u8),
    Replace(Box<Message>),
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
    Reject(u8),
    /// Allow, and stop reading from the client for this long.
    Throttle(Duration),
}

pub trait Hooks: Send + Sync + 'static {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthOutcome;
    fn authorize(
        &self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision;
    fn transform(&self, client: &ClientInfo<'_>, message: &Message) -> TransformOutcome;
    fn rate_limit(&self, client: &ClientInfo<'_>, event: RateEvent) -> RateOutcome;

    /// Whether anything would ever deny an authorization: the per-delivery checks
    /// (retained messages, shared subscriptions) are skipped when not.
    fn authorizes(&self) -> bool;
    /// Whether `transform` can do anything but keep, so the core can skip the call.
    fn transforms(&self) -> bool;
    /// Whether `rate_limit` can do anything but allow.
    fn limits_rate(&self) -> bool;
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
            reason::BAD_USERNAME_OR_PASSWORD,
            "no authentication plugin can check these credentials",
        )
    } else {
        (
            reason::NOT_AUTHORIZED,
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

    fn authorize(&self, _: &ClientInfo<'_>, _: Action, _: &str, _: QoS, _: bool) -> Decision {
        Decision::Allow
    }

    fn transform(&self, _: &ClientInfo<'_>, _: &Message) -> TransformOutcome {
        TransformOutcome::Keep
    }

    fn rate_limit(&self, _: &ClientInfo<'_>, _: RateEvent) -> RateOutcome {
        RateOutcome::Allow
    }

    fn authorizes(&self) -> bool {
        false
    }

    fn transforms(&self) -> bool {
        false
    }

    fn limits_rate(&self) -> bool {
        false
    }
}
