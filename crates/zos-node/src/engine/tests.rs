#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use zos_types::crypto::{KeyPair, KeyType};
use zos_types::{SignatureRequest, SignatureRequirement, WorkloadType};

use super::*;
use crate::chain::fake::FakeChain;
use crate::chain::{ContractInfo, ContractStatus};
use crate::primitives::{
    PoolKind, PoolReporter, PoolUsage, Primitive, PrimitiveError, WorkloadCtx,
};

const GIB: u64 = 1 << 30;

/// A primitive keeping "real" state in a map, counting calls.
struct Mem {
    t: WorkloadType,
    updatable: bool,
    live: Mutex<BTreeMap<String, serde_json::Value>>,
    calls: Mutex<Vec<String>>,
    /// Workload id → cumulative traffic counter (`consumption`).
    traffic: Mutex<BTreeMap<String, u64>>,
    /// Something every workload needs is missing: provisioning fails.
    down: std::sync::atomic::AtomicBool,
}

impl Mem {
    fn new(t: WorkloadType, updatable: bool) -> Arc<Mem> {
        Arc::new(Mem {
            t,
            updatable,
            live: Mutex::default(),
            calls: Mutex::default(),
            traffic: Mutex::default(),
            down: Default::default(),
        })
    }
    fn calls(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with(what))
            .count()
    }
}

#[async_trait]
impl Primitive for Mem {
    fn workload_type(&self) -> WorkloadType {
        self.t.clone()
    }
    fn supports_update(&self) -> bool {
        self.updatable
    }
    async fn provision(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("provision {}", ctx.workload_id));
        if wl.data.get("size") == Some(&json!(13)) {
            return Err(PrimitiveError::Failed("unlucky size".into()));
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PrimitiveError::Failed("dependency not ready".into()));
        }
        self.live
            .lock()
            .unwrap()
            .insert(ctx.workload_id.clone(), wl.data.clone());
        Ok(json!({"id": ctx.workload_id}))
    }
    async fn update(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("update {}", ctx.workload_id));
        let mut live = self.live.lock().unwrap();
        let old = live
            .get(&ctx.workload_id)
            .and_then(|d| d["size"].as_u64())
            .unwrap_or(0);
        if wl.data["size"].as_u64().unwrap_or(0) < old {
            return Err(PrimitiveError::Unchanged("cannot shrink".into()));
        }
        live.insert(ctx.workload_id.clone(), wl.data.clone());
        Ok(json!({"id": ctx.workload_id}))
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("deprovision {}", ctx.workload_id));
        self.live.lock().unwrap().remove(&ctx.workload_id);
        Ok(())
    }
    async fn pause(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("pause {}", ctx.workload_id));
        Ok(())
    }
    async fn resume(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("resume {}", ctx.workload_id));
        Ok(())
    }
    async fn consumption(
        &self,
        ctx: &WorkloadCtx,
        _wl: &Workload,
    ) -> Result<Option<u64>, PrimitiveError> {
        Ok(self.traffic.lock().unwrap().get(&ctx.workload_id).copied())
    }
}

struct Pools;
#[async_trait]
impl PoolReporter for Pools {
    async fn pools(&self) -> Vec<PoolUsage> {
        vec![PoolUsage {
            name: "ssd0".into(),
            kind: PoolKind::Ssd,
            size: 100 * GIB,
            used: 0,
        }]
    }
}

struct T {
    engine: Engine,
    chain: Arc<FakeChain>,
    vol: Arc<Mem>,
    ip: Arc<Mem>,
    user: KeyPair,
    _dir: tempfile::TempDir,
}

const NODE: u32 = 7;
const TWIN: u32 = 3;

