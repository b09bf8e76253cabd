//! zmachine, zmachine-light and zlogs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::challenge::Challenge;
use crate::error::ValidationError;
use crate::gofmt::{GoIp, HexBytes};
use crate::workload::{Capacity, Workload, WorkloadType};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Length of a VM's mycelium IP seed.
pub const MYCELIUM_IP_SEED_LEN: usize = 6;

/// One private network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineInterface {
    /// Name of a network workload.
    pub network: String,
    /// The VM's address in that network.
    pub ip: GoIp,
}

/// A VM's mycelium address settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MyceliumIp {
    /// The network workload name (upstream has no JSON tag: key `Network`).
    #[serde(rename = "Network")]
    pub network: String,
    /// Six random bytes the address is derived from (hex in JSON).
    pub hex_seed: HexBytes,
}

impl MyceliumIp {
    fn challenge(&self, c: &mut Challenge) {
        c.s(&self.network).x(&self.hex_seed.0);
    }
}

/// Network settings of a zmachine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineNetwork {
    /// Name of an `ip`/`ipv4` workload in the same deployment, or empty.
    pub public_ip: String,
    /// Join the planetary (yggdrasil) network.
    pub planetary: bool,
    /// Optional mycelium address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<MyceliumIp>,
    /// Private networks (exactly one).
    pub interfaces: Vec<MachineInterface>,
}

/// Network settings of a zmachine-light.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineNetworkLight {
    /// Optional mycelium address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<MyceliumIp>,
    /// Private networks (exactly one).
    pub interfaces: Vec<MachineInterface>,
}

/// CPU and memory of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineCapacity {
    /// Virtual CPUs.
    pub cpu: u8,
    /// Memory in bytes.
    pub memory: u64,
}

/// A disk or volume attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineMount {
    /// Name of a zmount/volume/qsfs workload.
    pub name: String,
    /// Mount point inside the VM (container mode).
    pub mountpoint: String,
}

/// A GPU id `<slot>/<vendor>/<device>`.
pub type Gpu = String;

macro_rules! machine_struct {
    ($(#[$doc:meta])* $name:ident, $net:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            /// Image (flist URL).
            pub flist: String,
            /// Networking.
            pub network: $net,
            /// Root disk size in bytes (0: the minimum).
            pub size: u64,
            /// CPU and memory.
            pub compute_capacity: MachineCapacity,
            /// Attached disks and volumes.
            pub mounts: Vec<MachineMount>,
            /// Entrypoint (container mode).
            pub entrypoint: String,
            /// Environment (container mode); hashed sorted by key.
            pub env: BTreeMap<String, String>,
            /// Run `corex` as entrypoint (not hashed upstream).
            pub corex: bool,
            /// GPUs to pass through.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub gpu: Vec<Gpu>,
        }

        impl $name {
            /// The root disk size: `size`, at least the minimum for this CPU and memory.
            pub fn root_size(&self) -> u64 {
                self.size.max(min_root_size(&self.compute_capacity))
            }

            pub(crate) fn capacity(&self) -> Capacity {
                Capacity {
                    cru: u64::from(self.compute_capacity.cpu),
                    mru: self.compute_capacity.memory,
                    sru: self.root_size(),
                    ..Default::default()
                }
            }

            fn challenge_tail(&self, c: &mut Challenge) {
                c.d(self.size)
                    .d(self.compute_capacity.cpu)
                    .d(self.compute_capacity.memory);
                c.list(self.mounts.len());
                for m in &self.mounts {
                    c.s(&m.name).s(&m.mountpoint);
                }
                c.s(&self.entrypoint);
                // BTreeMap iterates in byte order, as Go's sort.Strings.
                c.list(self.env.len());
                for (k, v) in &self.env {
                    c.s(k).s("=").s(v);
                }
                c.list(self.gpu.len());
                for g in &self.gpu {
                    c.s(g);
                }
            }

            /// Checks shared by both VM kinds, in upstream's order.
            fn validate_common(&self, interfaces: &[MachineInterface]) -> Result<(), ValidationError> {
                if interfaces.len() != 1 {
                    return Err(ValidationError::new(
                        "only one network private network is supported at the moment",
                    ));
                }
                if interfaces.iter().any(|i| i.ip.0.is_none()) {
                    return Err(ValidationError::new("invalid IP"));
                }
                if self.compute_capacity.cpu == 0 {
                    return Err(ValidationError::new("cpu capacity can't be 0"));
                }
                if self.compute_capacity.memory < 250 * MIB {
                    return Err(ValidationError::new("mem capacity can't be less that 250M"));
                }
                let min = min_root_size(&self.compute_capacity);
                if self.size != 0 && self.size < min {
                    return Err(ValidationError::new(format!(
                        "disk size can't be less that {min}. Set to 0 for minimum"
                    )));
                }
                Ok(())
            }
        }
    };
}

