//! The single job worker: ledger validation, install order, results, deprovision, pause.

use std::cmp::Reverse;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use super::{Engine, capacity, now_ms, now_secs};
use crate::chain::ContractStatus;
use crate::model::{Deployment, ResultState, Timestamp, Workload, WorkloadResult};
use crate::primitives::{PrimitiveError, WorkloadCtx, install_rank};
use crate::store::{Apply, Job, JobOp, StoreError};
use zos_types::ErrorCode;

/// How long the capacity gate reuses measured pool sizes.
const POOL_SIZES_TTL: Duration = Duration::from_secs(5);

/// Why a job must be tried again later instead of being acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Retry {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger unreachable: {0}")]
    Ledger(String),
}

pub(super) enum Check {
    Ok(Option<ContractStatus>),
    Refused(String),
}

pub(super) fn result(state: ResultState, error: String, data: serde_json::Value) -> WorkloadResult {
    WorkloadResult {
        created: Timestamp(now_secs()),
        state,
        error,
        data,
        code: None,
    }
}

/// An `error` (or, with `state` unchanged, a refused update) result with its stable code.
pub(super) fn failure(
    state: ResultState,
    code: Option<ErrorCode>,
    error: String,
) -> WorkloadResult {
    WorkloadResult {
        code,
        ..result(state, error, serde_json::Value::Null)
    }
}

/// Install order: type rank, then (zmount/volume…) largest size first, then name.
pub(super) fn install_sort(wls: &mut [Workload]) {
    wls.sort_by_key(|w| {
        let size = w.capacity().map(|c| c.sru + c.hru).unwrap_or(0);
        (
            install_rank(&w.workload_type),
            Reverse(size),
            w.name.clone(),
        )
    });
}

/// Resolves once the watch turns true (or its sender is gone).
pub(crate) async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn op_name(op: &JobOp) -> &'static str {
    match op {
        JobOp::Provision => "provision",
        JobOp::Reprovision => "reprovision",
        JobOp::Update { .. } => "update",
        JobOp::Deprovision { .. } => "deprovision",
        JobOp::Pause => "pause",
        JobOp::Resume => "resume",
    }
}

