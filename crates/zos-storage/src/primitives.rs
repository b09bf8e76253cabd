//! The node's `volume`, `zmount` and `zdb` primitives over [`Storage`], the pool reporter,
//! the snapshot API handlers (`zos.storage.volume.snapshots` / `.restore`), and the storage
//! lifecycle ([`StorageSet`]: ZeroDB servers up before reconciliation, pools released last).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zos_primitive::{
    ApiCommand, Health, Lifecycle, NodeView, PoolReporter, PoolUsage, Primitive, PrimitiveError,
    PrimitiveRegistry, WorkloadCtx,
};
use zos_types::data::{VolumeResult, ZMountResult};
use zos_types::{ResultState, Workload, WorkloadType};

use crate::storage::Storage;
use crate::volume::{SnapshotInfo, VolumeError};
use crate::zdb::{NamespaceMode, NamespaceSpec, ZdbError};
use crate::zdb_server::{InProcessZdb, ZdbLauncher};
use crate::zmount::DiskError;

/// Register the storage primitives, pool reporter, API commands and lifecycle with the node;
/// ZeroDB servers run in the node's process ([`InProcessZdb`]).
pub fn register(registry: &mut PrimitiveRegistry, storage: Arc<Storage>) {
    register_with(registry, storage, Arc::new(InProcessZdb));
}

/// [`register`] with another way to run ZeroDB servers (tests).
pub fn register_with(
    registry: &mut PrimitiveRegistry,
    storage: Arc<Storage>,
    launcher: Arc<dyn ZdbLauncher>,
) {
    registry.add_lifecycle(Arc::new(StorageSet {
        storage: storage.clone(),
        launcher,
    }));
    registry.register(Arc::new(VolumePrimitive(storage.clone())));
    registry.register(Arc::new(ZmountPrimitive(storage.clone())));
    registry.register(Arc::new(ZdbPrimitive(storage.clone())));
    registry.set_pool_reporter(Arc::new(Reporter(storage.clone())));
    registry.add_command(
        "zos.storage.volume.snapshots",
        Arc::new(SnapshotsCommand(storage.clone())),
    );
    registry.add_command(
        "zos.storage.volume.restore",
        Arc::new(RestoreCommand(storage)),
    );
}

/// `zos.storage.volume.snapshots {contract_id, name}` over RMB.
struct SnapshotsCommand(Arc<Storage>);

#[async_trait]
impl ApiCommand for SnapshotsCommand {
    async fn call(
        &self,
        _node: &dyn NodeView,
        source_twin: u32,
        payload: Value,
    ) -> Result<Value, String> {
        let req: VolumeSnapshotRequest =
            serde_json::from_value(payload).map_err(|e| format!("invalid request: {e}"))?;
        let list = api_volume_snapshots(&self.0, source_twin, &req)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_value(list).map_err(|e| e.to_string())
    }
}

/// `zos.storage.volume.restore {contract_id, name, snapshot}` over RMB.
struct RestoreCommand(Arc<Storage>);

#[async_trait]
impl ApiCommand for RestoreCommand {
    async fn call(
        &self,
        _node: &dyn NodeView,
        source_twin: u32,
        payload: Value,
    ) -> Result<Value, String> {
        let req: VolumeSnapshotRequest =
            serde_json::from_value(payload).map_err(|e| format!("invalid request: {e}"))?;
        let reply = api_volume_restore(&self.0, source_twin, &req)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_value(reply).map_err(|e| e.to_string())
    }
}

fn data<T: serde::de::DeserializeOwned>(wl: &Workload) -> Result<T, PrimitiveError> {
    serde_json::from_value(wl.data.clone()).map_err(|e| PrimitiveError::InvalidData(e.to_string()))
}

fn json<T: Serialize>(v: &T) -> Result<Value, PrimitiveError> {
    serde_json::to_value(v).map_err(PrimitiveError::failed)
}

fn volume_err(e: VolumeError) -> PrimitiveError {
    if e.is_unchanged() {
        PrimitiveError::Unchanged(e.to_string())
    } else {
        PrimitiveError::failed(e)
    }
}

