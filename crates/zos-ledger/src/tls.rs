//! TLS for the ledger's RPC and subscriptions, with a pinned certificate instead of a web PKI.
//!
//! The server presents one certificate (a file pair, or a self-signed one made once and kept
//! in a directory). Clients accept exactly that certificate: the end-entity DER must equal the
//! pinned one byte for byte, and the handshake signature must verify with its key, so a proxy
//! without the private key cannot complete a handshake. Names, dates and chains are not
//! checked: a pin already says which certificate is right. Crypto provider: rustls' ring
//! (already in the tree for the bus).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// File name of the certificate in a `--tls-self-signed` directory.
pub const CERT_FILE: &str = "ledger-cert.pem";
/// File name of the private key in a `--tls-self-signed` directory.
pub const KEY_FILE: &str = "ledger-key.pem";

/// TLS failures (files, keys, configuration).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server certificate and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate (PEM; the first one is the end-entity certificate clients pin).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The pair in `dir` made by [`self_signed`].
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

#[cfg(feature = "server")]
/// Makes a self-signed certificate in `dir` unless one is there already (kept across restarts,
/// so pins stay valid). Names: `localhost`, `127.0.0.1`, `::1` and `extra_names`. The key file
/// is written owner-only.
pub fn self_signed(dir: &Path, extra_names: &[String]) -> Result<TlsFiles, TlsError> {
    self_signed_files(TlsFiles::in_dir(dir), extra_names)
}

#[cfg(feature = "server")]
/// [`self_signed`] with other file names (the relay's pinned certificate uses it too), made
/// unless both files exist; their directory is created.
pub fn self_signed_files(files: TlsFiles, extra_names: &[String]) -> Result<TlsFiles, TlsError> {
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let ferr = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(dir) = files.cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ferr(dir, &e))?;
    }
    if let Some(dir) = files.key.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ferr(dir, &e))?;
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(extra_names.iter().cloned());
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| ferr(&files.key, &e))?;
    std::fs::write(&files.cert, ck.cert.pem()).map_err(|e| ferr(&files.cert, &e))?;
    tracing::info!(cert = %files.cert.display(), "made a self-signed certificate");
    Ok(files)
}

#[cfg(feature = "server")]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the end-entity certificate (the first PEM certificate) of a file: what clients pin.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut it = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    match it.next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(err(e.to_string())),
        None => Err(err("no PEM certificate in the file".into())),
    }
}

#[cfg(feature = "server")]
/// The server side: an acceptor for `files`.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let ferr = |path: &Path, reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| ferr(&files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| ferr(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(ferr(&files.cert, "no PEM certificate in the file".into()));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ferr(&files.key, e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A certificate verifier that accepts exactly the `pinned` end-entity certificates (handshake
/// signatures still checked against them). The bus builds its relay pins on it.
pub fn pinned_verifier(pinned: Vec<CertificateDer<'static>>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(Pinned {
        certs: pinned,
        provider: provider(),
    })
}

/// The client side: a rustls config that accepts only `pinned`.
pub fn pinned_client_config(
    pinned: CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        certs: vec![pinned],
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts exactly the pinned certificates; the handshake signatures are still checked.
#[derive(Debug)]
struct Pinned {
    certs: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
