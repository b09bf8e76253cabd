//! Fair billing, maintenance mode and moving a node record (issue 22), block by block on an
//! in-memory chain at chosen ledger times, so every amount is checked to the unit; the chain
//! must verify (replay) afterwards.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{Harness, T0, hash, key};
use zos_ledger::{
    BillingGap, Call, Contract, ContractResources, ContractState, Event, MemStore, Resources,
    billing, dev,
};
use zos_types::crypto::KeyPair;

const GIB: u64 = 1 << 30;
const CUTOFF: u64 = 600;
/// 1 CU (2 cores, 4 GiB) × 300_000 + 0.5 SU (100 GiB SSD) × 150_000, per hour.
const HOURLY: u64 = 300_000 + 75_000;
const USED: Resources = Resources {
    cru: 2,
    mru: 4 * GIB,
    sru: 100 * GIB,
    hru: 0,
};

/// What `secs` of the contract above cost (the ledger's own integer formula).
fn cost(secs: u64) -> u64 {
    HOURLY * secs / 3600
}

struct Grid {
    h: Harness,
    farmer: KeyPair,
    node: KeyPair,
    user: KeyPair,
}

/// A fair-billing chain (cut-off 600 s, hourly charges) with a farm, node 1 and a funded user.
fn grid(cutoff: Option<u64>) -> Grid {
    let mut g = dev::genesis(T0);
    g.offline_cutoff_secs = cutoff;
    let mut h = Harness::with_genesis(Arc::new(MemStore::new()), g);
    let (farmer, node, user) = (key(1), key(2), key(3));
    for k in [&farmer, &node, &user] {
        h.twin(k);
    }
    h.ok(&farmer, Call::CreateFarm { name: "f1".into() });
    h.ok(&node, common::create_node(1));
    h.fund(&user, 10_000_000_000);
    Grid {
        h,
        farmer,
        node,
        user,
    }
}

impl Grid {
    fn at(&mut self, t: u64) -> &mut Self {
        self.h.now = T0 + t;
        self
    }

    fn contract(&mut self, n: u8) -> u64 {
        let ev = self.h.ok(
            &self.user.clone(),
            Call::CreateNodeContract {
                node_id: 1,
                deployment_hash: hash(n),
                deployment_data: String::new(),
                public_ips: 0,
            },
        );
        ev.iter()
            .find_map(|e| match e {
                Event::NodeContractCreated { contract_id, .. } => Some(*contract_id),
                _ => None,
            })
            .unwrap()
    }

    fn report(&mut self, id: u64, ok: Option<bool>) -> Vec<Event> {
        self.h.ok(
            &self.node.clone(),
            Call::ReportContractResources(vec![ContractResources {
                contract_id: id,
                used: USED,
                ok,
            }]),
        )
    }

    fn uptime(&mut self) {
        self.h
            .ok(&self.node.clone(), Call::ReportUptime { uptime: 10 });
    }

    /// A block with no transaction (billing runs).
    fn tick(&mut self) {
        self.h.chain.produce(&[], self.h.now, true).unwrap();
    }

    fn get(&self, id: u64) -> Contract {
        self.h.reader.contract(id).unwrap().unwrap()
    }

    fn verify(&self) {
        zos_ledger::verify(self.h.store.clone()).unwrap();
    }
}

#[test]
fn billing_starts_when_the_node_reports_the_deployment_up() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    // a report saying nothing is up (the deployment failed) starts nothing
    g.at(100).report(id, Some(false));
    assert_eq!(g.get(id).billing.started, None);
    g.at(300).uptime();
    g.at(590).uptime();
    let ev = g.at(1000).report(id, Some(true));
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::ContractBillingStarted { contract_id, .. } if *contract_id == id)
        ),
        "{ev:?}"
    );
    assert_eq!(g.get(id).billing.started, Some(T0 + 1000));
    // reported again: still started at 1000
    g.at(1100).report(id, Some(true));
    for t in [1500, 2000, 2500, 3000] {
        g.at(t).uptime();
    }
    g.at(3600).tick();
    let c = g.get(id);
    assert_eq!(c.billing.total_billed, cost(2600), "{c:?}");
    assert_eq!(c.billing.offline_secs, 0);
    g.verify();
}

#[test]
fn a_contract_never_reported_up_costs_nothing() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    for t in (500..=7200).step_by(500) {
        g.at(t).uptime();
    }
    g.at(7200).tick();
    let c = g.get(id);
    assert_eq!(c.billing.total_billed, 0, "{c:?}");
    // and it can be canceled at no cost
    let before = g.h.reader.account(&g.user.public()).unwrap().balance;
    g.h.ok(&g.user.clone(), Call::CancelContract { contract_id: id });
    assert_eq!(
        g.h.reader.account(&g.user.public()).unwrap().balance,
        before
    );
    g.verify();
}

