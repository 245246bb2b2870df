//! Starting and stopping the whole broker: store, listeners, housekeeping.

use crate::admin::AdminState;
use crate::broker::Broker;
use crate::cluster::ClusterStats;
use crate::config::Config;
use crate::connection::ListenerInfo;
use crate::hooks::Hooks;
use crate::listener::tls::{TlsError, TlsSetup};
use crate::listener::{Addresses, Endpoint, Permits};
use crate::plugin::PluginChain;
use crate::store::StoreError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot start the housekeeping thread: {0}")]
    Thread(std::io::Error),
    #[error("listener '{name}' cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long connections get to say goodbye on shutdown before the store is flushed anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the broker until `stop` completes, then shuts down cleanly: listeners stop
/// accepting, 5.0 clients get DISCONNECT 0x8B, sessions are handed back, the store is
/// synced.
pub async fn run(
    config: Config,
    hooks: Arc<dyn Hooks>,
    plugins: Option<Arc<PluginChain>>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (broker, cluster) = match config.cluster.clone() {
        None => (Broker::open(config, hooks)?, None),
        Some(c) => join_cluster(config, hooks, &c).await?,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    // Bound before any MQTT listener accepts: whoever sees the broker take MQTT
    // connections (a health check, an orchestrator, a test) finds its admin API too.
    let admin = match broker.config().admin.enabled {
        true => Some(bind_admin(&broker).await?),
        false => None,
    };
    let (listeners, mut tls) = start_listeners(&broker, &shutdown_rx, &alive_tx).await?;
    tls.extend(admin.as_ref().and_then(|a| a.tls.clone()));
    reload_certificates_on_sighup(tls);
    let sys = crate::sys::Sources {
        broker: broker.clone(),
        listeners: listeners.clone(),
        plugins: plugins.clone(),
    };
    let interval = Duration::from_secs(broker.config().sys_interval);
    crate::sys::start(sys, interval, shutdown_rx.clone());
    if let Some(socket) = admin {
        serve_admin(
            socket,
            &broker,
            plugins,
            cluster,
            listeners,
            shutdown_rx.clone(),
        );
    }
    drop(alive_tx);
    let housekeeping = Housekeeper::start(broker.clone()).map_err(ServerError::Thread)?;

    stop.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; flushing anyway");
    }
    drop(housekeeping);
    broker.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// A broker that is one node of a cluster: its fan-out and acknowledgements go through
/// NATS, and what other nodes forward arrives through [`Broker::arrive`] and
/// [`Broker::keep_retained`].
async fn join_cluster(
    config: Config,
    hooks: Arc<dyn Hooks>,
    cluster: &crate::config::ClusterConfig,
) -> Result<(Arc<Broker>, Option<Arc<ClusterStats>>), ServerError> {
    let cluster = crate::cluster::Cluster::connect(cluster).await?;
    let store = Broker::open_store(&config)?;
    let commits = crate::cluster::tickets::Joint::start(store.clone(), cluster.tickets());
    let parts = crate::broker::Parts {
        fanout: cluster.fanout(),
        commits,
        sessions: cluster.directory(),
    };
    let broker = Broker::assemble(config, hooks, store, parts)?;
    let stats = cluster.stats();
    cluster
        .serve(Arc::new(Arrivals(Arc::downgrade(&broker))))
        .await;
    Ok((broker, Some(stats)))
}

/// The broker as the cluster hands it what other nodes send. Weak: the cluster's
/// tasks must not keep a stopped broker alive.
struct Arrivals(std::sync::Weak<Broker>);

impl crate::cluster::Arrivals for Arrivals {
    fn messages(&self, msgs: Vec<crate::message::Message>) {
        if let Some(b) = self.0.upgrade() {
            b.arrive(msgs)
        }
    }

    fn shared(&self, share: &str, msg: crate::message::Message) {
        if let Some(b) = self.0.upgrade() {
            b.arrive_shared(share, msg)
        }
    }

    fn taken_over(&self, client_id: &str) {
        if let Some(b) = self.0.upgrade() {
            b.taken_elsewhere(client_id);
        }
    }

    fn retained(&self, topic: &str, msg: Option<crate::message::Message>) {
        if let Some(b) = self.0.upgrade() {
            b.keep_retained(topic, msg)
        }
    }

    fn hand_over(&self, client_id: &str) -> Option<crate::store::StoredSession> {
        self.0.upgrade()?.hand_over(client_id)
    }

    fn hand_over_rest(&self, client_id: &str) -> Vec<crate::message::Delivery> {
        match self.0.upgrade() {
            Some(b) => b.hand_over_rest(client_id),
            None => Vec::new(),
        }
    }

    fn caught_up(&self, client_id: &str, owed: Vec<crate::message::Delivery>) {
        if let Some(b) = self.0.upgrade() {
            b.catch_up(client_id, owed)
        }
    }

    fn will(&self, msg: crate::message::Message) {
        if let Some(b) = self.0.upgrade() {
            match msg.publisher.clone() {
                Some(client_id) => b.publish_will(&client_id, Arc::new(msg)),
                None => drop(b.publish(Arc::new(msg))),
            }
            b.commit();
        }
    }
}

/// Binds every configured listener and starts accepting on it; the listeners, and the
/// TLS setups SIGHUP reloads. `alive` is cloned into every connection task, so the
/// server knows all connections are gone when every clone has been dropped.
async fn start_listeners(
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> Result<(Vec<Arc<ListenerInfo>>, Vec<Arc<TlsSetup>>), ServerError> {
    let limits = &broker.config().limits;
    let global = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(limits.max_refusing));
    let addresses = Addresses::new(
        limits.max_connections_per_address,
        limits.connect_rate_per_address,
    );
    let mut tls_endpoints = Vec::new();
    let mut listeners = Vec::new();
    for l in &broker.config().listener {
        let endpoint = Arc::new(Endpoint::new(l, broker)?);
        let socket =
            TcpListener::bind(endpoint.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name().to_owned(),
                    addr: endpoint.bind,
                    source,
                })?;
        let own = l.max_connections.unwrap_or(limits.max_connections);
        let permits = Permits {
            listener: Arc::new(Semaphore::new(own)),
            global: global.clone(),
            refusing: refusing.clone(),
            addresses: addresses.clone(),
        };
        tracing::info!(listener = %l.name(), kind = l.kind.as_str(), addr = %endpoint.bind, "listening");
        listeners.push(endpoint.info.clone());
        tls_endpoints.extend(endpoint.tls.clone());
        tokio::spawn(endpoint.accept_loop(
            socket,
            broker.clone(),
            permits,
            shutdown.clone(),
            alive.clone(),
        ));
    }
    Ok((listeners, tls_endpoints))
}

