//! Event subscriptions: catch-up from an old height followed by live events, each exactly once
//! and in order, while submissions keep arriving; blocks subscription; bad input on the wire.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use futures::StreamExt as _;
use zos_ledger::{Call, EventRecord};

async fn create_twins(c: &zos_ledger::LedgerClient, seeds: std::ops::Range<u8>) {
    for n in seeds {
        c.send(
            &common::key(n),
            Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_live_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (c, stop, handle) = common::spawn_dev_server(dir.path()).await;
    create_twins(&c, 1..41).await;
    let from = 10;

    // Subscribe from an old height while another task keeps submitting.
    let mut sub = c.subscribe_events(from).await.unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move { create_twins(&c, 41..81).await })
    };
    writer.await.unwrap();
    let head = c.head().await.unwrap();

    let mut expected: Vec<EventRecord> = Vec::new();
    for h in from..=head {
        expected.extend(c.events(h).await.unwrap());
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let ev = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("subscription stalled")
            .unwrap()
            .unwrap();
        got.push(ev);
    }
    assert_eq!(
        got, expected,
        "every event from height {from} once, in order"
    );
    assert!(
        got.windows(2)
            .all(|w| (w[0].height, w[0].index) < (w[1].height, w[1].index))
    );
    assert_eq!(got.len(), 81 - from as usize);

    // Nothing more arrives until a new block; then exactly its events.
    c.send(
        &common::key(200),
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.height, head + 1);
    assert_eq!(next.index, 0);

    // Blocks subscription from genesis.
    let mut blocks = c.subscribe_blocks(0).await.unwrap();
    for h in 0..=head + 1 {
        let b = tokio::time::timeout(Duration::from_secs(30), blocks.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.height, h);
    }
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_change_nothing() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree as _;
    let dir = tempfile::tempdir().unwrap();
    let (c, stop, handle) = common::spawn_dev_server(dir.path()).await;
    let url = c.url().to_string();
    let http = reqwest::Client::new();
    let head = c.head().await.unwrap();

    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[a-z_]{1,20}".prop_map(|m| format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ledger_{m}","params":[1]}}"#
        )
        .into_bytes()),
        ".{0,40}".prop_map(|p| format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ledger_submit","params":[{p}]}}"#
        )
        .into_bytes()),
    ];
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    for body in bodies {
        let resp: serde_json::Value = http
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            resp.get("error").is_some() || resp.get("result").is_some(),
            "{resp}"
        );
    }
    // A submission with a garbage signature is rejected before it reaches a block.
    let mut tx = zos_ledger::SignedTransaction::sign(
        &common::key(1),
        &c.genesis_hash().await.unwrap(),
        0,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    tx.signature = "zz".into();
    assert!(
        matches!(c.submit(tx).await, Err(zos_ledger::ClientError::Rejected(ref m)) if m == "bad signature")
    );
    assert_eq!(c.head().await.unwrap(), head);
    stop.send(()).unwrap();
    handle.await.unwrap();
}
