//! Starting and stopping the whole broker: store, listeners, housekeeping.

use crate::broker::Broker;
use crate::config::{Config, ListenerKind};
use crate::connection::ListenerInfo;
use crate::hooks::Hooks;
use crate::listener::tcp;
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
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let broker = Broker::open(config, hooks)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let global = Arc::new(Semaphore::new(broker.config.limits.max_connections));

    for l in &broker.config.listener {
        let socket = TcpListener::bind(l.bind)
            .await
            .map_err(|source| ServerError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
        let info = Arc::new(ListenerInfo {
            name: Arc::from(l.name.as_str()),
            allow_anonymous: l.allow_anonymous,
            max_packet_size: l
                .max_packet_size
                .unwrap_or(broker.config.limits.max_packet_size),
        });
        let limits = tcp::Limits {
            listener: Arc::new(Semaphore::new(
                l.max_connections
                    .unwrap_or(broker.config.limits.max_connections),
            )),
            global: global.clone(),
        };
        tracing::info!(listener = %l.name, kind = ?l.kind, addr = %l.bind, "listening");
        match l.kind {
            ListenerKind::Tcp => {
                tokio::spawn(tcp::accept_loop(
                    socket,
                    info,
                    broker.clone(),
                    limits,
                    shutdown_rx.clone(),
                    alive_tx.clone(),
                ));
            }
        }
    }
    drop(alive_tx);

    let housekeeping = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                broker.housekeeping();
            }
        })
    };

    stop.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; flushing anyway");
    }
    housekeeping.abort();
    broker.store.flush()?;
    tracing::info!("stopped");
    Ok(())
}
