//! Plain TCP.

use crate::broker::Broker;
use crate::connection::{serve, ListenerInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

/// Caps shared by the connections of one listener and of the whole broker. A permit is
/// moved into each connection task and released when it ends.
#[derive(Clone)]
pub struct Limits {
    pub listener: Arc<Semaphore>,
    pub global: Arc<Semaphore>,
}

/// Accepts until shutdown. `alive` is cloned into every connection task, so the server
/// knows all connections are gone when every clone has been dropped.
pub async fn accept_loop(
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    broker: Arc<Broker>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically out of file descriptors; back off rather than spin.
                tracing::warn!(listener = %info.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let permits = limits
            .global
            .clone()
            .try_acquire_owned()
            .and_then(|g| limits.listener.clone().try_acquire_owned().map(|l| (g, l)));
        let over_limit = permits.is_err();
        let (info, broker, shutdown, alive) = (
            info.clone(),
            broker.clone(),
            shutdown.clone(),
            alive.clone(),
        );
        tokio::spawn(async move {
            let _permits = permits;
            let _alive = alive;
            serve(stream, peer, info, broker, shutdown, over_limit).await;
        });
    }
}
