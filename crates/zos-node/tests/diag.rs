//! End to end on a real ledger, relay and node: the farm's twin reads the node's diagnostics
//! (logs filtered by deployment, reachability, health, pools, network); other twins cannot.
//! One node per test binary: the log ring is process-wide.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use zos_rmb::{LedgerDirectory, Peer, PeerConfig, RmbError};

const NODE: u32 = 1;

/// A peer for the farm's owner (its twin exists since `Grid::start`).
async fn farmer_peer(grid: &Grid) -> Peer {
    let twin = grid
        .client
        .twin_by_account(&grid.farmer.public())
        .await
        .unwrap()
        .unwrap()
        .id;
    Peer::connect(
        PeerConfig {
            relays: vec![grid.relay_url.clone()],
            twin_id: twin,
            key: grid.farmer.clone(),
            session: None,
        },
        Arc::new(LedgerDirectory::new(grid.client.clone())),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farmer_reads_logs_and_reachability_another_user_cannot() {
    use tracing_subscriber::layer::SubscriberExt as _;
    // The node's log ring is fed by the process's subscriber, as `zos` sets it up.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(zos_node::diag::RingLayer),
    );
    let grid = Grid::start().await;
    let prims = grid.dir.path().join("prims");
    let node = InProcNode::start(
        grid.node_config(&grid.dir.path().join("node")),
        registry(&prims, Duration::ZERO),
    );
    let node_twin = grid.node_twin(NODE).await;
    let alice = grid.user(10).await;
    let farmer = farmer_peer(&grid).await;
    let call = |cmd: &'static str, payload: Value| {
        let farmer = farmer.clone();
        async move { farmer.call(node_twin, cmd, &payload, T).await }
    };

    // a failing deployment to find in the logs
    let mut d = alice.deployment(0, "failing", vec![volume("big", 500 * GIB, 0)]);
    let c = alice.contract(NODE, &mut d).await;
    alice.send_deploy(node_twin, &mut d).await;
    alice.wait_state(node_twin, c, 0, "error").await;

    // the farm twin is known to the node once registration finished
    let logs = wait_for("farmer allowed", T, || async {
        call(
            "zos.admin.diag.logs",
            json!({"contract_id": c, "workload": "big"}),
        )
        .await
        .ok()
    })
    .await;
    let events = logs["events"].as_array().unwrap();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "workload failed")
        .collect();
    assert_eq!(failed.len(), 1, "{logs:#}");
    assert_eq!(failed[0]["level"], json!("WARN"));
    assert_eq!(failed[0]["fields"]["contract"], json!(c.to_string()));
    assert!(
        failed[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot fulfil"),
        "{failed:?}"
    );
    // every event returned is about that contract
    assert!(
        events
            .iter()
            .all(|e| e["fields"]["contract"] == json!(c.to_string()))
    );
    // another contract's filter does not return it
    let other = call("zos.admin.diag.logs", json!({"contract_id": c + 1000}))
        .await
        .unwrap();
    assert!(other["events"].as_array().unwrap().is_empty(), "{other}");

    // reachability from the node: an open and a closed port
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = open.local_addr().unwrap().to_string();
    let r = call(
        "zos.admin.diag.reach",
        json!({"address": addr, "timeout_ms": 2000}),
    )
    .await
    .unwrap();
    assert_eq!(
        (r["kind"].clone(), r["reachable"].clone()),
        (json!("tcp"), json!(true)),
        "{r}"
    );
    drop(open);
    let r = call(
        "zos.admin.diag.reach",
        json!({"address": addr, "timeout_ms": 2000}),
    )
    .await
    .unwrap();
    assert_eq!(r["reachable"], json!(false), "{r}");
    assert!(!r["error"].as_str().unwrap().is_empty());
    match call("zos.admin.diag.reach", json!({"address": "localhost:22"})).await {
        Err(RmbError::Remote { code, .. }) => assert_eq!(code, 400),
        other => panic!("a name must be refused: {other:?}"),
    }

    // health, pools and net answer for the farmer
    let h = call("zos.admin.diag.health", Value::Null).await.unwrap();
    assert!(
        h["status"] == json!("ok") || h["status"] == json!("degraded"),
        "{h}"
    );
    assert_eq!(h["connections"]["twin_id"], json!(node_twin));
    let p = call("zos.admin.diag.pools", Value::Null).await.unwrap();
    assert_eq!(p["pools"][0]["name"], json!("ssd0"));
    let k = call("zos.admin.diag.kernel", json!({"lines": 5}))
        .await
        .unwrap();
    assert!(
        k["lines"].as_array().is_some_and(|l| l.len() <= 5) || k["error"].is_string(),
        "{k}"
    );
    let n = call("zos.admin.diag.net", Value::Null).await.unwrap();
    assert!(
        n["routes"].is_array() || n["routes"]["error"].is_string(),
        "{n}"
    );

    // another user cannot read any of it, nor test reachability
    for (cmd, payload) in [
        ("zos.admin.diag.logs", json!({"contract_id": c})),
        ("zos.admin.diag.reach", json!({"address": addr})),
        ("zos.admin.diag.health", Value::Null),
        ("zos.admin.diag.kernel", Value::Null),
    ] {
        match alice.call(node_twin, cmd, &payload).await {
            Err(RmbError::Remote { code, .. }) => assert_eq!(code, 401, "{cmd}"),
            other => panic!("{cmd}: expected 401, got {other:?}"),
        }
    }
    // and the refusals are logged with the caller
    let refused = call("zos.admin.diag.logs", json!({"limit": 1000}))
        .await
        .unwrap();
    assert!(
        refused["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"] == "admin call"
                && e["fields"]["source"] == json!(alice.twin.to_string())
                && e["fields"]["allowed"] == json!("false")),
        "refusal not logged"
    );
    node.stop().await;
}
