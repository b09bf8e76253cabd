#![allow(clippy::unwrap_used, missing_docs)]
//! zdb, volume and zmount workloads deployed through the node's engine on loop-device pools,
//! used with a real redis client, paused, updated, the ZeroDB server killed, the node
//! restarted, and finally the contract cancelled. Lives in the binary crate because it composes
//! the agent (`zos-node`) with a primitive crate (`zos-storage`), which depend on neither.

// The storage tests' loop-device sandbox (cleanup on drop, loud SKIP without root).
#[path = "../../zos-storage/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Env, capable, qemu_io};
use serde_json::json;
use tokio::sync::watch;
use zos_node::chain::fake::FakeChain;
use zos_node::chain::{ContractInfo, ContractStatus};
use zos_node::engine::{Engine, EngineConfig, HostCapacity};
use zos_node::metrics::Metrics;
use zos_node::store::Store;
use zos_node::{NodeSecret, PrimitiveRegistry};
use zos_storage::ZdbExit;
use zos_storage::{
    InProcessZdb, PoolKind, Storage, StorageConfig, ZdbLauncher, ZdbResult, ZdbServerSpec,
};
use zos_types::crypto::{KeyPair, KeyType};
use zos_types::{
    Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload, WorkloadType,
};

const MIB: u64 = 1 << 20;
const NODE: u32 = 7;
const TWIN: u32 = 3;
const SEED: [u8; 32] = [9; 32];

/// The real in-process server, plus a switch that makes it stop behind the supervisor's back.
#[derive(Default)]
struct Killable {
    kill: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl ZdbLauncher for Killable {
    async fn launch(
        &self,
        spec: &ZdbServerSpec,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, ZdbExit), String> {
        let (tx, rx) = watch::channel(false);
        let kill = self.kill.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = kill.notified() => {}
            }
            let _ = tx.send(true);
        });
        InProcessZdb.launch(spec, rx).await
    }
}

struct Node {
    storage: Arc<Storage>,
    registry: PrimitiveRegistry,
    engine: Engine,
}

async fn start_node(env: &Env, chain: Arc<FakeChain>, launcher: Arc<dyn ZdbLauncher>) -> Node {
    let mgr = Storage::start_pools(&env.pool_config()).await.unwrap();
    let storage = Arc::new(Storage::new(
        mgr,
        SEED,
        StorageConfig::new(env.pool_config()),
    ));
    let mut reg = PrimitiveRegistry::new();
    zos_storage::register_with(&mut reg, storage.clone(), launcher);
    // The storage lifecycle starts the ZeroDB servers, as `zos node run` does.
    reg.start().await.unwrap();
    let store = Store::open(&storage.cache_dir().unwrap().join("engine.redb")).unwrap();
    let host = HostCapacity {
        memory: 16 << 30,
        cores: 2,
    };
    let engine = Engine::new(
        store,
        chain,
        reg.clone(),
        NodeSecret::new(SEED),
        EngineConfig { host },
        Arc::new(Metrics::default()),
    )
    .unwrap();
    engine.set_node_id(NODE);
    Node {
        storage,
        registry: reg,
        engine,
    }
}

impl Node {
    /// The engine holds the store file in the cache subvolume: drop it before unmounting.
    async fn stop(self) {
        let Node {
            storage,
            registry,
            engine,
        } = self;
        drop(engine);
        drop(storage);
        registry.shutdown().await;
    }
}

fn wl(name: &str, t: WorkloadType, version: u32, data: serde_json::Value) -> Workload {
    Workload {
        version,
        name: name.into(),
        workload_type: t,
        data,
        ..Workload::default()
    }
}

fn deployment(user: &KeyPair, version: u32, workloads: Vec<Workload>) -> Deployment {
    let mut d = Deployment {
        version,
        twin_id: TWIN,
        contract_id: 1,
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: TWIN,
                required: false,
                weight: 1,
            }],
            weight_required: 1,
            ..Default::default()
        },
        workloads,
        ..Deployment::default()
    };
    d.sign(TWIN, user).unwrap();
    d
}

fn put_contract(chain: &FakeChain, d: &Deployment, status: ContractStatus) {
    chain.put_contract(ContractInfo {
        id: d.contract_id,
        twin_id: TWIN,
        node_id: Some(NODE),
        deployment_hash: d.challenge_hash_hex().unwrap(),
        status,
    });
}

fn result_of(engine: &Engine, name: &str) -> (ResultState, String, serde_json::Value) {
    let d = engine.get(TWIN, 1).unwrap();
    let w = d.workloads.into_iter().find(|w| w.name == name).unwrap();
    (w.result.state, w.result.error, w.result.data)
}

async fn connect(r: &ZdbResult) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://{}:{}/", r.ips[0], r.port);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn select(
    r: &ZdbResult,
    password: Option<&str>,
) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let mut c = connect(r).await;
    let mut cmd = redis::cmd("SELECT");
    cmd.arg(&r.namespace);
    if let Some(p) = password {
        cmd.arg(p);
    }
    cmd.query_async::<()>(&mut c).await.map(|_| c)
}

