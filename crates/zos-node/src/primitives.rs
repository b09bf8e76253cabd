//! The primitive plug-in point: one trait per workload type, and a registry.
//!
//! A primitive turns one workload into something real on this host (a subvolume, a ZeroDB
//! namespace, a VM, a network resource). The engine owns ordering, persistence, results and
//! retries; a primitive only has to be **idempotent**: `provision` may be called again for a
//! workload that already exists (after a crash, after a reboot, on reconciliation) and must then
//! converge to the same state and return the same result data, never create a second copy.
//!
//! Result mapping done by the engine (upstream `buildResult`):
//! `Ok(data)` → state `ok` with `data`; `Err(Unchanged(why))` → `unchanged` (logged, the previous
//! definition stays current); `Err(NoActionNeeded)` → no new transaction at all; any other error →
//! `error` with the error text as message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::{Deployment, Workload, WorkloadType};

/// The fixed install order of workload types (upstream `WithStartupOrder`, completed with the
/// types upstream leaves in random map order). Deprovision and pause walk it in reverse.
pub const INSTALL_ORDER: [&str; 13] = [
    "zmount",
    "volume",
    "qsfs",
    "network",
    "network-light",
    "ipv4",
    "ip",
    "zdb",
    "zmachine",
    "zmachine-light",
    "zlogs",
    "gateway-name-proxy",
    "gateway-fqdn-proxy",
];

/// Position of a type in [`INSTALL_ORDER`] (unknown names sort last).
pub fn install_rank(t: &WorkloadType) -> usize {
    INSTALL_ORDER
        .iter()
        .position(|n| *n == t.as_str())
        .unwrap_or(INSTALL_ORDER.len())
}

/// What a primitive call failed with.
#[derive(Debug, thiserror::Error)]
pub enum PrimitiveError {
    /// The type cannot be updated in place (engine rejects such updates synchronously when
    /// [`Primitive::supports_update`] is false; this is the runtime fallback).
    #[error("workload '{0}' does not support upgrade")]
    Unsupported(String),
    /// Nothing to do: the engine records no new result.
    #[error("no action needed")]
    NoActionNeeded,
    /// The update was refused without harm (e.g. a shrink): the previous definition stays.
    #[error("{0}")]
    Unchanged(String),
    /// The workload data does not decode or is not acceptable on this host.
    #[error("invalid workload data: {0}")]
    InvalidData(String),
    /// The operation failed; the message goes into the workload result.
    #[error("{0}")]
    Failed(String),
}

impl PrimitiveError {
    /// A failure from anything printable.
    pub fn failed(e: impl fmt::Display) -> Self {
        PrimitiveError::Failed(e.to_string())
    }
}

/// Secret material for key derivation: the node seed, never exposed directly.
#[derive(Clone)]
pub struct NodeSecret(Arc<[u8; 32]>);

impl NodeSecret {
    /// Wraps the node's ed25519 seed.
    pub fn new(seed: [u8; 32]) -> Self {
        NodeSecret(Arc::new(seed))
    }

