//! MQTT 5 enhanced authentication: the AUTH exchange a CONNECT with an Authentication
//! Method starts, and re-authentication (AUTH 0x19) on a live connection. The hooks
//! decide each step ([`Hooks::auth_start`], [`Hooks::auth_continue`]); this module moves
//! the AUTH packets and keeps where an exchange stands.
//!
//! [`Hooks::auth_start`]: crate::hooks::Hooks::auth_start
//! [`Hooks::auth_continue`]: crate::hooks::Hooks::auth_continue

use super::exit::Exit;
use super::framed::Framed;
use super::handshake::{refusal, Refusal};
use super::{Client, Connection};
use crate::broker::Broker;
use crate::codec::{self, Auth, Packet, Properties, ReasonCode, Version};
use crate::hooks::{AuthRequest, AuthState, AuthStep, ConnectInfo, PeerIdentity};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// At most this many AUTH round trips in one exchange.
const MAX_ROUNDS: u32 = 16;

/// What an exchange at CONNECT came to: who the client is, and the Authentication Data
/// for the CONNACK.
pub(super) struct Authenticated {
    pub username: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub data: Option<Vec<u8>>,
}

/// What a connection that authenticated with a method keeps to re-authenticate: the
/// method, the CONNECT as the hooks saw it (without the password), and a
/// re-authentication under way.
pub(super) struct Enhanced {
    pub method: String,
    pub username: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub certificate: Option<PeerIdentity>,
    pub allow_anonymous: bool,
    pending: Option<(AuthState, u32)>,
}

impl Enhanced {
    pub(super) fn new(
        method: String,
        username: Option<String>,
        user_properties: Vec<(String, String)>,
        certificate: Option<PeerIdentity>,
        allow_anonymous: bool,
    ) -> Enhanced {
        Enhanced {
            method,
            username,
            user_properties,
            certificate,
            allow_anonymous,
            pending: None,
        }
    }

    fn info<'a>(&'a self, client: &'a Client) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: &client.client_id,
            username: self.username.as_deref(),
            password: None,
            version: Version::V5,
            peer: client.peer,
            listener: &client.listener.name,
            allow_anonymous: self.allow_anonymous,
            user_properties: &self.user_properties,
            certificate: self.certificate.as_ref(),
        }
    }
}

/// An AUTH packet with the method and, if any, data.
fn auth_packet(code: ReasonCode, method: &str, data: Option<Vec<u8>>) -> Packet {
    let mut properties = Properties::default();
    properties.authentication_method = Some(method.to_owned());
    properties.authentication_data = data.map(Bytes::from);
    Packet::Auth(Auth { code, properties })
}

/// The exchange a CONNECT with `method` starts, up to success or a refusal. Each AUTH
/// from the client must come before `due` (the connect timeout).
pub(super) async fn exchange<S>(
    io: &mut Framed<S>,
    due: tokio::time::Instant,
    max_packet: usize,
    broker: &Broker,
    info: &ConnectInfo<'_>,
    method: &str,
    data: Option<&[u8]>,
) -> Result<Authenticated, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hooks = broker.hooks();
    let mut step = hooks.auth_start(&AuthRequest {
        info,
        method,
        data,
        reauth: false,
    });
    for _ in 0..MAX_ROUNDS {
        let (challenge, state) = match step {
            AuthStep::Success {
                username,
                attributes,
                data,
            } => {
                return Ok(Authenticated {
                    username,
                    attributes,
                    data,
                })
            }
            AuthStep::Failure { code, reason } => {
                return Err(refusal(code, format!("authentication failed: {reason}")))
            }
            AuthStep::Continue { data, state } => (data, state),
        };
        let mut out = BytesMut::new();
        let packet = auth_packet(ReasonCode::ContinueAuthentication, method, Some(challenge));
        if let Err(e) = packet.encode(Version::V5, &mut out) {
            return Err(refusal(
                ReasonCode::UnspecifiedError,
                format!("AUTH not sent: {e}"),
            ));
        }
        io.out().extend_from_slice(&out);
        let answer = next_auth(io, due, max_packet, method).await?;
        let request = AuthRequest {
            info,
            method,
            data: answer.properties.authentication_data.as_deref(),
            reauth: false,
        };
        step = hooks.auth_continue(&request, &state);
    }
    Err(refusal(ReasonCode::NotAuthorized, "too many AUTH rounds"))
}

