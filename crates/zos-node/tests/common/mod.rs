//! End-to-end harness: a real dev ledger and relay on loopback port 0, funded twins, a farm,
//! and file-backed test primitives (test doubles live only here).
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use zos_ledger::{Call, Event, LedgerClient, LedgerConfig, LedgerServer};
use zos_node::model::{Deployment, Workload, WorkloadType};
use zos_node::primitives::{PoolKind, PoolReporter, PoolUsage};
use zos_node::{NodeConfig, Primitive, PrimitiveError, PrimitiveRegistry, WorkloadCtx};
use zos_rmb::LedgerDirectory;
use zos_rmb::{Peer, PeerConfig, Relay, RelayConfig, RmbError, e2e_public_key};
use zos_types::crypto::{KeyPair, KeyType};
use zos_types::{SignatureRequest, SignatureRequirement};

pub const GIB: u64 = 1 << 30;
pub const RELAY_DOMAIN: &str = "local";
pub const T: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Grid {
    pub dir: tempfile::TempDir,
    pub ledger_url: String,
    pub relay_url: String,
    pub client: LedgerClient,
    pub farm_id: u32,
    pub farmer: KeyPair,
    stops: Vec<oneshot::Sender<()>>,
}

impl Grid {
    pub async fn start() -> Grid {
        let dir = tempfile::tempdir().unwrap();
        let mut stops = Vec::new();
        let ledger = LedgerServer::bind(LedgerConfig::dev(dir.path().join("ledger")))
            .await
            .unwrap();
        let ledger_url = format!("http://{}", ledger.local_addr());
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tokio::spawn(async move {
            ledger
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let client = LedgerClient::new(&ledger_url).unwrap();
        let relay = Relay::bind(
            RelayConfig::new("127.0.0.1:0".parse().unwrap(), RELAY_DOMAIN),
            Arc::new(LedgerDirectory::new(client.clone())),
        )
        .await
        .unwrap();
        let relay_url = format!("ws://{}", relay.local_addr());
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let farmer = KeyPair::from_seed(KeyType::Ed25519, [200; 32]);
        let mut g = Grid {
            dir,
            ledger_url,
            relay_url,
            client,
            farm_id: 0,
            farmer: farmer.clone(),
            stops,
        };
        g.twin(&farmer).await;
        let r = g
            .client
            .send(
                &farmer,
                Call::CreateFarm {
                    name: "farm1".into(),
                },
            )
            .await
            .unwrap();
        g.farm_id = r
            .events
            .iter()
            .find_map(|e| match &e.event {
                Event::FarmStored { farm } => Some(farm.id),
                _ => None,
            })
            .unwrap();
        g
    }

    /// Funds `key` and creates its twin (relay "local", e2e key); returns the twin id.
    pub async fn twin(&self, key: &KeyPair) -> u32 {
        self.client
            .dev_fund(&key.public(), 1_000_000_000_000)
            .await
            .unwrap();
        let e2e = hex::encode(e2e_public_key(key.seed()));
        self.client
            .send(
                key,
                Call::CreateTwin {
                    relays: vec![RELAY_DOMAIN.into()],
                    e2e_key: Some(e2e),
                },
            )
            .await
            .unwrap();
        self.client
            .twin_by_account(&key.public())
            .await
            .unwrap()
            .unwrap()
            .id
    }

    pub fn node_config(&self, data: &Path) -> NodeConfig {
        let mut cfg = NodeConfig::new(
            &self.ledger_url,
            &self.relay_url,
            self.farm_id,
            data.to_path_buf(),
        );
        cfg.relay_domains = vec![RELAY_DOMAIN.into()];
        cfg.sync_interval = Duration::from_secs(3600);
        cfg
    }

    /// Waits for node `id` to be registered; returns its twin.
    pub async fn node_twin(&self, id: u32) -> u32 {
        wait_for("node registration", T, || async {
            self.client.node(id).await.ok().flatten().map(|n| n.twin_id)
        })
        .await
    }

    pub async fn user(&self, seed: u8) -> User {
        let key = KeyPair::from_seed(KeyType::Ed25519, [seed; 32]);
        let twin = self.twin(&key).await;
        let peer = Peer::connect(
            PeerConfig {
                relays: vec![self.relay_url.clone()],
                twin_id: twin,
                key: key.clone(),
                session: None,
            },
            Arc::new(LedgerDirectory::new(self.client.clone())),
        )
        .await
        .unwrap();
        User {
            key,
            twin,
            peer,
            client: self.client.clone(),
        }
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

pub struct User {
    pub key: KeyPair,
    pub twin: u32,
    pub peer: Peer,
    pub client: LedgerClient,
}

pub fn volume(name: &str, size: u64, version: u32) -> Workload {
    Workload {
        version,
        name: name.into(),
        workload_type: WorkloadType::Volume,
        data: json!({ "size": size }),
        ..Workload::default()
    }
}

pub fn ip(name: &str, v6: bool, version: u32) -> Workload {
    Workload {
        version,
        name: name.into(),
        workload_type: WorkloadType::Ip,
        data: json!({ "v4": true, "v6": v6 }),
        ..Workload::default()
    }
}

impl User {
    /// A signed deployment of this user (contract id 0 until `contract` sets it).
    pub fn deployment(&self, version: u32, metadata: &str, workloads: Vec<Workload>) -> Deployment {
        let mut d = Deployment {
            version,
            twin_id: self.twin,
            metadata: metadata.into(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: self.twin,
                    required: false,
                    weight: 1,
                }],
                weight_required: 1,
                ..Default::default()
            },
            workloads,
            ..Deployment::default()
        };
        d.sign(self.twin, &self.key).unwrap();
        d
    }

    /// Creates the node contract pinning `d`'s hash and sets `d.contract_id`.
    pub async fn contract(&self, node_id: u32, d: &mut Deployment) -> u64 {
        let hash = d.challenge_hash_hex().unwrap();
        let r = self
            .client
            .send(
                &self.key,
                Call::CreateNodeContract {
                    node_id,
                    deployment_hash: hash,
                    deployment_data: String::new(),
                    public_ips: 0,
                },
            )
            .await
            .unwrap();
        let id = r
            .events
            .iter()
            .find_map(|e| match &e.event {
                Event::NodeContractCreated { contract_id, .. } => Some(*contract_id),
                _ => None,
            })
            .unwrap();
        d.contract_id = id;
        id
    }

    pub async fn update_contract(&self, d: &Deployment) {
        self.client
            .send(
                &self.key,
                Call::UpdateNodeContract {
                    contract_id: d.contract_id,
                    deployment_hash: d.challenge_hash_hex().unwrap(),
                    deployment_data: String::new(),
                },
            )
            .await
            .unwrap();
    }

    pub async fn call(
        &self,
        node_twin: u32,
        cmd: &str,
        payload: &Value,
    ) -> Result<Value, RmbError> {
        self.peer.call(node_twin, cmd, payload, T).await
    }

    /// Signs `d` and sends it to the node as a new deployment (acknowledged, not yet applied).
    pub async fn send_deploy(&self, node_twin: u32, d: &mut Deployment) {
        self.send(node_twin, "zos.deployment.deploy", d).await
    }

    /// Signs `d` and sends it to the node as an update of its contract.
    pub async fn send_update(&self, node_twin: u32, d: &mut Deployment) {
        self.send(node_twin, "zos.deployment.update", d).await
    }

    async fn send(&self, node_twin: u32, cmd: &str, d: &mut Deployment) {
        d.sign(self.twin, &self.key).unwrap();
        self.call(node_twin, cmd, &serde_json::to_value(&*d).unwrap())
            .await
            .unwrap();
    }

    /// The remote error message of a call that must fail.
    pub async fn call_err(&self, node_twin: u32, cmd: &str, payload: &Value) -> String {
        match self.call(node_twin, cmd, payload).await {
            Err(RmbError::Remote { message, .. }) => message,
            other => panic!("{cmd}: expected a remote error, got {other:?}"),
        }
    }

    pub async fn get(&self, node_twin: u32, contract: u64) -> Result<Deployment, RmbError> {
        let v = self
            .call(
                node_twin,
                "zos.deployment.get",
                &json!({ "contract_id": contract }),
            )
            .await?;
        Ok(serde_json::from_value(v).unwrap())
    }

    /// Waits until every workload of `contract` is in `state` (and the version is `version`).
    pub async fn wait_state(
        &self,
        node_twin: u32,
        contract: u64,
        version: u32,
        state: &str,
    ) -> Deployment {
        wait_for(
            &format!("contract {contract} v{version} all {state}"),
            T,
            || async {
                let d = self.get(node_twin, contract).await.ok()?;
                let all = !d.workloads.is_empty()
                    && d.workloads
                        .iter()
                        .all(|w| serde_json::to_value(w.result.state).unwrap() == json!(state));
                (d.version == version && all).then_some(d)
            },
        )
        .await
    }
}

/// A file-backed primitive: a workload is a file `<root>/<wlid>` holding its data; pause adds
/// `<wlid>.paused`. Each call appends `<op> <wlid>` to `<root>/ops.log`. `delay` slows
/// provisioning down so that a kill can land in the middle of a job.
pub struct FilePrim {
    pub t: WorkloadType,
    pub updatable: bool,
    pub root: PathBuf,
    pub delay: Duration,
}

impl FilePrim {
    fn log(&self, op: &str, wlid: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("ops.log"))
            .unwrap();
        writeln!(f, "{op} {wlid}").unwrap();
    }

    fn write(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let path = self.root.join(&ctx.workload_id);
        let tmp = self.root.join(format!("{}.tmp", ctx.workload_id));
        std::fs::write(&tmp, serde_json::to_vec(&wl.data).unwrap())
            .map_err(PrimitiveError::failed)?;
        std::fs::rename(&tmp, &path).map_err(PrimitiveError::failed)?;
        Ok(json!({ "id": ctx.workload_id }))
    }
}

#[async_trait]
impl Primitive for FilePrim {
    fn workload_type(&self) -> WorkloadType {
        self.t.clone()
    }
    fn supports_update(&self) -> bool {
        self.updatable
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.log("provision", &ctx.workload_id);
        tokio::time::sleep(self.delay).await;
        self.write(ctx, wl)
    }
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.log("update", &ctx.workload_id);
        let old: Value = std::fs::read(self.root.join(&ctx.workload_id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if wl.data["size"].as_u64() < old["size"].as_u64() {
            return Err(PrimitiveError::Unchanged("cannot shrink".into()));
        }
        self.write(ctx, wl)
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.log("deprovision", &ctx.workload_id);
        for p in [
            self.root.join(&ctx.workload_id),
            self.root.join(format!("{}.paused", ctx.workload_id)),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PrimitiveError::failed(e)),
            }
        }
        Ok(())
    }
    async fn pause(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.log("pause", &ctx.workload_id);
        std::fs::write(self.root.join(format!("{}.paused", ctx.workload_id)), b"")
            .map_err(PrimitiveError::failed)
    }
    async fn resume(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.log("resume", &ctx.workload_id);
        match std::fs::remove_file(self.root.join(format!("{}.paused", ctx.workload_id))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PrimitiveError::failed(e)),
        }
    }
}

