//! Benchmark (not a test) of the engine alone: no RMB, no ledger process (an in-memory
//! `FakeChain`), a no-op primitive. Separates the node's own cost (checks, fsynced store
//! commits, job processing) from transport and ledger costs.
//!
//! `cargo run --release -p zos-node --features test-fakes --example bench_engine -- [N]`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Value, json};
use zos_node::chain::fake::FakeChain;
use zos_node::chain::{ContractInfo, ContractStatus};
use zos_node::engine::{Engine, EngineConfig, HostCapacity};
use zos_node::metrics::Metrics;
use zos_node::model::{Deployment, Workload, WorkloadType};
use zos_node::primitives::{PoolKind, PoolReporter, PoolUsage};
use zos_node::store::Store;
use zos_node::{NodeSecret, Primitive, PrimitiveError, PrimitiveRegistry, WorkloadCtx};
use zos_types::crypto::{KeyPair, KeyType};
use zos_types::{SignatureRequest, SignatureRequirement};

struct Noop;

#[async_trait]
impl Primitive for Noop {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Volume
    }
    async fn provision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<Value, PrimitiveError> {
        Ok(json!({ "id": ctx.workload_id }))
    }
    async fn deprovision(&self, _ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        Ok(())
    }
}

struct Pools;

#[async_trait]
impl PoolReporter for Pools {
    async fn pools(&self) -> Vec<PoolUsage> {
        vec![PoolUsage {
            name: "ssd".into(),
            kind: PoolKind::Ssd,
            size: 1 << 50,
            used: 0,
        }]
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let chain = Arc::new(FakeChain::default());
    let user = KeyPair::from_seed(KeyType::Ed25519, [3; 32]);
    chain.put_key(3, user.public());
    let mut reg = PrimitiveRegistry::new();
    reg.register(Arc::new(Noop));
    reg.set_pool_reporter(Arc::new(Pools));
    let engine = Engine::new(
        Store::open(&dir.path().join("engine.redb")).unwrap(),
        chain.clone(),
        reg,
        NodeSecret::new([1; 32]),
        EngineConfig {
            host: HostCapacity::discover(),
        },
        Arc::new(Metrics::default()),
    )
    .unwrap();
    engine.set_node_id(1);
    let mut dls = Vec::new();
    for c in 1..=n {
        let mut d = Deployment {
            twin_id: 3,
            contract_id: c,
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: 3,
                    required: false,
                    weight: 1,
                }],
                weight_required: 1,
                ..Default::default()
            },
            workloads: vec![Workload {
                name: "v".into(),
                workload_type: WorkloadType::Volume,
                data: json!({ "size": 1 << 20 }),
                ..Workload::default()
            }],
            ..Deployment::default()
        };
        d.sign(3, &user).unwrap();
        chain.put_contract(ContractInfo {
            id: c,
            twin_id: 3,
            node_id: Some(1),
            deployment_hash: d.challenge_hash_hex().unwrap(),
            status: ContractStatus::Created,
        });
        dls.push(d);
    }
    let t0 = Instant::now();
    for d in dls {
        engine.deploy(3, d).await.unwrap();
    }
    let accepted = t0.elapsed();
    let t1 = Instant::now();
    assert_eq!(engine.drain().await as u64, n);
    let processed = t1.elapsed();
    println!("engine only, {n} deployments (1 workload each):");
    println!(
        "  accept (checks + signature + fsynced store commit): {:.0}/s ({:.2} ms each)",
        n as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "  process (contract check + provision + fsynced result): {:.0}/s ({:.2} ms each)",
        n as f64 / processed.as_secs_f64(),
        processed.as_secs_f64() * 1e3 / n as f64
    );
}
