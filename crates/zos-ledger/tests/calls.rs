//! Every call: its success and its rejections, on an in-memory chain. Each rejection is also
//! checked to leave the state and the head untouched.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Harness, create_node, hash, key};
use zos_ledger::{
    Call, ContractKind, ContractResources, ContractState, Event, NruConsumption, PricingPolicy,
    PublicConfig, SignedTransaction, dev,
};

/// user (twin 1) with a farm (1) holding two IPs, a node (twin 2, node 1) in it.
fn grid() -> (
    Harness,
    zos_types::crypto::KeyPair,
    zos_types::crypto::KeyPair,
) {
    let mut h = Harness::new();
    let farmer = key(1);
    let node = key(2);
    h.twin(&farmer);
    h.ok(
        &farmer,
        Call::CreateFarm {
            name: "farm1".into(),
        },
    );
    for last in [10, 11] {
        h.ok(
            &farmer,
            Call::AddFarmIp {
                farm_id: 1,
                ip: format!("185.69.166.{last}/24"),
                gateway: "185.69.166.1".into(),
            },
        );
    }
    h.twin(&node);
    h.ok(&node, create_node(1));
    (h, farmer, node)
}

fn node_contract(node_id: u32, n: u8, public_ips: u32) -> Call {
    Call::CreateNodeContract {
        node_id,
        deployment_hash: hash(n),
        deployment_data: "{\"name\":\"vm\"}".into(),
        public_ips,
    }
}

#[test]
fn transfer_and_insufficient_funds() {
    let mut h = Harness::new();
    let (a, b) = (key(1), key(2));
    h.fund(&a, 1000);
    let ev = h.ok(
        &a,
        Call::Transfer {
            to: b.public(),
            amount: 400,
        },
    );
    assert!(matches!(ev[..], [Event::Transfer { amount: 400, .. }]));
    assert_eq!(h.reader.account(&a.public()).unwrap().balance, 600);
    assert_eq!(h.reader.account(&b.public()).unwrap().balance, 400);
    h.rejects(
        &a,
        Call::Transfer {
            to: b.public(),
            amount: 601,
        },
        "insufficient funds: 601 needed, 600 available",
    );
    h.rejects(
        &a,
        Call::Transfer {
            to: b.public(),
            amount: 0,
        },
        "invalid amount",
    );
}

