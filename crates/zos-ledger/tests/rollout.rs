//! Staged rollouts of the node software: the council sets a version with a farm list and a
//! share, nodes report rollbacks, a rollback of the target halts the rollout until the council
//! sets a version again.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Harness, create_node, key};
use zos_ledger::{
    Call, Event, LedgerClient, LedgerConfig, LedgerServer, RolloutHalt, ZosVersion, dev,
};
use zos_types::crypto::KeyPair;

fn set(version: &str, farms: Vec<u32>, share_percent: Option<u8>) -> Call {
    Call::SetZosVersion {
        version: version.into(),
        safe_to_upgrade: true,
        farms,
        share_percent,
    }
}

/// Two farms (1 by key 1, 2 by key 2), node 1 in farm 1 (key 3), node 2 in farm 2 (key 4).
fn grid() -> (Harness, KeyPair, KeyPair) {
    let mut h = Harness::new();
    for (farmer, name) in [(key(1), "farm1"), (key(2), "farm2")] {
        h.twin(&farmer);
        h.ok(&farmer, Call::CreateFarm { name: name.into() });
    }
    let (n1, n2) = (key(3), key(4));
    for (k, farm) in [(&n1, 1), (&n2, 2)] {
        h.twin(k);
        h.ok(k, create_node(farm));
    }
    assert_eq!(h.reader.node(1).unwrap().unwrap().farm_id, 1);
    assert_eq!(h.reader.node(2).unwrap().unwrap().farm_id, 2);
    (h, n1, n2)
}

#[test]
fn council_sets_a_staged_version() {
    let (mut h, n1, _) = grid();
    let council = dev::council_key();
    h.rejects(
        &n1,
        set("2.0.0", vec![1], Some(50)),
        "only the council may call set_zos_version",
    );
    assert_eq!(h.reader.zos_version().unwrap(), ZosVersion::default());
    let ev = h.ok(&council, set("2.0.0", vec![1], Some(50)));
    assert_eq!(
        ev,
        vec![Event::ZosVersionUpdated {
            version: "2.0.0".into(),
            safe_to_upgrade: true,
            farms: vec![1],
            share_percent: Some(50),
        }]
    );
    let v = h.reader.zos_version().unwrap();
    assert_eq!(
        (v.farms.clone(), v.share_percent, v.halted.clone()),
        (vec![1], Some(50), None)
    );
    assert!(!v.applies_to(2, 2), "farm 2 is not in the stage");
    // The share picks the same nodes as the pure bucket says, and 100 % is every node of farm 1.
    let picked: Vec<u32> = (0..200).filter(|id| v.applies_to(*id, 1)).collect();
    assert!(
        !picked.is_empty() && picked.len() < 200,
        "{} of 200",
        picked.len()
    );
    assert!(
        picked
            .iter()
            .all(|id| zos_ledger::rollout_bucket("2.0.0", *id) < 50)
    );
    h.ok(&council, set("2.0.0", vec![1, 2], Some(100)));
    let v = h.reader.zos_version().unwrap();
    assert!(v.applies_to(1, 1) && v.applies_to(2, 2));

    h.rejects(&council, set("2.0.0", vec![], Some(0)), "share_percent");
    h.rejects(&council, set("2.0.0", vec![], Some(101)), "share_percent");
    h.rejects(&council, set("2.0.0", vec![7], None), "unknown farm 7");
    h.rejects(&council, set("2.0.0", vec![1, 1], None), "twice");
    h.rejects(
        &council,
        set("2.0.0", (1..=1001).collect(), None),
        "at most 1000",
    );
    h.rejects(&council, set("", vec![], None), "version");
}

