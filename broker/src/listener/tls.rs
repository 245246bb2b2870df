//! TLS with rustls: server certificates from PEM files, optional client certificates
//! (mutual TLS), reloading on SIGHUP without touching established connections.

use crate::config::{ClientCert, ListenerConfig};
use crate::hooks::PeerIdentity;
use crate::sync::{read, write};
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::RwLock;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener '{listener}': cannot read {what} from {path}: {message}")]
    Pem {
        listener: String,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("listener '{listener}': {path} holds no certificate")]
    NoCertificate { listener: String, path: PathBuf },
    #[error("listener '{listener}': {message}")]
    Setup { listener: String, message: String },
}

/// A TLS listener's current server configuration. Each handshake takes the
/// configuration current at that moment, so a reload affects only new connections.
pub struct TlsSetup {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

/// Where a listener's TLS material comes from, and what survives a reload.
struct TlsFiles {
    listener: String,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_cert: ClientCert,
    alpn: Vec<Vec<u8>>,
    /// Kept across reloads so clients can still resume sessions afterwards.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl TlsSetup {
    /// `alpn`: the protocols this listener accepts when a client offers ALPN (`mqtt` for
    /// plain TLS; browsers open WSS with `http/1.1`).
    pub fn load(l: &ListenerConfig, alpn: &[&[u8]]) -> Result<TlsSetup, TlsError> {
        let (Some(cert), Some(key)) = (&l.cert, &l.key) else {
            return Err(TlsError::Setup {
                listener: l.name().to_owned(),
                message: "cert and key are required".into(),
            });
        };
        let client_ca = l.client_ca.as_deref().map(|ca| (ca, l.client_cert));
        TlsSetup::from_files(l.name(), cert, key, client_ca, alpn)
    }

    /// A server certificate chain and key, and the CA client certificates must come
    /// from (if any), for the listener named `listener` (in errors and logs).
    pub fn from_files(
        listener: &str,
        cert: &Path,
        key: &Path,
        client_ca: Option<(&Path, ClientCert)>,
        alpn: &[&[u8]],
    ) -> Result<TlsSetup, TlsError> {
        let setup_err = |message: String| TlsError::Setup {
            listener: listener.to_owned(),
            message,
        };
        let ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| setup_err(e.to_string()))?;
        let files = TlsFiles {
            listener: listener.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(|(ca, _)| ca.to_owned()),
            client_cert: client_ca.map_or(ClientCert::Required, |(_, c)| c),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            sessions: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer,
        };
        let first = files.build()?;
        Ok(TlsSetup {
            files,
            current: RwLock::new(Arc::new(first)),
        })
    }

    /// Re-reads the certificate, key and client CA files. On error the current
    /// configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(self.files.build()?);
        *write(&self.current) = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(read(&self.current).clone())
    }

    pub fn listener(&self) -> &str {
        &self.files.listener
    }
}

impl TlsFiles {
    fn build(&self) -> Result<ServerConfig, TlsError> {
        let setup_err = |message: String| TlsError::Setup {
            listener: self.listener.clone(),
            message,
        };
        let certs = self.read_certs(&self.cert, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Pem {
            listener: self.listener.clone(),
            what: "private key",
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setup_err(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in self.read_certs(ca, "client CA")? {
                    roots
                        .add(c)
                        .map_err(|e| setup_err(format!("client CA {}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match self.client_cert {
                    ClientCert::Required => verifier,
                    ClientCert::Optional => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| setup_err(e.to_string()))?,
                )
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            setup_err(format!(
                "certificate and key do not form a usable pair: {e}"
            ))
        })?;
        config.alpn_protocols = self.alpn.clone();
        config.session_storage = self.sessions.clone();
        config.ticketer = self.ticketer.clone();
        Ok(config)
    }

    fn read_certs(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = pem_certificates(path).map_err(|message| TlsError::Pem {
            listener: self.listener.clone(),
            what,
            path: path.to_owned(),
            message,
        })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                listener: self.listener.clone(),
                path: path.to_owned(),
            });
        }
        Ok(certs)
    }
}

/// Every certificate in a PEM file (none is not an error here); the reason otherwise.
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// ring, the one crypto provider Weir builds with (servers and the admin client).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The subject CN and subject alternative names of a verified client certificate.
pub fn identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(s) => Some(format!("DNS:{s}")),
                GeneralName::RFC822Name(s) => Some(format!("email:{s}")),
                GeneralName::URI(s) => Some(format!("URI:{s}")),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| format!("IP:{}", std::net::Ipv4Addr::from(a))),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| format!("IP:{}", std::net::Ipv6Addr::from(a))),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(PeerIdentity { common_name, sans })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    #[test]
    fn identity_has_common_name_and_every_san() {
        let mut p = CertificateParams::new(vec!["dev.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "device-9");
        p.subject_alt_names
            .push(SanType::IpAddress([10, 0, 0, 9].into()));
        p.subject_alt_names
            .push(SanType::Rfc822Name("ops@example.com".try_into().unwrap()));
        p.subject_alt_names
            .push(SanType::URI("urn:weir:device:9".try_into().unwrap()));
        let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let id = identity(Some(&[cert.der().clone()])).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("device-9"));
        assert_eq!(
            id.sans,
            vec![
                "DNS:dev.example",
                "IP:10.0.0.9",
                "email:ops@example.com",
                "URI:urn:weir:device:9"
            ]
        );
        assert_eq!(identity(None), None);
        assert_eq!(
            identity(Some(&[CertificateDer::from(vec![1, 2, 3])])),
            None,
            "garbage is no identity"
        );
    }
}
