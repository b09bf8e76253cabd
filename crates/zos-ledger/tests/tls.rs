//! TLS with a pinned certificate, and answers verified against signed heads.
//!
//! - A client pinned to the ledger's certificate reads, submits and subscribes over
//!   https/wss; a client pinned to another certificate (a server or proxy without the
//!   ledger's key) cannot even finish the handshake; plain clients cannot talk to it.
//! - `https` needs a pin; plain `http` is refused for non-loopback hosts.
//! - Verified reads prove values and absences against the producer's signed head; a client
//!   pinning another producer key refuses every answer.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use futures::StreamExt as _;
use zos_ledger::tls::{TlsFiles, self_signed};
use zos_ledger::{Call, ClientError, Event, LedgerClient, LedgerConfig, LedgerServer, Trust};
use zos_types::crypto::{KeyPair, KeyType};

struct Tls {
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    files: TlsFiles,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let files = self_signed(&dir.path().join("tls"), &[]).unwrap();
    // Kept: a second call reuses the same pair.
    let again = self_signed(&dir.path().join("tls"), &[]).unwrap();
    assert_eq!(
        std::fs::read(&again.cert).unwrap(),
        std::fs::read(&files.cert).unwrap()
    );
    let mut cfg = LedgerConfig::dev(dir.path().join("data"));
    cfg.tls = Some(files.clone());
    let server = LedgerServer::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Tls {
        _dir: dir,
        addr,
        files,
        stop,
    }
}

fn pinned(url: &str, cert: &std::path::Path) -> LedgerClient {
    LedgerClient::with_trust(url, Trust::default().with_cert_file(cert).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tls_works_and_nothing_else_connects() {
    let a = start_tls().await;
    let b = start_tls().await;
    let url = format!("https://{}", a.addr);
    let c = pinned(&url, &a.files.cert);

    // Reads, a submission and a subscription, all over TLS.
    let mut events = c.subscribe_events(0).await.unwrap();
    let alice = KeyPair::from_seed(KeyType::Ed25519, [7; 32]);
    c.dev_fund(&alice.public(), 1_000_000).await.unwrap();
    assert_eq!(c.balance(&alice.public()).await.unwrap(), 1_000_000);
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let rec = events.next().await.unwrap().unwrap();
            if let Event::Transfer { to, .. } = rec.event {
                break to;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, alice.public());

    // Ledger A's pin against server B (its own certificate, not A's key): no handshake.
    let wrong = pinned(&format!("https://{}", b.addr), &a.files.cert);
    let e = wrong.info().await.unwrap_err();
    assert!(matches!(e, ClientError::Http { .. }), "{e}");
    let e = wrong.subscribe_events(0).await.err().unwrap();
    assert!(matches!(e, ClientError::WebSocket(_)), "{e}");
    // The same with B's pin against A.
    let e = pinned(&url, &b.files.cert).info().await.unwrap_err();
    assert!(matches!(e, ClientError::Http { .. }), "{e}");
    // A plain-http client gets nothing from a TLS ledger.
    assert!(
        LedgerClient::new(&format!("http://{}", a.addr))
            .unwrap()
            .info()
            .await
            .is_err()
    );

    // URL rules: https needs a pin, a pin needs https, plain http only on loopback.
    for (u, trust, want) in [
        (url.as_str(), Trust::default(), "pinned"),
        (
            "http://127.0.0.1:1",
            Trust::default().with_cert_file(&a.files.cert).unwrap(),
            "needs an https",
        ),
        ("http://10.1.2.3:8900", Trust::default(), "loopback"),
        ("http://ledger.example:8900", Trust::default(), "loopback"),
    ] {
        let e = LedgerClient::with_trust(u, trust).unwrap_err().to_string();
        assert!(e.contains(want), "{u}: {e}");
    }
    for ok in ["http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"] {
        LedgerClient::new(ok).unwrap();
    }
    let _ = a.stop.send(());
    let _ = b.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_reads_prove_values_and_absence_against_the_pinned_producer() {
    let a = start_tls().await;
    let url = format!("https://{}", a.addr);
    let c = pinned(&url, &a.files.cert);
    let alice = KeyPair::from_seed(KeyType::Ed25519, [8; 32]);
    c.dev_fund(&alice.public(), 1_000_000_000).await.unwrap();
    c.send(
        &alice,
        Call::CreateTwin {
            relays: vec!["r".into()],
            e2e_key: None,
        },
    )
    .await
    .unwrap();
    let twin = c.twin_by_account(&alice.public()).await.unwrap().unwrap();
    c.send(&alice, Call::CreateNameContract { name: "gw1".into() })
        .await
        .unwrap();
    let contract = c.twin_contracts(twin.id).await.unwrap().remove(0);

    // Pinned producer (learned here over the pinned channel, then pinned explicitly).
    let producer = c.producer().await.unwrap();
    let strict = LedgerClient::with_trust(
        &url,
        Trust {
            producer: Some(producer),
            ..Trust::default().with_cert_file(&a.files.cert).unwrap()
        },
    )
    .unwrap();
    let head = strict.head().await.unwrap();
    let v = strict.verified_twin(twin.id).await.unwrap();
    assert_eq!(v.value.as_ref(), Some(&twin));
    assert!(v.height >= head);
    assert_eq!(
        strict.verified_contract(contract.id).await.unwrap().value,
        Some(contract.clone())
    );
    // Absence is proven too (before the first, between, after the last key).
    for id in [0, 999, u64::MAX] {
        assert_eq!(strict.verified_contract(id).await.unwrap().value, None);
    }
    assert_eq!(strict.verified_twin(4242).await.unwrap().value, None);

    // A client pinning another producer refuses every answer.
    let other = KeyPair::from_seed(KeyType::Ed25519, [9; 32]).public();
    let wrong = LedgerClient::with_trust(
        &url,
        Trust {
            producer: Some(other),
            ..Trust::default().with_cert_file(&a.files.cert).unwrap()
        },
    )
    .unwrap();
    let e = wrong.verified_twin(twin.id).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unverified(m) if m.contains("not signed by the pinned producer")),
        "{e}"
    );
    let _ = a.stop.send(());
}
