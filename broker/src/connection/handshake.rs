//! CONNECT in, and either an established connection or a refusing CONNACK out. Every
//! refusal is a [`Refusal`] that one function, [`refuse`], writes and logs.

use super::auth::{exchange, Enhanced};
use super::framed::Framed;
use super::inbound::Inbound;
use super::outbound::Outbound;
use super::{Client, Connection, ListenerInfo, OverLimit, Peer};
use crate::broker::Broker;
use crate::codec::{self, ConnAck, Connect, Packet, Properties, ReasonCode, Version};
use crate::events::Event;
use crate::hooks::{
    AuthOutcome, ClientHooks, ConnectInfo, Decision, Identity, RateEvent, RateOutcome,
};
use crate::message::now_secs;
use crate::metrics::AuthResult;
use crate::session::{will_message, ConnHandle, NEVER};
use crate::topic;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// Why a CONNECT is refused: the CONNACK's reason code, and why, for the log and a
/// 5.0 client's reason string.
pub(super) struct Refusal {
    code: ReasonCode,
    why: String,
}

pub(super) fn refusal(code: ReasonCode, why: impl Into<String>) -> Refusal {
    Refusal {
        code,
        why: why.into(),
    }
}

/// A CONNECT that passed every check, with what was decided about it.
struct Admitted {
    connect: Connect,
    client_id: Arc<str>,
    /// The id the broker chose for a client that sent none.
    assigned: Option<String>,
    identity: Arc<Identity>,
    hooks: Box<dyn ClientHooks>,
    /// A client that authenticated with a method: the Authentication Data for the
    /// CONNACK, and what re-authenticating takes.
    auth_data: Option<Vec<u8>>,
    enhanced: Option<Enhanced>,
}

/// Reads and answers CONNECT: authentication, limits, the session, CONNACK. `None` when
/// the client was refused or went away.
pub(super) async fn open<S>(
    io: S,
    from: Peer,
    listener: Arc<ListenerInfo>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    over_limit: Option<OverLimit>,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut io = Framed::new(io);
    let connect = read_connect(&mut io, &from, &listener, &broker).await?;
    let version = connect.version;
    let client_max = connect.properties.maximum_packet_size;
    let requested = connect.client_id.clone();
    match admit(&mut io, connect, &from, &listener, &broker, over_limit).await {
        Ok(admitted) => {
            if !admitted.connect.clean_start {
                // In a cluster, the session may be on the node the client was on.
                broker.bring(&admitted.client_id).await;
            }
            Some(establish(io, admitted, from, listener, broker, shutdown).await)
        }
        Err(r) => {
            tracing::info!(peer = %from.addr, listener = %listener.name, client_id = %requested, protocol = %version,
                "connection refused: {} (reason {})", r.why, r.code);
            broker.metrics().connack(r.code.code());
            refuse(&mut io, version, client_max, r).await;
            None
        }
    }
}

/// The CONNECT, or `None` when the client sent something else, nothing in time, or a
/// CONNECT that cannot be decoded (answered with a CONNACK where its level allows).
async fn read_connect<S>(
    io: &mut Framed<S>,
    from: &Peer,
    listener: &ListenerInfo,
    broker: &Broker,
) -> Option<Connect>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (peer, name) = (from.addr, &listener.name);
    let secs = broker.config().limits.connect_timeout_secs;
    let max = listener.max_packet_size as usize;
    let due = from.accepted + Duration::from_secs(secs);
    let frame = match tokio::time::timeout_at(due, io.first_frame(max)).await {
        Err(_) => {
            tracing::info!(%peer, listener = %name, "closed: no CONNECT within {secs}s");
            return None;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, listener = %name, "closed before CONNECT: {}", e.describe());
            return None;
        }
        Ok(Ok(frame)) => frame,
    };
    match codec::decode(frame.clone(), Version::V311) {
        Ok(Packet::Connect(c)) => Some(*c),
        Ok(other) => {
            tracing::info!(%peer, listener = %name, "closed: first packet was {}, not CONNECT", other.name());
            None
        }
        Err(e) => {
            tracing::info!(%peer, listener = %name, "closed: bad CONNECT: {e}");
            let answer = match (&e, connect_level(&frame)) {
                // 3.1.1 clients of an unknown level get return code 1 (MQTT-3.1.2-2).
                (codec::Error::UnsupportedVersion(_), _) => Some(Version::V311),
                (_, Some(5)) => Some(Version::V5),
                _ => None,
            };
            if let Some(v) = answer {
                refuse(io, v, None, refusal(e.reason_code(), e.to_string())).await;
            }
            None
        }
    }
}

/// The protocol level a CONNECT frame claims, read without trusting the rest.
fn connect_level(frame: &[u8]) -> Option<u8> {
    let mut i = 1;
    while frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = u16::from_be_bytes([*frame.get(i + 1)?, *frame.get(i + 2)?]) as usize;
    frame.get(i + 3 + name_len).copied()
}

