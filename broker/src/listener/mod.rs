//! Listeners turn sockets into byte streams for the connection code: plain TCP, TLS,
//! WebSocket, or WebSocket over TLS. Nothing above this module knows which transport a
//! client used; it only sees an `AsyncRead + AsyncWrite` and, for mutual TLS, the
//! verified certificate's identity.

mod addresses;
pub mod proxy;
pub mod tls;
pub mod ws;

pub use addresses::Addresses;

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use crate::connection::{serve, ListenerInfo, OverLimit, Peer};
use addresses::AddressPlace;
use proxy::Prefixed;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::{TlsError, TlsSetup};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use ws::WsSettings;

/// Every connection is a file descriptor: raises this process's soft open-file limit to
/// its hard limit and returns the limit now in effect (`None` if it cannot be read or
/// raised).
pub fn raise_open_file_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
        let raised = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return None;
            }
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0
        };
        raised.then_some(l.rlim_cur as usize)
    }
    #[cfg(not(unix))]
    None
}

/// Caps shared by the connections of one listener and of the whole broker. A permit is
/// moved into each connection task and released when it ends.
#[derive(Clone)]
pub struct Permits {
    pub listener: Arc<Semaphore>,
    pub global: Arc<Semaphore>,
    /// Connections over a limit that are being told so; beyond these a socket is
    /// closed at once.
    pub refusing: Arc<Semaphore>,
    /// Per client address, across listeners.
    pub addresses: Arc<Addresses>,
}

/// What a connection task holds while it runs: its place under the limits, or one of
/// the few places for being told the limit is reached.
enum Held {
    Connection {
        _global: OwnedSemaphorePermit,
        _listener: OwnedSemaphorePermit,
        _address: Option<AddressPlace>,
    },
    Refusing {
        _place: OwnedSemaphorePermit,
        over: OverLimit,
    },
}

impl Held {
    fn over_limit(&self) -> Option<OverLimit> {
        match self {
            Held::Connection { .. } => None,
            Held::Refusing { over, .. } => Some(*over),
        }
    }
}

/// A connection's places under the broker's and its listener's connection limits.
type Places = (OwnedSemaphorePermit, OwnedSemaphorePermit);

fn take_places(permits: &Permits) -> Option<Places> {
    let global = permits.global.clone().try_acquire_owned().ok()?;
    let listener = permits.listener.clone().try_acquire_owned().ok()?;
    Some((global, listener))
}

/// A place for a new connection from `ip` (with `places` it took before its address was
/// known), or `None` when it must be closed at once.
fn admit(permits: &Permits, ip: std::net::IpAddr, places: Option<Places>) -> Option<Held> {
    let over = match permits.addresses.enter(ip) {
        Ok(address) => match places.or_else(|| take_places(permits)) {
            Some((global, listener)) => {
                return Some(Held::Connection {
                    _global: global,
                    _listener: listener,
                    _address: address,
                })
            }
            None => OverLimit::Connections,
        },
        Err(over) => over,
    };
    let place = permits.refusing.clone().try_acquire_owned().ok()?;
    Some(Held::Refusing {
        _place: place,
        over,
    })
}

/// What a connection holds while it waits for its PROXY header: its places under the
/// connection limits, or, over them, a place to be told so. Sockets that never send a
/// header count against the limits like any other.
enum Waiting {
    Places(Places),
    Refusing(OwnedSemaphorePermit),
}

impl Waiting {
    fn take(permits: &Permits) -> Option<Waiting> {
        if let Some(places) = take_places(permits) {
            return Some(Waiting::Places(places));
        }
        let place = permits.refusing.clone().try_acquire_owned().ok()?;
        Some(Waiting::Refusing(place))
    }