#[test]
fn a_rollback_of_the_target_halts_until_the_council_sets_again() {
    let (mut h, n1, n2) = grid();
    let council = dev::council_key();
    h.ok(&council, set("2.0.0", vec![], Some(10)));

    // A rollback from another version is only recorded.
    let ev = h.ok(
        &n2,
        Call::ReportRollback {
            node_id: 2,
            version: "1.9.0".into(),
            reason: "old trouble".into(),
        },
    );
    assert!(matches!(
        &ev[..],
        [Event::RollbackReported { node_id: 2, .. }]
    ));
    assert_eq!(h.reader.zos_version().unwrap().halted, None);

    // Nobody reports for a node that is not theirs, nor for a node that does not exist.
    let report = |node_id| Call::ReportRollback {
        node_id,
        version: "2.0.0".into(),
        reason: "health check failed: api not answering".into(),
    };
    h.rejects(&n2, report(1), "not the owner of node 1");
    h.rejects(&key(1), report(1), "not the owner of node 1");
    h.rejects(&key(9), report(1), "no twin");
    h.rejects(&n1, report(42), "unknown node 42");
    h.rejects(
        &n1,
        Call::ReportRollback {
            node_id: 1,
            version: "2.0.0".into(),
            reason: "x".repeat(513),
        },
        "at most 512",
    );
    h.rejects(
        &n1,
        Call::ReportRollback {
            node_id: 1,
            version: "v".repeat(65),
            reason: String::new(),
        },
        "version",
    );
    assert_eq!(h.reader.zos_version().unwrap().halted, None);

    let ev = h.ok(&n1, report(1));
    assert_eq!(
        ev,
        vec![Event::RolloutHalted {
            node_id: 1,
            version: "2.0.0".into(),
            reason: "health check failed: api not answering".into(),
        }]
    );
    let halt = RolloutHalt {
        node_id: 1,
        version: "2.0.0".into(),
        reason: "health check failed: api not answering".into(),
    };
    let v = h.reader.zos_version().unwrap();
    assert_eq!(v.halted.as_ref(), Some(&halt));
    assert_eq!(
        (v.version.as_str(), v.share_percent),
        ("2.0.0", Some(10)),
        "stage kept"
    );

    // A second rollback does not replace the first reason.
    let ev = h.ok(
        &n2,
        Call::ReportRollback {
            node_id: 2,
            version: "2.0.0".into(),
            reason: "second".into(),
        },
    );
    assert!(matches!(
        &ev[..],
        [Event::RollbackReported { node_id: 2, .. }]
    ));
    assert_eq!(h.reader.zos_version().unwrap().halted, Some(halt));

    // The council sets a version (even the same one): a new rollout, no halt.
    h.ok(&council, set("2.0.1", vec![2], None));
    let v = h.reader.zos_version().unwrap();
    assert_eq!((v.version.as_str(), v.halted), ("2.0.1", None));
    assert_eq!(v.farms, vec![2]);
}

/// The halt and its reason reach a client over JSON-RPC (what the node's upgrader reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_halt_is_visible_to_clients() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LedgerConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        dev: true,
        genesis: None,
        block_interval: std::time::Duration::from_millis(20),
        limits: Default::default(),
        tls: None,
        etcd: None,
        advertise: None,
    };
    let server = LedgerServer::bind(cfg).await.unwrap();
    let c = LedgerClient::new(&format!("http://{}", server.local_addr())).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let council = dev::council_key();
    let (farmer, node) = (key(1), key(2));
    for k in [&farmer, &node] {
        c.send(
            &dev::faucet_key(),
            Call::Transfer {
                to: k.public(),
                amount: 1_000_000,
            },
        )
        .await
        .unwrap();
        c.send(
            k,
            Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        )
        .await
        .unwrap();
    }
    c.send(&farmer, Call::CreateFarm { name: "f".into() })
        .await
        .unwrap();
    c.send(&node, create_node(1)).await.unwrap();
    c.send(&council, set("3.0.0", vec![1], Some(100)))
        .await
        .unwrap();
    let v = c.zos_version().await.unwrap();
    assert!(v.applies_to(1, 1) && v.halted.is_none());
    c.send(
        &node,
        Call::report_rollback(1, "3.0.0", "trial deadline passed"),
    )
    .await
    .unwrap();
    let v = c.zos_version().await.unwrap();
    assert_eq!(
        v.halted,
        Some(RolloutHalt {
            node_id: 1,
            version: "3.0.0".into(),
            reason: "trial deadline passed".into(),
        })
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