/// Writes the refusing CONNACK: the reason string for 5.0 (left out if the client's
/// Maximum Packet Size has no room for it), the nearest return code for 3.1.1.
async fn refuse<S>(io: &mut Framed<S>, version: Version, client_max: Option<u32>, r: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.reason_string = Some(r.why);
    }
    let mut connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: r.code,
        properties,
    });
    let max = client_max.map_or(usize::MAX, |m| m as usize);
    let mut out = BytesMut::new();
    match connack.encode_within(version, max, &mut out) {
        Ok(()) => {
            io.goodbye(&out).await;
            io.linger().await;
        }
        Err(e) => tracing::warn!(error = %e, "refusing CONNACK not sent"),
    }
}

/// Every check a CONNECT must pass, in order, up to the hooks the connection will use.
async fn admit<S>(
    io: &mut Framed<S>,
    mut connect: Connect,
    from: &Peer,
    listener: &Arc<ListenerInfo>,
    broker: &Arc<Broker>,
    over_limit: Option<OverLimit>,
) -> Result<Admitted, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Some(o) = over_limit {
        return Err(refusal(o.code(), o.describe()));
    }
    let (client_id, assigned) = client_id(&connect)?;
    if listener.use_identity_as_username {
        let cn = from
            .certificate
            .as_ref()
            .and_then(|c| c.common_name.clone());
        let why = "a client certificate with a common name is required";
        connect.username = Some(cn.ok_or_else(|| refusal(ReasonCode::NotAuthorized, why))?);
    }
    let checked = authenticated(io, connect, &client_id, from, listener, broker).await;
    broker.metrics().authenticated(match &checked {
        Ok(_) => AuthResult::Allowed,
        Err(r) if denies(r.code) => AuthResult::Denied,
        Err(_) => AuthResult::Failed,
    });
    let (connect, identity, auth_data, enhanced) = checked?;
    let identity = Arc::new(identity);
    let mut hooks = broker.hooks().clone().open(identity.clone());
    if broker.hooks().limits_rate() {
        match hooks.rate_limit(RateEvent::Connect) {
            RateOutcome::Allow => {}
            RateOutcome::Reject(code) => return Err(refusal(code, "connection rate limited")),
            // Reading is what throttling holds back; for a new client that is the
            // CONNACK and everything after it.
            RateOutcome::Throttle(d) => tokio::time::sleep(d).await,
        }
    }
    check_will(&connect, broker, &mut *hooks)?;
    Ok(Admitted {
        connect,
        client_id,
        assigned,
        identity,
        hooks,
        auth_data,
        enhanced,
    })
}

/// Codes that mean the client was told no, rather than the check failing.
fn denies(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::NotAuthorized
            | ReasonCode::BadUserNameOrPassword
            | ReasonCode::Banned
            | ReasonCode::BadAuthenticationMethod
    )
}

/// The client's identity by whichever way it authenticates: an exchange (MQTT 5
/// enhanced authentication), a hook that waits (an HTTP service, say), or one that
/// answers at once. Also the exchange's last data and what re-authentication needs;
/// the CONNECT comes back as the check left it (a plugin may set the username).
async fn authenticated<S>(
    io: &mut Framed<S>,
    mut connect: Connect,
    client_id: &Arc<str>,
    from: &Peer,
    listener: &Arc<ListenerInfo>,
    broker: &Arc<Broker>,
) -> Result<(Connect, Identity, Option<Vec<u8>>, Option<Enhanced>), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match connect.properties.authentication_method.clone() {
        Some(method) => {
            let due =
                from.accepted + Duration::from_secs(broker.config().limits.connect_timeout_secs);
            let max = listener.max_packet_size as usize;
            let (identity, data) = authenticate_by_exchange(
                io, due, max, &connect, client_id, from, listener, broker, &method,
            )
            .await?;
            let enhanced = Enhanced::new(
                method,
                connect.username.clone(),
                connect.properties.user_properties.clone(),
                from.certificate.clone(),
                listener.allow_anonymous,
            );
            Ok((connect, identity, data, Some(enhanced)))
        }
        None if broker.hooks().authenticate_waits() => {
            let asked = (connect, client_id.clone(), from.clone(), listener.clone());
            let (connect, identity) = authenticate_waiting(asked, broker.clone()).await?;
            Ok((connect, identity, None, None))
        }
        None => {
            let identity = authenticate(&mut connect, client_id, from, listener, broker)?;
            Ok((connect, identity, None, None))
        }
    }
}