machine_struct!(
    /// A virtual machine (full zos).
    ZMachine,
    MachineNetwork
);
machine_struct!(
    /// A virtual machine (zos-light: no public IP, no planetary).
    ZMachineLight,
    MachineNetworkLight
);

/// Upstream `MinRootSize`: 500 MiB when `cpu*memory/8GiB` is 0, else 2 GiB.
pub fn min_root_size(cap: &MachineCapacity) -> u64 {
    let cu = u64::from(cap.cpu).wrapping_mul(cap.memory) / (8 * GIB);
    if cu == 0 { 500 * MIB } else { 2 * GIB }
}

fn validate_interfaces_and_mycelium(
    interfaces: &[MachineInterface],
    mycelium: Option<&MyceliumIp>,
) -> Result<(), ValidationError> {
    for i in interfaces {
        if matches!(i.network.as_str(), "ygg" | "pub" | "mycelium") {
            return Err(ValidationError::new(format!(
                "'{}' is reserved network name",
                i.network
            )));
        }
    }
    if let Some(m) = mycelium {
        if m.hex_seed.0.len() != MYCELIUM_IP_SEED_LEN {
            return Err(ValidationError::new(
                "invalid mycelium seed length expected 6 bytes",
            ));
        }
    }
    Ok(())
}

impl ZMachine {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.s(&self.flist)
            .s(&self.network.public_ip)
            .t(self.network.planetary);
        c.list(self.network.interfaces.len());
        for i in &self.network.interfaces {
            c.s(&i.network).d(i.ip);
        }
        c.list(usize::from(self.network.mycelium.is_some()));
        if let Some(m) = &self.network.mycelium {
            m.challenge(c);
        }
        self.challenge_tail(c);
    }

    pub(crate) fn validate(&self, workloads: &[Workload]) -> Result<(), ValidationError> {
        self.validate_common(&self.network.interfaces)?;
        let public_ip = &self.network.public_ip;
        if !public_ip.is_empty() {
            // Upstream `getter.Get(name)`: a valid name that exists in the deployment.
            let found = crate::deployment::is_valid_name(public_ip).is_ok()
                && workloads.iter().any(|w| &w.name == public_ip);
            if !found {
                return Err(ValidationError::new("public ip is not found"));
            }
            // Upstream wraps a nil error when the named workload is not an IP
            // (`errors.Wrapf(nil, …)` is nil), so that case passes; only reuse is refused.
            let mut count = 0;
            for vm in workloads.iter().filter(|w| {
                w.workload_type == WorkloadType::Zmachine
                    && crate::deployment::is_valid_name(&w.name).is_ok()
            }) {
                let data: ZMachine = decode_plain(&vm.data)?;
                if &data.network.public_ip == public_ip {
                    count += 1;
                }
            }
            if count > 1 {
                return Err(ValidationError::new(
                    "public ip is assigned to multiple vms",
                ));
            }
        }
        validate_interfaces_and_mycelium(&self.network.interfaces, self.network.mycelium.as_ref())
    }
}

impl ZMachineLight {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.s(&self.flist);
        c.list(self.network.interfaces.len());
        for i in &self.network.interfaces {
            c.s(&i.network).d(i.ip);
        }
        c.list(usize::from(self.network.mycelium.is_some()));
        if let Some(m) = &self.network.mycelium {
            m.challenge(c);
        }
        self.challenge_tail(c);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        self.validate_common(&self.network.interfaces)?;
        validate_interfaces_and_mycelium(&self.network.interfaces, self.network.mycelium.as_ref())
    }
}

