#![allow(clippy::unwrap_used, missing_docs)]
//! A primitive crate in one file, as docs/node.md §Primitives describes: it depends on
//! `zos-primitive` and `zos-types` only, and the node (engine, API) runs it unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use zos_primitive::{
    ApiCommand, Health, Lifecycle, NodeView, PoolKind, PoolReporter, PoolUsage, Primitive,
    PrimitiveError, PrimitiveRegistry, WorkloadCtx,
};
use zos_types::data::{ZMount, ZMountResult};
use zos_types::{Workload, WorkloadType};

// ---- the primitive crate (well under 100 lines) -------------------------------------------

/// `zmount` disks kept in memory: workload id -> (size, key fingerprint).
#[derive(Default)]
struct RamDisks {
    disks: Mutex<BTreeMap<String, (u64, u8)>>,
    started: Mutex<bool>,
}

#[async_trait]
impl Primitive for RamDisks {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Zmount
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let d: ZMount = serde_json::from_value(wl.data.clone())
            .map_err(|e| PrimitiveError::InvalidData(e.to_string()))?;
        let key = ctx.workload_key("ramdisk"); // derived: the seed is not reachable
        let mut disks = self.disks.lock().unwrap();
        disks
            .entry(ctx.workload_id.clone())
            .or_insert((d.size, key[0]));
        serde_json::to_value(ZMountResult {
            volume_id: ctx.workload_id.clone(),
        })
        .map_err(PrimitiveError::failed)
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.disks.lock().unwrap().remove(&ctx.workload_id);
        Ok(())
    }
}

#[async_trait]
impl Lifecycle for RamDisks {
    fn name(&self) -> &str {
        "ramdisks"
    }
    async fn start(&self) -> Result<(), String> {
        *self.started.lock().unwrap() = true;
        Ok(())
    }
    async fn health(&self) -> Health {
        let n = self.disks.lock().unwrap().len();
        Health {
            ok: true,
            message: format!("{n} disks"),
        }
    }
}

/// The RAM the disks live in, as an SSD pool (the node's capacity gate counts it).
#[async_trait]
impl PoolReporter for RamDisks {
    async fn pools(&self) -> Vec<PoolUsage> {
        let used = self.disks.lock().unwrap().values().map(|d| d.0).sum();
        vec![PoolUsage {
            name: "ram".into(),
            kind: PoolKind::Ssd,
            size: 8 << 30,
            used,
        }]
    }
}

/// `zos.ramdisk.list`: the caller's zmount workloads as the node stores them.
struct List;

#[async_trait]
impl ApiCommand for List {
    async fn call(&self, node: &dyn NodeView, twin: u32, _p: Value) -> Result<Value, String> {
        let names: Vec<String> = node
            .deployments(Some(twin))?
            .iter()
            .flat_map(|d| d.workloads.iter())
            .filter(|w| w.workload_type == WorkloadType::Zmount)
            .map(|w| w.name.clone())
            .collect();
        Ok(json!(names))
    }
}

/// What the binary calls to compose the node.
fn register(registry: &mut PrimitiveRegistry) -> Arc<RamDisks> {
    let disks = Arc::new(RamDisks::default());
    registry.register(disks.clone());
    registry.add_lifecycle(disks.clone());
    registry.set_pool_reporter(disks.clone());
    registry.add_command("zos.ramdisk.list", Arc::new(List));
    disks
}

// ---- the node running it ------------------------------------------------------------------

#[tokio::test]
async fn a_primitive_crate_plugs_into_the_node() {
    use zos_node::chain::fake::FakeChain;
    use zos_node::chain::{ContractInfo, ContractStatus};
    use zos_node::engine::{Engine, EngineConfig, HostCapacity};
    use zos_types::crypto::{KeyPair, KeyType};
    use zos_types::{Deployment, ResultState, SignatureRequest, SignatureRequirement};

    let mut registry = PrimitiveRegistry::new();
    let disks = register(&mut registry);
    registry.start().await.unwrap();
    assert!(*disks.started.lock().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let chain = Arc::new(FakeChain::default());
    let user = KeyPair::from_seed(KeyType::Ed25519, [3u8; 32]);
    chain.put_key(3, user.public());
    let engine = Engine::new(
        zos_node::store::Store::open(&dir.path().join("e.redb")).unwrap(),
        chain.clone(),
        registry.clone(),
        zos_node::NodeSecret::new([9; 32]),
        EngineConfig {
            host: HostCapacity {
                memory: 8 << 30,
                cores: 2,
            },
        },
        Arc::new(zos_node::metrics::Metrics::default()),
    )
    .unwrap();
    engine.set_node_id(7);
    let mut d = Deployment {
        twin_id: 3,
        contract_id: 1,
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
            name: "disk".into(),
            workload_type: WorkloadType::Zmount,
            data: json!({"size": 1 << 30}),
            ..Workload::default()
        }],
        ..Deployment::default()
    };
    d.sign(3, &user).unwrap();
    chain.put_contract(ContractInfo {
        id: 1,
        twin_id: 3,
        node_id: Some(7),
        deployment_hash: d.challenge_hash_hex().unwrap(),
        status: ContractStatus::Created,
    });
    engine.deploy(3, d).await.unwrap();
    engine.drain().await;

    let w = engine.get(3, 1).unwrap().workloads.remove(0);
    assert_eq!(w.result.state, ResultState::Ok, "{}", w.result.error);
    assert_eq!(w.result.data, json!({"volume_id": "3-1-disk"}));
    assert_eq!(
        disks.disks.lock().unwrap()[&"3-1-disk".to_string()].0,
        1 << 30
    );
    assert_eq!(engine.registry().features(), ["zmount"]);

    let api = zos_node::api::Api::new(engine, Arc::new(zos_node::api::NodeState::default()));
    assert_eq!(
        api.dispatch(3, "zos.ramdisk.list", Value::Null)
            .await
            .unwrap(),
        json!(["disk"])
    );
    assert_eq!(
        api.dispatch(4, "zos.ramdisk.list", Value::Null)
            .await
            .unwrap(),
        json!([])
    );
    let health = registry.health().await;
    assert_eq!(health[0].1.message, "1 disks");
    registry.shutdown().await;
}
