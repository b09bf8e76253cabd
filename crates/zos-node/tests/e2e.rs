//! End to end: a real ledger, relay and node; users talk to the node over RMB.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use zos_ledger::Call;
use zos_node::model::ResultState;
use zos_types::crypto::{KeyPair, KeyType};

const NODE: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_errors_update_and_api() {
    let grid = Grid::start().await;
    let prims = grid.dir.path().join("prims");
    let node = InProcNode::start(
        grid.node_config(&grid.dir.path().join("node")),
        registry(&prims, Duration::ZERO),
    );
    let node_twin = grid.node_twin(NODE).await;
    let alice = grid.user(10).await;
    let bob = grid.user(11).await;

    // A second node record (never running) to hold "contract of another node".
    let other = KeyPair::from_seed(KeyType::Ed25519, [77; 32]);
    grid.twin(&other).await;
    grid.client
        .send(
            &other,
            Call::CreateNode {
                farm_id: grid.farm_id,
                resources: Default::default(),
                location: Default::default(),
                interfaces: vec![],
                public_config: None,
                features: vec![],
                version: "x".into(),
                virtualized: false,
                secure_boot: false,
                serial_number: String::new(),
            },
        )
        .await
        .unwrap();

    let features = alice
        .call(node_twin, "zos.system.node_features_get", &json!(null))
        .await
        .unwrap();
    assert_eq!(features, json!(["zmount", "volume", "ip"]));

    // deploy → ok
    let mut d = alice.deployment(0, "main", vec![volume("a", GIB, 0), ip("p", false, 0)]);
    let c = alice.contract(NODE, &mut d).await;
    alice.send_deploy(node_twin, &mut d).await;
    let got = alice.wait_state(node_twin, c, 0, "ok").await;
    assert_eq!(
        got.get("a").unwrap().result.data,
        json!({"id": format!("{}-{c}-a", alice.twin)})
    );
    assert!(prims.join(format!("{}-{c}-a", alice.twin)).exists());

    // synchronous errors, upstream texts
    let mut bad = alice.deployment(0, "bad-sig", vec![volume("a", GIB, 0)]);
    bad.signature_requirement.signatures[0].signature = hex::encode([7u8; 64]);
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.deploy",
                &serde_json::to_value(&bad).unwrap()
            )
            .await,
        "failed to verify signature"
    );
    let theirs = alice.deployment(0, "not-bob", vec![volume("a", GIB, 0)]);
    assert_eq!(
        bob.call_err(
            node_twin,
            "zos.deployment.deploy",
            &serde_json::to_value(&theirs).unwrap()
        )
        .await,
        format!(
            "twin id mismatch (deployment: {}, message: {})",
            alice.twin, bob.twin
        )
    );
    let v1 = alice.deployment(1, "v1", vec![volume("a", GIB, 0)]);
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.deploy",
                &serde_json::to_value(&v1).unwrap()
            )
            .await,
        "expected version to be 0 on deployment creation"
    );
    let wl_v = alice.deployment(0, "wlv", vec![volume("a", GIB, 3)]);
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.deploy",
                &serde_json::to_value(&wl_v).unwrap()
            )
            .await,
        "workload 'a' version '3' cannot be higher than deployment version '0'"
    );
    let zdb = zos_node::model::Workload {
        name: "z".into(),
        workload_type: zos_node::model::WorkloadType::Zdb,
        data: json!({"size": GIB, "mode": "user", "password": "x", "public": false}),
        ..Default::default()
    };
    let unsupported = alice.deployment(0, "zdb", vec![zdb]);
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.deploy",
                &serde_json::to_value(&unsupported).unwrap()
            )
            .await,
        "workload type 'zdb' is not supported on this node"
    );
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.delete",
                &json!({"contract_id": c})
            )
            .await,
        "deletion over the api is disabled, please cancel your contract instead"
    );

    // asynchronous (ledger) errors: recorded on the workloads
    let mut pinned = alice.deployment(0, "pinned", vec![volume("h", GIB, 0)]);
    let hc = alice.contract(NODE, &mut pinned).await;
    let mut other_dl = alice.deployment(0, "different", vec![volume("h", 2 * GIB, 0)]);
    other_dl.contract_id = hc;
    alice.send_deploy(node_twin, &mut other_dl).await;
    let e = alice.wait_state(node_twin, hc, 0, "error").await;
    assert_eq!(
        e.workloads[0].result.error,
        "contract hash does not match deployment hash"
    );

    let mut elsewhere = alice.deployment(0, "elsewhere", vec![volume("o", GIB, 0)]);
    let oc = alice.contract(2, &mut elsewhere).await;
    alice.send_deploy(node_twin, &mut elsewhere).await;
    let e = alice.wait_state(node_twin, oc, 0, "error").await;
    assert_eq!(
        e.workloads[0].result.error,
        "invalid node address in contract"
    );

    // a caller only sees its own deployments
    assert_eq!(
        bob.call_err(node_twin, "zos.deployment.get", &json!({"contract_id": c}))
            .await,
        "deployment not found"
    );
    assert_eq!(
        bob.call(node_twin, "zos.deployment.list", &json!(null))
            .await
            .unwrap(),
        json!([])
    );
    let list = alice
        .call(node_twin, "zos.deployment.list", &json!(null))
        .await
        .unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the ok deployment is active: {list}"
    );

    // update: ip not updatable
    let mut bad_up = alice.deployment(1, "main", vec![volume("a", GIB, 0), ip("p", true, 1)]);
    bad_up.contract_id = c;
    bad_up.sign(alice.twin, &alice.key).unwrap();
    assert_eq!(
        alice
            .call_err(
                node_twin,
                "zos.deployment.update",
                &serde_json::to_value(&bad_up).unwrap()
            )
            .await,
        "upgrade validation error: workload 'ip' does not support upgrade"
    );
    // update: grow a, add b, remove p
    let mut up = alice.deployment(
        1,
        "main",
        vec![volume("a", 2 * GIB, 1), volume("b", GIB, 1)],
    );
    up.contract_id = c;
    up.sign(alice.twin, &alice.key).unwrap();
    alice.update_contract(&up).await;
    alice
        .call(
            node_twin,
            "zos.deployment.update",
            &serde_json::to_value(&up).unwrap(),
        )
        .await
        .unwrap();
    // The new version is visible at once (header); wait for the job to have applied it.
    let got = wait_for("update applied", T, || async {
        let d = alice.get(node_twin, c).await.ok()?;
        let names: Vec<_> = d.workloads.iter().map(|w| w.name.as_str()).collect();
        let all_ok = d
            .workloads
            .iter()
            .all(|w| w.result.state == ResultState::Ok);
        (names == ["a", "b"] && all_ok).then_some(d)
    })
    .await;
    assert_eq!(got.version, 1);
    assert_eq!(got.get("a").unwrap().data["size"], json!(2 * GIB));
    assert!(!prims.join(format!("{}-{c}-p", alice.twin)).exists());
    let changes = alice
        .call(
            node_twin,
            "zos.deployment.changes",
            &json!({"contract_id": c}),
        )
        .await
        .unwrap();
    let states: Vec<(String, String)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_string(),
                w["result"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s = |n: &str, st: &str| (n.to_string(), st.to_string());
    assert_eq!(
        states,
        [
            s("a", "init"),
            s("p", "init"),
            s("a", "ok"),
            s("p", "ok"),
            s("p", "deleted"),
            s("a", "ok"),
            s("b", "ok")
        ]
    );

    // statistics and pools
    let stats = alice
        .call(node_twin, "zos.statistics.get", &json!(null))
        .await
        .unwrap();
    assert_eq!(stats["users"]["workloads"], json!(2));
    assert_eq!(stats["total"]["sru"], json!(100 * GIB));
    let pools = alice
        .call(node_twin, "zos.storage.pools", &json!(null))
        .await
        .unwrap();
    assert_eq!(pools[0]["type"], json!("ssd"));
    // admin is for the farm's twin only
    assert!(
        alice
            .call_err(node_twin, "zos.admin.interfaces", &json!(null))
            .await
            .starts_with("unauthorized")
    );

    // the node reported used resources for the contract
    wait_for("used resources reported", T, || async {
        let contract = grid.client.contract(c).await.ok()??;
        (contract.billing.used.sru == 3 * GIB).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_deprovisions_and_grace_pauses_then_resumes() {
    let grid = Grid::start().await;
    let prims = grid.dir.path().join("prims");
    let node = InProcNode::start(
        grid.node_config(&grid.dir.path().join("node")),
        registry(&prims, Duration::ZERO),
    );
    let node_twin = grid.node_twin(NODE).await;
    let alice = grid.user(10).await;

    let mut d1 = alice.deployment(0, "one", vec![volume("a", GIB, 0)]);
    let c1 = alice.contract(NODE, &mut d1).await;
    alice.send_deploy(node_twin, &mut d1).await;
    let mut d2 = alice.deployment(0, "two", vec![volume("b", 10 * GIB, 0)]);
    let c2 = alice.contract(NODE, &mut d2).await;
    alice.send_deploy(node_twin, &mut d2).await;
    alice.wait_state(node_twin, c1, 0, "ok").await;
    alice.wait_state(node_twin, c2, 0, "ok").await;
    let f1 = prims.join(format!("{}-{c1}-a", alice.twin));
    let f2 = prims.join(format!("{}-{c2}-b", alice.twin));
    assert!(f1.exists() && f2.exists());

    // cancel → deprovisioned
    grid.client
        .send(&alice.key, Call::CancelContract { contract_id: c1 })
        .await
        .unwrap();
    wait_for("c1 deprovisioned", T, || async {
        (!f1.exists()).then_some(())
    })
    .await;
    wait_for("c1 gone from the node", T, || async {
        alice.get(node_twin, c1).await.is_err().then_some(())
    })
    .await;

    // wait until the node reported c2's usage, so that billing charges something
    wait_for("usage reported", T, || async {
        let c = grid.client.contract(c2).await.ok()??;
        (c.billing.used.sru > 0).then_some(())
    })
    .await;
    // empty alice's account, advance ledger time: unpaid → grace period → paused
    let bal = grid.client.balance(&alice.key.public()).await.unwrap();
    grid.client
        .send(
            &alice.key,
            Call::Transfer {
                to: grid.farmer.public(),
                amount: bal,
            },
        )
        .await
        .unwrap();
    grid.client.dev_advance_time(7200).await.unwrap();
    let paused = alice.wait_state(node_twin, c2, 0, "paused").await;
    assert_eq!(paused.workloads[0].result.error, "paused");
    assert!(prims.join(format!("{}-{c2}-b.paused", alice.twin)).exists());

    // funded again → next charge succeeds → grace period ended → resumed
    grid.client
        .dev_fund(&alice.key.public(), 1_000_000_000_000)
        .await
        .unwrap();
    grid.client.dev_advance_time(3600).await.unwrap();
    alice.wait_state(node_twin, c2, 0, "ok").await;
    assert!(!prims.join(format!("{}-{c2}-b.paused", alice.twin)).exists());
    assert_eq!(ops(&prims, "pause").len(), 1);
    assert_eq!(ops(&prims, "resume").len(), 1);

    // the farmer's maintenance with pause pauses it the same way (the pause is confirmed
    // against the proven node record), and ending it resumes it
    let maintenance = |on, pause| Call::SetNodeMaintenance {
        node_id: NODE,
        on,
        pause,
    };
    grid.client
        .send(&grid.farmer, maintenance(true, true))
        .await
        .unwrap();
    let paused = alice.wait_state(node_twin, c2, 0, "paused").await;
    assert_eq!(paused.workloads[0].result.error, "paused");
    grid.client
        .send(&grid.farmer, maintenance(false, false))
        .await
        .unwrap();
    alice.wait_state(node_twin, c2, 0, "ok").await;
    assert_eq!(ops(&prims, "pause").len(), 2);
    assert_eq!(ops(&prims, "resume").len(), 2);
    node.stop().await;
}

/// Counts `NodeStored` events for node `id` over the whole ledger history.
async fn node_writes(grid: &Grid, id: u32) -> usize {
    let head = grid.client.head().await.unwrap();
    let mut n = 0;
    for h in 0..=head {
        for e in grid.client.events(h).await.unwrap() {
            if matches!(&e.event, zos_ledger::Event::NodeStored { node } if node.id == id) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_farm_idles_then_registers_once() {
    let grid = Grid::start().await;
    let prims = grid.dir.path().join("prims");
    let data = grid.dir.path().join("node");
    let mut cfg = grid.node_config(&data);
    cfg.farm_id = grid.farm_id + 1; // does not exist yet
    let node = InProcNode::start(cfg.clone(), registry(&prims, Duration::ZERO));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        grid.client.node(NODE).await.unwrap().is_none(),
        "a node without a farm must not register"
    );
    grid.client
        .send(
            &grid.farmer,
            Call::CreateFarm {
                name: "farm2".into(),
            },
        )
        .await
        .unwrap();
    let node_twin = grid.node_twin(NODE).await;
    assert_eq!(
        grid.client.node(NODE).await.unwrap().unwrap().farm_id,
        grid.farm_id + 1
    );
    node.stop().await;
    assert_eq!(node_writes(&grid, NODE).await, 1);

    // Restart with the same data: same identity and twin, nothing changed → no node update.
    let node = InProcNode::start(cfg, registry(&prims, Duration::ZERO));
    let alice = grid.user(10).await;
    wait_for("node API after restart", T, || async {
        alice
            .call(node_twin, "zos.system.version", &json!(null))
            .await
            .ok()
    })
    .await;
    assert_eq!(
        grid.client
            .node_by_twin(node_twin)
            .await
            .unwrap()
            .unwrap()
            .id,
        NODE
    );
    assert_eq!(
        node_writes(&grid, NODE).await,
        1,
        "registration must only write when something changed"
    );
    let diag = alice
        .call(node_twin, "zos.system.diagnostics", &json!(null))
        .await
        .unwrap();
    assert_eq!(diag["healthy"], json!(true), "{diag}");
    node.stop().await;
}
