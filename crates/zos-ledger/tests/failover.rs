//! A client with several ledger URLs, without etcd: a dead URL in the list is skipped, and an
//! event subscription survives its server's restart, resuming from the last height seen with
//! no event missed or delivered twice (the etcd cluster test does the same across servers).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use zos_ledger::{Call, EventRecord, LedgerClient, LedgerConfig, LedgerServer, SignedTransaction};
use zos_types::crypto::{KeyPair, KeyType};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(
    dir: &std::path::Path,
    port: u16,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut cfg = LedgerConfig::dev(dir.to_path_buf());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let server = LedgerServer::bind(cfg).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_skips_dead_servers_and_resumes_subscriptions_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (dead, port) = (free_port(), free_port());
    let (stop, handle) = start(dir.path(), port).await;
    let c = LedgerClient::new(&format!("http://127.0.0.1:{dead},http://127.0.0.1:{port}")).unwrap();
    // The first URL refuses connections: every call goes on to the second.
    let gh = c.genesis_hash().await.unwrap();
    let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
    let sink = KeyPair::from_seed(KeyType::Ed25519, [2; 32]);
    c.dev_fund(&key.public(), 1000).await.unwrap();
    let mut events = c.subscribe_events(0).await.unwrap();
    let transfer = |n: u64| {
        SignedTransaction::sign(
            &key,
            &gh,
            n,
            Call::Transfer {
                to: sink.public(),
                amount: 1,
            },
        )
    };
    for n in 0..5 {
        c.submit(transfer(n)).await.unwrap();
    }
    // Read part of the stream, then restart the server under it.
    let mut seen: Vec<EventRecord> = Vec::new();
    for _ in 0..3 {
        seen.push(events.next().await.unwrap().unwrap());
    }
    let _ = stop.send(());
    handle.await.unwrap();
    let (stop, handle) = start(dir.path(), port).await;
    for n in 5..10 {
        c.submit(transfer(n)).await.unwrap();
    }
    let head = c.head().await.unwrap();
    let mut expected = Vec::new();
    for h in 0..=head {
        expected.extend(c.events(h).await.unwrap());
    }
    while seen.len() < expected.len() {
        let e = tokio::time::timeout(Duration::from_secs(40), events.next())
            .await
            .expect("the subscription did not resume")
            .unwrap()
            .unwrap();
        seen.push(e);
    }
    assert_eq!(seen, expected, "events missed, repeated or out of order");
    // Nothing more arrives (no duplicate after the last).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err()
    );
    let _ = stop.send(());
    handle.await.unwrap();
}