fn setup_at(dir: tempfile::TempDir) -> T {
    let chain = Arc::new(FakeChain::default());
    let user = KeyPair::from_seed(KeyType::Ed25519, [3u8; 32]);
    chain.put_key(TWIN, user.public());
    let vol = Mem::new(WorkloadType::Volume, true);
    let ip = Mem::new(WorkloadType::Ip, false);
    let mut reg = PrimitiveRegistry::new();
    reg.register(vol.clone());
    reg.register(ip.clone());
    reg.set_pool_reporter(Arc::new(Pools));
    let store = Store::open(&dir.path().join("engine.redb")).unwrap();
    let engine = Engine::new(
        store,
        chain.clone(),
        reg,
        NodeSecret::new([1u8; 32]),
        EngineConfig {
            host: HostCapacity {
                memory: 16 * GIB,
                cores: 4,
            },
        },
        Arc::new(Metrics::default()),
    )
    .unwrap();
    engine.set_node_id(NODE);
    T {
        engine,
        chain,
        vol,
        ip,
        user,
        _dir: dir,
    }
}

fn setup() -> T {
    setup_at(tempfile::tempdir().unwrap())
}

fn vol(name: &str, size: u64, version: u32) -> Workload {
    Workload {
        version,
        name: name.into(),
        workload_type: WorkloadType::Volume,
        data: json!({"size": size}),
        ..Workload::default()
    }
}

fn ip(name: &str) -> Workload {
    Workload {
        name: name.into(),
        workload_type: WorkloadType::Ip,
        data: json!({"v4": true, "v6": false}),
        ..Workload::default()
    }
}

