//! The provision engine (upstream `pkg/provision/engine.go`).
//!
//! `deploy`/`update` run the synchronous checks (valid; deployment twin equals the RMB source;
//! every type has a primitive here; signatures against ledger keys; version rules; types
//! without update support), then write the deployment (or its new header) **and** its job in
//! one store transaction and return: the caller polls `get`/`changes`. A single worker
//! ([`Engine::run`]) takes jobs in FIFO order, peeks → processes → acks, so a crash retries the
//! job; primitives are idempotent and results identical to the stored ones are not logged
//! again, so a retry neither loses nor duplicates anything.

mod capacity;
mod jobs;
mod lifecycle;
pub mod nru;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

pub use capacity::{HostCapacity, reserved_memory, reserved_ssd};

use crate::chain::{Chain, ChainError};
use crate::metrics::Metrics;
use crate::model::{
    Capacity, Deployment, ResultState, Timestamp, UpgradeOp, Workload, WorkloadResult,
};
use crate::primitives::{NodeSecret, PrimitiveRegistry};
use crate::store::{Job, JobOp, Store, StoreError};

/// Why a deploy/update/query was refused. Display texts are what RMB callers see; where
/// upstream has a text, it is upstream's.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The deployment is not valid (upstream `Valid()` text).
    #[error("{0}")]
    Invalid(String),
    /// The deployment's twin is not the sender.
    #[error("twin id mismatch (deployment: {deployment}, message: {message})")]
    TwinMismatch {
        /// `twin_id` in the deployment.
        deployment: u32,
        /// RMB source twin.
        message: u32,
    },
    /// Signature verification failed (upstream text).
    #[error("{0}")]
    Signature(String),
    /// A new deployment must have version 0.
    #[error("expected version to be 0 on deployment creation")]
    CreateVersion,
    /// An update broke the upgrade rules (upstream `Upgrade` texts).
    #[error("{0}")]
    Upgrade(String),
    /// A workload type this node has no primitive for.
    #[error("workload type '{0}' is not supported on this node")]
    UnsupportedType(String),
    /// An update changes a workload whose type cannot be updated.
    #[error("upgrade validation error: workload '{0}' does not support upgrade")]
    NotUpdatable(String),
    /// The ledger's contract does not allow this deployment (another twin's contract, or an
    /// update the contract does not carry).
    #[error("{0}")]
    Contract(String),
    /// Deletion is only by cancelling the contract.
    #[error("deletion over the api is disabled, please cancel your contract instead")]
    DeleteDisabled,
    /// The ledger could not be asked.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The store refused or failed (`deployment not found`, exists, conflict, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Host memory and cores for the capacity gate.
    pub host: HostCapacity,
}

/// Users' usage, as `zos.statistics.get` reports it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UsersCounters {
    /// Deployments with at least one ok/paused workload.
    pub deployments: u64,
    /// Ok/paused workloads.
    pub workloads: u64,
    /// Newest `created` among results.
    pub last_deployment_timestamp: i64,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) chain: Arc<dyn Chain>,
    pub(crate) registry: PrimitiveRegistry,
    pub(crate) secret: NodeSecret,
    pub(crate) node_id: AtomicU32,
    pub(crate) wake: Notify,
    pub(crate) host: HostCapacity,
    /// Workload id → (contract, capacity) of every ok/paused workload.
    pub(crate) used: Mutex<HashMap<String, (u64, Capacity)>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Contracts whose used resources must be reported (batched by the reporter).
    pub(crate) pending_reports: Mutex<std::collections::BTreeSet<u64>>,
    pub(crate) report_wake: Notify,
    /// Twin keys fetched from the ledger, with fetch time (signature checks).
    pub(crate) keys: Mutex<HashMap<u32, (std::time::Instant, Vec<u8>)>>,
    /// One API write at a time: redb serialises writers anyway, and without this a burst of
    /// deploy calls would queue dozens of blocking writers ahead of the job worker's commits.
    pub(crate) api_writes: tokio::sync::Semaphore,
    /// Bumped on every stored result, accepted deployment and finished job: what
    /// `zos.deployment.wait` sleeps on instead of having clients poll.
    pub(crate) changed: tokio::sync::watch::Sender<u64>,
    /// Pool sizes for the capacity gate, with when they were measured.
    pub(crate) pool_sizes: Mutex<Option<(std::time::Instant, Vec<crate::primitives::PoolUsage>)>>,
}

