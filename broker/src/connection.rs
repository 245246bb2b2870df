//! One client connection: its protocol state and the task that runs it.
//!
//! The task owns the socket. It parses every complete packet in its read buffer before
//! awaiting again, and everything it has to say (acknowledgements, deliveries) goes into
//! one write buffer that is written once per wake-up. It never blocks on another client:
//! publishing only pushes into bounded session queues. Acknowledgements that promise
//! durability wait in `pending` until the store's group commit covers them.

use crate::broker::Broker;
use crate::codec::{
    self, reason, Ack, AckKind, ConnAck, Disconnect, Packet, Properties, Publish, QoS,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Version, Will,
};
use crate::hooks::{
    Action, AuthOutcome, ConnectInfo, Decision, Identity, Memo, PeerIdentity, PublishOutcome,
    RateEvent, RateOutcome,
};
use crate::message::{now_secs, Delivery, Message};
use crate::metrics::Metrics;
use crate::session::{will_message, ConnHandle, Control, Outgoing, Session, NEVER};
use crate::topic;
use crate::FastMap;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

/// What a connection needs to know about the listener that accepted it.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: Arc<str>,
    pub allow_anonymous: bool,
    pub max_packet_size: u32,
    /// Replace the client's username with its certificate's common name.
    pub use_identity_as_username: bool,
    /// Connected clients on this listener, for metrics.
    pub connections: AtomicU64,
}

/// The far end of a connection as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// From a client certificate verified during the TLS handshake.
    pub certificate: Option<PeerIdentity>,
}

/// Deliveries moved into the write buffer per wake-up, at most.
const MAX_BATCH: usize = 512;
/// Read buffer of a quiet client, and the size below which a write buffer is not kept.
const READ_SMALL: usize = 256;
/// Read buffer of a client that keeps the socket full.
const READ_LARGE: usize = 16 * 1024;
/// Bytes buffered for writing before the connection writes instead of taking more.
const WRITE_HIGH_WATER: usize = 256 * 1024;
const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
/// A client that reads nothing for this long while we have data for it is given up on,
/// so a dead peer cannot hold its connection task (and session) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// Why a connection ended. Decides the DISCONNECT sent, whether the will is published,
/// and the log line.
#[derive(Debug)]
enum Exit {
    /// The client sent DISCONNECT; `will` for 5.0 reason 0x04.
    ClientDisconnect {
        will: bool,
    },
    Closed,
    Io(std::io::Error),
    Protocol {
        code: u8,
        cause: String,
    },
    KeepAlive,
    /// The client stopped reading: a write made no progress for `WRITE_TIMEOUT`.
    WriteStalled,
    TakenOver,
    Kicked(u8),
    Shutdown,
}

impl Exit {
    fn protocol(code: u8, cause: impl Into<String>) -> Exit {
        Exit::Protocol {
            code,
            cause: cause.into(),
        }
    }

    fn sends_will(&self) -> bool {
        match self {
            Exit::ClientDisconnect { will } => *will,
            Exit::Shutdown => false,
            _ => true,
        }
    }

    /// The reason code of the DISCONNECT a 5.0 client is sent.
    fn disconnect_code(&self) -> Option<u8> {
        match self {
            Exit::Protocol { code, .. } => Some(*code),
            Exit::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            Exit::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            Exit::Kicked(c) => Some(*c),
            Exit::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Exit::ClientDisconnect { will: false } => "client sent DISCONNECT".into(),
            Exit::ClientDisconnect { will: true } => "client sent DISCONNECT with will".into(),
            Exit::Closed => "connection closed by client without DISCONNECT".into(),
            Exit::Io(e) => format!("network error: {e}"),
            Exit::Protocol { code, cause } => format!("{cause} (reason 0x{code:02X})"),
            Exit::KeepAlive => "keep alive timeout".into(),
            Exit::WriteStalled => format!("client read nothing for {}s", WRITE_TIMEOUT.as_secs()),
            Exit::TakenOver => "session taken over by a new connection".into(),
            Exit::Kicked(c) => format!("disconnected by the server (reason 0x{c:02X})"),
            Exit::Shutdown => "server shutting down".into(),
        }
    }
}

impl From<codec::Error> for Exit {
    fn from(e: codec::Error) -> Exit {
        Exit::protocol(e.reason_code(), e.to_string())
    }
}