fn disk_err(e: DiskError) -> PrimitiveError {
    if e.is_unchanged() {
        PrimitiveError::Unchanged(e.to_string())
    } else {
        PrimitiveError::failed(e)
    }
}

fn zdb_err(e: ZdbError) -> PrimitiveError {
    match e {
        e if e.is_unchanged() => PrimitiveError::Unchanged(e.to_string()),
        e @ ZdbError::Invalid { .. } => PrimitiveError::InvalidData(e.to_string()),
        e => PrimitiveError::failed(e),
    }
}

/// `volume`: btrfs subvolume with quota, snapshot before update.
#[derive(Debug)]
pub struct VolumePrimitive(pub Arc<Storage>);

#[async_trait]
impl Primitive for VolumePrimitive {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Volume
    }
    fn supports_update(&self) -> bool {
        true
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let d: zos_types::data::Volume = data(wl)?;
        self.0
            .volume_create(&ctx.workload_id, d.size)
            .await
            .map_err(volume_err)?;
        json(&VolumeResult {
            id: ctx.workload_id.clone(),
        })
    }
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let d: zos_types::data::Volume = data(wl)?;
        self.0
            .volume_update(&ctx.workload_id, d.size)
            .await
            .map_err(volume_err)?;
        json(&VolumeResult {
            id: ctx.workload_id.clone(),
        })
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.0
            .volume_delete(&ctx.workload_id)
            .await
            .map_err(volume_err)
    }
}

/// `zmount`: encrypted sparse VM disk, grow-only.
#[derive(Debug)]
pub struct ZmountPrimitive(pub Arc<Storage>);

#[async_trait]
impl Primitive for ZmountPrimitive {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Zmount
    }
    fn supports_update(&self) -> bool {
        true
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let d: zos_types::data::ZMount = data(wl)?;
        // A workload the stored deployment does not hold yet (added by an update), or holds
        // as `init` (a new deployment never provisioned), has had no disk on this node: an
        // image under its id is stale and is replaced. Otherwise this is re-provisioning and
        // the disk is kept (in any other state, e.g. `error` after a failed re-provision, it
        // may hold the user's data).
        let fresh = ctx
            .sibling(&wl.name)
            .is_none_or(|s| s.state() == ResultState::Init);
        let disk = if fresh {
            self.0.disk_create_new(&ctx.workload_id, d.size).await
        } else {
            self.0.disk_create(&ctx.workload_id, d.size).await
        };
        disk.map_err(disk_err)?;
        json(&ZMountResult {
            volume_id: ctx.workload_id.clone(),
        })
    }
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let d: zos_types::data::ZMount = data(wl)?;
        self.0
            .disk_update(&ctx.workload_id, d.size)
            .await
            .map_err(disk_err)?;
        json(&ZMountResult {
            volume_id: ctx.workload_id.clone(),
        })
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.0.disk_delete(&ctx.workload_id).await.map_err(disk_err)
    }
}

/// `zdb`: a namespace on one of the node's ZeroDB servers.
#[derive(Debug)]
pub struct ZdbPrimitive(pub Arc<Storage>);

fn ns_spec(wl: &Workload) -> Result<NamespaceSpec, PrimitiveError> {
    let d: zos_types::data::Zdb = data(wl)?;
    let mode = match d.mode.0.as_str() {
        "user" => NamespaceMode::User,
        "seq" => NamespaceMode::Seq,
        other => {
            return Err(PrimitiveError::InvalidData(format!(
                "invalid mode {other:?}"
            )));
        }
    };
    Ok(NamespaceSpec {
        size: d.size,
        mode,
        password: d.password,
        public: d.public,
    })
}

fn zdb_result(r: zos_types::data::ZdbResult) -> Result<Value, PrimitiveError> {
    json(&r)
}

