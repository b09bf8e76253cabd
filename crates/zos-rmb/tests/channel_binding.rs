//! The relay login is bound to the TLS channel: a relay served over `wss://` with a pinned
//! certificate (made as `zos up` makes it, `zos_ledger::tls`), peers pinning it, and a man in
//! the middle that *holds the relay's certificate and key* and terminates TLS. It passes the
//! relay's challenge to the victim and the victim's signed answer to the relay over its own TLS
//! connection: refused, because the answer is signed over the victim's channel's exporter. A
//! plain TCP forwarder at the same kind of address (the TLS channel is end to end) logs the
//! victim in: the control, showing that only the broken channel is refused. Meanwhile the
//! victim's own link keeps working.
//! Its own test binary because pinned certificates are process-wide.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use zos_rmb::frame::Frame;
use zos_rmb::{MemoryDirectory, Peer, PeerConfig, RelayConfig, RelayTls, RmbError};

/// A TLS-terminating man in the middle on `listener`: accepts one victim with the relay's own
/// certificate and key, opens its own pinned TLS connection to the relay, and shuttles the
/// login frames both ways; sends the relay's verdict on `verdict`.
fn terminating_mitm(
    listener: tokio::net::TcpListener,
    files: zos_ledger::tls::TlsFiles,
    relay_url: String,
    verdict: tokio::sync::oneshot::Sender<Frame>,
) {
    tokio::spawn(async move {
        let acceptor = zos_ledger::tls::acceptor(&files).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut victim = tokio_tungstenite::accept_async(tls).await.unwrap();
        let pinned = zos_ledger::tls::read_cert(&files.cert).unwrap();
        let cfg = zos_ledger::tls::pinned_client_config(pinned).unwrap();
        let (mut to_relay, _) = tokio_tungstenite::connect_async_tls_with_config(
            &relay_url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg))),
        )
        .await
        .unwrap();
        let challenge = next(&mut to_relay).await.unwrap();
        victim
            .send(Message::Binary(challenge.encode().unwrap()))
            .await
            .unwrap();
        let auth = next(&mut victim).await.unwrap();
        assert!(matches!(auth, Frame::Auth { .. }), "{auth:?}");
        to_relay
            .send(Message::Binary(auth.encode().unwrap()))
            .await
            .unwrap();
        let answer = next(&mut to_relay).await.unwrap();
        let _ = verdict.send(answer.clone());
        let _ = victim.send(Message::Binary(answer.encode().unwrap())).await;
    });
}

/// A byte-for-byte TCP forwarder (TLS stays end to end between victim and relay).
fn tcp_forwarder(listener: tokio::net::TcpListener, to: std::net::SocketAddr) {
    tokio::spawn(async move {
        loop {
            let Ok((mut a, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_relayed_over_another_tls_channel_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The relay's certificate, made and pinned the way `zos up` does it.
    let files = zos_ledger::tls::self_signed_files(
        zos_ledger::tls::TlsFiles {
            cert: tmp.path().join("relay-cert.pem"),
            key: tmp.path().join("relay-key.pem"),
        },
        &[],
    )
    .unwrap();
    zos_rmb::pin_relay_cert_file(&files.cert).unwrap();

    let dir = Arc::new(MemoryDirectory::new());
    let kv = add_twin(&dir, 7, &["r1"]);
    let kp = add_twin(&dir, 8, &["r1"]);
    // Both the man in the middle and the forwarder sit at addresses the relay accepts as its
    // own names (a front end, `--public-url`), so the host check passes: what is tested is
    // the channel binding alone.
    let mitm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mitm_addr, fwd_addr) = (mitm.local_addr().unwrap(), fwd.local_addr().unwrap());
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.tls = Some(RelayTls {
        cert_chain_pem: files.cert.clone(),
        key_pem: files.key.clone(),
    });
    cfg.public_urls = vec![format!("wss://{mitm_addr}"), format!("wss://{fwd_addr}")];
    let relay = start_relay_with(cfg, dir.clone()).await;
    let url = format!("wss://127.0.0.1:{}", relay.addr.port());

    // The victim's own link, and a partner calling it.
    let victim = peer(&dir, &url, 7, kv.clone(), None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    victim.serve(echo_router(hits.clone()));
    let partner = peer(&dir, &url, 8, kp, None).await;
    let got = partner.call(7, "echo", &json!("before"), T).await.unwrap();
    assert_eq!(got["echo"], json!("before"));

    // The attack: the victim (another session of it) dials the man in the middle.
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    terminating_mitm(mitm, files.clone(), url.clone(), verdict_tx);
    let err = Peer::connect(
        PeerConfig {
            relays: vec![format!("wss://{mitm_addr}")],
            twin_id: 7,
            key: kv.clone(),
            session: Some("via-mitm".into()),
        },
        dir.clone(),
    )
    .await
    .unwrap_err();
    match verdict_rx.await.unwrap() {
        Frame::Rejected { reason } => assert!(reason.contains("TLS channel"), "{reason}"),
        other => panic!("the relay accepted a login relayed over another channel: {other:?}"),
    }
    assert!(matches!(err, RmbError::AuthRejected { .. }), "{err:?}");

    // Control: through a plain forwarder the same session logs in (one channel, end to end).
    tcp_forwarder(fwd, relay.addr);
    let through = peer(&dir, &format!("wss://{fwd_addr}"), 7, kv, Some("via-fwd")).await;
    let got = through.call(8, "rmb.ping", &json!(null), T).await.unwrap();
    assert_eq!(got["twin"], json!(8));

    // The victim's own link never noticed.
    for i in 0..5 {
        let got = partner.call(7, "echo", &json!(i), T).await.unwrap();
        assert_eq!(got["echo"], json!(i));
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert_eq!(victim.connected(), 1);
    relay.stop().await;
}

/// A client that signs no channel binding (as over `ws://`) on a TLS connection is refused:
/// the relay checks the binding of its own end, whatever the client claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_login_without_the_channel_binding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let files = zos_ledger::tls::self_signed_files(
        zos_ledger::tls::TlsFiles {
            cert: tmp.path().join("c.pem"),
            key: tmp.path().join("k.pem"),
        },
        &[],
    )
    .unwrap();
    let dir = Arc::new(MemoryDirectory::new());
    let kv = add_twin(&dir, 7, &["r1"]);
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.tls = Some(RelayTls {
        cert_chain_pem: files.cert.clone(),
        key_pem: files.key.clone(),
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let url = format!("wss://127.0.0.1:{}", relay.addr.port());
    let pinned = zos_ledger::tls::read_cert(&files.cert).unwrap();
    let tls = zos_ledger::tls::pinned_client_config(pinned).unwrap();
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        &url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
    )
    .await
    .unwrap();
    let err = RawClient::login_on(ws, &url, zos_rmb::frame::Role::Peer, 7, kv, None, None)
        .await
        .err()
        .unwrap();
    assert!(err.contains("TLS channel"), "{err}");
    relay.stop().await;
}
