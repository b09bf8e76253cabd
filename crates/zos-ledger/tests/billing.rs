//! Billing through the real server and client, driven by dev time advance: charge, grace period,
//! recovery when funded, deletion when the grace period ends; the event sequence is observed by
//! a subscription, and the ledger verifies afterwards.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use futures::StreamExt as _;
use zos_ledger::{
    Call, ClientError, ContractResources, ContractState, Event, LedgerClient, Resources,
};
use zos_types::crypto::KeyPair;

const GIB: u64 = 1 << 30;
/// 1 CU (2 cores, 4 GiB) × 300_000 + 0.5 SU (100 GiB SSD) × 150_000 + 1 IPv4 × 50_000.
const HOURLY: u64 = 300_000 + 75_000 + 50_000;

async fn drain(c: &LedgerClient, who: &KeyPair) {
    let bal = c.balance(&who.public()).await.unwrap();
    if bal > 0 {
        c.send(
            who,
            Call::Transfer {
                to: common::key(99).public(),
                amount: bal,
            },
        )
        .await
        .unwrap();
    }
}

fn contract_events(e: &Event) -> Option<String> {
    match e {
        Event::NodeContractCreated { contract_id: 1, .. } => Some("created".into()),
        Event::ContractBilled {
            contract_id: 1,
            amount,
            ..
        } => Some(format!("billed {amount}")),
        Event::ContractGracePeriodStarted {
            contract_id: 1,
            node_id: 1,
            ..
        } => Some("grace started".into()),
        Event::ContractGracePeriodEnded {
            contract_id: 1,
            node_id: 1,
            ..
        } => Some("grace ended".into()),
        Event::NodeContractCanceled {
            contract_id: 1,
            node_id: 1,
            ..
        } => Some("canceled".into()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_grace_recovery_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (c, stop, handle) = common::spawn_dev_server(dir.path()).await;
    let (farmer, node, user) = (common::key(1), common::key(2), common::key(3));
    for k in [&farmer, &node, &user] {
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
    c.send(&farmer, Call::CreateFarm { name: "f1".into() })
        .await
        .unwrap();
    c.send(
        &farmer,
        Call::AddFarmIp {
            farm_id: 1,
            ip: "185.69.166.10/24".into(),
            gateway: "185.69.166.1".into(),
        },
    )
    .await
    .unwrap();
    c.send(&node, common::create_node(1)).await.unwrap();
    c.dev_fund(&user.public(), 1_000_000).await.unwrap();
    let r = c
        .send(
            &user,
            Call::CreateNodeContract {
                node_id: 1,
                deployment_hash: common::hash(1),
                deployment_data: String::new(),
                public_ips: 1,
            },
        )
        .await
        .unwrap();
    let start = r.height;
    let used = Resources {
        cru: 2,
        mru: 4 * GIB,
        sru: 100 * GIB,
        hru: 0,
    };
    c.send(
        &node,
        Call::ReportContractResources(vec![ContractResources {
            contract_id: 1,
            used,
            ok: None,
        }]),
    )
    .await
    .unwrap();
    let farmer_before = c.balance(&farmer.public()).await.unwrap();

    // Hour 1: paid (the farmer receives it).
    c.dev_advance_time(3600).await.unwrap();
    let c1 = c.contract(1).await.unwrap().unwrap();
    assert_eq!(c1.state, ContractState::Created);
    assert!(c1.billing.total_billed >= HOURLY, "{c1:?}");
    assert_eq!(
        c.balance(&farmer.public()).await.unwrap() - farmer_before,
        c1.billing.total_billed
    );

    // Broke: grace period; the contract stays active on the node.
    drain(&c, &user).await;
    c.dev_advance_time(3600).await.unwrap();
    assert!(matches!(
        c.contract(1).await.unwrap().unwrap().state,
        ContractState::GracePeriod { .. }
    ));
    assert_eq!(c.node_contracts(1).await.unwrap().len(), 1);

    // Funded again: the debt is paid and the grace period ends.
    c.dev_fund(&user.public(), 10_000_000).await.unwrap();
    c.dev_advance_time(3600).await.unwrap();
    let c3 = c.contract(1).await.unwrap().unwrap();
    assert_eq!(c3.state, ContractState::Created);
    assert_eq!(c3.billing.amount_unbilled, 0);

    // Broke again, and still broke after the grace period: deleted, IP freed.
    drain(&c, &user).await;
    c.dev_advance_time(3600).await.unwrap();
    c.dev_advance_time(15 * 24 * 3600).await.unwrap();
    let c4 = c.contract(1).await.unwrap().unwrap();
    assert_eq!(
        c4.state,
        ContractState::Deleted {
            reason: "out_of_funds".into()
        }
    );
    assert!(c.node_contracts(1).await.unwrap().is_empty());
    assert_eq!(
        c.farm(1).await.unwrap().unwrap().public_ips[0].contract_id,
        0
    );

    // The event sequence, as a node following the ledger sees it.
    let head = c.head().await.unwrap();
    let mut sub = c.subscribe_events(start).await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
    {
        let ev = ev.unwrap();
        if let Some(s) = contract_events(&ev.event) {
            seen.push(s);
        }
        if ev.height >= head && matches!(ev.event, Event::NodeContractCanceled { .. }) {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "created", "billed", "grace", "billed", "grace", "grace", "canceled"
        ],
        "{seen:?}"
    );
    assert_eq!(&seen[2], "grace started");
    assert_eq!(&seen[4], "grace ended");
    assert_eq!(&seen[5], "grace started");

    // Dev calls exist only in dev mode; the audit passes after stopping.
    stop.send(()).unwrap();
    handle.await.unwrap();
    let report = zos_ledger::verify(zos_ledger::open_store(dir.path()).unwrap()).unwrap();
    assert!(report.transactions >= 10, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_calls_are_refused_outside_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = zos_ledger::LedgerConfig::dev(dir.path().to_path_buf());
    cfg.dev = false;
    cfg.genesis = Some(zos_ledger::dev::genesis(common::T0));
    cfg.block_interval = Duration::from_millis(50);
    let server = zos_ledger::LedgerServer::bind(cfg).await.unwrap();
    let c = LedgerClient::new(&format!("http://{}", server.local_addr())).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let err = c.dev_advance_time(10).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Rpc { code: -32001, .. }),
        "{err}"
    );
    let err = c.dev_fund(&common::key(1).public(), 1).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Rpc { code: -32001, .. }),
        "{err}"
    );
    // Interval blocks still work: a submission is acknowledged once its block is committed.
    let r = c
        .send(
            &common::key(1),
            Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(c.tx(&r.tx_hash).await.unwrap().unwrap().height, r.height);
    let rej = c
        .send(
            &common::key(1),
            Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(rej, ClientError::Rejected(ref m) if m.contains("already exists")),
        "{rej}"
    );
    let m = c.metrics().await.unwrap();
    assert_eq!((m.tx_applied, m.tx_rejected), (1, 1), "{m:?}");
    assert!(m.blocks_committed >= 1 && m.rpc_errors >= 3, "{m:?}");
    tx.send(()).unwrap();
    h.await.unwrap().unwrap();
}