    /// A 32-byte key bound to `purpose` and `subject` (HKDF-SHA256 over the node seed, salt
    /// `zos-node-key-v1`, info `purpose 0x00 subject`). Stable across restarts.
    pub fn derive(&self, purpose: &str, subject: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"zos-node-key-v1"), &self.0[..]);
        let mut info = Vec::with_capacity(purpose.len() + 1 + subject.len());
        info.extend_from_slice(purpose.as_bytes());
        info.push(0);
        info.extend_from_slice(subject.as_bytes());
        let mut out = [0u8; 32];
        hk.expand(&info, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

/// Everything a primitive may know about the workload it handles.
#[derive(Debug, Clone)]
pub struct WorkloadCtx {
    /// Owner twin.
    pub twin: u32,
    /// Node contract id.
    pub contract_id: u64,
    /// `"<twin>-<contract>-<name>"`.
    pub workload_id: String,
    /// This node's id on the ledger (0 while unregistered).
    pub node_id: u32,
    /// The deployment as currently stored, with the latest result of every workload: use it to
    /// resolve references (a zmachine's mounts, a zlogs' zmachine) and check their state.
    pub deployment: Arc<Deployment>,
    secret: NodeSecret,
}

impl WorkloadCtx {
    /// Builds a context (the engine does this; tests of primitives may too).
    pub fn new(
        node_id: u32,
        deployment: Arc<Deployment>,
        workload_name: &str,
        secret: NodeSecret,
    ) -> Self {
        WorkloadCtx {
            twin: deployment.twin_id,
            contract_id: deployment.contract_id,
            workload_id: crate::model::workload_id(
                deployment.twin_id,
                deployment.contract_id,
                workload_name,
            ),
            node_id,
            deployment,
            secret,
        }
    }

    /// A 32-byte key for this workload and `purpose` (e.g. `"zmount-luks"`), derived from the
    /// node seed: the same on every call and every restart, different per workload.
    pub fn workload_key(&self, purpose: &str) -> [u8; 32] {
        self.secret.derive(purpose, &self.workload_id)
    }

    /// Another workload of the same deployment, by name, with its latest result.
    pub fn sibling(&self, name: &str) -> Option<&Workload> {
        self.deployment.workloads.iter().find(|w| w.name == name)
    }
}

/// One workload type's implementation.
#[async_trait]
pub trait Primitive: Send + Sync {
    /// The type this primitive handles.
    fn workload_type(&self) -> WorkloadType;

    /// Whether [`Primitive::update`] is implemented; when false, a deployment update that
    /// changes a workload of this type is refused at `zos.deployment.update` time.
    fn supports_update(&self) -> bool {
        false
    }

    /// Creates the workload, or converges an existing one (idempotent). Returns result data.
    async fn provision(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError>;

    /// Applies a new definition of an existing workload. Returns result data.
    async fn update(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError> {
        let _ = (ctx, wl);
        Err(PrimitiveError::Unsupported(
            self.workload_type().as_str().to_string(),
        ))
    }

    /// Removes the workload and everything it owns (idempotent: absent is success).
    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError>;

    /// Suspends the workload (contract in grace period). Default: nothing to suspend.
    async fn pause(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let _ = (ctx, wl);
        Ok(())
    }

    /// Undoes [`Primitive::pause`]. Default: nothing to resume.
    async fn resume(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let _ = (ctx, wl);
        Ok(())
    }
}

/// Kind of a storage pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Solid state: SRU.
    Ssd,
    /// Spinning disk: HRU.
    Hdd,
}

/// One storage pool as reported by `zos.storage.pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    /// Pool name.
    pub name: String,
    /// SSD or HDD.
    #[serde(rename = "type")]
    pub kind: PoolKind,
    /// Size in bytes.
    pub size: u64,
    /// Used bytes.
    pub used: u64,
}

/// Reports storage pools (implemented by the storage crate).
#[async_trait]
pub trait PoolReporter: Send + Sync {
    /// The pools of this node, their size and use.
    async fn pools(&self) -> Vec<PoolUsage>;
}

/// The primitives this node can run, plus host facts they contribute.
#[derive(Clone, Default)]
pub struct PrimitiveRegistry {
    by_type: BTreeMap<String, Arc<dyn Primitive>>,
    pools: Option<Arc<dyn PoolReporter>>,
    features: Vec<String>,
    commands: BTreeMap<String, Arc<dyn ApiCommand>>,
}

/// An extra node API command contributed by a primitive crate (volume snapshots, VM consoles…),
/// so the node's API grows with its primitives without depending on them.
#[async_trait]
pub trait ApiCommand: Send + Sync {
    /// Handles `payload` from `source_twin` (already authenticated by RMB). Implementations must
    /// only touch the caller's own workloads; an error goes back to the caller as a 400.
    async fn call(
        &self,
        source_twin: u32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String>;
}

impl fmt::Debug for PrimitiveRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrimitiveRegistry")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .field("features", &self.features)
            .finish()
    }
}

impl PrimitiveRegistry {
    /// An empty registry: the node then refuses every workload type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `p` for its type; returns the primitive it replaced, if any.
    pub fn register(&mut self, p: Arc<dyn Primitive>) -> Option<Arc<dyn Primitive>> {
        self.by_type
            .insert(p.workload_type().as_str().to_string(), p)
    }

    /// Sets the storage pool reporter (used for capacity, statistics and `zos.storage.pools`).
    pub fn set_pool_reporter(&mut self, r: Arc<dyn PoolReporter>) {
        self.pools = Some(r);
    }

    /// Advertises an extra node feature (e.g. `"mycelium"`) in `node_features_get`.
    pub fn add_feature(&mut self, feature: impl Into<String>) {
        self.features.push(feature.into());
    }

    /// Adds an API command (e.g. `zos.storage.volume.snapshots`); built-in names win.
    pub fn add_command(&mut self, name: impl Into<String>, command: Arc<dyn ApiCommand>) {
        self.commands.insert(name.into(), command);
    }

    /// The extra API commands.
    pub fn commands(&self) -> impl Iterator<Item = (&str, &Arc<dyn ApiCommand>)> {
        self.commands.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The primitive for `t`.
    pub fn get(&self, t: &WorkloadType) -> Option<&Arc<dyn Primitive>> {
        self.by_type.get(t.as_str())
    }

    /// Whether `t` has a primitive.
    pub fn supports(&self, t: &WorkloadType) -> bool {
        self.by_type.contains_key(t.as_str())
    }

    /// The pool reporter, if storage is wired in.
    pub fn pool_reporter(&self) -> Option<&Arc<dyn PoolReporter>> {
        self.pools.as_ref()
    }

    /// `zos.system.node_features_get`: registered types in install order, then extra features.
    pub fn features(&self) -> Vec<String> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_by_key(|n| {
            INSTALL_ORDER
                .iter()
                .position(|o| o == n)
                .unwrap_or(INSTALL_ORDER.len())
        });
        let mut out: Vec<String> = types.into_iter().map(str::to_string).collect();
        for f in &self.features {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let s = NodeSecret::new([7u8; 32]);
        assert_eq!(s.derive("a", "1-2-x"), s.derive("a", "1-2-x"));
        assert_ne!(s.derive("a", "1-2-x"), s.derive("b", "1-2-x"));
        assert_ne!(s.derive("a", "1-2-x"), s.derive("a", "1-2-y"));
        assert_ne!(
            s.derive("a", "1-2-x"),
            NodeSecret::new([8u8; 32]).derive("a", "1-2-x")
        );
    }

    #[test]
    fn install_order_has_every_upstream_type_once() {
        let mut v = INSTALL_ORDER.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 13);
        assert!(
            INSTALL_ORDER.iter().position(|t| *t == "zmount")
                < INSTALL_ORDER.iter().position(|t| *t == "zmachine")
        );
    }
}