/// The client id, and whether the broker assigned it.
fn client_id(connect: &Connect) -> Result<(Arc<str>, Option<String>), Refusal> {
    if !connect.client_id.is_empty() {
        return Ok((Arc::from(connect.client_id.as_str()), None));
    }
    if connect.version == Version::V311 && !connect.clean_start {
        let why = "empty client id needs clean session";
        return Err(refusal(ReasonCode::ClientIdentifierNotValid, why));
    }
    let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
    let id = format!("weir-{:x}-{n}", now_secs());
    Ok((Arc::from(id.as_str()), Some(id)))
}

/// The CONNECT as the authentication hooks see it.
fn connect_info<'a>(
    connect: &'a Connect,
    client_id: &'a str,
    from: &'a Peer,
    listener: &'a ListenerInfo,
) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_ref(),
        version: connect.version,
        peer: from.addr,
        listener: &listener.name,
        allow_anonymous: listener.allow_anonymous,
        user_properties: &connect.properties.user_properties,
        certificate: from.certificate.as_ref(),
    }
}

fn authenticate(
    connect: &mut Connect,
    client_id: &str,
    from: &Peer,
    listener: &ListenerInfo,
    broker: &Broker,
) -> Result<Identity, Refusal> {
    let outcome = (broker.hooks()).authenticate(&connect_info(connect, client_id, from, listener));
    match outcome {
        AuthOutcome::Deny { code, reason } => {
            Err(refusal(code, format!("authentication failed: {reason}")))
        }
        AuthOutcome::Allow {
            username,
            attributes,
        } => Ok(Identity {
            client_id: client_id.to_owned(),
            username: username.or(connect.username.take()),
            peer: from.addr.to_string(),
            listener: listener.name.to_string(),
            attributes,
        }),
    }
}

/// [`authenticate`] on a blocking thread, for hooks that wait on the network (an HTTP
/// auth service): the connection's task waits without holding a runtime worker, and
/// CONNECTs beyond the blocking threads queue instead of stalling the workers.
async fn authenticate_waiting(
    (mut connect, client_id, from, listener): (Connect, Arc<str>, Peer, Arc<ListenerInfo>),
    broker: Arc<Broker>,
) -> Result<(Connect, Identity), Refusal> {
    let asked = tokio::task::spawn_blocking(move || {
        let identity = authenticate(&mut connect, &client_id, &from, &listener, &broker);
        identity.map(|i| (connect, i))
    });
    asked.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "authentication task failed");
        let why = "authentication failed: internal error";
        Err(refusal(ReasonCode::UnspecifiedError, why))
    })
}

/// The client's identity from an enhanced authentication, and the Authentication Data
/// for its CONNACK.
#[allow(clippy::too_many_arguments)]
async fn authenticate_by_exchange<S>(
    io: &mut Framed<S>,
    due: tokio::time::Instant,
    max_packet: usize,
    connect: &Connect,
    client_id: &str,
    from: &Peer,
    listener: &ListenerInfo,
    broker: &Broker,
    method: &str,
) -> Result<(Identity, Option<Vec<u8>>), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let info = connect_info(connect, client_id, from, listener);
    let data = connect.properties.authentication_data.as_deref();
    let done = exchange(io, due, max_packet, broker, &info, method, data).await?;
    let identity = Identity {
        client_id: client_id.to_owned(),
        username: done.username.or(connect.username.clone()),
        peer: from.addr.to_string(),
        listener: listener.name.to_string(),
        attributes: done.attributes,
    };
    Ok((identity, done.data))
}

/// A will must fit the topic limits and be one the client may publish.
fn check_will(
    connect: &Connect,
    broker: &Broker,
    hooks: &mut dyn ClientHooks,
) -> Result<(), Refusal> {
    let Some(w) = &connect.will else {
        return Ok(());
    };
    let limits = &broker.config().limits;
    if w.topic.len() > limits.max_topic_length || topic::levels(&w.topic) > limits.max_topic_levels
    {
        let why = "will topic exceeds the topic limits";
        return Err(refusal(ReasonCode::TopicNameInvalid, why));
    }
    if !crate::sys::client_may_publish(&w.topic) {
        let why = "a will under $SYS/: only the broker publishes there";
        return Err(refusal(ReasonCode::NotAuthorized, why));
    }
    let decision = hooks.authorize(crate::hooks::Action::Publish, &w.topic, w.qos, w.retain);
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(code) => Err(refusal(code, "will topic not authorized")),
    }
}