async fn get(c: &mut redis::aio::MultiplexedConnection, k: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(k).query_async(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdb_volume_zmount_through_the_node_then_restart_and_cancel() {
    if !capable("zdb_volume_zmount_through_the_node_then_restart_and_cancel") {
        return;
    }
    let env = Env::new(
        "e2e",
        &[("ssd", 400, PoolKind::Ssd), ("hdd", 300, PoolKind::Hdd)],
    )
    .await;
    let chain = Arc::new(FakeChain::default());
    let user = KeyPair::from_seed(KeyType::Ed25519, [3u8; 32]);
    chain.put_key(TWIN, user.public());
    let killable = Arc::new(Killable::default());
    let node = start_node(&env, chain.clone(), killable.clone()).await;
    let servers = node.storage.zdb_servers();
    assert_eq!(servers.len(), 1, "one server, on the HDD pool");
    assert_eq!(servers[0].pool, node.storage.pools()[1].name);

    // Deploy through the engine.
    let zdb_data = |size: u64, pw: &str| json!({"size": size, "mode": "user", "password": pw, "public": false});
    let d0 = deployment(
        &user,
        0,
        vec![
            wl("db", WorkloadType::Zdb, 0, zdb_data(50 * MIB, "secret")),
            wl("vol", WorkloadType::Volume, 0, json!({"size": 20 * MIB})),
            wl("disk", WorkloadType::Zmount, 0, json!({"size": 32 * MIB})),
        ],
    );
    put_contract(&chain, &d0, ContractStatus::Created);
    node.engine.deploy(TWIN, d0).await.unwrap();
    node.engine.drain().await;
    for name in ["db", "vol", "disk"] {
        let (state, err, _) = result_of(&node.engine, name);
        assert_eq!(state, ResultState::Ok, "{name}: {err}");
    }
    assert_eq!(result_of(&node.engine, "vol").2, json!({"id": "3-1-vol"}));
    assert_eq!(
        result_of(&node.engine, "disk").2,
        json!({"volume_id": "3-1-disk"})
    );
    let r: ZdbResult = serde_json::from_value(result_of(&node.engine, "db").2).unwrap();
    assert_eq!(r.namespace, "3-1-db");
    assert_eq!(r.ips, vec!["127.0.0.1".to_string()]);
    assert_eq!(r.port, servers[0].addr.port());

    // A user connects with the returned address and the password.
    let mut c = select(&r, Some("secret")).await.unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("hello")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert_eq!(get(&mut c, "k").await.as_deref(), Some(&b"hello"[..]));
    assert!(
        select(&r, Some("wrong")).await.is_err(),
        "wrong password refused"
    );
    assert!(
        select(&r, None).await.is_err(),
        "private namespace needs the password"
    );
    let vol = node.storage.volume_get("3-1-vol").await.unwrap().unwrap();
    std::fs::write(vol.path.join("file"), b"volume data").unwrap();
    let disk = node.storage.disk_get("3-1-disk").unwrap().unwrap();
    let (ok, out) = qemu_io(
        &disk.path,
        &node.storage.disk_key("3-1-disk").unwrap().passphrase(),
        "write -P 0x42 0 1M",
    );
    assert!(ok, "{out}");

    // Grace period pauses (namespace locked), its end resumes.
    chain.set_status(1, ContractStatus::GracePeriod);
    node.engine.sync().await.unwrap();
    node.engine.drain().await;
    assert_eq!(result_of(&node.engine, "db").0, ResultState::Paused);
    let set: Result<(), _> = redis::cmd("SET")
        .arg("k2")
        .arg("x")
        .query_async(&mut c)
        .await;
    assert!(set.is_err(), "paused namespace is read-only");
    assert_eq!(
        get(&mut c, "k").await.as_deref(),
        Some(&b"hello"[..]),
        "still readable"
    );
    chain.set_status(1, ContractStatus::Created);
    node.engine.sync().await.unwrap();
    node.engine.drain().await;
    assert_eq!(result_of(&node.engine, "db").0, ResultState::Ok);
    redis::cmd("SET")
        .arg("k2")
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    // Update: bigger namespace with a new password, bigger volume (snapshot taken).
    let d1 = deployment(
        &user,
        1,
        vec![
            wl("db", WorkloadType::Zdb, 1, zdb_data(80 * MIB, "secret2")),
            wl("vol", WorkloadType::Volume, 1, json!({"size": 30 * MIB})),
            wl("disk", WorkloadType::Zmount, 1, json!({"size": 48 * MIB})),
        ],
    );
    put_contract(&chain, &d1, ContractStatus::Created);
    node.engine.update(TWIN, d1).await.unwrap();
    node.engine.drain().await;
    for name in ["db", "vol", "disk"] {
        let (state, err, _) = result_of(&node.engine, name);
        assert_eq!(state, ResultState::Ok, "{name}: {err}");
    }
    assert!(
        select(&r, Some("secret")).await.is_err(),
        "old password no longer works"
    );
    let mut c = select(&r, Some("secret2")).await.unwrap();
    assert_eq!(get(&mut c, "k").await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        node.storage
            .zdb_get("3-1-db")
            .await
            .unwrap()
            .unwrap()
            .max_size,
        80 * MIB
    );
    assert_eq!(
        node.storage
            .volume_get("3-1-vol")
            .await
            .unwrap()
            .unwrap()
            .size,
        30 * MIB
    );
    assert_eq!(
        node.storage
            .volume_snapshots("3-1-vol")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        node.storage.disk_get("3-1-disk").unwrap().unwrap().size,
        48 * MIB
    );

    // Shrinking is "unchanged": the previous definition stays current.
    let d2 = deployment(
        &user,
        2,
        vec![
            wl("db", WorkloadType::Zdb, 2, zdb_data(10 * MIB, "secret2")),
            wl("vol", WorkloadType::Volume, 1, json!({"size": 30 * MIB})),
            wl("disk", WorkloadType::Zmount, 1, json!({"size": 48 * MIB})),
        ],
    );
    put_contract(&chain, &d2, ContractStatus::Created);
    node.engine.update(TWIN, d2).await.unwrap();
    node.engine.drain().await;
    let changes = node.engine.changes(TWIN, 1).unwrap();
    let last_db = changes.iter().rev().find(|w| w.name == "db").unwrap();
    assert_eq!(
        last_db.result.state,
        ResultState::Unchanged,
        "{}",
        last_db.result.error
    );
    assert_eq!(
        node.storage
            .zdb_get("3-1-db")
            .await
            .unwrap()
            .unwrap()
            .max_size,
        80 * MIB
    );

    // The ZeroDB server stops behind the supervisor's back: it is restarted on the same port.
    killable.kill.notify_one();
    node.storage
        .zdb_wait_starts(&servers[0].pool, 1)
        .await
        .unwrap();
    // The start counter moves only after the new server has bound its socket.
    let mut c = select(&r, Some("secret2")).await.unwrap();
    assert_eq!(node.storage.zdb_servers()[0].starts, 2);
    assert_eq!(get(&mut c, "k").await.as_deref(), Some(&b"hello"[..]));
    drop(c);

    // Node restart: everything is still there and served again.
    let mounts: Vec<_> = node
        .storage
        .pools()
        .iter()
        .map(|p| p.mountpoint.clone())
        .collect();
    node.stop().await;
    assert!(
        mounts.iter().all(|m| !common::mounted(m)),
        "clean unmount (ZeroDB stopped first)"
    );
    assert!(
        env.specs
            .iter()
            .all(|s| common::loops_of(&s.file).is_empty()),
        "loops detached"
    );
    let node = start_node(&env, chain.clone(), Arc::new(InProcessZdb)).await;
    assert_eq!(
        node.storage.zdb_servers()[0].addr,
        servers[0].addr,
        "same address after restart"
    );
    let mut c = select(&r, Some("secret2")).await.unwrap();
    assert_eq!(get(&mut c, "k").await.as_deref(), Some(&b"hello"[..]));
    assert_eq!(get(&mut c, "k2").await.as_deref(), Some(&b"x"[..]));
    assert!(select(&r, Some("wrong")).await.is_err());
    let vol = node.storage.volume_get("3-1-vol").await.unwrap().unwrap();
    assert_eq!(
        std::fs::read(vol.path.join("file")).unwrap(),
        b"volume data"
    );
    assert_eq!(vol.size, 30 * MIB);
    let disk = node.storage.disk_get("3-1-disk").unwrap().unwrap();
    let (ok, out) = qemu_io(
        &disk.path,
        &node.storage.disk_key("3-1-disk").unwrap().passphrase(),
        "read -P 0x42 0 1M",
    );
    assert!(ok, "{out}");
    assert_eq!(result_of(&node.engine, "db").0, ResultState::Ok);
    // Reconciliation after restart re-runs provision idempotently.
    node.engine.reconcile_all().unwrap();
    node.engine.drain().await;
    for name in ["db", "vol", "disk"] {
        let (state, err, _) = result_of(&node.engine, name);
        assert_eq!(state, ResultState::Ok, "{name}: {err}");
    }
    assert_eq!(get(&mut c, "k").await.as_deref(), Some(&b"hello"[..]));
    drop(c);

    // Cancelling the contract deletes everything.
    chain.set_status(1, ContractStatus::Deleted);
    node.engine.sync().await.unwrap();
    node.engine.drain().await;
    assert!(node.storage.zdb_get("3-1-db").await.unwrap().is_none());
    assert!(node.storage.volume_get("3-1-vol").await.unwrap().is_none());
    assert!(node.storage.disk_get("3-1-disk").unwrap().is_none());
    assert!(select(&r, Some("secret2")).await.is_err());
    node.stop().await;
}
