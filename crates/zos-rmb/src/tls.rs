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
use crate::relay::guard::{Guarded, GuardedListener, HasConn as _};

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

fn pinned_certs() -> &'static Mutex<Vec<CertificateDer<'static>>> {
    static PINS: OnceLock<Mutex<Vec<CertificateDer<'static>>>> = OnceLock::new();
    PINS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Pins a relay's certificate for every `wss://` client of this process: a relay presenting
/// exactly this end-entity certificate (and proving its key in the handshake) is accepted
/// whatever its names, dates or issuer, the way the ledger's certificate is pinned
/// (`zos_ledger::tls`). Other relays are still checked against the roots.
pub fn pin_relay_cert(cert: CertificateDer<'static>) {
    let mut pins = lock(pinned_certs());
    if !pins.iter().any(|c| c.as_ref() == cert.as_ref()) {
        pins.push(cert);
    }
}

/// [`pin_relay_cert`] with the first certificate of a PEM file (what `zos up` hands out).
pub fn pin_relay_cert_file(path: &std::path::Path) -> Result<(), TlsError> {
    let cert = zos_ledger::tls::read_cert(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    pin_relay_cert(cert);
    Ok(())
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
    let pins = lock(pinned_certs()).clone();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = if pins.is_empty() {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrRoots {
                pinned: zos_ledger::tls::pinned_verifier(pins),
                webpki,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// A pinned certificate, else the roots. Handshake signatures are checked the same way
/// either way (against the presented certificate's key).
#[derive(Debug)]
struct PinnedOrRoots {
    pinned: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .pinned
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(_) => {
                self.webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// RFC 8446 exporter label of the login's channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-zos-rmb-login-v1";

/// The login's channel binding: 32 bytes exported from this TLS connection's secrets
/// (RFC 8446 section 7.5). Both ends of one TLS channel get the same value; a man in the
/// middle who terminates TLS holds two channels with two different values, so a login
/// signed over one is refused on the other. `None` before the handshake completes.
pub fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Option<[u8; 32]> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .ok()
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
    // TLS 1.3 only: its exporter is unique per channel (TLS 1.2's is not without the extended
    // master secret: the triple handshake), and the login is bound to it.
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
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
                            // The login is checked against this channel's exporter; a TLS
                            // connection without one must not pass for a plain one.
                            let Some(b) = channel_binding(tls.get_ref().1) else {
                                tracing::warn!(%peer, "no TLS exporter after the handshake");
                                return;
                            };
                            tls.get_ref().0.conn_state().set_channel(b);
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