/// Reads until one complete frame is buffered.
/// What the first bytes are, when they cannot start a CONNECT: said in the log so an
/// operator sees at once that, say, a browser or a TLS client hit a plain MQTT port.
fn not_connect(buf: &[u8]) -> Option<&'static str> {
    let first = *buf.first()?;
    if first == 0x10 {
        return None;
    }
    const HTTP: [&[u8]; 6] = [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE"];
    Some(
        if HTTP
            .iter()
            .any(|m| buf.starts_with(m) || m.starts_with(buf))
        {
            "plain HTTP request on an MQTT listener"
        } else if first == 0x16 {
            "TLS handshake on a listener without TLS"
        } else {
            "first packet is not CONNECT"
        },
    )
}

/// Reads until one complete frame is buffered; for the first packet, gives up as soon
/// as the bytes cannot be a CONNECT.
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Exit> {
    loop {
        if let Some(why) = not_connect(buf) {
            return Err(Exit::protocol(reason::PROTOCOL_ERROR, why));
        }
        if let Some(n) = codec::frame_len(buf, max)? {
            return Ok(buf.split_to(n).freeze());
        }
        buf.reserve(READ_SMALL);
        match io.read_buf(buf).await {
            Ok(0) => return Err(Exit::Closed),
            Ok(_) => {}
            Err(e) => return Err(Exit::Io(e)),
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

async fn write_packet<S: AsyncWrite + Unpin>(io: &mut S, p: &Packet, v: Version) {
    let mut b = BytesMut::new();
    p.encode(v, &mut b);
    let write = async {
        io.write_all(&b).await?;
        io.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

fn connack_refusal(code: u8, why: &str, v: Version) -> Packet {
    let mut properties = Properties::default();
    if v == Version::V5 {
        properties.reason_string = Some(why.to_owned());
    }
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    })
}

/// Runs one connection from its first byte to its end. `over_limit` says the listener
/// is full: the client is told so in a CONNACK rather than just cut off.
///
/// What an idle connection costs is mostly the size of this future, so the CONNECT
/// handling and the teardown are boxed futures of their own: their locals (the CONNECT
/// packet, its properties, hook arguments, the will) live only while they run, not in
/// the state every connection keeps for its whole life.
pub async fn serve<S>(
    io: S,
    from: Peer,
    listener: Arc<ListenerInfo>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    over_limit: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opening = Box::pin(open(io, from, listener, broker, shutdown, over_limit));
    let Some(mut conn) = opening.await else {
        return;
    };
    let exit = conn.run().await;
    Box::pin(conn.finish(exit)).await;
}

/// Reads and answers CONNECT: authentication, limits, the session, CONNACK. `None` when
/// the client was refused or went away.
async fn open<S>(
    mut io: S,
    from: Peer,
    listener: Arc<ListenerInfo>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    over_limit: bool,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let peer = from.addr;
    let limits = &broker.config.limits;
    let max_packet = listener.max_packet_size as usize;
    let mut rbuf = BytesMut::with_capacity(2 * READ_SMALL);
    let connect_timeout = Duration::from_secs(limits.connect_timeout_secs);
    let frame = match tokio::time::timeout(
        connect_timeout,
        read_frame(&mut io, &mut rbuf, max_packet),
    )
    .await
    {
        Err(_) => {
            tracing::info!(%peer, listener = %listener.name, "closed: no CONNECT within {}s", limits.connect_timeout_secs);
            return None;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, listener = %listener.name, "closed before CONNECT: {}", e.describe());
            return None;
        }
        Ok(Ok(frame)) => frame,
    };
    let mut connect = match codec::decode(frame.clone(), Version::V311) {
        Ok(Packet::Connect(c)) => *c,
        Ok(other) => {
            tracing::info!(%peer, listener = %listener.name, "closed: first packet was {}, not CONNECT", other.name());
            return None;
        }
        Err(e) => {
            tracing::info!(%peer, listener = %listener.name, "closed: bad CONNECT: {e}");
            match (&e, connect_level(&frame)) {
                // 3.1.1 clients of an unknown level get return code 1 (MQTT-3.1.2-2).
                (codec::Error::UnsupportedVersion(_), _) => {
                    write_packet(
                        &mut io,
                        &connack_refusal(e.reason_code(), "", Version::V311),
                        Version::V311,
                    )
                    .await
                }
                (_, Some(5)) => {
                    write_packet(
                        &mut io,
                        &connack_refusal(e.reason_code(), &e.to_string(), Version::V5),
                        Version::V5,
                    )
                    .await
                }
                _ => {}
            }
            return None;
        }
    };
    let version = connect.version;
    let requested_id = connect.client_id.clone();
    let refuse = |code: u8, why: &str| {
        tracing::info!(%peer, listener = %listener.name, client_id = %requested_id, protocol = %version,
            "connection refused: {why} (reason 0x{code:02X})");
        connack_refusal(code, why, version)
    };
    if over_limit {
        let p = refuse(reason::SERVER_BUSY, "connection limit reached");
        {
            write_packet(&mut io, &p, version).await;
            return None;
        }
    }
    if connect.properties.authentication_method.is_some() {
        let p = refuse(
            BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported",
        );
        {
            write_packet(&mut io, &p, version).await;
            return None;
        }
    }
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            let p = refuse(
                reason::CLIENT_ID_NOT_VALID,
                "empty client id needs clean session",
            );
            {
                write_packet(&mut io, &p, version).await;
                return None;
            }
        }
        let id = format!(
            "weir-{:x}-{}",
            now_secs(),
            ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed)
        );
        assigned = Some(id.clone());
        Arc::from(id)
    } else {
        Arc::from(connect.client_id.as_str())
    };
    if listener.use_identity_as_username {
        match from
            .certificate
            .as_ref()
            .and_then(|c| c.common_name.clone())
        {
            Some(cn) => connect.username = Some(cn),
            None => {
                let p = refuse(
                    reason::NOT_AUTHORIZED,
                    "a client certificate with a common name is required",
                );
                {
                    write_packet(&mut io, &p, version).await;
                    return None;
                }
            }
        }
    }
    let outcome = broker.hooks.authenticate(&ConnectInfo {
        client_id: &client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_ref(),
        version,
        peer,
        listener: &listener.name,
        allow_anonymous: listener.allow_anonymous,
        user_properties: &connect.properties.user_properties,
        certificate: from.certificate.as_ref(),
    });
    let identity = match outcome {
        AuthOutcome::Deny { code, reason } => {
            let p = refuse(code, &format!("authentication failed: {reason}"));
            {
                write_packet(&mut io, &p, version).await;
                return None;
            }
        }
        AuthOutcome::Allow {
            username,
            attributes,
        } => Identity {
            client_id: client_id.to_string(),
            username: username.or(connect.username.take()),
            peer: peer.to_string(),
            listener: listener.name.to_string(),
            attributes,
        },
    };
    let mut memo = Memo::connection();
    if broker.hooks.limits_rate() {
        match broker
            .hooks
            .rate_limit(&mut memo, &identity.info(), RateEvent::Connect)
        {
            RateOutcome::Allow => {}
            RateOutcome::Reject(code) => {
                let p = refuse(code, "connection rate limited");
                {
                    write_packet(&mut io, &p, version).await;
                    return None;
                }
            }
            // Reading is what throttling holds back; for a new client that is the
            // CONNACK and everything after it.
            RateOutcome::Throttle(d) => tokio::time::sleep(d).await,
        }
    }
    if let Some(w) = &connect.will {
        let bad_topic = w.topic.len() > limits.max_topic_length
            || topic::levels(&w.topic) > limits.max_topic_levels;
        if bad_topic {
            let p = refuse(
                reason::TOPIC_NAME_INVALID,
                "will topic exceeds the topic limits",
            );
            {
                write_packet(&mut io, &p, version).await;
                return None;
            }
        }
        let decision = broker.hooks.authorize(
            &mut memo,
            &identity.info(),
            Action::Publish,
            &w.topic,
            w.qos,
            w.retain,
        );
        if let Decision::Deny(code) = decision {
            let p = refuse(code, "will topic not authorized");
            {
                write_packet(&mut io, &p, version).await;
                return None;
            }
        }
    }
    let requested_expiry = match version {
        Version::V311 if connect.clean_start => 0,
        Version::V311 => NEVER,
        Version::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
    };
    let expiry = requested_expiry.min(limits.max_session_expiry_secs);
    let keep_alive = match limits.max_keep_alive {
        0 => connect.keep_alive,
        max if connect.keep_alive == 0 || connect.keep_alive > max => max,
        _ => connect.keep_alive,
    };

    let conn_id = broker.next_conn_id();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (session, present) = broker.attach(
        client_id.clone(),
        connect.clean_start,
        expiry,
        ConnHandle {
            id: conn_id,
            control: control_tx,
            listener: listener.name.clone(),
            peer,
            version,
            since: std::time::SystemTime::now(),
        },
        Arc::new(identity.clone()),
    );

    let mut props = Properties::default();
    if version == Version::V5 {
        props.assigned_client_identifier = assigned;
        if expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        if keep_alive != connect.keep_alive {
            props.server_keep_alive = Some(keep_alive);
        }
        if limits.max_inflight != u16::MAX {
            props.receive_maximum = Some(limits.max_inflight);
        }
        props.maximum_packet_size = Some(listener.max_packet_size);
        if limits.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        }
        if connect.properties.request_response_information == Some(1) {
            props.response_information = Some(format!("response/{client_id}"));
        }
    }
    let mut wbuf = BytesMut::new();
    Packet::ConnAck(ConnAck {
        session_present: present,
        code: reason::SUCCESS,
        properties: props,
    })
    .encode(version, &mut wbuf);
    Metrics::add(&broker.metrics.connections, 1);
    listener.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%client_id, %peer, listener = %listener.name, protocol = %version, clean_start = connect.clean_start,
        session_present = present, keep_alive, username = %identity.username.as_deref().unwrap_or(""),
        identity = %from.certificate.as_ref().and_then(|c| c.common_name.as_deref()).unwrap_or(""), "client connected");

    let durable = broker.store.durable();
    let conn = Connection {
        io,
        version,
        client_id,
        identity,
        memo,
        paused_until: None,
        listener,
        peer,
        conn_id,
        session,
        rbuf,
        wbuf,
        busy_reader: false,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500)),
        connect_expiry: expiry,
        client_receive_max: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        client_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        out_aliases: FastMap::default(),
        in_aliases: FastMap::default(),
        will: connect.will,
        pending: VecDeque::new(),
        durable,
        control: control_rx,
        shutdown,
        batch: Vec::new(),
        broker,
    };
    Some(conn)
}

