//! The workload envelope: type, name, versioned data and the node's result.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::challenge::Challenge;
use crate::data::WorkloadData;
use crate::error::ValidationError;

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

    /// Upstream's `WorkloadType.Valid()`.
    pub fn check(&self) -> Result<(), ValidationError> {
        match self {
            WorkloadType::Unknown(s) => Err(ValidationError::new(format!(
                "invalid reservation type '{s}'"
            ))),
            _ => Ok(()),
        }
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
        const MSG: &str = "unknown timestamp format, expecting a timestamp or an ISO-8601 date";
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .map(Timestamp)
                .ok_or_else(|| serde::de::Error::custom(MSG)),
            Value::String(s) => crate::rfc3339::parse_unix(&s)
                .map(Timestamp)
                .ok_or_else(|| serde::de::Error::custom(MSG)),
            _ => Err(serde::de::Error::custom(MSG)),
        }
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
    /// Why an `error` (or refused update) result failed: kept by the node in its deployment
    /// history, never serialised here, so the upstream result JSON stays as it is.
    #[serde(skip)]
    pub code: Option<crate::ErrorCode>,
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

/// Sums saturate: Go wraps around, which would let an absurd deployment look small to a
/// capacity check.
impl std::ops::AddAssign for Capacity {
    fn add_assign(&mut self, o: Capacity) {
        self.cru = self.cru.saturating_add(o.cru);
        self.sru = self.sru.saturating_add(o.sru);
        self.hru = self.hru.saturating_add(o.hru);
        self.mru = self.mru.saturating_add(o.mru);
        self.ipv4u = self.ipv4u.saturating_add(o.ipv4u);
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

impl Workload {
    /// Decodes `data` into the typed struct of this workload's type (upstream `WorkloadData()`).
    pub fn typed_data(&self) -> Result<WorkloadData, ValidationError> {
        self.workload_type.check()?;
        WorkloadData::decode(&self.workload_type, &self.data)
    }

    /// Writes this workload's challenge: version, name, type, metadata, description, data.
    pub fn write_challenge(&self, c: &mut Challenge) -> Result<(), ValidationError> {
        let data = self.typed_data()?;
        c.d(self.version)
            .s(&self.name)
            .s(self.workload_type.as_str())
            .s(&self.metadata)
            .s(&self.description);
        data.write_challenge(c);
        Ok(())
    }

    /// The capacity this workload needs.
    pub fn capacity(&self) -> Result<Capacity, ValidationError> {
        Ok(self.typed_data()?.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_reads_int_and_rfc3339() {
        let t: Timestamp = serde_json::from_str("1700000000").unwrap();
        assert_eq!(t, Timestamp(1700000000));
        let t: Timestamp = serde_json::from_str("\"2023-11-14T22:13:20Z\"").unwrap();
        assert_eq!(t, Timestamp(1700000000));
        let t: Timestamp = serde_json::from_str("\"2023-11-15T00:13:20+02:00\"").unwrap();
        assert_eq!(t, Timestamp(1700000000));
        assert!(serde_json::from_str::<Timestamp>("1.5").is_err());
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert_eq!(serde_json::to_string(&Timestamp(5)).unwrap(), "5");
    }

    #[test]
    fn result_error_travels_as_message() {
        let r = WorkloadResult {
            state: ResultState::Error,
            error: "boom".into(),
            ..Default::default()
        };
        let js = serde_json::to_value(&r).unwrap();
        assert_eq!(js["message"], "boom");
        assert_eq!(js["state"], "error");
        // the node-side code never reaches the upstream JSON
        let coded = WorkloadResult {
            code: Some(crate::ErrorCode::Capacity),
            ..r.clone()
        };
        assert_eq!(serde_json::to_value(&coded).unwrap(), js);
        assert_eq!(js.as_object().unwrap().len(), 4);
    }

    #[test]
    fn unknown_type_survives_parsing_and_fails_validation() {
        let w: Workload = serde_json::from_str(r#"{"type":"teapot","name":"a"}"#).unwrap();
        assert_eq!(
            w.typed_data().unwrap_err().to_string(),
            "invalid reservation type 'teapot'"
        );
    }
}
