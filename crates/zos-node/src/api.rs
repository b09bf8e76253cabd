//! The node API over RMB (upstream `pkg/zos_api`): command names, payloads and error texts
//! follow §5 of the reference. The caller is the authenticated RMB source twin and only ever
//! sees its own deployments. `zos.admin.*` (also answered as `zos.network.admin.*`) is for
//! the farm's twin; `zos.debug.*` for the configured admin twins.
//!
//! [`Api::dispatch`] is transport-free (tested directly); [`Api::router`] mounts it on RMB.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, EngineError, reserved_memory, reserved_ssd};
use crate::model::{Capacity, Deployment};
use crate::primitives::PoolKind;
use crate::store::StoreError;
use crate::sysinfo;

/// Every command the node answers.
pub const COMMANDS: &[&str] = &[
    "zos.deployment.deploy",
    "zos.deployment.update",
    "zos.deployment.delete",
    "zos.deployment.get",
    "zos.deployment.wait",
    "zos.deployment.list",
    "zos.deployment.changes",
    "zos.deployment.history",
    "zos.statistics.get",
    "zos.storage.pools",
    "zos.network.public_config_get",
    "zos.network.interfaces",
    "zos.network.has_ipv6",
    "zos.system.version",
    "zos.system.dmi",
    "zos.system.hypervisor",
    "zos.system.diagnostics",
    "zos.system.node_features_get",
    "zos.admin.interfaces",
    "zos.admin.get_public_nic",
    "zos.admin.set_public_nic",
    "zos.admin.reboot",
    "zos.admin.diag.logs",
    "zos.admin.diag.kernel",
    "zos.admin.diag.pools",
    "zos.admin.diag.net",
    "zos.admin.diag.reach",
    "zos.admin.diag.health",
    "zos.network.admin.interfaces",
    "zos.network.admin.get_public_nic",
    "zos.network.admin.set_public_nic",
    "zos.debug.deployment.list",
    "zos.debug.deployment.get",
    "zos.debug.deployment.history",
    "zos.debug.deployment.health",
];

/// An API error: an HTTP-like code and the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// 400 bad request, 401 not allowed, 404 not found, 500 internal, 503 not ready.
    pub code: u32,
    /// Message (upstream text where one exists).
    pub message: String,
}

