//! The admin API over TLS (`[admin] cert` and `key`): a listener that hands axum only
//! connections whose handshake completed.
//!
//! Handshakes run in tasks of their own, bounded in number and time, so a client that
//! connects and says nothing holds neither the accept loop nor the API.

use crate::listener::tls::TlsSetup;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once; more connections are closed at once.
const MAX_HANDSHAKES: usize = 64;
/// How long a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Https {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl Https {
    pub fn new(socket: TcpListener, tls: Arc<TlsSetup>) -> std::io::Result<Https> {
        let local = socket.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let accepting = tokio::spawn(handshakes(socket, tls, tx));
        Ok(Https {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for Https {
    /// axum drops its listener when it shuts down: stop accepting with it.
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for Https {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(done) => done,
            // The accept loop ended (it only does when aborted): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn handshakes(
    socket: TcpListener,
    tls: Arc<TlsSetup>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin API: {MAX_HANDSHAKES} TLS handshakes already in progress; connection closed");
            continue;
        };
        // The certificate current now: a SIGHUP reload applies from the next handshake.
        let acceptor = tls.acceptor();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, "admin API: TLS handshake failed (plain HTTP to an HTTPS port?): {e}")
                }
                Err(_) => tracing::info!(%peer, "admin API: TLS handshake timed out"),
            }
        });
    }
}