impl T {
    fn dl(&self, contract: u64, version: u32, workloads: Vec<Workload>) -> Deployment {
        let mut d = Deployment {
            version,
            twin_id: TWIN,
            contract_id: contract,
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
        d.sign(TWIN, &self.user).unwrap();
        d
    }

    fn contract(&self, d: &Deployment, node: u32) {
        self.chain.put_contract(ContractInfo {
            id: d.contract_id,
            twin_id: d.twin_id,
            node_id: Some(node),
            deployment_hash: d.challenge_hash_hex().unwrap(),
            status: ContractStatus::Created,
        });
    }

    fn states(&self, contract: u64) -> Vec<(String, ResultState, String)> {
        let mut v: Vec<_> = self
            .engine
            .get(TWIN, contract)
            .unwrap()
            .workloads
            .into_iter()
            .map(|w| (w.name, w.result.state, w.result.error))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[tokio::test]
async fn deploy_goes_ok_and_logs_init_then_ok() {
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0), ip("p")]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    assert_eq!(t.states(1)[0].1, ResultState::Init);
    assert_eq!(t.engine.drain().await, 1);
    assert_eq!(
        t.states(1),
        vec![
            ("a".into(), ResultState::Ok, String::new()),
            ("p".into(), ResultState::Ok, String::new())
        ]
    );
    let got = t.engine.get(TWIN, 1).unwrap();
    assert_eq!(got.get("a").unwrap().result.data, json!({"id": "3-1-a"}));
    let ch = t.engine.changes(TWIN, 1).unwrap();
    assert_eq!(ch.len(), 4, "{ch:?}");
    assert_eq!(t.engine.list(TWIN).unwrap().len(), 1);
    assert!(t.engine.list(TWIN + 1).unwrap().is_empty());
    // used resources reported after the job
    assert_eq!(t.chain.reports.lock().unwrap().last().unwrap().1.sru, GIB);
}

#[tokio::test]
async fn synchronous_checks_give_upstream_errors() {
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    let e = t.engine.deploy(TWIN + 1, d.clone()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "twin id mismatch (deployment: 3, message: 4)"
    );

    let mut bad = d.clone();
    bad.signature_requirement.signatures[0].signature = hex::encode([0u8; 64]);
    let e = t.engine.deploy(TWIN, bad).await.unwrap_err();
    assert_eq!(e.to_string(), "failed to verify signature");

    let e = t
        .engine
        .deploy(TWIN, t.dl(1, 1, vec![vol("a", GIB, 0)]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected version to be 0 on deployment creation"
    );

    let e = t
        .engine
        .deploy(TWIN, t.dl(1, 0, vec![vol("a", GIB, 1)]))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot be higher than deployment version"),
        "{e}"
    );

    let zdb = Workload {
        name: "z".into(),
        workload_type: WorkloadType::Zdb,
        data: json!({"size": GIB, "mode": "user", "password": "", "public": false}),
        ..Workload::default()
    };
    let e = t
        .engine
        .deploy(TWIN, t.dl(1, 0, vec![zdb]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "workload type 'zdb' is not supported on this node"
    );

    t.engine.deploy(TWIN, d.clone()).await.unwrap();
    let e = t.engine.deploy(TWIN, d).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "deployment with contract id 1 already exists"
    );
    assert!(matches!(
        t.engine.get(TWIN, 2),
        Err(EngineError::Store(StoreError::NotFound { .. }))
    ));
}

#[tokio::test]
async fn ledger_checks_mark_workloads_error() {
    let t = setup();
    // hash mismatch: contract pins another deployment
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    let other = t.dl(1, 0, vec![vol("a", 2 * GIB, 0)]);
    t.contract(&other, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    // contract of another node
    let d2 = t.dl(2, 0, vec![vol("b", GIB, 0)]);
    t.contract(&d2, NODE + 1);
    t.engine.deploy(TWIN, d2).await.unwrap();
    // no contract at all
    t.engine
        .deploy(TWIN, t.dl(3, 0, vec![vol("c", GIB, 0)]))
        .await
        .unwrap();
    t.engine.drain().await;
    assert_eq!(
        t.states(1)[0].2,
        "contract hash does not match deployment hash"
    );
    assert_eq!(t.states(2)[0].2, "invalid node address in contract");
    assert!(
        t.states(3)[0]
            .2
            .starts_with("failed to get deployment contract")
    );
    assert_eq!(t.states(1)[0].1, ResultState::Error);
    assert_eq!(t.vol.calls("provision"), 0);
}

#[tokio::test]
async fn update_adds_updates_removes_and_refuses_non_updatable() {
    let t = setup();
    let d0 = t.dl(1, 0, vec![vol("a", GIB, 0), vol("b", GIB, 0), ip("p")]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;

    // ip cannot be updated
    let bad = t.dl(
        1,
        1,
        vec![
            vol("a", GIB, 0),
            vol("b", GIB, 0),
            Workload {
                version: 1,
                data: json!({"v4": true, "v6": true}),
                ..ip("p")
            },
        ],
    );
    let e = t.engine.update(TWIN, bad).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "upgrade validation error: workload 'ip' does not support upgrade"
    );
    // wrong version
    let e = t.engine.update(TWIN, t.dl(1, 2, vec![])).await.unwrap_err();
    assert_eq!(e.to_string(), "expecting deployment version 1, got 2");

    // a grows, b removed, c added, p untouched
    let d1 = t.dl(1, 1, vec![vol("a", 2 * GIB, 1), vol("c", GIB, 1), ip("p")]);
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    t.engine.drain().await;
    let s = t.states(1);
    assert_eq!(
        s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["a", "c", "p"]
    );
    assert!(s.iter().all(|x| x.1 == ResultState::Ok), "{s:?}");
    let got = t.engine.get(TWIN, 1).unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.get("a").unwrap().data["size"], json!(2 * GIB));
    assert!(!t.vol.live.lock().unwrap().contains_key("3-1-b"));
    assert_eq!(t.ip.calls("provision"), 1);

    // shrink → unchanged: logged, previous definition stays
    let d2 = t.dl(1, 2, vec![vol("a", GIB, 2), vol("c", GIB, 1), ip("p")]);
    t.contract(&d2, NODE);
    t.engine.update(TWIN, d2).await.unwrap();
    t.engine.drain().await;
    let got = t.engine.get(TWIN, 1).unwrap();
    assert_eq!(got.get("a").unwrap().data["size"], json!(2 * GIB));
    let last = t.engine.changes(TWIN, 1).unwrap().pop().unwrap();
    assert_eq!(
        (last.result.state, last.result.error.as_str()),
        (ResultState::Unchanged, "cannot shrink")
    );
}

#[tokio::test]
async fn retried_jobs_do_not_duplicate() {
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    let (_, job) = t.engine.store().peek_job().unwrap().unwrap();
    // process without ack = a crash after the work, before the ack
    t.engine.process(&job).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.engine.changes(TWIN, 1).unwrap().len(), 2);
    assert_eq!(t.vol.live.lock().unwrap().len(), 1);
    // reconciliation after restart is idempotent too
    assert_eq!(t.engine.reconcile_all().unwrap(), 1);
    t.engine.drain().await;
    assert_eq!(t.engine.changes(TWIN, 1).unwrap().len(), 2);
    assert_eq!(t.vol.calls("provision"), 3);
}