#[async_trait]
impl Primitive for ZdbPrimitive {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Zdb
    }
    fn supports_update(&self) -> bool {
        true
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        zdb_result(
            self.0
                .zdb_create(&ctx.workload_id, &ns_spec(wl)?)
                .await
                .map_err(zdb_err)?,
        )
    }
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        zdb_result(
            self.0
                .zdb_update(&ctx.workload_id, &ns_spec(wl)?)
                .await
                .map_err(zdb_err)?,
        )
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.0.zdb_delete(&ctx.workload_id).await.map_err(zdb_err)
    }
    async fn pause(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.0
            .zdb_lock(&ctx.workload_id, true)
            .await
            .map_err(zdb_err)
    }
    async fn resume(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.0
            .zdb_lock(&ctx.workload_id, false)
            .await
            .map_err(zdb_err)
    }
}

/// Reports pools to the node (`zos.storage.pools`, capacity).
#[derive(Debug)]
struct Reporter(Arc<Storage>);

#[async_trait]
impl PoolReporter for Reporter {
    async fn pools(&self) -> Vec<PoolUsage> {
        match self.0.pool_infos().await {
            Ok(list) => list
                .into_iter()
                .map(|p| PoolUsage {
                    name: p.name,
                    kind: p.kind,
                    size: p.size,
                    used: p.used,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pool usage");
                Vec::new()
            }
        }
    }
}

/// Storage's lifecycle: ZeroDB servers start before the node reconciles (so that stored zdb
/// workloads find their server), are checked for health, and stop, with the pools, after it.
pub struct StorageSet {
    storage: Arc<Storage>,
    launcher: Arc<dyn ZdbLauncher>,
}

impl std::fmt::Debug for StorageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSet")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for StorageSet {
    fn name(&self) -> &str {
        "storage"
    }

    async fn start(&self) -> Result<(), String> {
        self.storage
            .start_zdb(self.launcher.clone())
            .await
            .map_err(|e| format!("starting ZeroDB: {e}"))
    }

    /// Unhealthy when no ZeroDB server runs (none started, or all stopped for good), or the
    /// pools cannot be read.
    async fn health(&self) -> Health {
        if let Err(e) = self.storage.pool_infos().await {
            return Health::failing(format!("cannot read pools: {e}"));
        }
        let servers = self.storage.zdb_servers();
        if servers.is_empty() && !self.storage.pools().is_empty() {
            return Health::failing("no ZeroDB server is running");
        }
        Health {
            ok: true,
            message: format!(
                "{} pools, {} ZeroDB servers",
                self.storage.pools().len(),
                servers.len()
            ),
        }
    }

    async fn shutdown(&self) {
        self.storage.shutdown().await;
    }
}

/// Payload of `zos.storage.volume.snapshots` and `zos.storage.volume.restore`: the caller's
/// own volume, by contract and workload name (the twin is the RMB source twin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSnapshotRequest {
    /// The deployment's contract.
    pub contract_id: u64,
    /// The volume workload's name.
    pub name: String,
    /// For restore: the snapshot name from the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Reply of `zos.storage.volume.restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReply {
    /// The snapshot of the content just replaced (restore it to undo).
    pub saved_as: String,
}

/// `zos.storage.volume.snapshots`: the snapshots of the caller's volume, oldest first.
pub async fn api_volume_snapshots(
    storage: &Storage,
    source_twin: u32,
    req: &VolumeSnapshotRequest,
) -> Result<Vec<SnapshotInfo>, VolumeError> {
    storage
        .volume_snapshots(&zos_types::workload_id(
            source_twin,
            req.contract_id,
            &req.name,
        ))
        .await
}

/// `zos.storage.volume.restore`: restore the caller's volume to `req.snapshot`.
pub async fn api_volume_restore(
    storage: &Storage,
    source_twin: u32,
    req: &VolumeSnapshotRequest,
) -> Result<RestoreReply, VolumeError> {
    let id = zos_types::workload_id(source_twin, req.contract_id, &req.name);
    let snapshot = req.snapshot.as_deref().unwrap_or_default();
    let saved = storage.volume_restore(&id, snapshot).await?;
    Ok(RestoreReply {
        saved_as: saved.name,
    })
}