/// Sends what is buffered and reads the client's next packet, which must be AUTH 0x18
/// with the same method.
async fn next_auth<S>(
    io: &mut Framed<S>,
    due: tokio::time::Instant,
    max_packet: usize,
    method: &str,
) -> Result<Auth, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gone = |e: Exit| refusal(ReasonCode::UnspecifiedError, e.describe());
    io.flush().await.map_err(gone)?;
    let frame = match tokio::time::timeout_at(due, io.frame(max_packet)).await {
        Err(_) => {
            let why = "no answer to AUTH within the connect timeout";
            return Err(refusal(ReasonCode::UnspecifiedError, why));
        }
        Ok(r) => r.map_err(gone)?,
    };
    let auth = match codec::decode(frame, Version::V5) {
        Ok(Packet::Auth(a)) => a,
        Ok(other) => {
            let why = format!("{} during authentication, not AUTH", other.name());
            return Err(refusal(ReasonCode::ProtocolError, why));
        }
        Err(e) => return Err(refusal(e.reason_code(), e.to_string())),
    };
    if auth.code != ReasonCode::ContinueAuthentication {
        let why = format!("AUTH with reason {} during authentication", auth.code);
        return Err(refusal(ReasonCode::ProtocolError, why));
    }
    if auth.properties.authentication_method.as_deref() != Some(method) {
        let why = "AUTH with another authentication method";
        return Err(refusal(ReasonCode::ProtocolError, why));
    }
    Ok(auth)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// AUTH on a live connection: a re-authentication starting (0x19) or going on
    /// (0x18). Success is told with AUTH 0x00; a failure ends the connection with its
    /// code. The client's username and attributes stay what they were at CONNECT.
    pub(super) fn on_auth(&mut self, a: Auth) -> Result<(), Exit> {
        let protocol = |why: &str| Err(Exit::protocol(ReasonCode::ProtocolError, why));
        let Some(e) = self.client.enhanced.as_mut() else {
            return protocol("AUTH without enhanced authentication");
        };
        if a.properties.authentication_method.as_deref() != Some(&e.method) {
            return protocol("AUTH with another authentication method than CONNECT's");
        }
        let hooks = self.broker.hooks().clone();
        let e = self.client.enhanced.take().expect("checked above");
        let request = AuthRequest {
            info: &e.info(&self.client),
            method: &e.method,
            data: a.properties.authentication_data.as_deref(),
            reauth: true,
        };
        let (step, rounds) = match (a.code, &e.pending) {
            (ReasonCode::ReAuthenticate, None) => (hooks.auth_start(&request), 1),
            (ReasonCode::ContinueAuthentication, Some((state, n))) if *n < MAX_ROUNDS => {
                (hooks.auth_continue(&request, state), n + 1)
            }
            (ReasonCode::ContinueAuthentication, Some(_)) => {
                return Err(Exit::protocol(
                    ReasonCode::NotAuthorized,
                    "too many AUTH rounds",
                ))
            }
            _ => return protocol("AUTH out of turn"),
        };
        let mut e = e;
        let reply = match step {
            AuthStep::Continue { data, state } => {
                e.pending = Some((state, rounds));
                auth_packet(ReasonCode::ContinueAuthentication, &e.method, Some(data))
            }
            AuthStep::Success { data, .. } => {
                e.pending = None;
                auth_packet(ReasonCode::Success, &e.method, data)
            }
            AuthStep::Failure { code, reason } => {
                // DISCONNECT has no 0x86.
                let code = match code {
                    ReasonCode::BadUserNameOrPassword => ReasonCode::NotAuthorized,
                    c => c,
                };
                let why = format!("re-authentication failed: {reason}");
                return Err(Exit::protocol(code, why));
            }
        };
        self.client.enhanced = Some(e);
        self.emit(&reply);
        Ok(())
    }
}
