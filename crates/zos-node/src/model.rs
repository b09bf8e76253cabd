//! The deployment model the engine works on.
//!
//! PLACEHOLDER until `zos-types` publishes `Deployment`/`Workload`: these definitions copy the
//! shapes of the in-progress `zos-types` model so that primitives can be written now; they are
//! replaced by `pub use zos_types::…` re-exports as soon as the real model lands.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The workload types upstream registers, plus any other string (kept so that an unknown
/// type fails validation with upstream's message instead of failing to parse).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadType {
    /// A VM disk.
    Zmount,
    /// A btrfs volume shared into VMs with virtio-fs.
    Volume,
    /// A ZeroDB namespace.
    Zdb,
    /// A private WireGuard network resource (sharable).
    Network,
    /// A network resource on zos-light (sharable).
    NetworkLight,
    /// A virtual machine.
    Zmachine,
    /// A virtual machine on zos-light.
    ZmachineLight,
    /// A public IP (v4 and/or v6).
    Ip,
    /// A public IPv4 (deprecated form of `ip`).
    Ipv4,
    /// A web gateway under the node's domain.
    GatewayNameProxy,
    /// A web gateway for a user-owned domain.
    GatewayFqdnProxy,
    /// A quantum-safe file system.
    Qsfs,
    /// Log streaming from a zmachine.
    Zlogs,
    /// Anything else: never valid.
    Unknown(String),
}

impl WorkloadType {
    /// Every registered type.
    pub const ALL: [WorkloadType; 13] = [
        WorkloadType::Zmount,
        WorkloadType::Volume,
        WorkloadType::Zdb,
        WorkloadType::Network,
        WorkloadType::NetworkLight,
        WorkloadType::Zmachine,
        WorkloadType::ZmachineLight,
        WorkloadType::Ip,
        WorkloadType::Ipv4,
        WorkloadType::GatewayNameProxy,
        WorkloadType::GatewayFqdnProxy,
        WorkloadType::Qsfs,
        WorkloadType::Zlogs,
    ];

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            WorkloadType::Zmount => "zmount",
            WorkloadType::Volume => "volume",
            WorkloadType::Zdb => "zdb",
            WorkloadType::Network => "network",
            WorkloadType::NetworkLight => "network-light",
            WorkloadType::Zmachine => "zmachine",
            WorkloadType::ZmachineLight => "zmachine-light",
            WorkloadType::Ip => "ip",
            WorkloadType::Ipv4 => "ipv4",
            WorkloadType::GatewayNameProxy => "gateway-name-proxy",
            WorkloadType::GatewayFqdnProxy => "gateway-fqdn-proxy",
            WorkloadType::Qsfs => "qsfs",
            WorkloadType::Zlogs => "zlogs",
            WorkloadType::Unknown(s) => s,
        }
    }

    /// Parses a wire name; unknown names become [`WorkloadType::Unknown`].
    pub fn parse(s: &str) -> WorkloadType {
        WorkloadType::ALL
            .iter()
            .find(|t| t.as_str() == s)
            .cloned()
            .unwrap_or_else(|| WorkloadType::Unknown(s.to_string()))
    }

    /// Sharable types can be referenced from other deployments of the same twin.
    pub fn is_sharable(&self) -> bool {
        matches!(self, WorkloadType::Network | WorkloadType::NetworkLight)
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for WorkloadType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WorkloadType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(WorkloadType::parse(&String::deserialize(d)?))
    }
}

/// Seconds since the Unix epoch. Reads an integer or an RFC 3339 string; writes an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Timestamp(i64::deserialize(d)?))
    }
}

/// The state of a workload as reported by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ResultState {
    /// Not set (a deployment as the user sends it).
    #[default]
    #[serde(rename = "")]
    Unset,
    /// Accepted, not processed yet.
    #[serde(rename = "init")]
    Init,
    /// An update that changed nothing; the previous result stands.
    #[serde(rename = "unchanged")]
    Unchanged,
    /// Failed; see the message.
    #[serde(rename = "error")]
    Error,
    /// Running.
    #[serde(rename = "ok")]
    Ok,
    /// Removed.
    #[serde(rename = "deleted")]
    Deleted,
    /// Suspended (contract in grace period).
    #[serde(rename = "paused")]
    Paused,
}

impl ResultState {
    /// Upstream `IsOkay()`: the workload holds resources.
    pub fn is_okay(self) -> bool {
        matches!(self, ResultState::Ok | ResultState::Paused)
    }
}

/// The node's result for one workload. The error text travels under the key `message`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadResult {
    /// When the result was produced.
    pub created: Timestamp,
    /// The state.
    pub state: ResultState,
    /// The error message (upstream field `Error`, JSON key `message`).
    #[serde(rename = "message")]
    pub error: String,
    /// Type-specific result data (`null` when none).
    pub data: Value,
}

/// Resources a workload consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Capacity {
    /// Logical cores.
    pub cru: u64,
    /// SSD bytes.
    pub sru: u64,
    /// HDD bytes.
    pub hru: u64,
    /// Memory bytes.
    pub mru: u64,
    /// Public IPv4 addresses.
    pub ipv4u: u64,
}

impl std::ops::AddAssign for Capacity {
    fn add_assign(&mut self, o: Capacity) {
        self.cru += o.cru;
        self.sru += o.sru;
        self.hru += o.hru;
        self.mru += o.mru;
        self.ipv4u += o.ipv4u;
    }
}

/// One workload of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// The deployment version in which this workload last changed.
    pub version: u32,
    /// Unique name inside the deployment.
    pub name: String,
    /// The workload type.
    #[serde(rename = "type")]
    pub workload_type: WorkloadType,
    /// Type-specific data, kept as received (hashing always goes through the typed form).
    pub data: Value,
    /// User metadata.
    pub metadata: String,
    /// Human description.
    pub description: String,
    /// Result, set by the node.
    pub result: WorkloadResult,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            version: 0,
            name: String::new(),
            workload_type: WorkloadType::Unknown(String::new()),
            data: Value::Null,
            metadata: String::new(),
            description: String::new(),
            result: WorkloadResult::default(),
        }
    }
}

/// A deployment (placeholder subset).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    /// Version.
    pub version: u32,
    /// Owner twin.
    pub twin_id: u32,
    /// Node contract id.
    pub contract_id: u64,
    /// Metadata.
    pub metadata: String,
    /// Description.
    pub description: String,
    /// Workloads.
    pub workloads: Vec<Workload>,
}

/// `"<twin>-<contract>-<name>"`.
pub fn workload_id(twin: u32, contract: u64, name: &str) -> String {
    format!("{twin}-{contract}-{name}")
}
