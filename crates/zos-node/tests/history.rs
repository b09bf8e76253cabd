//! End to end on a real ledger, relay and node: the deployment history outlives a rolled-back
//! deployment and only its owner reads it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use zos_ledger::Call;

const NODE: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_workload_history_and_code_survive_the_rollback() {
    let grid = Grid::start().await;
    let prims = grid.dir.path().join("prims");
    let node = InProcNode::start(
        grid.node_config(&grid.dir.path().join("node")),
        registry(&prims, Duration::ZERO),
    );
    let node_twin = grid.node_twin(NODE).await;
    let alice = grid.user(10).await;
    let mallory = grid.user(11).await;

    // "big" asks for more than the node's 100 GiB pool: the capacity gate refuses it
    let mut d = alice.deployment(
        0,
        "failing",
        vec![volume("small", GIB, 0), volume("big", 500 * GIB, 0)],
    );
    let c = alice.contract(NODE, &mut d).await;
    alice.send_deploy(node_twin, &mut d).await;
    wait_for("big in error", T, || async {
        let d = alice.get(node_twin, c).await.ok()?;
        let big = d.workloads.iter().find(|w| w.name == "big")?;
        (big.result.state == zos_node::model::ResultState::Error).then_some(())
    })
    .await;
    // upstream's result JSON is unchanged: no code there
    let raw = alice
        .call(node_twin, "zos.deployment.get", &json!({"contract_id": c}))
        .await
        .unwrap();
    for w in raw["workloads"].as_array().unwrap() {
        assert!(w["result"].get("code").is_none(), "{w}");
    }

    // the client rolls back as `zos deploy` does: cancel the contract
    grid.client
        .send(&alice.key, Call::CancelContract { contract_id: c })
        .await
        .unwrap();
    wait_for("deployment removed", T, || async {
        alice.get(node_twin, c).await.is_err().then_some(())
    })
    .await;

    let h = alice
        .call(
            node_twin,
            "zos.deployment.history",
            &json!({"contract_id": c}),
        )
        .await
        .unwrap();
    let h = h["history"].as_array().unwrap().clone();
    let of = |name: &str, state: &str| -> Vec<Value> {
        h.iter()
            .filter(|e| e["name"] == name && e["state"] == state)
            .cloned()
            .collect()
    };
    let big = of("big", "error");
    assert_eq!(big.len(), 1, "{h:?}");
    assert_eq!(big[0]["code"], json!("capacity"));
    assert!(
        big[0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot fulfil required ssd storage size"),
        "{big:?}"
    );
    assert_eq!(big[0]["deployment_version"], json!(0));
    assert_eq!(of("small", "ok").len(), 1, "{h:?}");
    assert_eq!(of("small", "deleted").len(), 1, "{h:?}");
    assert_eq!(of("small", "init").len(), 1, "{h:?}");
    let seqs: Vec<u64> = h.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // another twin cannot read it (history is keyed by the owner)
    let e = mallory
        .call_err(
            node_twin,
            "zos.deployment.history",
            &json!({"contract_id": c}),
        )
        .await;
    assert_eq!(e, "deployment not found");
    node.stop().await;
}