    /// The connection's hold once its client's address is known.
    fn admit(self, permits: &Permits, ip: std::net::IpAddr) -> Option<Held> {
        match self {
            Waiting::Places(places) => admit(permits, ip, Some(places)),
            Waiting::Refusing(place) => Some(Held::Refusing {
                _place: place,
                over: OverLimit::Connections,
            }),
        }
    }
}

/// One configured listener, ready to accept.
pub struct Endpoint {
    pub info: Arc<ListenerInfo>,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    pub tls: Option<Arc<TlsSetup>>,
    ws: Option<Arc<WsSettings>>,
    /// TLS, WebSocket and CONNECT must all be done this long after the accept.
    handshake_timeout: Duration,
    /// Every connection starts with a PROXY protocol header giving the client's address.
    proxy_protocol: bool,
}

/// A socket as the connection code gets it: bytes a PROXY header was read with come first.
type Accepted = Prefixed<TcpStream>;

/// What each connection task of a listener is handed besides its socket.
#[derive(Clone)]
struct Shared {
    broker: Arc<Broker>,
    permits: Permits,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

impl Endpoint {
    pub fn new(l: &ListenerConfig, broker: &Broker) -> Result<Endpoint, TlsError> {
        let max_packet_size = l
            .max_packet_size
            .unwrap_or(broker.config().limits.max_packet_size);
        let tls = match l.kind {
            ListenerKind::Tls => Some(Arc::new(TlsSetup::load(l, &[b"mqtt"])?)),
            ListenerKind::Wss => Some(Arc::new(TlsSetup::load(l, &[b"http/1.1"])?)),
            _ => None,
        };
        let ws = l.kind.is_websocket().then(|| {
            Arc::new(WsSettings {
                path: l.path.clone(),
                allowed_origins: l.allowed_origins.clone(),
                max_message: max_packet_size as usize + 16,
            })
        });
        Ok(Endpoint {
            info: Arc::new(ListenerInfo::new(
                Arc::from(l.name()),
                l.allow_anonymous,
                max_packet_size,
                l.use_identity_as_username,
            )),
            kind: l.kind,
            bind: l.bind(),
            tls,
            ws,
            handshake_timeout: Duration::from_secs(broker.config().limits.connect_timeout_secs),
            proxy_protocol: l.proxy_protocol,
        })
    }

