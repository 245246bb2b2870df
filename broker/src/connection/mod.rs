//! One client connection: its protocol state and the task that runs it.
//!
//! The task owns the socket. It parses every complete packet in its read buffer before
//! awaiting again, and everything it has to say (acknowledgements, deliveries) goes into
//! one write buffer that is written once per wake-up. It never blocks on another client:
//! publishing only pushes into bounded session queues. Acknowledgements that promise
//! durability are held until the store's group commit covers them.
//!
//! One file per phase: `framed` (the socket and its buffers), `handshake` (CONNECT in,
//! a connection or a refusal out), `inbound` (a handler per packet the client sends),
//! `outbound` (held acknowledgements, deliveries from the session), `exit` (why it
//! ended and the ending).

mod auth;
mod exit;
mod framed;
mod gather;
mod handshake;
mod inbound;
mod outbound;

use crate::broker::Broker;
use crate::codec::{ReasonCode, Version};
use crate::hooks::{ClientHooks, PeerIdentity};
use crate::session::{Control, Session};
use exit::Exit;
use framed::Framed;
use inbound::Inbound;
use outbound::Outbound;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// Connected clients on this listener by protocol level (3.1.1, 5.0), for metrics.
    connections: [AtomicU64; 2],
}

impl ListenerInfo {
    pub fn new(
        name: Arc<str>,
        allow_anonymous: bool,
        max_packet_size: u32,
        use_identity_as_username: bool,
    ) -> ListenerInfo {
        ListenerInfo {
            name,
            allow_anonymous,
            max_packet_size,
            use_identity_as_username,
            connections: Default::default(),
        }
    }

    /// Clients connected through this listener now.
    pub fn connections(&self) -> u64 {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Clients connected through this listener now with protocol `version`.
    pub fn connections_of(&self, version: Version) -> u64 {
        self.connections[slot(version)].load(Ordering::Relaxed)
    }

    fn connected(&self, version: Version) {
        self.connections[slot(version)].fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self, version: Version) {
        self.connections[slot(version)].fetch_sub(1, Ordering::Relaxed);
    }
}

fn slot(version: Version) -> usize {
    match version {
        Version::V311 => 0,
        Version::V5 => 1,
    }
}

/// The far end of a connection as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// From a client certificate verified during the TLS handshake.
    pub certificate: Option<PeerIdentity>,
    /// When the socket was accepted: TLS, WebSocket and CONNECT together must be done
    /// within `limits.connect_timeout_secs` of it, so a client trickling its handshakes
    /// holds its task (and its small buffers) no longer than that.
    pub accepted: Instant,
}

/// A limit a new connection was over before it sent anything: it is told so in a
/// CONNACK rather than just cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// `max_connections`, of the listener or the broker.
    Connections,
    /// `max_connections_per_address`.
    PerAddress,
    /// `connect_rate_per_address`.
    ConnectRate,
}

impl OverLimit {
    pub fn code(self) -> ReasonCode {
        match self {
            OverLimit::Connections => ReasonCode::ServerBusy,
            OverLimit::PerAddress => ReasonCode::QuotaExceeded,
            OverLimit::ConnectRate => ReasonCode::ConnectionRateExceeded,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            OverLimit::Connections => "connection limit reached",
            OverLimit::PerAddress => "connection limit of its address reached",
            OverLimit::ConnectRate => "its address connects too often",
        }
    }
}

/// Runs one connection from its first byte to its end. `over_limit` says the client
/// is only to be told no.
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
    over_limit: Option<OverLimit>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opening = Box::pin(handshake::open(
        io, from, listener, broker, shutdown, over_limit,
    ));
    let Some(mut conn) = opening.await else {
        return;
    };
    let exit = conn.run().await;
    Box::pin(conn.finish(exit)).await;
}

/// Who the client is, fixed at CONNECT.
struct Client {
    version: Version,
    client_id: Arc<str>,
    /// What the hooks keep for this connection lives here.
    hooks: Box<dyn ClientHooks>,
    /// Authenticated with a method (MQTT 5 enhanced authentication): what it takes to
    /// re-authenticate.
    enhanced: Option<auth::Enhanced>,
    /// Unique per connection; tells whether the session is still this connection's.
    conn_id: u64,
    listener: Arc<ListenerInfo>,
    peer: SocketAddr,
}

struct Connection<S> {
    io: Framed<S>,
    client: Client,
    session: Arc<Session>,
    broker: Arc<Broker>,
    inbound: Inbound,
    outbound: Outbound,
    /// 1.5 times the keep alive: silence longer than this ends the connection.
    keep_alive: Option<Duration>,
    control: mpsc::UnboundedReceiver<Control>,
    shutdown: watch::Receiver<bool>,
    /// The last read from the client (or the end of a pause in reading): the keep
    /// alive counts from it, and the messages in what was read were received then.
    last_read: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    async fn run(&mut self) -> Exit {
        // Clients may pipeline packets behind CONNECT; they are in the buffer already
        // and no further read may come to trigger their handling.
        if let Err(e) = self.process_input().and_then(|_| self.drain()) {
            return e;
        }
        self.last_read = Instant::now();
        loop {
            match self.io.flush().await {
                // A shared counter: touched only when there was something to write.
                Ok(0) => {}
                Ok(n) => self.broker.metrics().wrote_bytes(n),
                Err(e) => return e,
            }
            let step = self.next_event().await;
            if let Err(e) = step
                .and_then(|_| self.release_acks())
                .and_then(|_| self.drain())
            {
                return e;
            }
        }
    }

    /// Waits for the next thing to do and does it: input to handle, a session with
    /// something to send, a durable commit, an order from the broker, a deadline.
    async fn next_event(&mut self) -> Result<(), Exit> {
        // While a rate limit or the pace holds the client back its silence is ours,
        // not its own.
        let paused = self.inbound.paused_until();
        let held = self.inbound.is_held();
        let deadline = self
            .keep_alive
            .filter(|_| paused.is_none() && !held)
            .map(|k| self.last_read + k);
        let holding = self.outbound.is_holding();
        let pace = self.broker.pace();
        let waiting = self.inbound.waiting();
        let stall_check = waiting.map(|w| w.next_check());
        tokio::select! {
            _ = sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => {
                self.inbound.resume();
                self.last_read = Instant::now();
                self.process_input()
            }
            _ = async { if let Some(p) = pace { p.drained().await } }, if held && waiting.is_none() => {
                self.inbound.let_go();
                self.last_read = Instant::now();
                self.process_input()
            }
            _ = async { if let Some(w) = waiting { w.drained().await } }, if waiting.is_some() => {
                self.inbound.stop_waiting();
                self.last_read = Instant::now();
                self.process_input()
            }
            _ = sleep_until(stall_check.unwrap_or_else(Instant::now)), if stall_check.is_some() => {
                self.inbound.check_stalled();
                Ok(())
            }
            r = self.io.read(), if paused.is_none() && !held => match r {
                Ok(0) => Err(Exit::Closed),
                Ok(n) => {
                    self.last_read = Instant::now();
                    self.broker.metrics().read_bytes(n);
                    self.process_input()
                }
                Err(e) => Err(Exit::Io(e)),
            },
            _ = self.session.woken() => Ok(()),
            c = self.control.recv() => match c {
                Some(Control::TakenOver) | None => Err(Exit::TakenOver),
                Some(Control::Kick(code)) => Err(Exit::Kicked(code)),
            },
            _ = self.shutdown.changed() => Err(Exit::Shutdown),
            _ = self.outbound.durable_changed(), if holding => Ok(()),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Err(Exit::KeepAlive),
        }
    }
}