#[tokio::test]
async fn cancel_pause_resume_and_sync() {
    let t = setup();
    for c in [1, 2] {
        let d = t.dl(c, 0, vec![vol("a", GIB, 0)]);
        t.contract(&d, NODE);
        t.engine.deploy(TWIN, d).await.unwrap();
    }
    t.engine.drain().await;
    // A pause runs only when the verified contract is in its grace period.
    t.engine.enqueue(TWIN, 1, JobOp::Pause).unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Ok);
    t.chain.set_status(1, ContractStatus::GracePeriod);
    t.engine.enqueue(TWIN, 1, JobOp::Pause).unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Paused);
    // sync: contract 1 is created on the ledger → resume; contract 2 gone → deprovision
    t.chain.set_status(1, ContractStatus::Created);
    t.chain.set_status(2, ContractStatus::Deleted);
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Ok);
    assert!(t.engine.get(TWIN, 2).is_err());
    assert!(!t.vol.live.lock().unwrap().contains_key("3-2-a"));
    // grace period seen by sync → pause
    t.chain.set_status(1, ContractStatus::GracePeriod);
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Paused);
    assert_eq!(t.vol.calls("pause"), 2);
    assert_eq!(t.vol.calls("resume"), 1);
}

#[tokio::test]
async fn a_workload_that_was_ok_is_retried_until_it_is_ok_again() {
    use std::sync::atomic::Ordering;
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0), vol("never", 13, 0)]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Ok);
    assert_eq!(t.states(1)[1].1, ResultState::Error);
    // A reboot where what `a` needs is not there yet: `a` fails.
    t.vol.down.store(true, Ordering::SeqCst);
    t.engine.reconcile_all().unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Error);
    let (a_tries, never_tries) = (
        t.vol.calls("provision 3-1-a"),
        t.vol.calls("provision 3-1-never"),
    );
    // Each sync tries `a` again; the workload that never was ok is left alone.
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.vol.calls("provision 3-1-a"), a_tries + 1);
    assert_eq!(t.states(1)[0].1, ResultState::Error);
    t.vol.down.store(false, Ordering::SeqCst);
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0], ("a".into(), ResultState::Ok, String::new()));
    assert_eq!(t.vol.calls("provision 3-1-never"), never_tries);
    assert_eq!(t.states(1)[1].1, ResultState::Error);
    // Ok again: nothing more to retry.
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.vol.calls("provision 3-1-a"), a_tries + 2);
}

