//! QUIC peer links as upstream (reference §4): quinn on rustls/ring; the server presents a
//! self-signed certificate whose SAN is the router id; the client does not verify it (upstream
//! skips verification: links are unauthenticated either way, E2E encryption does not depend
//! on them), connects with SNI `dummy.mycelium` and no ALPN and opens one bidirectional
//! stream for control packets (framed as on TCP); each data packet travels as one QUIC
//! DATAGRAM. Transport settings follow upstream's (idle 60 s, keep-alive 20 s, datagram
//! buffers 16 MiB, windows 10/80 MiB).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The server name upstream's connector sends.
pub const SNI: &str = "dummy.mycelium";

/// Errors setting QUIC up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Certificate generation or TLS configuration failed.
    #[error("QUIC TLS setup: {0}")]
    Tls(String),
    /// Binding the UDP socket failed.
    #[error("QUIC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(0u8.into())
        .max_concurrent_bidi_streams(5u8.into())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .datagram_receive_buffer_size(Some(16 << 20))
        .datagram_send_buffer_size(16 << 20)
        .stream_receive_window((10u32 << 20).into())
        .send_window(80 << 20)
        .initial_mtu(1500);
    if let Ok(idle) = Duration::from_secs(60).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// Accepts any server certificate (as upstream), but still checks the handshake signatures
/// so that a peer proves it holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC endpoint that accepts links and dials them, bound on `addr`; `san` is the router id's
/// display string (upstream's certificate subject alternative name).
pub fn endpoint(addr: SocketAddr, san: &str) -> Result<quinn::Endpoint, QuicError> {
    let tls = |e: &dyn std::fmt::Display| QuicError::Tls(e.to_string());
    let cert = rcgen::generate_simple_self_signed(vec![san.to_string()]).map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server).map_err(|e| tls(&e))?,
    ));
    server.transport_config(transport());
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        .with_no_client_auth();
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client).map_err(|e| tls(&e))?,
    ));
    client.transport_config(transport());
    let mut ep =
        quinn::Endpoint::server(server, addr).map_err(|source| QuicError::Bind { addr, source })?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Link cost of a QUIC transport (upstream: 7 over IPv6, 12 over IPv4).
pub fn static_cost(remote: &SocketAddr) -> u16 {
    match remote {
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => 7,
        _ => 12,
    }
}