impl ApiError {
    fn new(code: u32, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Store(StoreError::NotFound { .. }) => 404,
            EngineError::Store(
                StoreError::Db { .. } | StoreError::Corrupt { .. } | StoreError::Interrupted,
            ) => 500,
            EngineError::Chain(_) => 503,
            _ => 400,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Status of a long-running loop, for `zos.system.diagnostics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleStatus {
    /// `running`, `idle`, `error`, `stopped`.
    pub status: String,
    /// Last error, empty when none.
    pub error: String,
}

/// Node facts the API and the loops share.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Farm id given at start.
    pub farm_id: u32,
    /// The node's own twin (0 until registered).
    pub twin_id: AtomicU32,
    /// The farm's twin (0 until known): may call `zos.admin.*`.
    pub farm_twin: AtomicU32,
    /// Twins allowed to call `zos.debug.*`.
    pub admin_twins: Vec<u32>,
    /// Public config from the ledger (upstream JSON shape), if any.
    pub public_config: RwLock<Option<Value>>,
    /// Loop statuses by name.
    pub modules: Mutex<BTreeMap<String, ModuleStatus>>,
    /// Last error of each loop with its unix time, kept after the loop recovers.
    pub last_errors: Mutex<BTreeMap<String, (u64, String)>>,
    /// Relay links logged in (updated by the node's health loop).
    pub relay_links: std::sync::atomic::AtomicUsize,
    /// The farmer's maintenance mode as the ledger last said it (`{pause, since}` from the node
    /// record at registration, `{pause, height}` from an event), `None` outside maintenance.
    pub maintenance: RwLock<Option<Value>>,
    /// PID 1's request file (`zos.admin.reboot`), `None` when the node runs as a host process.
    pub init_request: Option<std::path::PathBuf>,
    /// The release version this node runs (`zos.system.version`; empty: the crate's).
    pub version: String,
    /// Milestones of this run and the upgrader's status (`upgrade` in the diag health view).
    pub progress: crate::progress::Progress,
}

impl NodeState {
    /// The release version this node runs (the crate's when none was given).
    pub fn version(&self) -> &str {
        if self.version.is_empty() {
            env!("CARGO_PKG_VERSION")
        } else {
            &self.version
        }
    }
    /// Records a loop's status.
    pub fn set_module(&self, name: &str, status: &str, error: impl Into<String>) {
        let error = error.into();
        if !error.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.last_errors
                .lock()
                .expect("last errors lock")
                .insert(name.to_string(), (now, error.clone()));
        }
        self.modules.lock().expect("module status lock").insert(
            name.to_string(),
            ModuleStatus {
                status: status.to_string(),
                error,
            },
        );
    }
}

#[derive(Deserialize)]
struct ContractArg {
    contract_id: u64,
}

/// `zos.deployment.wait`: the version to wait for and how long (capped, see [`MAX_WAIT_MS`]).
#[derive(Deserialize)]
struct WaitArg {
    contract_id: u64,
    version: u32,
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    10_000
}

/// How long `zos.admin.reboot` waits before PID 1 sees the request: the reply goes out first.
pub const REBOOT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest a `zos.deployment.wait` call holds: below the clients' RMB call timeouts, so a
/// reply ("not settled yet") always arrives and the client asks again.
pub const MAX_WAIT_MS: u64 = 15_000;

#[derive(Deserialize, Default)]
#[serde(default)]
struct DebugListArg {
    twin_id: Option<u32>,
}

#[derive(Deserialize)]
struct DebugGetArg {
    deployment: String,
}

fn arg<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(400, format!("invalid request payload: {e}")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(500, e.to_string()))
}

/// The API over one engine.
#[derive(Debug, Clone)]
pub struct Api {
    engine: Engine,
    state: Arc<NodeState>,
}

impl Api {
    /// Builds the API.
    pub fn new(engine: Engine, state: Arc<NodeState>) -> Self {
        Api { engine, state }
    }

    /// Handles one command from `source`.
    pub async fn dispatch(
        &self,
        source: u32,
        command: &str,
        payload: Value,
    ) -> Result<Value, ApiError> {
        let cmd = command.replacen("zos.network.admin.", "zos.admin.", 1);
        match cmd.as_str() {
            "zos.deployment.deploy" | "zos.deployment.update" => {
                let bytes =
                    serde_json::to_vec(&payload).map_err(|e| ApiError::new(400, e.to_string()))?;
                let dl = Deployment::from_json(&bytes)
                    .map_err(|e| ApiError::new(400, format!("invalid deployment: {e}")))?;
                if cmd == "zos.deployment.deploy" {
                    self.engine.deploy(source, dl).await?;
                } else {
                    self.engine.update(source, dl).await?;
                }
                Ok(Value::Null)
            }
            "zos.deployment.delete" => Err(EngineError::DeleteDisabled.into()),
            "zos.deployment.get" => {
                let a: ContractArg = arg(payload)?;
                to_value(&self.engine.get(source, a.contract_id)?)
            }
            "zos.deployment.wait" => {
                let a: WaitArg = arg(payload)?;
                let timeout = std::time::Duration::from_millis(a.timeout_ms.min(MAX_WAIT_MS));
                let (d, settled) = self
                    .engine
                    .wait(source, a.contract_id, a.version, timeout)
                    .await?;
                Ok(json!({ "settled": settled, "deployment": to_value(&d)? }))
            }
            "zos.deployment.list" => to_value(&self.engine.list(source)?),
            "zos.deployment.changes" => {
                let a: ContractArg = arg(payload)?;
                to_value(&self.engine.changes(source, a.contract_id)?)
            }
            "zos.deployment.history" => {
                let a: ContractArg = arg(payload)?;
                let entries = self.engine.history(source, a.contract_id)?;
                Ok(json!({ "contract_id": a.contract_id, "history": to_value(&entries)? }))
            }
            "zos.statistics.get" => self.statistics().await,
            "zos.storage.pools" => to_value(&self.pools().await),
            "zos.network.public_config_get" => {
                match self
                    .state
                    .public_config
                    .read()
                    .expect("public config lock")
                    .clone()
                {
                    Some(v) => Ok(v),
                    None => Err(ApiError::new(404, "no public configuration")),
                }
            }
            "zos.network.interfaces" => Ok(json!({ "zos": sysinfo::host_ips(), "ygg": [] })),
            "zos.network.has_ipv6" => Ok(json!(sysinfo::has_global_ipv6())),
            // The engine checks contracts against the hash scheme a deployment declares, so it
            // takes both; clients look for this member before sending hash_version 2.
            "zos.system.version" => Ok(json!({
                "zos": self.state.version(),
                "zinit": "",
                zos_types::deployment::VERSION_HASH_KEY: zos_types::deployment::HASH_VERSIONS,
            })),
            "zos.system.dmi" => Ok(sysinfo::dmi()),
            "zos.system.hypervisor" => Ok(json!(sysinfo::hypervisor())),
            "zos.system.diagnostics" => Ok(self.diagnostics().await),
            "zos.system.node_features_get" => to_value(&self.engine.registry().features()),
            c if c.starts_with("zos.admin.") => {
                let farm_twin = self.state.farm_twin.load(Ordering::Relaxed);
                let farmer = farm_twin != 0 && source == farm_twin;
                // Diagnostics only read: the node's admin twins may read them too, and may
                // reboot the node (the farmer's other admin commands stay the farmer's).
                let diag = c.starts_with("zos.admin.diag.");
                let reboot = c == "zos.admin.reboot";
                let allowed =
                    farmer || ((diag || reboot) && self.state.admin_twins.contains(&source));
                tracing::info!(source, command = c, allowed, "admin call");
                if !allowed {
                    return Err(ApiError::new(
                        401,
                        "unauthorized: only the farm's twin may call admin commands",
                    ));
                }
                if diag {
                    return self.diag(c, payload).await;
                }
                match c {
                    "zos.admin.reboot" => self.reboot(source),
                    "zos.admin.interfaces" => Ok(sysinfo::interfaces()),
                    "zos.admin.get_public_nic" => {
                        Ok(json!({ "is_single": true, "is_dual": false, "dual_interface": "" }))
                    }
                    "zos.admin.set_public_nic" => Err(ApiError::new(
                        400,
                        "setting a public nic is not supported: this node has no public network bridge yet",
                    )),
                    _ => Err(ApiError::new(404, format!("unknown command {command}"))),
                }
            }
            c if c.starts_with("zos.debug.") => {
                if !self.state.admin_twins.contains(&source) {
                    return Err(ApiError::new(
                        401,
                        "unauthorized: debug commands are for admin twins",
                    ));
                }
                self.debug(c, payload)
            }
            _ => self.extra(source, command, payload).await,
        }
    }

    /// `zos.admin.reboot` (caller already authorised): asks PID 1 for a clean reboot. The
    /// request is staged now (a write error is the caller's answer) and made visible to PID 1
    /// after [`REBOOT_DELAY`], so that this reply leaves before PID 1 stops the node.
    fn reboot(&self, source: u32) -> Result<Value, ApiError> {
        let Some(path) = &self.state.init_request else {
            return Err(ApiError::new(
                400,
                "reboot needs the zos image's PID 1: this node runs as a host process",
            ));
        };
        let staged = crate::init_request::stage(path, "reboot").map_err(|e| {
            ApiError::new(
                500,
                format!("writing the reboot request {}: {e}", path.display()),
            )
        })?;
        tracing::warn!(source, "reboot requested over the API; asking PID 1");
        tokio::spawn(async move {
            tokio::time::sleep(REBOOT_DELAY).await;
            if let Err(e) = staged.commit() {
                tracing::error!(error = %e, "reboot request not delivered to PID 1");
            }
        });
        Ok(json!({ "rebooting": true, "in_secs": REBOOT_DELAY.as_secs() }))
    }

    /// A command added by a primitive crate (volume snapshots, network views…): it reads the
    /// node through [`crate::primitives::StoreView`]; its errors are the caller's (400).
    async fn extra(&self, source: u32, command: &str, payload: Value) -> Result<Value, ApiError> {
        let Some(c) = self.engine.registry().command(command) else {
            return Err(ApiError::new(404, format!("unknown command {command}")));
        };
        let view = crate::primitives::StoreView(self.engine.store());
        c.call(&view, source, payload)
            .await
            .map_err(|e| ApiError::new(400, e))
    }

    async fn pools(&self) -> Vec<crate::primitives::PoolUsage> {
        match self.engine.registry().pool_reporter() {
            Some(r) => r.pools().await,
            None => Vec::new(),
        }
    }

    async fn statistics(&self) -> Result<Value, ApiError> {
        let host = self.engine.host();
        let pools = self.pools().await;
        let sum = |k: PoolKind| {
            pools
                .iter()
                .filter(|p| p.kind == k)
                .map(|p| p.size)
                .sum::<u64>()
        };
        let total = Capacity {
            cru: host.cores,
            sru: sum(PoolKind::Ssd),
            hru: sum(PoolKind::Hdd),
            mru: host.memory,
            ipv4u: 0,
        };
        let system = Capacity {
            sru: reserved_ssd(total.sru),
            mru: reserved_memory(host.memory),
            ..Capacity::default()
        };
        let (users, mut used) = self.engine.usage();
        used += system;
        Ok(json!({
            "total": total,
            "used": used,
            "system": system,
            "users": users,
            "open_connections": 0,
        }))
    }

    /// The node's loops, plus the health of every primitive set (`Lifecycle::health`) as
    /// module `primitives.<name>`.
    async fn diagnostics(&self) -> Value {
        let mut modules = self
            .state
            .modules
            .lock()
            .expect("module status lock")
            .clone();
        for (name, h) in self.engine.registry().health().await {
            let status = if h.ok { "running" } else { "error" };
            modules.insert(
                format!("primitives.{name}"),
                ModuleStatus {
                    status: status.into(),
                    error: if h.ok { String::new() } else { h.message },
                },
            );
        }
        let healthy = modules
            .values()
            .all(|m| m.status != "error" && m.status != "stopped");
        json!({
            "system_status_ok": healthy,
            "modules": modules,
            "healthy": healthy,
        })
    }

    /// `zos.admin.diag.*` (caller already authorised): read-only views of the node.
    async fn diag(&self, cmd: &str, payload: Value) -> Result<Value, ApiError> {
        match cmd {
            "zos.admin.diag.logs" => {
                let q: crate::diag::LogQuery = if payload.is_null() {
                    Default::default()
                } else {
                    arg(payload)?
                };
                let events = crate::diag::ring().query(&q);
                Ok(
                    json!({ "events": to_value(&events)?, "ring_capacity": crate::diag::RING_CAPACITY }),
                )
            }
            "zos.admin.diag.kernel" => {
                let a: crate::diag::KernelArg = if payload.is_null() {
                    Default::default()
                } else {
                    arg(payload)?
                };
                Ok(crate::diag::kernel(&a).await)
            }
            "zos.admin.diag.pools" => {
                let btrfs = crate::diag::btrfs_stats().await;
                let smart = crate::diag::smart(&crate::diag::btrfs_devices(&btrfs)).await;
                crate::diag::smart_cache().note(&smart);
                Ok(json!({
                    "pools": to_value(&self.pools().await)?,
                    "btrfs": btrfs,
                    "smart": smart,
                }))
            }
            "zos.admin.diag.net" => {
                let mut v = crate::diag::net().await;
                // The network set's WireGuard view (`zos.admin.diag.wg`), when it runs here.
                if let Some(c) = self.engine.registry().command("zos.admin.diag.wg") {
                    let view = crate::primitives::StoreView(self.engine.store());
                    v["wireguard"] = c
                        .call(&view, 0, Value::Null)
                        .await
                        .unwrap_or_else(|e| json!({ "error": e }));
                }
                Ok(v)
            }
            "zos.admin.diag.reach" => {
                let a: crate::diag::ReachArg = arg(payload)?;
                crate::diag::reach(&a)
                    .await
                    .map_err(|e| ApiError::new(400, e))
            }
            "zos.admin.diag.health" => {
                let h = self.health().await;
                let last_errors: BTreeMap<String, Value> = self
                    .state
                    .last_errors
                    .lock()
                    .expect("last errors lock")
                    .iter()
                    .map(|(k, (t, e))| (k.clone(), json!({ "at": t, "error": e })))
                    .collect();
                Ok(json!({
                    "status": h.status,
                    "reasons": h.reasons,
                    "connections": {
                        "relay_links": self.state.relay_links.load(Ordering::Relaxed),
                        "twin_id": self.state.twin_id.load(Ordering::Relaxed),
                        "farm_twin": self.state.farm_twin.load(Ordering::Relaxed),
                    },
                    "modules": self.diagnostics().await["modules"],
                    "last_errors": last_errors,
                    "maintenance": self.state.maintenance.read().expect("maintenance lock").clone(),
                    "upgrade": self.state.progress.upgrade(),
                }))
            }
            // Views a primitive set adds (the network's WireGuard peers), authorised as ours.
            _ => match self.engine.registry().command(cmd) {
                Some(c) => {
                    let view = crate::primitives::StoreView(self.engine.store());
                    c.call(&view, 0, payload)
                        .await
                        .map_err(|e| ApiError::new(400, e))
                }
                None => Err(ApiError::new(404, format!("unknown command {cmd}"))),
            },
        }
    }

    /// The self-check: every reason the node is not fully serving. Also recorded in the
    /// metrics (`zos_node_health_ok`).
    pub async fn health(&self) -> crate::diag::Health {
        let mut reasons = Vec::new();
        let modules = self.diagnostics().await;
        if let Some(m) = modules["modules"].as_object() {
            for (name, st) in m {
                let status = st["status"].as_str().unwrap_or_default();
                if status == "error" || status == "stopped" {
                    reasons.push(format!(
                        "{name} {status}: {}",
                        st["error"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
        if self.state.twin_id.load(Ordering::Relaxed) == 0 {
            reasons.push("not registered on the ledger yet".into());
        } else if self.state.relay_links.load(Ordering::Relaxed) == 0 {
            reasons.push("no relay link: the node API cannot be reached".into());
        }
        for p in self.pools().await {
            if p.size > 0 && p.used.saturating_mul(100) / p.size >= 95 {
                reasons.push(format!(
                    "pool {} is {}% full",
                    p.name,
                    p.used.saturating_mul(100) / p.size
                ));
            }
        }
        let btrfs = crate::diag::btrfs_stats().await;
        for fs in &btrfs {
            if fs["errors"].as_u64().unwrap_or(0) > 0 {
                reasons.push(format!(
                    "btrfs {} has {} device errors",
                    fs["device"].as_str().unwrap_or_default(),
                    fs["errors"]
                ));
            }
        }
        // SMART as last read (smartctl is too slow for every check; refreshed in background).
        reasons.extend(crate::diag::cached_smart_failures(
            crate::diag::btrfs_devices(&btrfs),
        ));
        let queued = self.engine.queued_jobs();
        if queued > 100 {
            reasons.push(format!("{queued} jobs queued"));
        }
        let h = crate::diag::Health::from_reasons(reasons);
        self.engine.metrics().set_health(h.clone());
        h
    }

    fn debug(&self, cmd: &str, payload: Value) -> Result<Value, ApiError> {
        match cmd {
            "zos.debug.deployment.list" => {
                let a: DebugListArg = if payload.is_null() {
                    DebugListArg::default()
                } else {
                    arg(payload)?
                };
                let all = self
                    .engine
                    .store()
                    .list(a.twin_id)
                    .map_err(EngineError::from)?;
                let deployments: Vec<Value> = all
                    .into_iter()
                    .map(|r| {
                        let d = r.deployment;
                        json!({
                            "twin_id": d.twin_id,
                            "contract_id": d.contract_id,
                            "workloads": d.workloads.iter().map(|w| json!({
                                "type": w.workload_type, "name": w.name, "state": w.result.state,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(json!({ "deployments": deployments }))
            }
            "zos.debug.deployment.get"
            | "zos.debug.deployment.history"
            | "zos.debug.deployment.health" => {
                let a: DebugGetArg = arg(payload)?;
                let (twin, contract) = a
                    .deployment
                    .split_once(':')
                    .and_then(|(t, c)| Some((t.parse::<u32>().ok()?, c.parse::<u64>().ok()?)))
                    .ok_or_else(|| ApiError::new(400, "deployment must be '<twin>:<contract>'"))?;
                let d = self.engine.get(twin, contract)?;
                if cmd.ends_with(".get") {
                    return Ok(json!({ "deployment": d }));
                }
                if cmd.ends_with(".health") {
                    // Health as the engine knows it: the last recorded state of each workload.
                    let workloads: Vec<Value> = d
                        .workloads
                        .iter()
                        .map(|w| {
                            let healthy = w.result.state.is_okay();
                            json!({
                                "workload_id": d.workload_id(&w.name), "type": w.workload_type,
                                "name": w.name,
                                "status": if healthy { "healthy" } else { "unhealthy" },
                                "checks": [{ "name": "result", "ok": healthy,
                                             "state": w.result.state, "message": w.result.error }],
                            })
                        })
                        .collect();
                    return Ok(
                        json!({ "twin_id": twin, "contract_id": contract, "workloads": workloads }),
                    );
                }
                let history: Vec<Value> = self
                    .engine
                    .changes(twin, contract)?
                    .into_iter()
                    .enumerate()
                    .map(|(seq, w)| {
                        json!({
                            "seq": seq + 1, "type": w.workload_type, "name": w.name,
                            "created": w.result.created, "state": w.result.state,
                            "message": w.result.error,
                        })
                    })
                    .collect();
                Ok(json!({ "deployment": d, "history": history }))
            }
            _ => Err(ApiError::new(404, format!("unknown command {cmd}"))),
        }
    }

    /// An RMB router answering every command in [`COMMANDS`].
    pub fn router(&self) -> zos_rmb::Router {
        let mut r = zos_rmb::Router::new();
        // Commands of primitive crates go through `dispatch` too (it finds them in the
        // registry); a built-in name wins over theirs.
        let extra = self.engine.registry().commands().map(|(name, _)| name);
        let names: Vec<String> = COMMANDS
            .iter()
            .copied()
            .chain(extra.filter(|n| !COMMANDS.contains(n)))
            .map(str::to_string)
            .collect();
        for name in names {
            let api = self.clone();
            r.handle(
                &name.clone(),
                move |ctx: zos_rmb::RequestContext, payload: Value| {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        api.dispatch(ctx.source, &name, payload)
                            .await
                            .map_err(|e| zos_rmb::HandlerError::new(e.code, e.message))
                    }
                },
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn api(dir: &tempfile::TempDir) -> Api {
        api_with(dir, crate::primitives::PrimitiveRegistry::new())
    }

    /// The farm's twin is 5, an admin twin 9.
    fn api_with(dir: &tempfile::TempDir, registry: crate::primitives::PrimitiveRegistry) -> Api {
        let engine = crate::engine::test_engine_with(&dir.path().join("e.redb"), registry);
        let state = NodeState {
            farm_id: 1,
            admin_twins: vec![9],
            ..NodeState::default()
        };
        state.farm_twin.store(5, Ordering::Relaxed);
        Api::new(engine, Arc::new(state))
    }

    /// `zos.admin.reboot`: the farm's twin (5) and admin twins (9) only; it writes `reboot` to
    /// PID 1's request file after the reply; a node without PID 1 says why.
    #[tokio::test]
    async fn reboot_is_the_farmers_and_asks_pid1() {
        let dir = tempfile::tempdir().unwrap();
        let request = dir.path().join("init-request");
        let engine = crate::engine::test_engine_with(
            &dir.path().join("e.redb"),
            crate::primitives::PrimitiveRegistry::new(),
        );
        let state = NodeState {
            farm_id: 1,
            admin_twins: vec![9],
            init_request: Some(request.clone()),
            ..NodeState::default()
        };
        state.farm_twin.store(5, Ordering::Relaxed);
        let api = Api::new(engine.clone(), Arc::new(state));
        assert!(COMMANDS.contains(&"zos.admin.reboot"), "routed over RMB");
        for twin in [3, 0] {
            let e = api
                .dispatch(twin, "zos.admin.reboot", Value::Null)
                .await
                .unwrap_err();
            assert_eq!(e.code, 401, "twin {twin}: {e}");
        }
        assert!(!request.exists(), "a refused call writes nothing");
        for twin in [5, 9] {
            let v = api
                .dispatch(twin, "zos.admin.reboot", Value::Null)
                .await
                .unwrap();
            assert_eq!(v["rebooting"], json!(true));
            assert!(!request.exists(), "the reply goes out before PID 1 sees it");
            tokio::time::sleep(REBOOT_DELAY + std::time::Duration::from_millis(500)).await;
            assert_eq!(std::fs::read_to_string(&request).unwrap(), "reboot");
            std::fs::remove_file(&request).unwrap();
        }
        // an unwritable place is the caller's error, not a silent no-op
        let state = NodeState {
            init_request: Some(dir.path().join("missing/init-request")),
            ..NodeState::default()
        };
        state.farm_twin.store(5, Ordering::Relaxed);
        let e = Api::new(engine.clone(), Arc::new(state))
            .dispatch(5, "zos.admin.reboot", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(e.code, 500, "{e}");
        // a host process: no PID 1 to ask
        let state = NodeState::default();
        state.farm_twin.store(5, Ordering::Relaxed);
        let e = Api::new(engine, Arc::new(state))
            .dispatch(5, "zos.admin.reboot", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                400,
                "reboot needs the zos image's PID 1: this node runs as a host process"
            )
        );
    }

    #[tokio::test]
    async fn access_rules_and_upstream_texts() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        let e = api
            .dispatch(3, "zos.deployment.delete", json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            e.message,
            "deletion over the api is disabled, please cancel your contract instead"
        );
        let e = api
            .dispatch(3, "zos.deployment.get", json!({"contract_id": 1}))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (404, "deployment not found"));
        let e = api
            .dispatch(3, "zos.deployment.get", json!({"contract": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code, 400);
        // admin: farm twin only, under both prefixes
        assert_eq!(
            api.dispatch(3, "zos.admin.interfaces", Value::Null)
                .await
                .unwrap_err()
                .code,
            401
        );
        assert!(
            api.dispatch(5, "zos.admin.interfaces", Value::Null)
                .await
                .unwrap()
                .is_object()
        );
        assert!(
            api.dispatch(5, "zos.network.admin.get_public_nic", Value::Null)
                .await
                .unwrap()["is_single"]
                .as_bool()
                .unwrap()
        );
        // debug: admin twins only
        assert_eq!(
            api.dispatch(5, "zos.debug.deployment.list", Value::Null)
                .await
                .unwrap_err()
                .code,
            401
        );
        assert_eq!(
            api.dispatch(9, "zos.debug.deployment.list", Value::Null)
                .await
                .unwrap(),
            json!({"deployments": []})
        );
        assert_eq!(
            api.dispatch(9, "zos.debug.deployment.get", json!({"deployment": "x"}))
                .await
                .unwrap_err()
                .code,
            400
        );
        // no primitives: no features; nothing can be deployed
        assert_eq!(
            api.dispatch(3, "zos.system.node_features_get", Value::Null)
                .await
                .unwrap(),
            json!([])
        );
        assert_eq!(
            api.dispatch(3, "zos.nope", Value::Null)
                .await
                .unwrap_err()
                .code,
            404
        );
        let v = api
            .dispatch(3, "zos.system.version", Value::Null)
            .await
            .unwrap();
        assert_eq!(v["zos"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(v["deployment_hash"], json!([1, 2]));
        let s = api
            .dispatch(3, "zos.statistics.get", Value::Null)
            .await
            .unwrap();
        assert_eq!(s["system"]["mru"], json!(2u64 << 30));
        assert_eq!(
            api.dispatch(3, "zos.network.public_config_get", Value::Null)
                .await
                .unwrap_err()
                .code,
            404
        );
        *api.state.public_config.write().unwrap() = Some(json!({"ipv4": "1.2.3.4/24"}));
        assert_eq!(
            api.dispatch(3, "zos.network.public_config_get", Value::Null)
                .await
                .unwrap()["ipv4"],
            json!("1.2.3.4/24")
        );
    }

    #[tokio::test]
    async fn debug_views_come_from_stored_workloads() {
        use crate::model::{ResultState, Workload, WorkloadType};
        use crate::store::{Apply, Job, JobOp};
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        let wl = |name: &str, t: WorkloadType, data: Value| Workload {
            name: name.into(),
            workload_type: t,
            data,
            ..Workload::default()
        };
        let d = Deployment {
            twin_id: 3,
            contract_id: 1,
            workloads: vec![
                wl("net", WorkloadType::Network, json!({})),
                wl("pub", WorkloadType::Ip, json!({"v4": true})),
                wl("vm", WorkloadType::Zmachine, json!({})),
            ],
            ..Deployment::default()
        };
        let store = api.engine.store();
        store
            .create(
                &d,
                &Job {
                    twin: 3,
                    contract: 1,
                    op: JobOp::Provision,
                    queued_ms: 0,
                },
            )
            .unwrap();
        for mut w in d.workloads.clone() {
            w.result.state = ResultState::Ok;
            store.record(3, 1, &w, Apply::Upsert).unwrap();
        }
        // debug views for admin twin 9
        let dep = json!({"deployment": "3:1"});
        let h = api
            .dispatch(9, "zos.debug.deployment.history", dep.clone())
            .await
            .unwrap();
        assert_eq!(h["history"].as_array().unwrap().len(), 6);
        assert_eq!(h["history"][5]["state"], json!("ok"));
        let health = api
            .dispatch(9, "zos.debug.deployment.health", dep.clone())
            .await
            .unwrap();
        assert_eq!(health["workloads"][0]["workload_id"], json!("3-1-net"));
        assert_eq!(health["workloads"][0]["status"], json!("healthy"));
        let list = api
            .dispatch(9, "zos.debug.deployment.list", json!({"twin_id": 3}))
            .await
            .unwrap();
        assert_eq!(
            list["deployments"][0]["workloads"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let e = api
            .dispatch(9, "zos.debug.deployment.get", json!({"deployment": "3:2"}))
            .await
            .unwrap_err();
        assert_eq!(e.code, 404);
    }

    /// Diagnostics: the farm twin and the admin twins read them, admin twins get no other
    /// admin command, users nothing; the self-check lands in the metrics.
    #[tokio::test]
    async fn diag_access_and_health_in_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        for who in [5, 9] {
            let h = api
                .dispatch(who, "zos.admin.diag.health", Value::Null)
                .await
                .unwrap();
            // not registered (twin 0) in this fixture: degraded, and says why
            assert_eq!(h["status"], json!("degraded"), "{h}");
            assert!(
                h["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "not registered on the ledger yet"),
                "{h}"
            );
        }
        assert_eq!(
            api.dispatch(9, "zos.admin.interfaces", Value::Null)
                .await
                .unwrap_err()
                .code,
            401
        );
        for cmd in [
            "zos.admin.diag.logs",
            "zos.admin.diag.health",
            "zos.admin.diag.net",
        ] {
            assert_eq!(
                api.dispatch(3, cmd, Value::Null).await.unwrap_err().code,
                401
            );
        }
        let e = api
            .dispatch(
                5,
                "zos.admin.diag.reach",
                json!({"address": "node.example:22"}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, 400, "{e}");
        let e = api
            .dispatch(5, "zos.admin.diag.logs", json!({"contract": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code, 400, "unknown filter fields are refused: {e}");
        let m = api.engine.metrics().render(&BTreeMap::new(), 0);
        assert!(m.contains("zos_node_health_ok 0"), "{m}");
        drop(api);

        // A view a primitive set adds under zos.admin.diag.* (the network's `wg`) is behind
        // the same gate: farm and admin twins read it, users get 401.
        struct Echo;
        #[async_trait::async_trait]
        impl crate::primitives::ApiCommand for Echo {
            async fn call(
                &self,
                _node: &dyn crate::primitives::NodeView,
                _twin: u32,
                _payload: Value,
            ) -> Result<Value, String> {
                Ok(json!({"networks": []}))
            }
        }
        let mut registry = crate::primitives::PrimitiveRegistry::new();
        registry.add_command("zos.admin.diag.wg", Arc::new(Echo));
        let dir2 = tempfile::tempdir().unwrap();
        let api = api_with(&dir2, registry);
        for who in [5, 9] {
            let v = api
                .dispatch(who, "zos.admin.diag.wg", Value::Null)
                .await
                .unwrap();
            assert_eq!(v, json!({"networks": []}));
        }
        assert_eq!(
            api.dispatch(3, "zos.admin.diag.wg", Value::Null)
                .await
                .unwrap_err()
                .code,
            401
        );
        assert_eq!(
            api.dispatch(5, "zos.admin.diag.nope", Value::Null)
                .await
                .unwrap_err()
                .code,
            404
        );
        assert!(
            m.contains("zos_node_health_degraded{reason=\"not registered on the ledger yet\"} 1"),
            "{m}"
        );
    }

    /// A command of a primitive crate: answered through `dispatch`, reading the store only
    /// through its `NodeView`, errors as 400; built-in names win.
    #[tokio::test]
    async fn primitive_commands_read_the_node_through_their_view() {
        struct Count;
        #[async_trait::async_trait]
        impl crate::primitives::ApiCommand for Count {
            async fn call(
                &self,
                node: &dyn crate::primitives::NodeView,
                source_twin: u32,
                payload: Value,
            ) -> Result<Value, String> {
                if payload.is_string() {
                    return Err("no strings".into());
                }
                Ok(json!(node.deployments(Some(source_twin))?.len()))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut registry = crate::primitives::PrimitiveRegistry::new();
        registry.add_command("zos.test.count", Arc::new(Count));
        registry.add_command("zos.system.version", Arc::new(Count));
        struct Sick;
        #[async_trait::async_trait]
        impl crate::primitives::Lifecycle for Sick {
            fn name(&self) -> &str {
                "sick"
            }
            async fn health(&self) -> crate::primitives::Health {
                crate::primitives::Health::failing("disk gone")
            }
        }
        registry.add_lifecycle(Arc::new(Sick));
        let engine = crate::engine::test_engine_with(&dir.path().join("e.redb"), registry);
        let d = Deployment {
            twin_id: 3,
            contract_id: 1,
            ..Deployment::default()
        };
        engine
            .store()
            .create(
                &d,
                &crate::store::Job {
                    twin: 3,
                    contract: 1,
                    op: crate::store::JobOp::Provision,
                    queued_ms: 0,
                },
            )
            .unwrap();
        let api = Api::new(engine, Arc::new(NodeState::default()));
        assert_eq!(
            api.dispatch(3, "zos.test.count", Value::Null)
                .await
                .unwrap(),
            json!(1)
        );
        assert_eq!(
            api.dispatch(4, "zos.test.count", Value::Null)
                .await
                .unwrap(),
            json!(0)
        );
        let e = api
            .dispatch(3, "zos.test.count", json!("x"))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (400, "no strings"));
        assert!(
            api.dispatch(3, "zos.system.version", Value::Null)
                .await
                .unwrap()
                .is_object()
        );
        let d = api
            .dispatch(3, "zos.system.diagnostics", Value::Null)
            .await
            .unwrap();
        assert_eq!(d["healthy"], json!(false));
        assert_eq!(d["modules"]["primitives.sick"]["error"], json!("disk gone"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Untrusted payloads never panic the API: every command answers Ok or a clear error.
        #[test]
        fn arbitrary_payloads_never_panic(cmd in 0usize..COMMANDS.len(), s in ".{0,64}", n in any::<i64>(), b in any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let api = api(&dir);
            for payload in [json!(s), json!(n), json!(b), json!({"contract_id": n, "deployment": s, "twin_id": n}), json!([s, n]),
                            json!({"version": n, "twin_id": 3, "workloads": [{"name": s, "type": s, "data": {"size": n}}]})] {
                let r = rt.block_on(api.dispatch(3, COMMANDS[cmd], payload));
                if let Err(e) = r {
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
