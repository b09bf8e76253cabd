//! RMB against a real (in-process, dev mode) zos ledger: twins registered on the ledger with
//! their X25519 keys, relay and peers looking them up through `LedgerDirectory`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::*;
use serde_json::json;
use zos_ledger::{Call, LedgerClient, LedgerConfig, LedgerServer};
use zos_rmb::{
    CachedDirectory, LedgerDirectory, Peer, PeerConfig, RelayConfig, RmbError, TwinDirectory,
    e2e_public_key,
};

#[tokio::test]
async fn call_between_twins_registered_on_the_ledger() {
    let data = tempfile::tempdir().unwrap();
    let server = LedgerServer::bind(LedgerConfig::dev(data.path().to_path_buf()))
        .await
        .unwrap();
    let ledger_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ledger = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let client = LedgerClient::new(&ledger_url).unwrap();
    let mut ids = Vec::new();
    for n in [1u8, 2] {
        let k = key(n);
        client
            .send(
                &k,
                Call::CreateTwin {
                    relays: vec!["relay.test".into()],
                    e2e_key: Some(hex::encode(e2e_public_key(k.seed()))),
                },
            )
            .await
            .unwrap();
        ids.push(
            client
                .twin_by_account(&k.public())
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let dir: Arc<dyn TwinDirectory> = Arc::new(CachedDirectory::new(
        LedgerDirectory::connect(&ledger_url).unwrap(),
        Duration::from_secs(60),
    ));
    let rec = dir.twin(ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.account, key(1).public());
    assert_eq!(rec.e2e_key, Some(e2e_public_key(key(1).seed())));
    assert_eq!(dir.twin(999).await.unwrap(), None);

    let relay = start_relay_with(
        RelayConfig::new("127.0.0.1:0".parse().unwrap(), "relay.test"),
        dir.clone(),
    )
    .await;
    let connect = |n: u8, id: u32| {
        Peer::connect(
            PeerConfig {
                relays: vec![relay.url.clone()],
                twin_id: id,
                key: key(n),
                session: None,
            },
            dir.clone(),
        )
    };
    let a = connect(1, ids[0]).await.unwrap();
    let b = connect(2, ids[1]).await.unwrap();
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    let got = a
        .call(ids[1], "echo", &json!({"hello": "ledger"}), T)
        .await
        .unwrap();
    assert_eq!(got["echo"], json!({"hello": "ledger"}));
    assert_eq!(got["from"], json!(ids[0]));

    // Twin 1's key logging in as twin 2 is refused against the ledger's record.
    assert!(matches!(
        connect(1, ids[1]).await,
        Err(RmbError::AuthRejected { .. })
    ));
    relay.stop().await;
    let _ = stop.send(());
    ledger.await.unwrap().unwrap();
}

/// With the producer key pinned, lookups are proven against signed heads: the right key gives
/// the twin (and a proven absence), a wrong pinned key gives an error, never an answer.
#[tokio::test]
async fn pinned_producer_makes_lookups_verified() {
    let data = tempfile::tempdir().unwrap();
    let server = LedgerServer::bind(LedgerConfig::dev(data.path().to_path_buf()))
        .await
        .unwrap();
    let ledger_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ledger = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client = LedgerClient::new(&ledger_url).unwrap();
    let k = key(7);
    client
        .send(
            &k,
            Call::CreateTwin {
                relays: vec!["relay.test".into()],
                e2e_key: Some(hex::encode(e2e_public_key(k.seed()))),
            },
        )
        .await
        .unwrap();
    let id = client
        .twin_by_account(&k.public())
        .await
        .unwrap()
        .unwrap()
        .id;
    let pinned = |producer| {
        LedgerDirectory::new(
            LedgerClient::with_trust(
                &ledger_url,
                zos_ledger::Trust {
                    producer: Some(producer),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    };

    assert!(!LedgerDirectory::connect(&ledger_url).unwrap().verifies());
    let good = pinned(client.producer().await.unwrap());
    assert!(good.verifies());
    let rec = good.twin(id).await.unwrap().unwrap();
    assert_eq!(rec.account, k.public());
    assert_eq!(rec.e2e_key, Some(e2e_public_key(k.seed())));
    assert_eq!(good.twin(999).await.unwrap(), None);

    // Heads signed by the real producer do not verify against another key.
    let wrong = pinned(key(8).public());
    let e = wrong.twin(id).await.unwrap_err();
    assert!(e.to_string().contains("unverified"), "{e}");

    let _ = stop.send(());
    ledger.await.unwrap().unwrap();
}