/// Output held back until the store has made what it promises durable: an
/// acknowledgement (with deliveries that must follow it, such as retained messages after
/// a SUBACK), or encoded deliveries whose packet ids were just stored.
struct Pending {
    ticket: u64,
    held: Held,
    then: Vec<Delivery>,
}

enum Held {
    Packet(Box<Packet>),
    Bytes(BytesMut),
}

struct Connection<S> {
    io: S,
    version: Version,
    client_id: Arc<str>,
    /// Who the client is after authentication, for every later hook.
    identity: Identity,
    /// What the hooks keep between this connection's calls.
    memo: Memo,
    /// A rate-limit plugin throttled the client: nothing is read before this.
    paused_until: Option<Instant>,
    listener: Arc<ListenerInfo>,
    peer: SocketAddr,
    conn_id: u64,
    session: Arc<Session>,
    broker: Arc<Broker>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The last read was not small: more is coming, so read in large chunks.
    busy_reader: bool,
    /// 1.5 times the keep alive: silence longer than this ends the connection.
    keep_alive: Option<Duration>,
    connect_expiry: u32,
    client_receive_max: u16,
    client_max_packet: usize,
    client_alias_max: u16,
    /// Topic aliases we assigned towards the client.
    out_aliases: FastMap<Arc<str>, u16>,
    /// Topic aliases the client established towards us.
    in_aliases: FastMap<u16, String>,
    will: Option<Will>,
    pending: VecDeque<Pending>,
    durable: watch::Receiver<u64>,
    control: mpsc::UnboundedReceiver<Control>,
    shutdown: watch::Receiver<bool>,
    /// Reused between wake-ups so draining the session allocates nothing.
    batch: Vec<Outgoing>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    async fn run(&mut self) -> Exit {
        // Clients may pipeline packets behind CONNECT; they are in the buffer already
        // and no further read may come to trigger their handling.
        if let Err(e) = self.process_input().and_then(|_| self.drain()) {
            return e;
        }
        let mut last_read = Instant::now();
        loop {
            if !self.wbuf.is_empty() {
                let n = self.wbuf.len();
                let write = async {
                    self.io.write_all(&self.wbuf).await?;
                    // TLS and WebSocket streams buffer; a plain socket flushes for free.
                    self.io.flush().await
                };
                match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Exit::Io(e),
                    Err(_) => return Exit::WriteStalled,
                }
                Metrics::add(&self.broker.metrics.bytes_out, n as u64);
                self.wbuf.clear();
                // Neither a small write nor a past burst should leave a buffer behind
                // that an idle client would keep for hours.
                if n < READ_SMALL || self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
                    self.wbuf = BytesMut::new();
                }
            }
            // Most of a large fleet is idle, so a quiet client reads into a small buffer
            // and keeps nothing between packets; a client whose last read filled its
            // buffer gets a large one, so a busy publisher needs few reads.
            if !self.busy_reader && self.rbuf.is_empty() && self.rbuf.capacity() > 4 * READ_SMALL {
                self.rbuf = BytesMut::new();
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            if self.busy_reader && spare < 1024 {
                self.rbuf.reserve(READ_LARGE);
            } else if spare < READ_SMALL {
                self.rbuf.reserve(READ_SMALL);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            // While a rate limit holds the client back its silence is ours, not its own.
            let paused = self.paused_until;
            let deadline = self
                .keep_alive
                .filter(|_| paused.is_none())
                .map(|k| last_read + k);
            let step = tokio::select! {
                _ = sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => {
                    self.paused_until = None;
                    last_read = Instant::now();
                    self.process_input()
                }
                r = self.io.read_buf(&mut self.rbuf), if paused.is_none() => match r {
                    Ok(0) => Err(Exit::Closed),
                    Ok(n) => {
                        last_read = Instant::now();
                        self.busy_reader = n >= READ_SMALL.min(spare);
                        Metrics::add(&self.broker.metrics.bytes_in, n as u64);
                        self.process_input()
                    }
                    Err(e) => Err(Exit::Io(e)),
                },
                _ = self.session.notify.notified() => Ok(()),
                c = self.control.recv() => match c {
                    Some(Control::TakenOver) | None => Err(Exit::TakenOver),
                    Some(Control::Kick(code)) => Err(Exit::Kicked(code)),
                },
                _ = self.shutdown.changed() => Err(Exit::Shutdown),
                _ = self.durable.changed(), if !self.pending.is_empty() => Ok(()),
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Err(Exit::KeepAlive),
            };
            if let Err(e) = step
                .and_then(|_| self.release_acks())
                .and_then(|_| self.drain())
            {
                return e;
            }
        }
    }