#[test]
fn bad_signature_and_other_ledger_are_rejected() {
    let mut h = Harness::new();
    let a = key(1);
    let mut tx = h.sign(
        &a,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    tx.signature = hex::encode([0u8; 64]);
    let before = h.snapshot();
    assert_eq!(h.submit(tx).unwrap_err(), "bad signature");
    // Signed for another ledger (different genesis hash).
    let other = SignedTransaction::sign(
        &a,
        &[9u8; 32],
        0,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    assert_eq!(h.submit(other).unwrap_err(), "bad signature");
    // Someone else's key claiming to be `a`.
    let mut forged = h.sign(
        &key(3),
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    forged.account = a.public();
    assert_eq!(h.submit(forged).unwrap_err(), "bad signature");
    assert_eq!(h.snapshot(), before);
}

#[test]
fn replays_and_nonce_gaps_are_rejected() {
    let mut h = Harness::new();
    let a = key(1);
    let tx = h.sign(
        &a,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    h.submit(tx.clone()).unwrap();
    assert_eq!(
        h.submit(tx).unwrap_err(),
        "stale nonce 0: account nonce is 1"
    );
    let gap = SignedTransaction::sign(
        &a,
        &h.chain.genesis_hash(),
        5,
        Call::UpdateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    assert_eq!(
        h.submit(gap).unwrap_err(),
        "future nonce 5: account nonce is 1"
    );
    // sr25519 accounts work the same way.
    let sr = zos_types::crypto::KeyPair::from_seed(zos_types::crypto::KeyType::Sr25519, [4; 32]);
    assert!(h.twin(&sr) > 0);
}

#[test]
fn twins() {
    let mut h = Harness::new();
    let a = key(1);
    h.rejects(
        &a,
        Call::UpdateTwin {
            relays: vec![],
            e2e_key: None,
        },
        "has no twin",
    );
    h.rejects(
        &a,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: Some("not hex".into()),
        },
        "invalid e2e_key",
    );
    let id = h.twin(&a);
    assert_eq!(id, 1);
    h.rejects(
        &a,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
        "already exists",
    );
    let ev = h.ok(
        &a,
        Call::UpdateTwin {
            relays: vec!["r1".into(), "r2".into()],
            e2e_key: Some("ab".repeat(32)),
        },
    );
    assert!(matches!(&ev[..], [Event::TwinStored { twin }] if twin.relays.len() == 2));
    let t = h.reader.twin(1).unwrap().unwrap();
    assert_eq!(t.e2e_key.as_deref(), Some(&*"ab".repeat(32)));
    assert_eq!(t.account, a.public());
}

#[test]
fn farms_and_ip_pool() {
    let (mut h, farmer, node) = grid();
    h.rejects(
        &node,
        Call::CreateFarm {
            name: "farm1".into(),
        },
        "farm name \"farm1\" already exists",
    );
    h.rejects(
        &node,
        Call::CreateFarm {
            name: "bad name!".into(),
        },
        "invalid farm name",
    );
    h.rejects(
        &key(9),
        Call::CreateFarm { name: "x".into() },
        "has no twin",
    );
    let add = |ip: &str, gw: &str| Call::AddFarmIp {
        farm_id: 1,
        ip: ip.into(),
        gateway: gw.into(),
    };
    h.rejects(
        &node,
        add("185.69.166.12/24", "185.69.166.1"),
        "not the owner of farm 1",
    );
    h.rejects(
        &farmer,
        add("185.69.166.10/24", "185.69.166.1"),
        "already exists",
    );
    h.rejects(
        &farmer,
        add("185.69.166.12/24", "10.0.0.1"),
        "invalid gateway",
    );
    h.rejects(&farmer, add("nonsense", "10.0.0.1"), "invalid ip");
    h.rejects(
        &farmer,
        Call::AddFarmIp {
            farm_id: 7,
            ip: "1.1.1.2/24".into(),
            gateway: "1.1.1.1".into(),
        },
        "unknown farm 7",
    );
    let farm = h.reader.farm_by_name("farm1").unwrap().unwrap();
    assert_eq!(farm.public_ips.len(), 2);
    h.ok(
        &farmer,
        Call::RemoveFarmIp {
            farm_id: 1,
            ip: "185.69.166.11/24".into(),
        },
    );
    h.rejects(
        &farmer,
        Call::RemoveFarmIp {
            farm_id: 1,
            ip: "185.69.166.11/24".into(),
        },
        "is not in farm 1",
    );
    // An IP held by a contract cannot be removed.
    let user = key(3);
    h.twin(&user);
    h.ok(&user, node_contract(1, 1, 1));
    h.rejects(
        &farmer,
        Call::RemoveFarmIp {
            farm_id: 1,
            ip: "185.69.166.10/24".into(),
        },
        "is used by contract 1",
    );
}

#[test]
fn nodes() {
    let (mut h, farmer, node) = grid();
    let n = h.reader.node(1).unwrap().unwrap();
    assert_eq!((n.farm_id, n.twin_id, n.created), (1, 2, common::T0));
    assert_eq!(h.reader.node_by_twin(2).unwrap().unwrap().id, 1);
    h.rejects(&node, create_node(1), "node of twin 2 already exists");
    let other = key(4);
    h.twin(&other);
    h.rejects(&other, create_node(9), "unknown farm 9");
    // Update: only the node's own twin.
    let Call::CreateNode {
        resources,
        location,
        interfaces,
        features,
        virtualized,
        secure_boot,
        serial_number,
        ..
    } = create_node(1)
    else {
        unreachable!()
    };
    let update = Call::UpdateNode {
        node_id: 1,
        farm_id: 1,
        resources,
        location,
        interfaces,
        features,
        version: "0.2.0".into(),
        virtualized,
        secure_boot,
        serial_number,
    };
    h.rejects(&other, update.clone(), "not the owner of node 1");
    h.now += 10;
    h.ok(&node, update);
    let n = h.reader.node(1).unwrap().unwrap();
    assert_eq!(
        (n.version.as_str(), n.updated_at),
        ("0.2.0", common::T0 + 10)
    );
    // Uptime.
    let ev = h.ok(&node, Call::ReportUptime { uptime: 3600 });
    assert_eq!(
        ev,
        vec![Event::NodeUptimeReported {
            node_id: 1,
            timestamp: common::T0 + 10,
            uptime: 3600
        }]
    );
    h.rejects(&other, Call::ReportUptime { uptime: 1 }, "has no node");
    // Public config: by the farmer only.
    let cfg = PublicConfig {
        ip4: zos_ledger::IpConfig {
            ip: "185.69.166.20/24".into(),
            gw: "185.69.166.1".into(),
        },
        ip6: None,
        domain: Some("gw.example".into()),
    };
    let set = Call::SetNodePublicConfig {
        node_id: 1,
        config: Some(cfg.clone()),
    };
    h.rejects(&node, set.clone(), "not the owner of farm of node 1");
    h.rejects(
        &farmer,
        Call::SetNodePublicConfig {
            node_id: 5,
            config: None,
        },
        "unknown node 5",
    );
    let ev = h.ok(&farmer, set);
    assert_eq!(
        ev,
        vec![Event::NodePublicConfigStored {
            node_id: 1,
            config: Some(cfg.clone())
        }]
    );
    assert_eq!(h.reader.node(1).unwrap().unwrap().public_config, Some(cfg));
}

#[test]
fn node_contracts_reserve_ips_update_and_cancel() {
    let (mut h, _farmer, _node) = grid();
    let user = key(3);
    let stranger = key(4);
    h.twin(&user);
    h.twin(&stranger);
    h.rejects(&user, node_contract(9, 1, 0), "unknown node 9");
    h.rejects(
        &user,
        node_contract(1, 1, 3),
        "farm 1 IP pool exhausted: 3 requested, 2 free",
    );
    h.rejects(
        &user,
        Call::CreateNodeContract {
            node_id: 1,
            deployment_hash: "ABC".into(),
            deployment_data: String::new(),
            public_ips: 0,
        },
        "invalid deployment_hash",
    );
    h.rejects(
        &user,
        Call::CreateNodeContract {
            node_id: 1,
            deployment_hash: hash(1),
            deployment_data: "x".repeat(513),
            public_ips: 0,
        },
        "invalid deployment_data",
    );
    let ev = h.ok(&user, node_contract(1, 1, 2));
    let Event::NodeContractCreated {
        contract_id,
        node_id,
        twin_id,
        public_ips_list,
        ..
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (*contract_id, *node_id, *twin_id, public_ips_list.len()),
        (1, 1, 3, 2)
    );
    let farm = h.reader.farm(1).unwrap().unwrap();
    assert!(farm.public_ips.iter().all(|ip| ip.contract_id == 1));
    h.rejects(
        &user,
        node_contract(1, 2, 1),
        "IP pool exhausted: 1 requested, 0 free",
    );
    h.rejects(&user, node_contract(1, 1, 0), "contract with hash");
    h.ok(&user, node_contract(1, 2, 0));
    assert_eq!(h.reader.node_contracts(1).unwrap().len(), 2);

    // Update: owner only, hash must stay unique on the node.
    let upd = |hash: String| Call::UpdateNodeContract {
        contract_id: 1,
        deployment_hash: hash,
        deployment_data: "v2".into(),
    };
    h.rejects(
        &stranger,
        upd(common::hash(5)),
        "not the owner of contract 1",
    );
    h.rejects(&user, upd(common::hash(2)), "contract with hash");
    h.rejects(
        &user,
        Call::UpdateNodeContract {
            contract_id: 42,
            deployment_hash: common::hash(5),
            deployment_data: String::new(),
        },
        "unknown contract 42",
    );
    let ev = h.ok(&user, upd(common::hash(5)));
    assert!(
        matches!(&ev[0], Event::NodeContractUpdated { contract_id: 1, deployment_hash, .. } if *deployment_hash == common::hash(5))
    );
    // The old hash is free again.
    h.ok(&user, node_contract(1, 1, 0));

    // Cancel: owner only; frees the IPs; the node's active list shrinks.
    h.rejects(
        &stranger,
        Call::CancelContract { contract_id: 1 },
        "not the owner of contract 1",
    );
    let ev = h.ok(&user, Call::CancelContract { contract_id: 1 });
    assert_eq!(
        ev.last().unwrap(),
        &Event::NodeContractCanceled {
            contract_id: 1,
            node_id: 1,
            twin_id: 3
        }
    );
    let c = h.reader.contract(1).unwrap().unwrap();
    assert_eq!(
        c.state,
        ContractState::Deleted {
            reason: "canceled_by_user".into()
        }
    );
    assert!(
        h.reader
            .farm(1)
            .unwrap()
            .unwrap()
            .public_ips
            .iter()
            .all(|ip| ip.contract_id == 0)
    );
    let active: Vec<u64> = h
        .reader
        .node_contracts(1)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(active, vec![2, 3]);
    h.rejects(
        &user,
        Call::CancelContract { contract_id: 1 },
        "contract 1 is Deleted",
    );
    assert_eq!(h.reader.twin_contracts(3).unwrap().len(), 3);
}

#[test]
fn name_contracts() {
    let mut h = Harness::new();
    let (a, b) = (key(1), key(2));
    h.twin(&a);
    h.twin(&b);
    let ev = h.ok(
        &a,
        Call::CreateNameContract {
            name: "mygw".into(),
        },
    );
    assert_eq!(
        ev,
        vec![Event::NameContractCreated {
            contract_id: 1,
            twin_id: 1,
            name: "mygw".into()
        }]
    );
    h.rejects(
        &b,
        Call::CreateNameContract {
            name: "mygw".into(),
        },
        "name contract \"mygw\" already exists",
    );
    h.rejects(
        &b,
        Call::CreateNameContract {
            name: "My GW".into(),
        },
        "invalid name",
    );
    h.rejects(&b, Call::CancelContract { contract_id: 1 }, "not the owner");
    let c = h.reader.name_contract("mygw").unwrap().unwrap();
    assert!(matches!(c.kind, ContractKind::Name { ref name } if name == "mygw"));
    h.ok(&a, Call::CancelContract { contract_id: 1 });
    assert!(h.reader.name_contract("mygw").unwrap().is_none());
    h.ok(
        &b,
        Call::CreateNameContract {
            name: "mygw".into(),
        },
    );
}

#[test]
fn node_reports_resources_and_nru_for_its_own_contracts_only() {
    let (mut h, _farmer, node) = grid();
    let user = key(3);
    h.twin(&user);
    h.ok(&user, node_contract(1, 1, 0));
    let used = zos_ledger::Resources {
        cru: 2,
        sru: 10 << 30,
        hru: 0,
        mru: 4 << 30,
    };
    let report = Call::ReportContractResources(vec![ContractResources {
        contract_id: 1,
        used,
        ok: None,
    }]);
    h.rejects(&user, report.clone(), "has no node");
    let ev = h.ok(&node, report);
    assert_eq!(
        ev,
        vec![Event::ContractResourcesReported {
            contract_id: 1,
            used
        }]
    );
    assert_eq!(h.reader.contract(1).unwrap().unwrap().billing.used, used);
    let nru = Call::AddNruReports(vec![NruConsumption {
        contract_id: 1,
        timestamp: common::T0,
        window: 3600,
        nru: 1 << 30,
    }]);
    h.ok(&node, nru);
    assert_eq!(
        h.reader.contract(1).unwrap().unwrap().billing.nru_unbilled,
        1 << 30
    );

    // Another node may not report for contract 1; and a batch with one bad entry applies nothing.
    let other = key(5);
    h.twin(&other);
    h.ok(&other, create_node(1));
    h.rejects(
        &other,
        Call::ReportContractResources(vec![ContractResources {
            contract_id: 1,
            used,
            ok: None,
        }]),
        "not the owner of contract 1",
    );
    h.rejects(
        &node,
        Call::ReportContractResources(vec![
            ContractResources {
                contract_id: 1,
                used: zos_ledger::Resources::default(),
                ok: None,
            },
            ContractResources {
                contract_id: 77,
                used,
                ok: None,
            },
        ]),
        "unknown contract 77",
    );
    assert_eq!(h.reader.contract(1).unwrap().unwrap().billing.used, used);
}

#[test]
fn council_governance() {
    let mut h = Harness::new();
    let council = dev::council_key();
    let user = key(1);
    let set = Call::SetZosVersion {
        version: "1.2.3".into(),
        safe_to_upgrade: true,
        farms: vec![],
        share_percent: None,
    };
    h.rejects(
        &user,
        set.clone(),
        "only the council may call set_zos_version",
    );
    assert_eq!(
        h.ok(&council, set),
        vec![Event::ZosVersionUpdated {
            version: "1.2.3".into(),
            safe_to_upgrade: true,
            farms: vec![],
            share_percent: None,
        }]
    );
    assert_eq!(h.reader.zos_version().unwrap().version, "1.2.3");
    let policy = PricingPolicy {
        cu_per_hour: 1,
        ..PricingPolicy::default()
    };
    h.rejects(
        &user,
        Call::SetPricingPolicy {
            policy: policy.clone(),
        },
        "only the council",
    );
    h.ok(
        &council,
        Call::SetPricingPolicy {
            policy: policy.clone(),
        },
    );
    assert_eq!(h.reader.pricing().unwrap(), policy);
}

#[test]
fn a_block_mixes_accepted_and_rejected_transactions() {
    let mut h = Harness::new();
    let (a, b) = (key(1), key(2));
    let gh = h.chain.genesis_hash();
    let t1 = SignedTransaction::sign(
        &a,
        &gh,
        0,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    let t2 = SignedTransaction::sign(
        &a,
        &gh,
        0,
        Call::CreateTwin {
            relays: vec![],
            e2e_key: None,
        },
    );
    let t3 = SignedTransaction::sign(&a, &gh, 1, Call::CreateFarm { name: "f".into() });
    let t4 = SignedTransaction::sign(&b, &gh, 0, Call::CreateFarm { name: "f".into() });
    let out = h.chain.produce(&[t1, t2, t3, t4], h.now, false).unwrap();
    let ok: Vec<bool> = out.results.iter().map(|r| r.is_ok()).collect();
    assert_eq!(ok, vec![true, false, true, false]);
    let block = out.block.unwrap();
    assert_eq!(block.transactions.len(), 2);
    let receipts: Vec<_> = out.results.into_iter().flatten().collect();
    assert_eq!((receipts[0].index, receipts[1].index), (0, 1));
    assert_eq!(receipts[1].events[0].index, 1);
    // And the whole history verifies.
    zos_ledger::verify(h.store.clone()).unwrap();
}

#[test]
fn a_node_with_active_contracts_cannot_change_farm() {
    let (mut h, farmer, node) = grid();
    h.ok(
        &farmer,
        Call::CreateFarm {
            name: "farm2".into(),
        },
    );
    let user = key(3);
    h.twin(&user);
    h.ok(&user, node_contract(1, 1, 1));
    let Call::CreateNode {
        resources,
        location,
        interfaces,
        features,
        version,
        virtualized,
        secure_boot,
        serial_number,
        ..
    } = create_node(1)
    else {
        unreachable!()
    };
    let move_to = |farm_id| Call::UpdateNode {
        node_id: 1,
        farm_id,
        resources,
        location: location.clone(),
        interfaces: interfaces.clone(),
        features: features.clone(),
        version: version.clone(),
        virtualized,
        secure_boot,
        serial_number: serial_number.clone(),
    };
    h.rejects(&node, move_to(2), "cannot change farm");
    h.ok(&user, Call::CancelContract { contract_id: 1 });
    h.ok(&node, move_to(2));
    assert_eq!(h.reader.node(1).unwrap().unwrap().farm_id, 2);
}

#[test]
fn twin_key_rotation_and_low_order_e2e_keys() {
    use zos_ledger::{proof, state::keys};
    let mut h = Harness::new();
    let (old, new, other) = (key(1), key(2), key(3));
    // Small-order X25519 points are refused at creation and at rotation of the e2e key.
    let zero = Some("00".repeat(32));
    let order8 = Some("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800".into());
    for bad in [&zero, &order8] {
        h.rejects(
            &old,
            Call::CreateTwin {
                relays: vec![],
                e2e_key: bad.clone(),
            },
            "small-order X25519 point",
        );
    }
    let id = h.twin(&old);
    h.rejects(
        &old,
        Call::UpdateTwin {
            relays: vec![],
            e2e_key: order8.clone(),
        },
        "small-order X25519 point",
    );
    // e2e key rotation: a real X25519 key replaces the old one.
    // The X25519 base point (u = 9) has prime order.
    let base = format!("09{}", "00".repeat(31));
    h.ok(
        &old,
        Call::UpdateTwin {
            relays: vec!["relay2.example".into()],
            e2e_key: Some(base.clone()),
        },
    );
    // Account rotation needs the new key's consent for this twin and these two keys.
    let forged = Call::rotate_twin_account(id, &old.public(), &other);
    let Call::RotateTwinAccount { consent, .. } = forged else {
        unreachable!()
    };
    h.rejects(
        &old,
        Call::RotateTwinAccount {
            new_account: new.public(),
            consent,
        },
        "invalid consent",
    );
    h.rejects(
        &old,
        Call::rotate_twin_account(id + 1, &old.public(), &new),
        "invalid consent",
    );
    h.rejects(
        &old,
        Call::RotateTwinAccount {
            new_account: new.public(),
            consent: "zz".into(),
        },
        "invalid consent",
    );
    h.rejects(
        &new,
        Call::rotate_twin_account(id, &new.public(), &other),
        "has no twin",
    );
    // An account that already has a twin cannot take another one.
    h.twin(&other);
    h.rejects(
        &old,
        Call::rotate_twin_account(id, &old.public(), &other),
        "already exists",
    );
    let ev = h.ok(&old, Call::rotate_twin_account(id, &old.public(), &new));
    assert!(matches!(&ev[..], [Event::TwinStored { twin }] if twin.account == new.public()));
    let t = h.reader.twin(id).unwrap().unwrap();
    assert_eq!(t.account, new.public());
    assert_eq!(t.e2e_key.as_deref(), Some(&*base));
    assert_eq!(
        h.reader.twin_by_account(&new.public()).unwrap().unwrap().id,
        id
    );
    assert!(h.reader.twin_by_account(&old.public()).unwrap().is_none());
    // The old key no longer acts for the twin; the new one does.
    h.rejects(
        &old,
        Call::UpdateTwin {
            relays: vec![],
            e2e_key: None,
        },
        "has no twin",
    );
    h.ok(
        &new,
        Call::UpdateTwin {
            relays: vec!["relay3.example".into()],
            e2e_key: Some(base.clone()),
        },
    );
    // The state root of the signed head commits to the rotated twin and the moved index.
    let snap = h.chain.snapshot();
    assert_eq!(hex::encode(snap.root()), h.chain.head().header.state_root);
    let raw = h.reader.raw_state(&keys::twin(id)).unwrap().unwrap();
    assert_eq!(
        snap.value_hash_of(&keys::twin(id)),
        Some(proof::value_hash(&raw))
    );
    assert_eq!(
        snap.value_hash_of(&keys::twin_by_account(&old.public())),
        None
    );
    assert!(
        snap.value_hash_of(&keys::twin_by_account(&new.public()))
            .is_some()
    );
}
