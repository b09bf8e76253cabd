//! TLS with rustls (ring): the relay's `wss://` listener and the client configuration used by
//! peers and federation links.
//!
//! Clients trust the Mozilla root store (webpki-roots) plus any CA added with
//! [`trust_ca_pem`] (a private grid's own CA). The relay serves TLS when
//! [`crate::RelayConfig::tls`] names a PEM certificate chain and key.

#[cfg(feature = "relay")]
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
#[cfg(feature = "relay")]
use std::time::Duration;

use rustls::pki_types::CertificateDer;
#[cfg(feature = "relay")]
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "relay")]
use tokio::net::TcpStream;
#[cfg(feature = "relay")]
use tokio::sync::mpsc;
#[cfg(feature = "relay")]
use tokio_rustls::TlsAcceptor;
#[cfg(feature = "relay")]
use tokio_rustls::server::TlsStream;

use crate::directory::lock;
#[cfg(feature = "relay")]
use crate::relay::guard::{Guarded, GuardedListener};

/// How long a client may take for the TLS handshake.
#[cfg(feature = "relay")]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The relay's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTls {
    /// Certificate chain, leaf first.
    pub cert_chain_pem: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn extra_roots() -> &'static Mutex<Vec<CertificateDer<'static>>> {
    static ROOTS: OnceLock<Mutex<Vec<CertificateDer<'static>>>> = OnceLock::new();
    ROOTS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds the CA certificates in `pem` to the roots every `wss://` client of this process
/// trusts (in addition to the Mozilla roots). Returns how many were added.
pub fn trust_ca_pem(pem: &[u8]) -> Result<usize, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("CA PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Config("no certificate in the CA PEM".into()));
    }
    // Fail now, not at the first connection.
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    let n = certs.len();
    lock(extra_roots()).extend(certs);
    Ok(n)
}

/// The client configuration for `wss://` (rebuilt per connection: cheap next to a handshake).
pub(crate) fn client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for c in lock(extra_roots()).iter() {
        roots
            .add(c.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(feature = "relay")]
fn read_pem<T>(
    path: &Path,
    parse: impl FnOnce(&Path) -> Result<T, rustls::pki_types::pem::Error>,
) -> Result<T, TlsError> {
    parse(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(feature = "relay")]
/// The relay's server configuration.
pub(crate) fn server_config(tls: &RelayTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = read_pem(&tls.cert_chain_pem, |p| {
        CertificateDer::pem_file_iter(p)?.collect::<Result<_, _>>()
    })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: tls.cert_chain_pem.clone(),
            reason: "no certificate found".into(),
        });
    }
    let key = read_pem(&tls.key_pem, |p| PrivateKeyDer::from_pem_file(p))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

#[cfg(feature = "relay")]
/// A listener that yields TLS streams. Handshakes run in their own tasks (a slow client cannot
/// hold up the others); the accept loop stops when the listener is dropped. Connections come
/// from the relay's guarded listener, so the connection cap, bans and the login deadline
/// cover the handshake too.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<Guarded<TcpStream>>, std::net::SocketAddr)>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "relay")]
impl TlsListener {
    pub(crate) fn new(
        mut tcp: GuardedListener,
        cfg: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        use axum::serve::Listener as _;
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = tcp.accept().await;
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr, task })
    }
}

#[cfg(feature = "relay")]
impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(feature = "relay")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Guarded<TcpStream>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task never ends on its own; if it did, wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