/// Plain `json.Unmarshal` of another workload's data (used by cross-workload checks).
fn decode_plain<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ValidationError> {
    if v.is_null() {
        return Err(ValidationError::new("unexpected end of JSON input"));
    }
    serde_json::from_value(crate::json::strip_nulls(v.clone()))
        .map_err(|e| ValidationError::new(e.to_string()))
}

/// Result of a zmachine (reads legacy `ygg_ip` as `planetary_ip`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ZMachineResult {
    /// VM id.
    pub id: String,
    /// Private IP.
    pub ip: String,
    /// Planetary (yggdrasil) IP.
    pub planetary_ip: String,
    /// Mycelium IP.
    pub mycelium_ip: String,
    /// Serial console address.
    pub console_url: String,
}

impl<'de> Deserialize<'de> for ZMachineResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            id: String,
            ip: String,
            ygg_ip: String,
            planetary_ip: String,
            mycelium_ip: String,
            console_url: String,
        }
        let r = Raw::deserialize(d)?;
        Ok(ZMachineResult {
            id: r.id,
            ip: r.ip,
            planetary_ip: if r.ygg_ip.is_empty() {
                r.planetary_ip
            } else {
                r.ygg_ip
            },
            mycelium_ip: r.mycelium_ip,
            console_url: r.console_url,
        })
    }
}

/// Streams a zmachine's logs to `output`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ZLogs {
    /// Name of a zmachine in the same deployment.
    pub zmachine: String,
    /// `redis://`, `ws://` or `wss://` URL.
    pub output: String,
}

impl ZLogs {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.s(&self.zmachine).s(&self.output);
    }

    pub(crate) fn validate(&self, workloads: &[Workload]) -> Result<(), ValidationError> {
        let found = crate::deployment::is_valid_name(&self.zmachine).is_ok()
            && workloads
                .iter()
                .any(|w| w.name == self.zmachine && w.workload_type == WorkloadType::Zmachine);
        if !found {
            return Err(ValidationError::new(format!(
                "no zmachine with name '{}' found",
                self.zmachine
            )));
        }
        let scheme = match self.output.find(':') {
            Some(p)
                if p > 0
                    && self.output[..p].bytes().enumerate().all(|(i, b)| {
                        b.is_ascii_alphabetic()
                            || (i > 0 && (b.is_ascii_digit() || b"+-.".contains(&b)))
                    }) =>
            {
                self.output[..p].to_ascii_lowercase()
            }
            Some(0) => {
                return Err(ValidationError::new(format!(
                    "invalid url supplied in output: parse {:?}: missing protocol scheme",
                    self.output
                )));
            }
            _ => String::new(),
        };
        if !matches!(scheme.as_str(), "redis" | "ws" | "wss") {
            return Err(ValidationError::new(format!(
                "invalid output schema '{scheme}' not supported"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_size_table() {
        let cap = |cpu, gib: u64| MachineCapacity {
            cpu,
            memory: gib * GIB,
        };
        assert_eq!(min_root_size(&cap(1, 1)), 500 * MIB);
        assert_eq!(min_root_size(&cap(1, 7)), 500 * MIB);
        assert_eq!(min_root_size(&cap(1, 8)), 2 * GIB);
        assert_eq!(min_root_size(&cap(2, 4)), 2 * GIB);
        assert_eq!(min_root_size(&cap(4, 1)), 500 * MIB);
    }

    #[test]
    fn legacy_ygg_ip_reads_as_planetary() {
        let r: ZMachineResult = serde_json::from_str(r#"{"ygg_ip":"300::1"}"#).unwrap();
        assert_eq!(r.planetary_ip, "300::1");
        let r: ZMachineResult = serde_json::from_str(r#"{"planetary_ip":"300::2"}"#).unwrap();
        assert_eq!(r.planetary_ip, "300::2");
    }
}