/// The engine handle (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// An engine on a fake ledger with no primitives (8 GiB, 2 cores), for unit tests.
#[cfg(test)]
pub(crate) fn test_engine(path: &std::path::Path) -> Engine {
    test_engine_with(path, crate::primitives::PrimitiveRegistry::new())
}

/// [`test_engine`] with the primitives, commands and lifecycles of `registry`.
#[cfg(test)]
pub(crate) fn test_engine_with(
    path: &std::path::Path,
    registry: crate::primitives::PrimitiveRegistry,
) -> Engine {
    Engine::new(
        crate::store::Store::open(path).expect("test store"),
        Arc::new(crate::chain::fake::FakeChain::default()),
        registry,
        crate::primitives::NodeSecret::new([1; 32]),
        EngineConfig {
            host: HostCapacity {
                memory: 8 << 30,
                cores: 2,
            },
        },
        Arc::new(crate::metrics::Metrics::default()),
    )
    .expect("test engine")
}

impl Engine {
    /// How many handles to this engine exist; the store closes with the last one.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store)
            .field("node_id", &self.node_id())
            .finish()
    }
}

/// Runs a blocking store operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Interrupted),
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// Builds the engine over an open store and rebuilds the usage index from it.
    pub fn new(
        store: Store,
        chain: Arc<dyn Chain>,
        registry: PrimitiveRegistry,
        secret: NodeSecret,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, StoreError> {
        let mut used = HashMap::new();
        for rec in store.list(None)? {
            let d = &rec.deployment;
            for wl in &d.workloads {
                if wl.result.state.is_okay() {
                    let cap = wl.capacity().unwrap_or_default();
                    used.insert(d.workload_id(&wl.name), (d.contract_id, cap));
                }
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                chain,
                registry,
                secret,
                node_id: AtomicU32::new(0),
                wake: Notify::new(),
                host: config.host,
                used: Mutex::new(used),
                metrics,
                pending_reports: Mutex::default(),
                report_wake: Notify::new(),
                keys: Mutex::default(),
                api_writes: tokio::sync::Semaphore::new(1),
                changed: tokio::sync::watch::Sender::new(0),
                pool_sizes: Mutex::default(),
            }),
        })
    }

    /// This node's ledger id (0 until registered).
    pub fn node_id(&self) -> u32 {
        self.inner.node_id.load(Ordering::Relaxed)
    }

    /// Sets the node id once the registrar knows it.
    pub fn set_node_id(&self, id: u32) {
        self.inner.node_id.store(id, Ordering::Relaxed);
    }

    /// The primitive registry.
    pub fn registry(&self) -> &PrimitiveRegistry {
        &self.inner.registry
    }

    /// The store (read access for the API and the watcher).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Host capacity.
    pub fn host(&self) -> HostCapacity {
        self.inner.host
    }

    async fn check_common(&self, source: u32, dl: &Deployment) -> Result<(), EngineError> {
        dl.validate()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if dl.twin_id != source {
            return Err(EngineError::TwinMismatch {
                deployment: dl.twin_id,
                message: source,
            });
        }
        for wl in &dl.workloads {
            if !self.inner.registry.supports(&wl.workload_type) {
                return Err(EngineError::UnsupportedType(wl.workload_type.to_string()));
            }
        }
        // Fetch every signer's key first (verification itself is synchronous). Keys are
        // cached for 10 minutes; a failed verification with cached keys is retried fresh, so a
        // rotated key costs one extra lookup, never a wrong refusal.
        let twins: Vec<u32> = dl
            .signature_requirement
            .requests
            .iter()
            .map(|r| r.twin_id)
            .collect();
        let keys = self.twin_keys(&twins, false).await?;
        let verify = |keys: &BTreeMap<u32, Vec<u8>>| {
            dl.verify(|twin| {
                keys.get(&twin)
                    .cloned()
                    .ok_or_else(|| format!("twin {twin} not found"))
            })
        };
        match verify(&keys) {
            Ok(()) => Ok(()),
            Err(_) => {
                let keys = self.twin_keys(&twins, true).await?;
                verify(&keys).map_err(|e| EngineError::Signature(e.to_string()))
            }
        }
    }

    async fn twin_keys(
        &self,
        twins: &[u32],
        fresh: bool,
    ) -> Result<BTreeMap<u32, Vec<u8>>, EngineError> {
        const TTL: std::time::Duration = std::time::Duration::from_secs(600);
        let mut out = BTreeMap::new();
        for &t in twins {
            if out.contains_key(&t) {
                continue;
            }
            let cached = self
                .inner
                .keys
                .lock()
                .expect("key cache lock")
                .get(&t)
                .filter(|(at, _)| !fresh && at.elapsed() < TTL)
                .map(|(_, k)| k.clone());
            let key = match cached {
                Some(k) => Some(k),
                None => {
                    let k = self
                        .inner
                        .chain
                        .twin_key(t)
                        .await?
                        .map(|k| k.bytes.to_vec());
                    if let Some(k) = &k {
                        self.inner
                            .keys
                            .lock()
                            .expect("key cache lock")
                            .insert(t, (std::time::Instant::now(), k.clone()));
                    }
                    k
                }
            };
            if let Some(k) = key {
                out.insert(t, k);
            }
        }
        Ok(out)
    }

    /// `zos.deployment.deploy`: checks and stores a new deployment, queues its provisioning.
    pub async fn deploy(&self, source: u32, mut dl: Deployment) -> Result<(), EngineError> {
        self.check_common(source, &dl).await?;
        if dl.version != 0 {
            return Err(EngineError::CreateVersion);
        }
        // Another twin's contract id is refused before anything is stored (the contract, as
        // proven against a signed head). A missing contract keeps upstream's behaviour: the
        // deployment is stored and fails in its provision job.
        if let Some(c) = self.inner.chain.verified_contract(dl.contract_id).await? {
            if c.twin_id != dl.twin_id {
                return Err(EngineError::Contract(format!(
                    "contract {} belongs to twin {}, not to twin {}",
                    dl.contract_id, c.twin_id, dl.twin_id
                )));
            }
        }
        let created = Timestamp(now_secs());
        for wl in &mut dl.workloads {
            wl.result = WorkloadResult {
                created,
                state: ResultState::Init,
                error: String::new(),
                data: serde_json::Value::Null,
                code: None,
            };
        }
        let job = Job {
            twin: dl.twin_id,
            contract: dl.contract_id,
            op: JobOp::Provision,
            queued_ms: now_ms(),
        };
        // redb write transactions block (lock + fsync): keep them off the async threads that
        // carry RMB traffic.
        let store = self.inner.store.clone();
        let _permit = self.inner.api_writes.acquire().await;
        let dl = blocking(move || store.create(&dl, &job).map(|()| dl)).await?;
        tracing::info!(
            twin = dl.twin_id,
            contract = dl.contract_id,
            "deployment accepted"
        );
        self.bump();
        self.inner.wake.notify_one();
        Ok(())
    }

    /// `zos.deployment.update`: checks the new version against the stored one and queues it.
    pub async fn update(&self, source: u32, mut dl: Deployment) -> Result<(), EngineError> {
        self.check_common(source, &dl).await?;
        let rec =
            self.inner
                .store
                .get(dl.twin_id, dl.contract_id)?
                .ok_or(StoreError::NotFound {
                    twin: dl.twin_id,
                    contract: dl.contract_id,
                })?;
        let ops = rec
            .deployment
            .upgrade(&mut dl)
            .map_err(|e| EngineError::Upgrade(e.to_string()))?;
        for (name, op) in &ops {
            if *op != UpgradeOp::Update {
                continue;
            }
            let Some(wl) = dl.get(name) else { continue };
            // A workload that failed holds nothing to update: the job provisions it again.
            if rec
                .deployment
                .get(name)
                .is_some_and(|c| needs_provision(c.result.state))
            {
                continue;
            }
            let updatable = self
                .inner
                .registry
                .get(&wl.workload_type)
                .is_some_and(|p| p.supports_update());
            if !updatable {
                return Err(EngineError::NotUpdatable(wl.workload_type.to_string()));
            }
        }
        // The ledger check comes before the new header is stored: an update the contract does
        // not carry (hash, twin, node, state) changes nothing.
        match self.check_contract(&dl, true).await {
            Ok(jobs::Check::Ok(_)) => {}
            Ok(jobs::Check::Refused(msg)) => return Err(EngineError::Contract(msg)),
            Err(jobs::Retry::Ledger(e)) => {
                return Err(EngineError::Chain(ChainError {
                    op: "check contract",
                    message: e,
                    rejected: false,
                }));
            }
            Err(jobs::Retry::Store(e)) => return Err(e.into()),
        }
        let job = Job {
            twin: dl.twin_id,
            contract: dl.contract_id,
            op: JobOp::Update { target: dl.clone() },
            queued_ms: now_ms(),
        };
        let store = self.inner.store.clone();
        let _permit = self.inner.api_writes.acquire().await;
        let dl = blocking(move || store.update_header(&dl, &job).map(|()| dl)).await?;
        tracing::info!(
            twin = dl.twin_id,
            contract = dl.contract_id,
            version = dl.version,
            "update accepted"
        );
        self.bump();
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Wakes `wait` callers (something about a deployment changed).
    pub(crate) fn bump(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `zos.deployment.wait`: waits until `version` of the caller's deployment has been
    /// applied (no job queued for it and the stored version is at least `version`) or
    /// `timeout` passes, then answers the deployment and whether it settled. The deployment
    /// must exist (a `deploy` or `update` answered before the wait).
    pub async fn wait(
        &self,
        twin: u32,
        contract: u64,
        version: u32,
        timeout: std::time::Duration,
    ) -> Result<(Deployment, bool), EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before looking, so a change between the look and the sleep still wakes us.
        let mut rx = self.inner.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let d = self.get(twin, contract)?;
            let settled = d.version > version
                || (d.version == version && !self.inner.store.has_job_for(twin, contract)?);
            if settled {
                return Ok((d, true));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timed out (or the engine is going away): the caller sees where it is.
                Ok(Err(_)) | Err(_) => return Ok((self.get(twin, contract)?, false)),
            }
        }
    }

    /// `zos.deployment.get`: the caller's deployment with current results.
    pub fn get(&self, twin: u32, contract: u64) -> Result<Deployment, EngineError> {
        match self.inner.store.get(twin, contract)? {
            Some(r) => Ok(r.deployment),
            None => Err(StoreError::NotFound { twin, contract }.into()),
        }
    }

    /// `zos.deployment.list`: the caller's deployments having at least one ok/paused workload.
    pub fn list(&self, twin: u32) -> Result<Vec<Deployment>, EngineError> {
        Ok(self
            .inner
            .store
            .list(Some(twin))?
            .into_iter()
            .map(|r| r.deployment)
            .filter(|d| d.workloads.iter().any(|w| w.result.state.is_okay()))
            .collect())
    }

    /// `zos.deployment.changes`: the caller's transaction log.
    pub fn changes(&self, twin: u32, contract: u64) -> Result<Vec<Workload>, EngineError> {
        if self.inner.store.get(twin, contract)?.is_none() {
            return Err(StoreError::NotFound { twin, contract }.into());
        }
        Ok(self.inner.store.changes(twin, contract)?)
    }

    /// `zos.deployment.history`: the caller's kept result history of a contract, also after
    /// the deployment is gone (history is keyed by owner twin: no one else can read it).
    pub fn history(
        &self,
        twin: u32,
        contract: u64,
    ) -> Result<Vec<crate::store::HistoryEntry>, EngineError> {
        let h = self.inner.store.history(twin, contract)?;
        if h.is_empty() {
            return Err(StoreError::NotFound { twin, contract }.into());
        }
        Ok(h)
    }

    /// The twin owning a stored contract.
    pub fn owner_of(&self, contract: u64) -> Result<Option<u32>, EngineError> {
        Ok(self
            .inner
            .store
            .list(None)?
            .into_iter()
            .find(|r| r.deployment.contract_id == contract)
            .map(|r| r.deployment.twin_id))
    }

    /// Queues a job (watcher: deprovision, pause, resume).
    pub fn enqueue(&self, twin: u32, contract: u64, op: JobOp) -> Result<(), EngineError> {
        self.inner.store.enqueue(&Job {
            twin,
            contract,
            op,
            queued_ms: now_ms(),
        })?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Reconciliation on start: every stored deployment is queued for idempotent
    /// re-provisioning (the job checks its contract is still active first).
    pub fn reconcile_all(&self) -> Result<usize, EngineError> {
        let all = self.inner.store.list(None)?;
        for r in &all {
            self.enqueue(
                r.deployment.twin_id,
                r.deployment.contract_id,
                JobOp::Reprovision,
            )?;
        }
        Ok(all.len())
    }

    /// Periodic full sync against the node's active contracts on the ledger: stored
    /// deployments without an active contract are deprovisioned; grace period ↔ paused state
    /// is aligned.
    pub async fn sync(&self) -> Result<(), EngineError> {
        let node = self.node_id();
        if node == 0 {
            return Ok(());
        }
        let active = self.inner.chain.node_contracts(node).await?;
        for r in self.inner.store.list(None)? {
            let d = &r.deployment;
            if !active.contains(&d.contract_id) {
                self.enqueue(
                    d.twin_id,
                    d.contract_id,
                    JobOp::Deprovision {
                        reason: "contract not active on chain".into(),
                    },
                )?;
                continue;
            }
            let Some(c) = self.inner.chain.contract(d.contract_id).await? else {
                continue;
            };
            let paused = d
                .workloads
                .iter()
                .any(|w| w.result.state == ResultState::Paused);
            let grace = c.status == crate::chain::ContractStatus::GracePeriod;
            if grace && !paused {
                self.enqueue(d.twin_id, d.contract_id, JobOp::Pause)?;
            } else if !grace && paused {
                self.enqueue(d.twin_id, d.contract_id, JobOp::Resume)?;
            } else if !grace
                && d.workloads.iter().any(|w| {
                    w.result.state == ResultState::Error && self.was_ok(d.twin_id, d.contract_id, w)
                })
            {
                // Once ok, failed since: retried every sync until it matches its spec again.
                self.enqueue(d.twin_id, d.contract_id, JobOp::Reprovision)?;
            }
        }
        Ok(())
    }

    /// Users' counters and the capacity they hold (ok/paused workloads).
    pub fn usage(&self) -> (UsersCounters, Capacity) {
        let used = self.inner.used.lock().expect("usage index lock");
        let mut cap = Capacity::default();
        let mut contracts = std::collections::HashSet::new();
        for (c, w) in used.values() {
            cap += *w;
            contracts.insert(*c);
        }
        let counters = UsersCounters {
            deployments: contracts.len() as u64,
            workloads: used.len() as u64,
            last_deployment_timestamp: self.inner.metrics.last_result_ts(),
        };
        (counters, cap)
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Jobs waiting in the queue.
    pub fn queued_jobs(&self) -> u64 {
        self.inner.store.job_count().unwrap_or(0)
    }
}

/// States in which a workload holds nothing on the node, so an update provisions it afresh
/// instead of updating it (the primitive's update would not find it).
pub(crate) fn needs_provision(state: ResultState) -> bool {
    matches!(
        state,
        ResultState::Error | ResultState::Init | ResultState::Unset | ResultState::Deleted
    )
}

#[cfg(test)]
mod tests;