#[tokio::test]
async fn capacity_gate_refuses_and_primitive_errors_are_results() {
    let t = setup();
    let d = t.dl(
        1,
        0,
        vec![
            vol("big", 96 * GIB, 0),
            vol("ok", GIB, 0),
            vol("bad", 13, 0),
        ],
    );
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    t.engine.drain().await;
    let s = t.states(1);
    assert!(
        s[1].2
            .starts_with("cannot fulfil required ssd storage size"),
        "{s:?}"
    );
    assert_eq!(
        s[0],
        ("bad".into(), ResultState::Error, "unlucky size".into())
    );
    assert_eq!(s[2].1, ResultState::Ok);
    // error workloads are not retried on reconciliation
    t.engine.reconcile_all().unwrap();
    t.engine.drain().await;
    assert_eq!(t.vol.calls("provision 3-1-bad"), 1);
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let t = setup_at(dir);
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    let T { engine, _dir, .. } = t;
    drop(engine);
    let store = Store::open(&path.join("engine.redb")).unwrap();
    // the job queued before the "crash" is still there
    assert!(store.peek_job().unwrap().is_some());
    assert_eq!(
        store
            .get(TWIN, 1)
            .unwrap()
            .unwrap()
            .deployment
            .workloads
            .len(),
        1
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_workloads_by_type_and_state() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    t.engine.drain().await;
    assert!(
        crate::metrics::bind("0.0.0.0:0".parse().unwrap())
            .await
            .is_err()
    );
    let l = crate::metrics::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::metrics::serve(l, t.engine.clone(), async move {
        let _ = rx.await;
    }));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(
        body.contains("zos_node_workloads{type=\"volume\",state=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("zos_node_job_latency_seconds_count{op=\"provision\"}"),
        "{body}"
    );
    let _ = tx.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn retried_update_job_is_a_no_op() {
    let t = setup();
    let d0 = t.dl(1, 0, vec![vol("a", GIB, 0), vol("b", GIB, 0)]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;
    let d1 = t.dl(1, 1, vec![vol("a", 2 * GIB, 1), vol("c", GIB, 1)]);
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    let (_, job) = t.engine.store().peek_job().unwrap().unwrap();
    t.engine.process(&job).await.unwrap(); // crash before the ack…
    let log = t.engine.changes(TWIN, 1).unwrap().len();
    t.engine.drain().await; // …the job runs again
    assert_eq!(t.engine.changes(TWIN, 1).unwrap().len(), log);
    assert_eq!(t.vol.calls("update"), 1);
    assert_eq!(t.vol.calls("deprovision"), 1);
    assert_eq!(t.vol.calls("provision 3-1-c"), 1);
    let names: Vec<_> = t.states(1).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        names,
        [("a".into(), ResultState::Ok), ("c".into(), ResultState::Ok)]
    );
}

#[tokio::test]
async fn update_of_a_failed_workload_provisions_it_again() {
    let t = setup();
    // Size 13 makes the primitive fail: the workload ends in error, holding nothing.
    let d0 = t.dl(1, 0, vec![vol("a", 13, 0), ip("p")]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Error);
    // A corrected size: provisioned afresh (the primitive's update would not find it), and
    // the non-updatable ip keeps its version so it is not touched.
    let d1 = t.dl(1, 1, vec![vol("a", GIB, 1), ip("p")]);
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    t.engine.drain().await;
    let s = t.states(1);
    assert!(s.iter().all(|x| x.1 == ResultState::Ok), "{s:?}");
    assert_eq!(t.vol.calls("update"), 0);
    assert_eq!(t.vol.calls("provision"), 2);
    assert!(t.vol.live.lock().unwrap().contains_key("3-1-a"));

    // A failed non-updatable workload may be corrected too: it is provisioned, not updated.
    let t = setup();
    let bad_ip = Workload {
        data: json!({"v4": true, "v6": false, "size": 13}),
        ..ip("p")
    };
    let d0 = t.dl(2, 0, vec![bad_ip]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(2)[0].1, ResultState::Error);
    let d1 = t.dl(
        2,
        1,
        vec![Workload {
            version: 1,
            data: json!({"v4": true, "v6": true}),
            ..ip("p")
        }],
    );
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(2)[0].1, ResultState::Ok);
    assert_eq!(t.ip.calls("provision"), 2);
}

#[tokio::test]
async fn wait_answers_when_the_version_is_applied() {
    let t = setup();
    let d0 = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    // No worker runs: the job stays queued, so the wait times out unsettled.
    let (d, settled) = t
        .engine
        .wait(TWIN, 1, 0, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(!settled);
    assert_eq!(d.workloads[0].result.state, ResultState::Init);
    // With the worker running, a waiter started before the job is answered once it is done.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let waiter = {
        let e = t.engine.clone();
        tokio::spawn(async move { e.wait(TWIN, 1, 0, Duration::from_secs(20)).await })
    };
    let worker = {
        let e = t.engine.clone();
        tokio::spawn(async move {
            e.run(async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let (d, settled) = waiter.await.unwrap().unwrap();
    assert!(settled);
    assert_eq!(d.workloads[0].result.state, ResultState::Ok);
    // Settled versions answer at once; an older version is settled by a newer one.
    let (_, settled) = t
        .engine
        .wait(TWIN, 1, 0, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(settled);
    let _ = stop_tx.send(());
    worker.await.unwrap();
    // An unknown deployment is an error, not a wait.
    let e = t
        .engine
        .wait(TWIN, 9, 0, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "deployment not found");
}

#[tokio::test]
async fn another_twins_contract_is_refused_before_anything_is_stored() {
    let t = setup();
    // Contract 5 belongs to twin 99 (on this node, with this deployment's hash).
    let d = t.dl(5, 0, vec![vol("a", GIB, 0)]);
    t.chain.put_contract(ContractInfo {
        twin_id: 99,
        ..ContractInfo {
            id: 5,
            twin_id: TWIN,
            node_id: Some(NODE),
            deployment_hash: d.challenge_hash_hex().unwrap(),
            status: ContractStatus::Created,
        }
    });
    let e = t.engine.deploy(TWIN, d).await.unwrap_err();
    assert!(matches!(e, EngineError::Contract(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "contract 5 belongs to twin 99, not to twin 3"
    );
    assert!(t.engine.store().get(TWIN, 5).unwrap().is_none());
    assert_eq!(t.engine.store().job_count().unwrap(), 0);
    assert_eq!(t.engine.drain().await, 0);
    assert_eq!(t.vol.calls("provision"), 0);
}

#[tokio::test]
async fn an_update_the_contract_does_not_carry_changes_nothing() {
    let t = setup();
    let d0 = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;
    // The contract still pins version 0: the new header is not stored, no job is queued.
    let d1 = t.dl(1, 1, vec![vol("a", 2 * GIB, 1)]);
    let e = t.engine.update(TWIN, d1.clone()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "contract hash does not match deployment hash"
    );
    let got = t.engine.get(TWIN, 1).unwrap();
    assert_eq!(
        (got.version, got.get("a").unwrap().data["size"].clone()),
        (0, json!(GIB))
    );
    assert_eq!(t.engine.store().job_count().unwrap(), 0);
    // Another twin's contract cannot carry an update either.
    t.chain.put_contract(ContractInfo {
        id: 1,
        twin_id: 99,
        node_id: Some(NODE),
        deployment_hash: d1.challenge_hash_hex().unwrap(),
        status: ContractStatus::Created,
    });
    let e = t.engine.update(TWIN, d1.clone()).await.unwrap_err();
    assert!(e.to_string().contains("belongs to twin 99"), "{e}");
    assert_eq!(t.engine.get(TWIN, 1).unwrap().version, 0);
    // Once the contract carries it, it applies.
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.engine.get(TWIN, 1).unwrap().version, 1);
}

#[tokio::test]
async fn unverified_lies_neither_deprovision_nor_pause() {
    let t = setup();
    let d = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d.clone()).await.unwrap();
    t.engine.drain().await;
    // A man in the middle: the contract "deleted", absent from the node's list.
    t.chain.lies.lock().unwrap().insert(1, None);
    t.engine.sync().await.unwrap();
    // … and injected events.
    let state = crate::api::NodeState::default();
    for ev in [
        zos_ledger::Event::NodeContractCanceled {
            contract_id: 1,
            node_id: NODE,
            twin_id: TWIN,
        },
        zos_ledger::Event::ContractGracePeriodStarted {
            contract_id: 1,
            node_id: NODE,
            twin_id: TWIN,
        },
    ] {
        let rec = zos_ledger::EventRecord {
            height: 9,
            index: 0,
            event: ev,
        };
        assert!(crate::watcher::apply(&t.engine, &state, &rec).unwrap());
    }
    assert!(t.engine.drain().await >= 3, "the lies queued jobs");
    assert_eq!(t.states(1)[0].1, ResultState::Ok);
    assert_eq!((t.vol.calls("deprovision"), t.vol.calls("pause")), (0, 0));
    assert!(t.vol.live.lock().unwrap().contains_key("3-1-a"));
    // A restart whose unverified read says "gone" keeps serving too.
    t.engine.reconcile_all().unwrap();
    t.engine.drain().await;
    assert_eq!(t.vol.calls("deprovision"), 0);
    // The truth, verified, still works: a real cancellation deprovisions.
    t.chain.set_status(1, ContractStatus::Deleted);
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.vol.calls("deprovision"), 1);
    assert!(t.engine.get(TWIN, 1).is_err());
}

#[tokio::test]
async fn both_deployment_hash_schemes_are_accepted_and_must_match_the_declared_one() {
    use zos_types::deployment::HASH_V2;
    let t = setup();
    // Upstream MD5 (hash_version absent).
    let md5 = t.dl(1, 0, vec![vol("a", GIB, 0)]);
    assert_eq!(md5.challenge_hash_hex().unwrap().len(), 32);
    t.contract(&md5, NODE);
    t.engine.deploy(TWIN, md5).await.unwrap();
    // v2: SHA-256 over length-prefixed fields, signed as such.
    let mut v2 = t.dl(2, 0, vec![vol("b", GIB, 0)]);
    v2.hash_version = HASH_V2;
    v2.signature_requirement.signatures.clear();
    v2.sign(TWIN, &t.user).unwrap();
    assert_eq!(v2.challenge_hash_hex().unwrap().len(), 64);
    t.contract(&v2, NODE);
    t.engine.deploy(TWIN, v2).await.unwrap();
    // A deployment declaring v2 whose contract holds the MD5 of the same fields is refused.
    let mut mixed = t.dl(3, 0, vec![vol("c", GIB, 0)]);
    let as_md5 = mixed.clone();
    mixed.hash_version = HASH_V2;
    mixed.signature_requirement.signatures.clear();
    mixed.sign(TWIN, &t.user).unwrap();
    t.contract(&as_md5, NODE);
    t.engine.deploy(TWIN, mixed).await.unwrap();
    t.engine.drain().await;
    assert_eq!(t.states(1)[0].1, ResultState::Ok);
    assert_eq!(t.states(2)[0].1, ResultState::Ok);
    assert_eq!(
        t.states(3)[0].2,
        "contract hash does not match deployment hash"
    );
}

#[tokio::test]
async fn network_consumption_is_reported_per_contract_from_the_primitives_counters() {
    let t = setup();
    let d1 = t.dl(1, 0, vec![vol("a", GIB, 0), ip("p")]);
    let d2 = t.dl(2, 0, vec![ip("q"), ip("r")]);
    for d in [&d1, &d2] {
        t.contract(d, NODE);
        t.engine.deploy(TWIN, d.clone()).await.unwrap();
    }
    t.engine.drain().await;
    let set = |w: &str, v: u64| t.ip.traffic.lock().unwrap().insert(w.to_string(), v);
    set("3-1-p", 1_000);
    set("3-2-q", 10);
    set("3-2-r", 20);
    let mut meter = nru::NruMeter::default();
    assert!(
        t.engine.report_consumption(&mut meter).await.is_empty(),
        "baseline"
    );
    set("3-1-p", 1_500);
    set("3-2-q", 110);
    set("3-2-r", 5); // re-created: counts 5
    let sent = t.engine.report_consumption(&mut meter).await;
    let got: Vec<(u64, u64)> = sent.iter().map(|r| (r.contract_id, r.nru)).collect();
    assert_eq!(got, vec![(1, 500), (2, 105)]);
    assert_eq!(*t.chain.nru.lock().unwrap(), sent);
    // The volume primitive reports no counter; nothing moves, nothing is sent.
    assert!(t.engine.report_consumption(&mut meter).await.is_empty());
    assert_eq!(t.chain.nru.lock().unwrap().len(), 2);
}

/// Every result change is kept with a stable code, and stays readable (by the owner only)
/// after the contract is canceled and the deployment removed: the evidence of a rolled-back
/// deployment.
#[tokio::test]
async fn history_keeps_codes_and_outlives_the_deployment() {
    use zos_types::ErrorCode;
    let t = setup();
    let d = t.dl(
        1,
        0,
        vec![
            vol("big", 96 * GIB, 0),
            vol("ok", GIB, 0),
            vol("bad", 13, 0),
        ],
    );
    t.contract(&d, NODE);
    t.engine.deploy(TWIN, d).await.unwrap();
    t.engine.drain().await;
    let h = t.engine.history(TWIN, 1).unwrap();
    let last = |name: &str| h.iter().rev().find(|e| e.name == name).cloned().unwrap();
    assert_eq!(h.len(), 6, "{h:?}"); // 3 init + 3 results
    assert_eq!(
        (last("big").state, last("big").code),
        (ResultState::Error, Some(ErrorCode::Capacity))
    );
    assert_eq!(
        (last("bad").code, last("bad").message.as_str()),
        (Some(ErrorCode::Backend), "unlucky size")
    );
    assert_eq!((last("ok").state, last("ok").code), (ResultState::Ok, None));
    assert!(h.iter().all(|e| e.deployment_version == 0));
    // the client rolls back: the contract is canceled, the node removes everything
    t.chain.set_status(1, ContractStatus::Deleted);
    t.engine.sync().await.unwrap();
    t.engine.drain().await;
    assert!(t.engine.get(TWIN, 1).is_err());
    let after = t.engine.history(TWIN, 1).unwrap();
    assert_eq!(&after[..6], &h[..]);
    assert!(
        after[6..]
            .iter()
            .any(|e| e.name == "ok" && e.state == ResultState::Deleted),
        "{after:?}"
    );
    // another twin sees nothing
    assert!(t.engine.history(TWIN + 1, 1).is_err());
}

/// A failed update keeps its evidence: a refused shrink (`unchanged`, `invalid_input`), a
/// grow past the capacity gate (`unchanged`, `capacity`) and a new workload that fails
/// (`error`, `backend`), each with the deployment version it belongs to.
#[tokio::test]
async fn failed_updates_are_in_the_history_with_codes_and_versions() {
    use zos_types::ErrorCode;
    let t = setup();
    let d0 = t.dl(1, 0, vec![vol("a", 2 * GIB, 0)]);
    t.contract(&d0, NODE);
    t.engine.deploy(TWIN, d0).await.unwrap();
    t.engine.drain().await;
    let d1 = t.dl(1, 1, vec![vol("a", GIB, 1)]);
    t.contract(&d1, NODE);
    t.engine.update(TWIN, d1).await.unwrap();
    t.engine.drain().await;
    let d2 = t.dl(1, 2, vec![vol("a", 96 * GIB, 2), vol("bad", 13, 2)]);
    t.contract(&d2, NODE);
    t.engine.update(TWIN, d2).await.unwrap();
    t.engine.drain().await;
    let h = t.engine.history(TWIN, 1).unwrap();
    let got: Vec<(String, u32, ResultState, Option<ErrorCode>)> = h
        .iter()
        .map(|e| (e.name.clone(), e.deployment_version, e.state, e.code))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), 0, ResultState::Init, None),
            ("a".into(), 0, ResultState::Ok, None),
            (
                "a".into(),
                1,
                ResultState::Unchanged,
                Some(ErrorCode::InvalidInput)
            ),
            (
                "a".into(),
                2,
                ResultState::Unchanged,
                Some(ErrorCode::Capacity)
            ),
            (
                "bad".into(),
                2,
                ResultState::Error,
                Some(ErrorCode::Backend)
            ),
        ],
        "{h:#?}"
    );
    assert_eq!(h[2].message, "cannot shrink");
    assert_eq!(h[4].message, "unlucky size");
    // the running definition is still the first one
    assert_eq!(
        t.engine.get(TWIN, 1).unwrap().get("a").unwrap().data["size"],
        json!(2 * GIB)
    );
}