    /// Parses and handles every complete packet in the read buffer.
    fn process_input(&mut self) -> Result<(), Exit> {
        let max = self.listener.max_packet_size as usize;
        while self.paused_until.is_none() {
            let Some(n) = codec::frame_len(&self.rbuf, max)? else {
                break;
            };
            let frame = self.rbuf.split_to(n).freeze();
            let packet = codec::decode(frame, self.version)?;
            self.handle(packet)?;
        }
        Ok(())
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Ack(a) => self.on_ack(a),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                Packet::PingResp.encode(self.version, &mut self.wbuf);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Exit::protocol(reason::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(_) => Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "AUTH without enhanced authentication",
            )),
            other => Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                format!("{} may only be sent by a server", other.name()),
            )),
        }
    }

    fn persistent(&self) -> bool {
        self.session.lock().expiry_interval > 0
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), Exit> {
        let limits = &self.broker.config.limits;
        if let Some(alias) = p.properties.topic_alias {
            if alias > limits.topic_alias_maximum {
                return Err(Exit::protocol(
                    reason::TOPIC_ALIAS_INVALID,
                    format!(
                        "topic alias {alias} exceeds the maximum {}",
                        limits.topic_alias_maximum
                    ),
                ));
            }
            if p.topic.is_empty() {
                match self.in_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Exit::protocol(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        ))
                    }
                }
            } else {
                self.in_aliases.insert(alias, p.topic.clone());
            }
        }
        if p.topic.len() > limits.max_topic_length
            || topic::levels(&p.topic) > limits.max_topic_levels
        {
            return Err(Exit::protocol(
                reason::TOPIC_NAME_INVALID,
                "topic exceeds the configured length or levels",
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Exit::protocol(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }
        let (qos, pid) = (p.qos, p.pid);
        Metrics::add(&self.broker.metrics.messages_in, 1);
        if qos == QoS::ExactlyOnce && self.session.lock().incoming.contains(&pid) {
            // A resend of a message already routed: acknowledge again, route nothing.
            self.ack(
                Packet::Ack(Ack::new(AckKind::PubRec, pid)),
                false,
                Vec::new(),
            );
            return Ok(());
        }
        if qos != QoS::AtMostOnce {
            // QoS 1 messages whose PUBACK is held, plus QoS 2 messages not yet released
            // (those are in `incoming` whether or not their PUBREC is held).
            let held_acks = self
                .pending
                .iter()
                .filter(|p| matches!(&p.held, Held::Packet(p) if matches!(&**p, Packet::Ack(a) if a.kind == AckKind::PubAck)))
                .count();
            let unacked = held_acks + self.session.lock().incoming.len();
            if unacked >= limits.max_inflight as usize {
                return Err(Exit::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "client exceeded our Receive Maximum",
                ));
            }
        }
        let mut msg = Message::from_publish(p, Some(self.client_id.clone()));
        let client = self.identity.info();
        match self.broker.hooks.publish(&mut self.memo, &client, &mut msg) {
            PublishOutcome::Route { throttle: None } => {}
            PublishOutcome::Route { throttle: Some(d) } => {
                self.paused_until = Some(Instant::now() + d)
            }
            PublishOutcome::Refuse { code, why } => {
                self.refuse_publish(qos, pid, code, &msg.topic, why);
                return Ok(());
            }
        }
        let msg = Arc::new(msg);
        let mut stored = self.broker.publish(msg);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(
                Packet::Ack(Ack::new(AckKind::PubAck, pid)),
                stored,
                Vec::new(),
            ),
            QoS::ExactlyOnce => {
                self.session.lock().incoming.insert(pid);
                if self.persistent() {
                    stored |= crate::session::log_store(
                        self.broker.store.save_incoming(&self.client_id, pid, true),
                        &self.client_id,
                    );
                }
                self.ack(
                    Packet::Ack(Ack::new(AckKind::PubRec, pid)),
                    stored,
                    Vec::new(),
                );
            }
        }
        Ok(())
    }

    /// Answers a PUBLISH that is not routed: a 5.0 publisher gets the reason code in its
    /// PUBACK or PUBREC; a 3.1.1 publisher (no way to say no) and QoS 0 get nothing.
    fn refuse_publish(&mut self, qos: QoS, pid: u16, code: u8, topic: &str, why: &str) {
        Metrics::add(&self.broker.metrics.dropped_denied, 1);
        tracing::debug!(client_id = %self.client_id, topic, code, "publish {why}");
        let kind = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => AckKind::PubAck,
            QoS::ExactlyOnce => AckKind::PubRec,
        };
        self.ack(
            Packet::Ack(Ack::with_code(kind, pid, code)),
            false,
            Vec::new(),
        );
    }

    fn on_ack(&mut self, a: Ack) -> Result<(), Exit> {
        let store = &*self.broker.store;
        let v5 = self.version == Version::V5;
        match a.kind {
            AckKind::PubAck | AckKind::PubComp => {
                self.session.lock().complete(&self.client_id, a.pid, store);
            }
            AckKind::PubRec => {
                let mut st = self.session.lock();
                if a.code >= 0x80 {
                    st.complete(&self.client_id, a.pid, store);
                } else {
                    let known = st.release(&self.client_id, a.pid, store);
                    drop(st);
                    let code = if known || !v5 {
                        0
                    } else {
                        reason::PACKET_ID_NOT_FOUND
                    };
                    Packet::Ack(Ack::with_code(AckKind::PubRel, a.pid, code))
                        .encode(self.version, &mut self.wbuf);
                }
            }
            AckKind::PubRel => {
                let had = self.session.lock().incoming.remove(&a.pid);
                if had && self.persistent() {
                    crate::session::log_store(
                        store.save_incoming(&self.client_id, a.pid, false),
                        &self.client_id,
                    );
                }
                let code = if had || !v5 {
                    0
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                Packet::Ack(Ack::with_code(AckKind::PubComp, a.pid, code))
                    .encode(self.version, &mut self.wbuf);
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let limits = &self.broker.config.limits;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut then = Vec::new();
        let mut changed = false;
        let hooks = self.broker.hooks.clone();
        if hooks.limits_rate() {
            match hooks.rate_limit(&mut self.memo, &self.identity.info(), RateEvent::Subscribe) {
                RateOutcome::Allow => {}
                RateOutcome::Reject(code) => {
                    let codes = vec![code; s.filters.len()];
                    let suback = SubAck {
                        pid: s.pid,
                        codes,
                        properties: Properties::default(),
                    };
                    self.ack(Packet::SubAck(suback), false, Vec::new());
                    return Ok(());
                }
                RateOutcome::Throttle(d) => self.paused_until = Some(Instant::now() + d),
            }
        }
        for (filter, opts) in s.filters {
            let is_shared = match topic::parse_shared(&filter) {
                Ok(Some(_)) => true,
                Ok(None) if topic::validate_filter(&filter).is_ok() => false,
                _ => {
                    codes.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if filter.len() > limits.max_topic_length
                || topic::levels(&filter) > limits.max_topic_levels
            {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if is_shared && opts.no_local && self.version == Version::V5 {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "No Local set on a shared subscription",
                ));
            }
            let decision = hooks.authorize(
                &mut self.memo,
                &self.identity.info(),
                Action::Subscribe,
                &filter,
                opts.qos,
                false,
            );
            if let Decision::Deny(code) = decision {
                codes.push(code);
                continue;
            }
            let existed = self.broker.subscribe(&self.session, &filter, opts, sub_id);
            changed = true;
            codes.push(opts.qos as u8);
            let send_retained = match opts.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::Never => false,
            };
            if send_retained && !is_shared {
                let retained = self.broker.retained_for(&filter, opts, sub_id);
                // A wildcard filter may cover topics this client may not read.
                let (memo, client) = (&mut self.memo, self.identity.info());
                let readable = |d: &Delivery| {
                    !hooks.authorizes()
                        || hooks.authorize(
                            memo,
                            &client,
                            Action::Subscribe,
                            &d.message.topic,
                            d.qos,
                            true,
                        ) == Decision::Allow
                };
                then.extend(retained.into_iter().filter(readable));
            }
        }
        let stored = changed && self.persistent();
        if changed {
            self.broker.save_meta(&self.session);
        }
        let suback = SubAck {
            pid: s.pid,
            codes,
            properties: Properties::default(),
        };
        self.ack(Packet::SubAck(suback), stored, then);
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Exit> {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&self.session, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.broker.save_meta(&self.session);
        let stored = self.persistent();
        self.ack(
            Packet::UnsubAck(UnsubAck {
                pid: u.pid,
                codes,
                properties: Properties::default(),
            }),
            stored,
            Vec::new(),
        );
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
        if let Some(e) = d.properties.session_expiry_interval {
            if self.connect_expiry == 0 && e != 0 {
                return Err(Exit::protocol(
                    reason::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 at CONNECT",
                ));
            }
            self.session.lock().expiry_interval =
                e.min(self.broker.config.limits.max_session_expiry_secs);
        }
        Err(Exit::ClientDisconnect {
            will: d.code == reason::DISCONNECT_WITH_WILL,
        })
    }

    /// Sends an acknowledgement now, or once the store has synced what it covers when
    /// `needs_sync`. Order is kept: nothing overtakes an acknowledgement that waits.
    fn ack(&mut self, packet: Packet, needs_sync: bool, then: Vec<Delivery>) {
        let ticket = if needs_sync {
            self.broker.store.commit()
        } else {
            0
        };
        if ticket == 0 && self.pending.is_empty() {
            packet.encode(self.version, &mut self.wbuf);
            for d in then {
                self.broker.deliver(&self.session, d);
            }
        } else {
            self.pending.push_back(Pending {
                ticket,
                held: Held::Packet(Box::new(packet)),
                then,
            });
        }
    }

    fn release_acks(&mut self) -> Result<(), Exit> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let durable = *self.durable.borrow_and_update();
        while self.pending.front().is_some_and(|p| p.ticket <= durable) {
            if let Some(p) = self.pending.pop_front() {
                match p.held {
                    Held::Packet(packet) => packet.encode(self.version, &mut self.wbuf),
                    Held::Bytes(bytes) => self.wbuf.extend_from_slice(&bytes),
                }
                for d in p.then {
                    self.broker.deliver(&self.session, d);
                }
            }
        }
        Ok(())
    }

    /// Moves what the session may send now into the write buffer.
    fn drain(&mut self) -> Result<(), Exit> {
        if self.wbuf.len() >= WRITE_HIGH_WATER {
            // Write first; come back for more on the next turn.
            self.session.notify.notify_one();
            return Ok(());
        }
        let window = self
            .client_receive_max
            .min(self.broker.config.limits.max_inflight) as usize;
        let now = now_secs();
        let mut batch = std::mem::take(&mut self.batch);
        let taken = {
            let mut st = self.session.lock();
            if !st.is_attached(self.conn_id) {
                return Err(Exit::TakenOver);
            }
            st.take_sendable(
                &self.client_id,
                window,
                MAX_BATCH,
                now,
                &*self.broker.store,
                &mut batch,
            )
        };
        if taken.expired > 0 {
            Metrics::add(&self.broker.metrics.dropped_expired, taken.expired as u64);
        }
        let start = self.wbuf.len();
        if batch.len() >= MAX_BATCH {
            self.session.notify.notify_one();
        }
        for o in batch.drain(..) {
            match o {
                Outgoing::PubRel { pid } => {
                    Packet::Ack(Ack::new(AckKind::PubRel, pid))
                        .encode(self.version, &mut self.wbuf);
                }
                Outgoing::Publish { pid, dup, delivery } => {
                    self.write_publish(pid, dup, &delivery, now)
                }
            }
        }
        self.batch = batch;
        // Stored packet ids must be durable before the client sees them; and nothing
        // may overtake output that is already held.
        if self.wbuf.len() > start && (taken.stored || !self.pending.is_empty()) {
            let ticket = if taken.stored {
                self.broker.store.commit()
            } else {
                0
            };
            let bytes = self.wbuf.split_off(start);
            self.pending.push_back(Pending {
                ticket,
                held: Held::Bytes(bytes),
                then: Vec::new(),
            });
            self.release_acks()?;
        }
        Ok(())
    }

    fn write_publish(&mut self, pid: u16, dup: bool, d: &Delivery, now: u64) {
        let msg = &d.message;
        let mut new_alias = false;
        let mut alias = None;
        let mut topic: &str = &msg.topic;
        if self.client_alias_max > 0 {
            if let Some(a) = self.out_aliases.get(&msg.topic) {
                alias = Some(*a);
                topic = "";
            } else if self.out_aliases.len() < self.client_alias_max as usize {
                let a = self.out_aliases.len() as u16 + 1;
                self.out_aliases.insert(msg.topic.clone(), a);
                alias = Some(a);
                new_alias = true;
            }
        }
        // A resend must carry the topic itself: the alias mapping may be from a
        // connection that no longer exists.
        if dup && topic.is_empty() {
            topic = &msg.topic;
        }
        let per = codec::PerDelivery {
            message_expiry_interval: msg.remaining_expiry(now),
            subscription_identifiers: &d.subscription_ids,
            topic_alias: alias,
        };
        let before = self.wbuf.len();
        codec::encode_publish(
            &mut self.wbuf,
            self.version,
            codec::PublishHeader {
                dup,
                qos: d.qos,
                retain: d.retain,
                pid,
            },
            topic,
            &msg.properties,
            Some(per),
            &msg.payload,
        );
        if self.wbuf.len() - before > self.client_max_packet {
            self.wbuf.truncate(before);
            if new_alias {
                self.out_aliases.remove(&msg.topic);
            }
            Metrics::add(&self.broker.metrics.dropped_too_large, 1);
            tracing::debug!(client_id = %self.client_id, topic = %msg.topic, "message larger than the client's maximum packet size dropped");
            if d.qos != QoS::AtMostOnce {
                self.session
                    .lock()
                    .complete(&self.client_id, pid, &*self.broker.store);
            }
            return;
        }
        Metrics::add(&self.broker.metrics.messages_out, 1);
    }

    /// Says goodbye (5.0 DISCONNECT where the server ends it), hands the session back
    /// and publishes or schedules the will.
    async fn finish(mut self, exit: Exit) {
        if let (Version::V5, Some(code)) = (self.version, exit.disconnect_code()) {
            let mut properties = Properties::default();
            if let Exit::Protocol { cause, .. } = &exit {
                properties.reason_string = Some(cause.clone());
            }
            Packet::Disconnect(Disconnect { code, properties })
                .encode(self.version, &mut self.wbuf);
        }
        if !self.wbuf.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.io.write_all(&self.wbuf)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        let will = self.will.take().filter(|_| exit.sends_will()).map(|w| {
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            (Arc::new(will_message(&w, &self.client_id)), delay)
        });
        match exit {
            Exit::TakenOver => {
                // The new connection resumed or replaced the session; a delayed will was
                // cancelled by that reconnect, an immediate one goes out now.
                if let Some((m, 0)) = will {
                    self.broker.publish(m);
                    self.broker.store.commit();
                }
            }
            _ => self.broker.detach(&self.session, self.conn_id, will),
        }
        self.broker
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.listener.connections.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(client_id = %self.client_id, peer = %self.peer, listener = %self.listener.name,
            protocol = %self.version, reason = %exit.describe(), "client disconnected");
    }
}