#[test]
fn a_silent_node_is_not_billed_past_the_cutoff_and_the_gap_is_recorded() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    g.at(0).report(id, Some(true)); // started at T0
    g.at(500).uptime(); // last heard at 500: silent from 1100
    g.at(3600).tick(); // charge: 0..1100 billed, 1100..3600 not
    let c = g.get(id);
    assert_eq!(c.billing.total_billed, cost(1100), "{c:?}");
    assert_eq!(c.billing.offline_secs, 2500);
    assert_eq!(
        c.billing.gaps,
        vec![BillingGap {
            from: T0 + 1100,
            to: T0 + 3600
        }]
    );
    // back at 5000: 3600..5000 was not served either, recorded when it is heard from
    g.at(5000).uptime();
    let c = g.get(id);
    assert_eq!(c.billing.offline_secs, 3900);
    assert_eq!(
        c.billing.gaps,
        vec![BillingGap {
            from: T0 + 1100,
            to: T0 + 5000
        }],
        "one silence, one gap"
    );
    for t in [5500, 6000, 6500, 7000] {
        g.at(t).uptime();
    }
    g.at(7200).tick(); // 3600..7200 less the 1400 s gap
    let c = g.get(id);
    assert_eq!(c.billing.total_billed, cost(1100) + cost(2200), "{c:?}");
    assert_eq!(c.billing.offline_pending, 0);
    // a node that keeps reporting is billed in full
    for t in [7500, 8000, 8500, 9000, 9500, 10000, 10500] {
        g.at(t).uptime();
    }
    g.at(10800).tick();
    assert_eq!(
        g.get(id).billing.total_billed,
        cost(1100) + cost(2200) + cost(3600)
    );
    g.verify();
}

#[test]
fn any_node_transaction_counts_as_heard_from() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    g.at(0).report(id, Some(true));
    for t in (400..3600).step_by(400) {
        g.at(t).report(id, Some(true));
    }
    g.at(3600).tick();
    assert_eq!(g.get(id).billing.total_billed, cost(3600));
    assert_eq!(g.h.reader.node(1).unwrap().unwrap().last_seen, T0 + 3200);
}

#[test]
fn ledgers_without_a_cutoff_keep_billing_from_creation() {
    let mut g = grid(None);
    let id = g.contract(1);
    g.at(1000).report(id, Some(false));
    g.at(3600).tick();
    let c = g.get(id);
    assert_eq!(c.billing.total_billed, cost(3600), "{c:?}");
    assert_eq!(c.billing.started, None);
    // and their records are written as before (no new fields)
    let node = serde_json::to_string(&g.h.reader.node(1).unwrap().unwrap()).unwrap();
    assert!(
        !node.contains("last_seen") && !node.contains("maintenance"),
        "{node}"
    );
    let c = serde_json::to_string(&g.get(id)).unwrap();
    assert!(!c.contains("started") && !c.contains("gaps"), "{c}");
    g.verify();
}

#[test]
fn maintenance_refuses_new_contracts_keeps_existing_and_notifies_owners() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    // only the farmer
    g.h.rejects(
        &g.user.clone(),
        Call::SetNodeMaintenance {
            node_id: 1,
            on: true,
            pause: false,
        },
        "not the owner of farm of node 1",
    );
    let ev = g.h.ok(
        &g.farmer.clone(),
        Call::SetNodeMaintenance {
            node_id: 1,
            on: true,
            pause: false,
        },
    );
    assert!(ev.contains(&Event::ContractNodeMaintenance {
        contract_id: id,
        node_id: 1,
        twin_id: 3,
        on: true,
        pause: false
    }));
    assert_eq!(
        g.h.reader
            .node(1)
            .unwrap()
            .unwrap()
            .maintenance
            .map(|m| m.since),
        Some(T0)
    );
    g.h.rejects(
        &g.user.clone(),
        Call::CreateNodeContract {
            node_id: 1,
            deployment_hash: hash(2),
            deployment_data: String::new(),
            public_ips: 0,
        },
        "node 1 is in maintenance",
    );
    // the existing contract lives on: reported, updated, billed
    g.at(10).report(id, Some(true));
    g.h.ok(
        &g.user.clone(),
        Call::UpdateNodeContract {
            contract_id: id,
            deployment_hash: hash(3),
            deployment_data: String::new(),
        },
    );
    assert_eq!(g.get(id).state, ContractState::Created);
    let farmer = g.farmer.clone();
    g.at(20).h.ok(
        &farmer,
        Call::SetNodeMaintenance {
            node_id: 1,
            on: false,
            pause: false,
        },
    );
    g.contract(4);
    g.verify();
}