/// The admin API's socket, and its TLS setup when `[admin] cert` is set (a certificate
/// that does not load stops startup, naming the file).
async fn bind_admin(broker: &Broker) -> Result<AdminSocket, ServerError> {
    let admin = &broker.config().admin;
    let tls = match (&admin.cert, &admin.key) {
        (Some(cert), Some(key)) => {
            let setup = TlsSetup::from_files("admin", cert, key, None, &[b"http/1.1"])?;
            Some(Arc::new(setup))
        }
        _ => None,
    };
    let socket = TcpListener::bind(admin.bind)
        .await
        .map_err(|source| ServerError::Bind {
            name: "admin".into(),
            addr: admin.bind,
            source,
        })?;
    Ok(AdminSocket { socket, tls })
}

struct AdminSocket {
    socket: TcpListener,
    tls: Option<Arc<TlsSetup>>,
}

fn serve_admin(
    admin: AdminSocket,
    broker: &Arc<Broker>,
    plugins: Option<Arc<PluginChain>>,
    cluster: Option<Arc<ClusterStats>>,
    listeners: Vec<Arc<ListenerInfo>>,
    down: watch::Receiver<bool>,
) {
    let config = &broker.config().admin;
    let state = Arc::new(AdminState {
        broker: broker.clone(),
        plugins,
        listeners,
        token: config.token.clone(),
        https: admin.tls.is_some(),
        cluster,
    });
    let router = crate::admin::router(state);
    tracing::info!(addr = %config.bind, token = config.token.is_some(), https = admin.tls.is_some(),
        "admin API listening");
    match admin.tls {
        None => drop(tokio::spawn(serve_http(admin.socket, router, down))),
        Some(tls) => match crate::admin::https::Https::new(admin.socket, tls) {
            Ok(https) => drop(tokio::spawn(serve_http(https, router, down))),
            Err(e) => tracing::error!(error = %e, "admin API not started"),
        },
    }
}

async fn serve_http<L>(listener: L, router: axum::Router, mut down: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = down.changed().await;
    });
    if let Err(e) = serving.await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// The once-a-second pass of [`Broker::housekeeping`] (session expiry, delayed wills,
/// retained expiry), on a thread of its own: it writes the store and may call plugins,
/// and on a runtime worker it would stall every connection scheduled there meanwhile.
/// Stops when dropped.
pub struct Housekeeper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Housekeeper {
    pub fn start(broker: Arc<Broker>) -> std::io::Result<Housekeeper> {
        Housekeeper::every(broker, Duration::from_secs(1))
    }

    pub fn every(broker: Arc<Broker>, period: Duration) -> std::io::Result<Housekeeper> {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-housekeeping".into())
            .spawn(move || {
                while !stopping.load(Relaxed) {
                    std::thread::park_timeout(period);
                    if !stopping.load(Relaxed) {
                        broker.housekeeping();
                    }
                }
            })?;
        Ok(Housekeeper {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// SIGHUP re-reads every TLS listener's certificate, key and client CA (the admin API's
/// too). Established
/// connections keep the session they have; a file that fails to load leaves that
/// listener on its previous certificates.
fn reload_certificates_on_sighup(endpoints: Vec<Arc<TlsSetup>>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            for tls in &endpoints {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(listener = tls.listener(), "TLS certificates reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    drop(endpoints);
}
