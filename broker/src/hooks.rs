//! The decisions the core asks of the outside world: may this client connect, may it
//! publish or subscribe here. The core calls this trait and nothing else; the
//! WebAssembly plugin host will implement it. Until then [`DefaultHooks`] applies the
//! listener's `allow_anonymous` (a verified client certificate counts as credentials)
//! and allows every publish and subscribe.

use crate::codec::{reason, QoS, Version};
use bytes::Bytes;
use std::net::SocketAddr;

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

/// Who is asking, for authorization.
#[derive(Debug)]
pub struct ClientInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub listener: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refuse with a 5.0 reason code (mapped for 3.1.1 clients by the connection).
    Deny(u8),
}

pub trait Hooks: Send + Sync + 'static {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Decision;
    fn authorize(
        &self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision;
}

pub struct DefaultHooks;

impl Hooks for DefaultHooks {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Decision {
        // A certificate verified in the handshake is a credential checked already.
        if info.allow_anonymous || info.certificate.is_some() {
            return Decision::Allow;
        }
        // No authenticator is configured, so credentials cannot be checked.
        if info.username.is_some() {
            Decision::Deny(reason::BAD_USERNAME_OR_PASSWORD)
        } else {
            Decision::Deny(reason::NOT_AUTHORIZED)
        }
    }

    fn authorize(&self, _: &ClientInfo<'_>, _: Action, _: &str, _: QoS, _: bool) -> Decision {
        Decision::Allow
    }
}