    /// Accepts until shutdown. `alive` is cloned into every connection task, so the
    /// server knows all connections are gone when every clone has been dropped.
    pub async fn accept_loop(
        self: Arc<Self>,
        socket: TcpListener,
        broker: Arc<Broker>,
        permits: Permits,
        mut shutdown: watch::Receiver<bool>,
        alive: mpsc::Sender<()>,
    ) {
        let shared = Shared {
            broker,
            permits,
            shutdown: shutdown.clone(),
            alive,
        };
        loop {
            let accepted = tokio::select! {
                r = socket.accept() => r,
                _ = shutdown.changed() => return,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors; back off rather than spin.
                    tracing::warn!(listener = %self.info.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let peer = Peer {
                addr,
                certificate: None,
                accepted: Instant::now(),
            };
            if !self.proxy_protocol {
                let held = admit(&shared.permits, peer.addr.ip(), None);
                self.start(Prefixed::plain(stream), peer, &shared, held);
                continue;
            }
            // The per-address limits wait for the address the header gives.
            let Some(waiting) = Waiting::take(&shared.permits) else {
                self.closed_busy(&shared.broker, peer.addr);
                continue;
            };
            let (me, shared) = (self.clone(), shared.clone());
            tokio::spawn(async move { me.proxied(stream, peer, shared, waiting).await });
        }
    }

    /// Reads the PROXY header within the handshake time, then admits the connection
    /// as coming from the address it names.
    async fn proxied(
        self: Arc<Self>,
        mut stream: TcpStream,
        mut peer: Peer,
        shared: Shared,
        waiting: Waiting,
    ) {
        let due = peer.accepted + self.handshake_timeout;
        let mut shutdown = shared.shutdown.clone();
        let read = tokio::select! {
            r = timeout_at(due, proxy::read_header(&mut stream)) => r,
            _ = shutdown.changed() => return,
        };
        let (source, rest) = match read {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => return self.closed(peer.addr, e.to_string()),
            Err(_) => {
                let why = "PROXY protocol header not received in time";
                return self.closed(peer.addr, why.into());
            }
        };
        if let Some(source) = source {
            tracing::debug!(listener = %self.info.name, proxy = %peer.addr, client = %source, "PROXY protocol header read");
            peer.addr = source;
        }
        let held = waiting.admit(&shared.permits, peer.addr.ip());
        self.start(Prefixed::new(rest, stream), peer, &shared, held);
    }

    /// Starts the connection's task with its place under the limits (or a place to be
    /// told it is over one); closes it when it has neither.
    fn start(self: &Arc<Self>, stream: Accepted, peer: Peer, shared: &Shared, held: Option<Held>) {
        let Some(held) = held else {
            return self.closed_busy(&shared.broker, peer.addr);
        };
        let over_limit = held.over_limit();
        let (me, broker, shutdown, alive) = (
            self.clone(),
            shared.broker.clone(),
            shared.shutdown.clone(),
            shared.alive.clone(),
        );
        tokio::spawn(async move {
            let _held = held;
            let _alive = alive;
            me.handle(stream, peer, broker, shutdown, over_limit).await;
        });
    }

    fn closed_busy(&self, broker: &Broker, peer: SocketAddr) {
        broker.metrics().refused_busy();
        tracing::debug!(listener = %self.info.name, %peer, "over the connection limit with {} refusals under way; closed", broker.config().limits.max_refusing);
    }

    /// Runs the transport's handshakes, then the MQTT connection.
    ///
    /// Every handshake and each kind of stream's connection future is boxed: a task's
    /// size is that of its largest state, and a plain TCP client should not carry room
    /// for a TLS session and a WebSocket on top of its own state.
    async fn handle(
        &self,
        stream: Accepted,
        peer: Peer,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        over_limit: Option<OverLimit>,
    ) {
        let Some(tls) = &self.tls else {
            return self
                .after_tls(stream, peer, broker, shutdown, over_limit)
                .await;
        };
        Box::pin(self.handle_tls(tls, stream, peer, broker, shutdown, over_limit)).await
    }

    async fn handle_tls(
        &self,
        tls: &TlsSetup,
        stream: Accepted,
        mut peer: Peer,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        over_limit: Option<OverLimit>,
    ) {
        let due = peer.accepted + self.handshake_timeout;
        let stream = match timeout_at(due, tls.acceptor().accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.closed(peer.addr, format!("TLS handshake failed: {e}")),
            Err(_) => return self.closed(peer.addr, "TLS handshake not completed in time".into()),
        };
        peer.certificate = tls::identity(stream.get_ref().1.peer_certificates());
        self.after_tls(stream, peer, broker, shutdown, over_limit)
            .await
    }

    async fn after_tls<S>(
        &self,
        stream: S,
        peer: Peer,
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        over_limit: Option<OverLimit>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let info = self.info.clone();
        let Some(ws) = &self.ws else {
            return Box::pin(serve(stream, peer, info, broker, shutdown, over_limit)).await;
        };
        let due = peer.accepted + self.handshake_timeout;
        let stream = match timeout_at(due, Box::pin(ws::accept(stream, ws))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return self.closed(peer.addr, format!("WebSocket handshake failed: {e}"))
            }
            Err(_) => {
                let why = "WebSocket handshake not completed in time";
                return self.closed(peer.addr, why.into());
            }
        };
        Box::pin(serve(stream, peer, info, broker, shutdown, over_limit)).await
    }

    fn closed(&self, peer: SocketAddr, cause: String) {
        tracing::info!(listener = %self.info.name, %peer, "connection closed: {cause}");
    }
}
