//! The client side of the admin API, for `weir plugins`, `weir reload NAME`, ...: one
//! HTTP/1.1 request per connection, over TLS when the API speaks HTTPS.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the admin API is, and whom to trust when it speaks HTTPS.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Trust>,
}

pub struct Trust {
    /// PEM certificates to trust: the API's CA, or its self-signed certificate.
    pub ca: PathBuf,
    /// The name its certificate must carry; default: the IP address connected to.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {addr}: {source} (is the broker running, with [admin] enabled?)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API at {addr} answered something that is not HTTP")]
    NotHttp { addr: SocketAddr },
    #[error("cannot trust the admin API's certificate with {path}: {message}")]
    Trust { path: PathBuf, message: String },
}

/// Percent-encodes a path segment (client ids may hold `/`, `?`, spaces, ...).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends a request; the status code and the body.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let addr = target.addr;
    let io = |source| ClientError::Io { addr, source };
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|source| ClientError::Connect { addr, source })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let raw = match &target.tls {
        None => exchange(s, head.as_bytes()),
        Some(trust) => exchange(
            StreamOwned::new(tls_client(addr, trust)?, s),
            head.as_bytes(),
        ),
    }
    .map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::NotHttp { addr })?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ClientError::NotHttp { addr })?;
    Ok((status, body.to_owned()))
}

/// Writes the request and reads until the server closes. A TLS server that closes
/// without `close_notify` after answering still answered.
fn exchange(mut s: impl Read + Write, request: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(request)?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        read => read.map(|_| raw),
    }
}

fn tls_client(addr: SocketAddr, trust: &Trust) -> Result<ClientConnection, ClientError> {
    let fail = |message: String| ClientError::Trust {
        path: trust.ca.clone(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for c in crate::listener::tls::pem_certificates(&trust.ca).map_err(fail)? {
        roots.add(c).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("it holds no certificate".into()));
    }
    let config = ClientConfig::builder_with_provider(crate::listener::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = match &trust.name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| fail(format!("{n}: {e}")))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    ClientConnection::new(Arc::new(config), name).map_err(|e| fail(e.to_string()))
}