pub struct FixedPools;

#[async_trait]
impl PoolReporter for FixedPools {
    async fn pools(&self) -> Vec<PoolUsage> {
        vec![PoolUsage {
            name: "ssd0".into(),
            kind: PoolKind::Ssd,
            size: 100 * GIB,
            used: 0,
        }]
    }
}

/// volume and zmount (updatable), ip (not updatable), all file-backed under `root`.
pub fn registry(root: &Path, delay: Duration) -> PrimitiveRegistry {
    std::fs::create_dir_all(root).unwrap();
    let mut r = PrimitiveRegistry::new();
    for (t, updatable) in [
        (WorkloadType::Volume, true),
        (WorkloadType::Zmount, true),
        (WorkloadType::Ip, false),
    ] {
        r.register(Arc::new(FilePrim {
            t,
            updatable,
            root: root.to_path_buf(),
            delay,
        }));
    }
    r.set_pool_reporter(Arc::new(FixedPools));
    r
}

/// A node running in this process until dropped.
pub struct InProcNode {
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl InProcNode {
    pub fn start(cfg: NodeConfig, registry: PrimitiveRegistry) -> InProcNode {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            zos_node::run_node(cfg, registry, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        InProcNode {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

/// Lines of `<root>/ops.log` that start with `prefix`.
pub fn ops(root: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(root.join("ops.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