impl Engine {
    /// Runs the job worker (and the resource reporter) until `shutdown` resolves. Jobs are
    /// processed one at a time in queue order; a job is removed only after it was processed,
    /// so a crash retries it.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let trigger = async move {
            shutdown.await;
            let _ = tx.send(true);
        };
        tokio::join!(
            self.worker_loop(stopped(rx.clone())),
            self.run_reporter(stopped(rx)),
            trigger
        );
    }

    async fn worker_loop(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            if (&mut shutdown).now_or_never().is_some() {
                return;
            }
            let next = self.inner.store.peek_job();
            match next {
                Ok(Some((id, job))) => {
                    let op = op_name(&job.op);
                    match self.process(&job).await {
                        Ok(()) => {
                            if let Err(e) = self.inner.store.ack_job(id) {
                                tracing::error!(error = %e, job = id, "cannot acknowledge job");
                            }
                            self.bump();
                            let latency = now_ms().saturating_sub(job.queued_ms);
                            self.inner.metrics.job_done(op, latency);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, job = id, op, contract = job.contract, "job will be retried");
                            tokio::select! {
                                _ = &mut shutdown => return,
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                        }
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the job queue");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Processes every queued job now (tests, tools); returns how many ran.
    pub async fn drain(&self) -> usize {
        let mut n = 0;
        while let Ok(Some((id, job))) = self.inner.store.peek_job() {
            if self.process(&job).await.is_err() {
                break;
            }
            let _ = self.inner.store.ack_job(id);
            self.bump();
            let latency = now_ms().saturating_sub(job.queued_ms);
            self.inner.metrics.job_done(op_name(&job.op), latency);
            n += 1;
        }
        self.flush_reports().await;
        n
    }

    pub(crate) async fn process(&self, job: &Job) -> Result<(), Retry> {
        let (twin, contract) = (job.twin, job.contract);
        let Some(rec) = self.inner.store.get(twin, contract)? else {
            return Ok(()); // removed meanwhile: nothing left to do
        };
        match &job.op {
            JobOp::Provision => match self.check_contract(&rec.deployment, true).await? {
                Check::Ok(status) => {
                    self.install(twin, contract, false).await?;
                    if status == Some(ContractStatus::GracePeriod) {
                        self.pause_all(twin, contract).await?;
                    }
                    self.report(contract);
                }
                Check::Refused(msg) => {
                    tracing::warn!(twin, contract, %msg, "deployment refused by ledger check");
                    self.fail(twin, contract, rec.deployment.workloads.clone(), &msg)?;
                }
            },
            JobOp::Reprovision => match self.check_contract(&rec.deployment, false).await {
                Ok(Check::Ok(status)) => {
                    self.install(twin, contract, true).await?;
                    if status == Some(ContractStatus::GracePeriod) {
                        self.pause_all(twin, contract).await?;
                    }
                    self.report(contract);
                }
                // An unverified "refused" could come from whoever sits between node and ledger:
                // delete only what the signed state confirms, otherwise keep serving.
                Ok(Check::Refused(reason)) => {
                    if self.confirm_destructive(&rec.deployment, false).await {
                        self.deprovision_all(twin, contract, &reason).await?;
                    } else {
                        self.install(twin, contract, true).await?;
                    }
                }
                // The ledger being down must not keep a rebooted node from serving.
                Err(Retry::Ledger(e)) => {
                    tracing::warn!(contract, error = %e, "ledger unreachable, reprovisioning anyway");
                    self.install(twin, contract, true).await?;
                }
                Err(e) => return Err(e),
            },
            JobOp::Update { target } => match self.check_contract(target, true).await? {
                Check::Ok(_) => {
                    self.apply_update(target).await?;
                    self.report(contract);
                }
                Check::Refused(msg) => {
                    let cur = rec.deployment;
                    let changed: Vec<Workload> = target
                        .workloads
                        .iter()
                        .filter(|w| {
                            w.version == target.version
                                && cur.get(&w.name).is_none_or(|c| c.version != w.version)
                        })
                        .cloned()
                        .collect();
                    self.fail(twin, contract, changed, &msg)?;
                }
            },
            // Deprovision and pause come from ledger events or the sync: they run only when
            // the contract's state, proven against a signed head, confirms them. A refused
            // job is dropped; the periodic sync queues it again if it is still due.
            JobOp::Deprovision { reason } => {
                if self.confirm_destructive(&rec.deployment, false).await {
                    self.deprovision_all(twin, contract, reason).await?;
                }
            }
            JobOp::Pause => {
                if self.confirm_destructive(&rec.deployment, true).await {
                    self.pause_all(twin, contract).await?;
                    self.report(contract);
                }
            }
            JobOp::Resume => {
                self.resume_all(twin, contract).await?;
                self.report(contract);
            }
        }
        Ok(())
    }

    /// Whether the ledger state proven against a signed head (not the unverified answers
    /// that queued the job) confirms a destructive job on `dl`: for a deprovision, its contract
    /// is deleted, or belongs to another node or twin; for a pause, it is in its grace period.
    /// A contract proven absent does not confirm anything: contracts are never removed from
    /// the state, so absence means an old head or another ledger, not a cancellation.
    pub(crate) async fn confirm_destructive(&self, dl: &Deployment, pause: bool) -> bool {
        let what = if pause { "pause" } else { "deprovision" };
        let c = match self.inner.chain.verified_contract(dl.contract_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(contract = dl.contract_id, error = %e,
                    "{what} not confirmed: contract state cannot be verified; nothing done");
                return false;
            }
        };
        let ok = match &c {
            None => false,
            Some(c) if pause => {
                c.status == ContractStatus::GracePeriod
                    && c.node_id == Some(self.node_id())
                    && c.twin_id == dl.twin_id
            }
            Some(c) => {
                c.status == ContractStatus::Deleted
                    || c.node_id != Some(self.node_id())
                    || c.twin_id != dl.twin_id
            }
        };
        if !ok {
            tracing::warn!(contract = dl.contract_id, verified = ?c.map(|c| c.status),
                "{what} refused: the verified ledger state does not confirm it");
        }
        ok
    }

    /// Upstream `validate`: the node contract must exist and be a node contract; unless
    /// `full` is false (reprovision after restart), it must be for this node and carry the
    /// deployment's hash. A deleted contract is refused in both modes.
    pub(super) async fn check_contract(&self, dl: &Deployment, full: bool) -> Result<Check, Retry> {
        // Proven against a signed head: accepting work on a forged contract would run it
        // unpaid or in another twin's name.
        let c = match self.inner.chain.verified_contract(dl.contract_id).await {
            Ok(c) => c,
            Err(e) => return Err(Retry::Ledger(e.to_string())),
        };
        let Some(c) = c else {
            return Ok(Check::Refused(format!(
                "failed to get deployment contract: contract {} not found",
                dl.contract_id
            )));
        };
        let Some(node) = c.node_id else {
            return Ok(Check::Refused(
                "invalid contract type, expecting node contract".into(),
            ));
        };
        if c.status == ContractStatus::Deleted {
            return Ok(Check::Refused("contract not active on chain".into()));
        }
        if c.twin_id != dl.twin_id {
            return Ok(Check::Refused(format!(
                "contract {} belongs to twin {}, not to the deployment's twin {}",
                dl.contract_id, c.twin_id, dl.twin_id
            )));
        }
        if full {
            if node != self.node_id() {
                return Ok(Check::Refused("invalid node address in contract".into()));
            }
            let hash = match dl.challenge_hash_hex() {
                Ok(h) => h,
                Err(e) => {
                    return Ok(Check::Refused(format!(
                        "failed to compute deployment hash: {e}"
                    )));
                }
            };
            if c.deployment_hash != hash {
                return Ok(Check::Refused(
                    "contract hash does not match deployment hash".into(),
                ));
            }
        }
        Ok(Check::Ok(Some(c.status)))
    }

    pub(super) fn ctx(&self, dl: &Deployment, name: &str) -> WorkloadCtx {
        // The twin's deployments holding sharable workloads (networks): a VM may join a
        // network deployed in another contract (a network over several nodes is one contract
        // per node), which `WorkloadCtx::shared` finds here.
        let shared: Vec<Deployment> = self
            .inner
            .store
            .list(Some(dl.twin_id))
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.deployment)
            .filter(|d| {
                d.contract_id != dl.contract_id
                    && d.workloads.iter().any(|w| w.workload_type.is_sharable())
            })
            .collect();
        WorkloadCtx::new(
            self.node_id(),
            Arc::new(dl.clone()),
            name,
            self.inner.secret.clone(),
        )
        .with_twin_deployments(Arc::from(shared))
    }

    /// Logs `new` and applies it, unless it is identical to the current workload (a retried
    /// or re-run provision that converged to the same result): then nothing is written.
    pub(super) fn save(
        &self,
        twin: u32,
        contract: u64,
        old: Option<&Workload>,
        new: Workload,
        apply: Apply,
    ) -> Result<(), StoreError> {
        if let Some(old) = old {
            let same = old.version == new.version
                && old.data == new.data
                && old.result.state == new.result.state
                && old.result.error == new.result.error
                && old.result.data == new.result.data;
            if same && apply != Apply::Remove {
                return Ok(());
            }
        }
        self.inner.store.record(twin, contract, &new, apply)?;
        if matches!(new.result.state, ResultState::Error) {
            // Fields the farmer's `zos node diag logs` filters on (contract, twin, name).
            tracing::warn!(twin, contract, name = %new.name, code = new.result.code.map(|c| c.as_str()).unwrap_or(""),
                error = %new.result.error, "workload failed");
        }
        self.bump();
        let wlid = crate::model::workload_id(twin, contract, &new.name);
        {
            let mut used = self.inner.used.lock().expect("usage index lock");
            if apply != Apply::LogOnly && apply != Apply::Remove && new.result.state.is_okay() {
                used.insert(wlid, (contract, new.capacity().unwrap_or_default()));
            } else if apply != Apply::LogOnly {
                used.remove(&wlid);
            }
        }
        self.inner.metrics.result(
            new.workload_type.as_str(),
            new.result.state,
            new.result.created.0,
        );
        Ok(())
    }

    fn fail(
        &self,
        twin: u32,
        contract: u64,
        wls: Vec<Workload>,
        msg: &str,
    ) -> Result<(), StoreError> {
        let cur = self.inner.store.get(twin, contract)?.map(|r| r.deployment);
        for mut wl in wls {
            if wl.result.state == ResultState::Deleted {
                continue;
            }
            let old = cur.as_ref().and_then(|d| d.get(&wl.name)).cloned();
            // The ledger check refused it (contract missing, other node, hash mismatch).
            wl.result = failure(
                ResultState::Error,
                Some(ErrorCode::Contract),
                msg.to_string(),
            );
            self.save(twin, contract, old.as_ref(), wl, Apply::Upsert)?;
        }
        Ok(())
    }

    /// The capacity gate for `wl`; pool sizes are only asked for when it needs storage (the
    /// storage crate measures its filesystems for that).
    async fn gate(&self, wlid: &str, wl: &Workload) -> Result<(), String> {
        let required = wl.capacity().map_err(|e| e.to_string())?;
        let pools = if required.sru > 0 || required.hru > 0 {
            self.pool_sizes().await
        } else {
            Vec::new()
        };
        let others = {
            let used = self.inner.used.lock().expect("usage index lock");
            capacity::used_except(&used, wlid)
        };
        capacity::check(
            self.inner.host,
            capacity::meminfo("MemAvailable:"),
            &pools,
            others,
            required,
        )
    }

    /// Pools for the capacity gate, which reads only their sizes: measured at most once per
    /// [`POOL_SIZES_TTL`] (measuring runs `btrfs filesystem usage` per pool, a few ms each, on
    /// every job otherwise). A pool's size changes only when it is added or grown.
    async fn pool_sizes(&self) -> Vec<crate::primitives::PoolUsage> {
        if let Some((at, pools)) = &*self.inner.pool_sizes.lock().expect("pool size cache lock") {
            if at.elapsed() < POOL_SIZES_TTL {
                return pools.clone();
            }
        }
        let pools = self.pools().await;
        *self.inner.pool_sizes.lock().expect("pool size cache lock") =
            Some((std::time::Instant::now(), pools.clone()));
        pools
    }

    async fn pools(&self) -> Vec<crate::primitives::PoolUsage> {
        match self.inner.registry.pool_reporter() {
            Some(r) => r.pools().await,
            None => Vec::new(),
        }
    }

    /// Provisions one workload (capacity gate first when `gate`) and returns its result.
    async fn provision_one(&self, dl: &Deployment, wl: &Workload, gate: bool) -> WorkloadResult {
        let Some(prim) = self.inner.registry.get(&wl.workload_type).cloned() else {
            return failure(
                ResultState::Error,
                Some(ErrorCode::Unsupported),
                format!(
                    "workload type '{}' is not supported on this node",
                    wl.workload_type
                ),
            );
        };
        let ctx = self.ctx(dl, &wl.name);
        if gate {
            if let Err(msg) = self.gate(&ctx.workload_id, wl).await {
                return failure(ResultState::Error, Some(ErrorCode::Capacity), msg);
            }
        }
        match prim.provision(&ctx, wl).await {
            Ok(data) => result(ResultState::Ok, String::new(), data),
            Err(PrimitiveError::NoActionNeeded) => wl.result.clone(),
            Err(PrimitiveError::Unchanged(why)) => {
                failure(ResultState::Unchanged, Some(ErrorCode::InvalidInput), why)
            }
            Err(e) => failure(ResultState::Error, e.code(), e.to_string()),
        }
    }

    /// Installs every workload of a stored deployment in type order. New (`init`) workloads
    /// pass the capacity gate; `ok` ones are provisioned again (idempotent); on `reprovision`
    /// paused ones are provisioned and paused again; `error`/`deleted` ones are left alone.
    /// Whether the history shows `wl` ok at its current version.
    pub(crate) fn was_ok(&self, twin: u32, contract: u64, wl: &Workload) -> bool {
        self.inner
            .store
            .history(twin, contract)
            .map(|h| {
                h.iter().any(|e| {
                    e.name == wl.name && e.version == wl.version && e.state == ResultState::Ok
                })
            })
            .unwrap_or(false)
    }

    async fn install(&self, twin: u32, contract: u64, reprovision: bool) -> Result<(), StoreError> {
        let Some(rec) = self.inner.store.get(twin, contract)? else {
            return Ok(());
        };
        let mut order = rec.deployment.workloads.clone();
        install_sort(&mut order);
        for wl in order {
            // Fresh view: earlier workloads of this job may have new results.
            let Some(rec) = self.inner.store.get(twin, contract)? else {
                return Ok(());
            };
            let Some(cur) = rec.deployment.get(&wl.name).cloned() else {
                continue;
            };
            let state = cur.result.state;
            let gate = matches!(
                state,
                ResultState::Init | ResultState::Unset | ResultState::Unchanged
            );
            // A workload that was ok at this version and failed since (something it needs was
            // not ready after a reboot: a network, a disk) is retried until it is ok again;
            // one that never was ok stays failed until its owner changes it.
            let retry =
                reprovision && state == ResultState::Error && self.was_ok(twin, contract, &cur);
            let run = gate
                || retry
                || state == ResultState::Ok
                || (reprovision && state == ResultState::Paused);
            if !run {
                continue;
            }
            let mut res = self.provision_one(&rec.deployment, &cur, gate).await;
            if state == ResultState::Paused && res.state == ResultState::Ok {
                let ctx = self.ctx(&rec.deployment, &cur.name);
                let prim = self.inner.registry.get(&cur.workload_type).cloned();
                if let Some(p) = prim {
                    if p.pause(&ctx, &cur).await.is_ok() {
                        res.state = ResultState::Paused;
                        res.error = "paused".into();
                    }
                }
            }
            if state != ResultState::Init
                && res.state == cur.result.state
                && res.data == cur.result.data
            {
                continue; // converged: nothing new to log
            }
            let apply = if res.state == ResultState::Unchanged {
                Apply::LogOnly
            } else {
                Apply::Upsert
            };
            let mut new = cur.clone();
            new.result = res;
            self.save(twin, contract, Some(&cur), new, apply)?;
        }
        Ok(())
    }

    /// Moves a stored deployment to `target` (§4.3): removes first (reverse type order), then
    /// adds and updates (type order). Idempotent: workloads already at the target version are
    /// skipped, so a retried job continues where it stopped.
    async fn apply_update(&self, target: &Deployment) -> Result<(), StoreError> {
        let (twin, contract) = (target.twin_id, target.contract_id);
        let Some(rec) = self.inner.store.get(twin, contract)? else {
            return Ok(());
        };
        let mut removes: Vec<Workload> = rec
            .deployment
            .workloads
            .iter()
            .filter(|w| target.get(&w.name).is_none())
            .cloned()
            .collect();
        install_sort(&mut removes);
        removes.reverse();
        for wl in removes {
            self.deprovision_one(
                twin,
                contract,
                &rec.deployment,
                &wl,
                "workload removed by update",
            )
            .await?;
        }
        let mut changes: Vec<Workload> = target
            .workloads
            .iter()
            .filter(|w| {
                w.version == target.version
                    && rec
                        .deployment
                        .get(&w.name)
                        .is_none_or(|c| c.version != w.version)
            })
            .cloned()
            .collect();
        install_sort(&mut changes);
        for wl in changes {
            let Some(rec) = self.inner.store.get(twin, contract)? else {
                return Ok(());
            };
            let cur = rec.deployment.get(&wl.name).cloned();
            match &cur {
                // New, or failed before: nothing to update on the node, so provision it (an
                // update would fail with "… not found").
                None => {
                    self.provision_into(twin, contract, &rec.deployment, None, &wl)
                        .await?
                }
                Some(c) if super::needs_provision(c.result.state) => {
                    // Provisioned as the deployment being applied (the target's workloads).
                    let mut target_view = rec.deployment.clone();
                    if let Some(slot) = target_view.workloads.iter_mut().find(|w| w.name == wl.name)
                    {
                        *slot = wl.clone();
                    }
                    self.provision_into(twin, contract, &target_view, Some(c), &wl)
                        .await?
                }
                Some(cur) => {
                    let (res, apply) = self.update_one(&rec.deployment, cur, &wl).await;
                    let mut new = wl.clone();
                    new.result = res;
                    self.save(twin, contract, Some(cur), new, apply)?;
                }
            }
        }
        Ok(())
    }

    /// Provisions `wl` (capacity gate first) and stores its result in place of `old`.
    async fn provision_into(
        &self,
        twin: u32,
        contract: u64,
        dl: &Deployment,
        old: Option<&Workload>,
        wl: &Workload,
    ) -> Result<(), StoreError> {
        let res = self.provision_one(dl, wl, true).await;
        let apply = if res.state == ResultState::Unchanged {
            Apply::LogOnly
        } else {
            Apply::Upsert
        };
        let mut new = wl.clone();
        new.result = res;
        self.save(twin, contract, old, new, apply)
    }

    async fn update_one(
        &self,
        dl: &Deployment,
        cur: &Workload,
        wl: &Workload,
    ) -> (WorkloadResult, Apply) {
        let Some(prim) = self.inner.registry.get(&wl.workload_type).cloned() else {
            let msg = format!(
                "workload type '{}' is not supported on this node",
                wl.workload_type
            );
            return (
                failure(ResultState::Unchanged, Some(ErrorCode::Unsupported), msg),
                Apply::LogOnly,
            );
        };
        let ctx = self.ctx(dl, &wl.name);
        if let Err(msg) = self.gate(&ctx.workload_id, wl).await {
            // The running definition stays; the refusal is logged.
            return (
                failure(ResultState::Unchanged, Some(ErrorCode::Capacity), msg),
                Apply::LogOnly,
            );
        }
        match prim.update(&ctx, wl).await {
            Ok(data) => (result(ResultState::Ok, String::new(), data), Apply::Upsert),
            Err(PrimitiveError::NoActionNeeded) => (cur.result.clone(), Apply::Upsert),
            Err(PrimitiveError::Unchanged(why)) => (
                failure(ResultState::Unchanged, Some(ErrorCode::InvalidInput), why),
                Apply::LogOnly,
            ),
            Err(e) => (
                failure(ResultState::Error, e.code(), e.to_string()),
                Apply::Upsert,
            ),
        }
    }
}