#[test]
fn paused_maintenance_is_not_billed() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    g.at(0).report(id, Some(true));
    g.at(300).uptime();
    let farmer = g.farmer.clone();
    g.at(600).h.ok(
        &farmer,
        Call::SetNodeMaintenance {
            node_id: 1,
            on: true,
            pause: true,
        },
    );
    for t in [900, 1200, 1500] {
        g.at(t).uptime();
    }
    let farmer = g.farmer.clone();
    g.at(1800).h.ok(
        &farmer,
        Call::SetNodeMaintenance {
            node_id: 1,
            on: false,
            pause: false,
        },
    );
    for t in [2100, 2400, 2700, 3000, 3300] {
        g.at(t).uptime();
    }
    g.at(3600).tick();
    let c = g.get(id);
    assert_eq!(c.billing.offline_secs, 1200, "{c:?}");
    assert_eq!(c.billing.total_billed, cost(2400), "{c:?}");
    g.verify();
}

#[test]
fn a_contract_can_be_canceled_in_its_grace_period() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    g.at(0).report(id, Some(true));
    // the user spends everything
    let bal = g.h.reader.account(&g.user.public()).unwrap().balance;
    g.h.ok(
        &g.user.clone(),
        Call::Transfer {
            to: key(99).public(),
            amount: bal,
        },
    );
    for t in (300..3600).step_by(300) {
        g.at(t).uptime();
    }
    g.at(3600).tick();
    assert!(matches!(g.get(id).state, ContractState::GracePeriod { .. }));
    let user = g.user.clone();
    g.at(3700)
        .h
        .ok(&user, Call::CancelContract { contract_id: id });
    assert!(matches!(g.get(id).state, ContractState::Deleted { .. }));
    g.verify();
}

#[test]
fn the_farmer_moves_a_lost_nodes_record_to_its_new_identity() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    // the machine lost its identity and registered again as node 2
    let reborn = key(4);
    let twin = g.h.twin(&reborn);
    g.h.ok(&reborn, common::create_node(1));
    assert_eq!(g.h.reader.node_by_twin(twin).unwrap().unwrap().id, 2);
    g.h.rejects(
        &g.user.clone(),
        Call::MoveNode { from: 1, to: 2 },
        "not the owner",
    );
    g.h.rejects(
        &g.farmer.clone(),
        Call::MoveNode { from: 1, to: 1 },
        "cannot move to itself",
    );
    let ev = g.h.ok(&g.farmer.clone(), Call::MoveNode { from: 1, to: 2 });
    assert!(ev.contains(&Event::NodeMoved {
        from: 1,
        to: 2,
        twin_id: twin
    }));
    assert_eq!(g.h.reader.node(2).unwrap(), None);
    assert_eq!(g.h.reader.node_by_twin(twin).unwrap().unwrap().id, 1);
    assert_eq!(g.h.reader.node_by_twin(2).unwrap(), None, "old twin freed");
    // the new identity now reports for node 1's contracts
    g.at(10).h.ok(
        &reborn,
        Call::ReportContractResources(vec![ContractResources {
            contract_id: id,
            used: USED,
            ok: Some(true),
        }]),
    );
    assert_eq!(g.get(id).billing.started, Some(T0 + 10));
    // a node with contracts cannot be the target
    let third = key(5);
    g.h.twin(&third);
    g.h.ok(&third, common::create_node(1));
    g.h.ok(
        &g.user.clone(),
        Call::CreateNodeContract {
            node_id: 3,
            deployment_hash: hash(9),
            deployment_data: String::new(),
            public_ips: 0,
        },
    );
    g.h.rejects(
        &g.farmer.clone(),
        Call::MoveNode { from: 1, to: 3 },
        "has active contracts",
    );
    g.verify();
}

#[test]
fn gaps_never_overlap_and_the_list_is_bounded() {
    let mut g = grid(Some(CUTOFF));
    let id = g.contract(1);
    g.at(0).report(id, Some(true));
    let mut c = g.get(id);
    billing::record_gap(&mut c, T0 + 100, T0 + 200);
    billing::record_gap(&mut c, T0 + 150, T0 + 300); // overlaps: only 200..300 counts
    assert_eq!(c.billing.offline_secs, 200);
    assert_eq!(
        c.billing.gaps,
        vec![BillingGap {
            from: T0 + 100,
            to: T0 + 300
        }]
    );
    billing::record_gap(&mut c, T0 + 250, T0 + 250); // empty
    for i in 0..20 {
        billing::record_gap(&mut c, T0 + 1000 + i * 10, T0 + 1005 + i * 10);
    }
    assert_eq!(c.billing.gaps.len(), zos_ledger::MAX_GAPS);
    assert_eq!(c.billing.offline_secs, 200 + 20 * 5);
    assert_eq!(c.billing.gaps.last().unwrap().to, T0 + 1195);
}