/// Attaches the session and answers with a CONNACK; the connection, ready to run.
async fn establish<S>(
    mut io: Framed<S>,
    a: Admitted,
    from: Peer,
    listener: Arc<ListenerInfo>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let granted = grant(&a.connect, &broker.config().limits);
    let conn_id = broker.next_conn_id();
    let (control_tx, control) = mpsc::unbounded_channel();
    let handle = ConnHandle {
        id: conn_id,
        control: control_tx,
        listener: listener.name.clone(),
        peer: from.addr,
        version: a.connect.version,
        since: std::time::SystemTime::now(),
    };
    let will = a.connect.will.as_ref().map(|w| {
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        (Arc::new(will_message(w, &a.client_id)), delay)
    });
    let attached = broker.attach(
        a.client_id.clone(),
        a.connect.clean_start,
        granted.expiry,
        handle,
        a.identity.clone(),
        will,
    );
    if let Some(announced) = attached.announced {
        announced.await;
    }
    let (session, present) = (attached.session, attached.present);
    write_connack(io.out(), &a, present, &granted, &broker, &listener);
    broker.metrics().connected();
    broker.metrics().connack(0);
    listener.connected(a.connect.version);
    tracing::info!(client_id = %a.client_id, peer = %from.addr, listener = %listener.name,
        protocol = %a.connect.version, clean_start = a.connect.clean_start, session_present = present,
        keep_alive = granted.keep_alive, username = %a.identity.username.as_deref().unwrap_or(""),
        identity = %from.certificate.as_ref().and_then(|c| c.common_name.as_deref()).unwrap_or(""),
        "client connected");
    broker
        .events()
        .emit(|| Event::Connected(a.identity.clone()));
    let keep_alive =
        (granted.keep_alive > 0).then(|| Duration::from_millis(granted.keep_alive as u64 * 1500));
    Connection {
        io,
        outbound: Outbound::new(&a.connect.properties, broker.durable()),
        inbound: Inbound::new(granted.expiry, a.connect.will),
        client: Client {
            version: a.connect.version,
            client_id: a.client_id,
            hooks: a.hooks,
            enhanced: a.enhanced,
            conn_id,
            listener,
            peer: from.addr,
        },
        session,
        broker,
        last_read: tokio::time::Instant::now(),
        keep_alive,
        control,
        shutdown,
    }
}

/// What the broker grants of what a CONNECT asks, and whether it differs.
struct Granted {
    expiry: u32,
    expiry_changed: bool,
    keep_alive: u16,
    keep_alive_changed: bool,
}

fn grant(c: &Connect, limits: &crate::config::Limits) -> Granted {
    let requested_expiry = match c.version {
        Version::V311 if c.clean_start => 0,
        Version::V311 => NEVER,
        Version::V5 => c.properties.session_expiry_interval.unwrap_or(0),
    };
    let expiry = requested_expiry.min(limits.max_session_expiry_secs);
    let keep_alive = match limits.max_keep_alive {
        0 => c.keep_alive,
        max if c.keep_alive == 0 || c.keep_alive > max => max,
        _ => c.keep_alive,
    };
    Granted {
        expiry,
        expiry_changed: expiry != requested_expiry,
        keep_alive,
        keep_alive_changed: keep_alive != c.keep_alive,
    }
}

/// The accepting CONNACK. A property too long to encode (a response information built
/// from a client id near 65 535 bytes) leaves the properties out rather than the
/// CONNACK.
fn write_connack(
    out: &mut BytesMut,
    a: &Admitted,
    present: bool,
    granted: &Granted,
    broker: &Broker,
    listener: &ListenerInfo,
) {
    let version = a.connect.version;
    let properties = match version {
        Version::V5 => connack_properties(a, granted, broker, listener),
        Version::V311 => Properties::default(),
    };
    let connack = |properties| {
        Packet::ConnAck(ConnAck {
            session_present: present,
            code: ReasonCode::Success,
            properties,
        })
    };
    if let Err(e) = connack(properties).encode(version, out) {
        tracing::warn!(client_id = %a.client_id, error = %e, "CONNACK properties left out");
        let _ = connack(Properties::default()).encode(version, out);
    }
}

/// A 5.0 CONNACK's properties: what the client asked that the server changed, and
/// the server's own limits.
fn connack_properties(
    a: &Admitted,
    granted: &Granted,
    broker: &Broker,
    listener: &ListenerInfo,
) -> Properties {
    let limits = &broker.config().limits;
    let mut props = Properties::default();
    props.assigned_client_identifier = a.assigned.clone();
    props.session_expiry_interval = granted.expiry_changed.then_some(granted.expiry);
    props.server_keep_alive = granted.keep_alive_changed.then_some(granted.keep_alive);
    if limits.max_inflight != u16::MAX {
        props.receive_maximum = Some(limits.max_inflight);
    }
    props.maximum_packet_size = Some(listener.max_packet_size);
    if limits.topic_alias_maximum > 0 {
        props.topic_alias_maximum = Some(limits.topic_alias_maximum);
    }
    if a.connect.properties.request_response_information == Some(1) {
        props.response_information = Some(format!("response/{}", a.client_id));
    }
    if let Some(e) = &a.enhanced {
        props.authentication_method = Some(e.method.clone());
        props.authentication_data = a.auth_data.clone().map(bytes::Bytes::from);
    }
    props
}
