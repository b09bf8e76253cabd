//! `wss://`: a relay serving TLS with a certificate from a private CA, peers trusting that CA
//! (and refusing the relay before they do). Certificates are made with the `openssl` CLI.
//! Its own test binary because the trusted-CA list is process-wide.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use common::*;
use serde_json::json;
use zos_rmb::{MemoryDirectory, Peer, PeerConfig, RelayConfig, RelayTls, RmbError};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| {
            if !o.status.success() {
                eprintln!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            o.status.success()
        })
        .unwrap_or(false)
}

/// A CA and a leaf for 127.0.0.1/localhost signed by it; false if openssl is unavailable.
fn make_certs(dir: &Path) -> bool {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=zos test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "relay.key", "-out", "relay.csr"]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let sign = [
        "x509",
        "-req",
        "-in",
        "relay.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "relay.pem",
    ];
    openssl(dir, &ca) && openssl(dir, &csr) && openssl(dir, &sign)
}

#[tokio::test]
async fn request_response_over_wss() {
    let tmp = tempfile::tempdir().unwrap();
    if !make_certs(tmp.path()) {
        eprintln!("SKIP: the openssl CLI is needed to make test certificates");
        return;
    }
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.tls = Some(RelayTls {
        cert_chain_pem: tmp.path().join("relay.pem"),
        key_pem: tmp.path().join("relay.key"),
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let url = format!("wss://localhost:{}", relay.addr.port());

    // Before the CA is trusted, the relay's certificate is refused.
    let err = Peer::connect(
        PeerConfig {
            relays: vec![url.clone()],
            twin_id: 1,
            key: ka.clone(),
            session: None,
        },
        dir.clone(),
    )
    .await
    .unwrap_err();
    match err {
        RmbError::Connect { reason, .. } => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("{other:?}"),
    }

    let ca = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    assert_eq!(zos_rmb::trust_ca_pem(&ca).unwrap(), 1);
    let a = peer(&dir, &url, 1, ka, None).await;
    let b = peer(&dir, &url, 2, kb, None).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    let got = a.call(2, "echo", &json!("secure"), T).await.unwrap();
    assert_eq!(got["echo"], json!("secure"));
    // Plain ws:// to a TLS relay does not get a session.
    let plain = format!("ws://127.0.0.1:{}", relay.addr.port());
    assert!(
        Peer::connect(
            PeerConfig {
                relays: vec![plain],
                twin_id: 1,
                key: key(1),
                session: Some("plain".into()),
            },
            dir.clone(),
        )
        .await
        .is_err()
    );
    relay.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_fail_at_bind() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("empty.pem"), "").unwrap();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.tls = Some(RelayTls {
        cert_chain_pem: tmp.path().join("empty.pem"),
        key_pem: tmp.path().join("missing.key"),
    });
    let err = zos_rmb::Relay::bind(cfg, Arc::new(MemoryDirectory::new()))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty.pem"), "{err}");
}
