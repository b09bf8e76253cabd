//! The deployment model the engine works on.
//!
//! PLACEHOLDER until `zos-types` publishes `Deployment`/`Workload`: these definitions follow the
//! agreed contract (same names and fields) so that primitives can be written now; they are
//! replaced by `pub use zos_types::…` re-exports as soon as the real model lands.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The state of a workload result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResultState {
    /// Stored, not processed yet.
    #[default]
    Init,
    /// An update that changed nothing (kept in the log only).
    Unchanged,
    /// Failed; `error` says why.
    Error,
    /// Running.
    Ok,
    /// Removed.
    Deleted,
    /// Paused (contract in grace period).
    Paused,
}

/// A workload's result.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WorkloadResult {
    /// Unix time of the result.
    pub created: i64,
    /// State.
    pub state: ResultState,
    /// Error message (`message` on the wire).
    #[serde(rename = "message", default)]
    pub error: String,
    /// Type-specific result data.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Workload types (upstream names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadType {
    /// `zmount`
    #[serde(rename = "zmount")]
    ZMount,
    /// `volume`
    #[serde(rename = "volume")]
    Volume,
    /// `zdb`
    #[serde(rename = "zdb")]
    Zdb,
}

impl WorkloadType {
    /// Upstream name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::ZMount => "zmount",
            WorkloadType::Volume => "volume",
            WorkloadType::Zdb => "zdb",
        }
    }
}

/// One workload of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Version (≤ deployment version).
    pub version: u32,
    /// Unique name within the deployment.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub workload_type: WorkloadType,
    /// Type-specific data.
    pub data: Box<RawValue>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: String,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
    /// Result.
    #[serde(default)]
    pub result: WorkloadResult,
}

/// A deployment (subset of fields the placeholder needs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// Version.
    pub version: u32,
    /// Owner twin.
    pub twin_id: u32,
    /// Node contract id.
    pub contract_id: u64,
    /// Metadata.
    #[serde(default)]
    pub metadata: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Workloads.
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

/// `"<twin>-<contract>-<name>"`.
pub fn workload_id(twin: u32, contract: u64, name: &str) -> String {
    format!("{twin}-{contract}-{name}")
}
