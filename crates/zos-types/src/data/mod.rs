//! Typed workload data, one module per family. Each type knows its challenge, its
//! validation (upstream's `Valid()` with upstream's texts) and its capacity.

mod gateway;
mod machine;
mod network;
mod storage;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use gateway::{GatewayBase, GatewayFqdnProxy, GatewayNameProxy, GatewayProxyResult};
pub use machine::{
    Gpu, MachineCapacity, MachineInterface, MachineMount, MachineNetwork, MachineNetworkLight,
    MyceliumIp, ZLogs, ZMachine, ZMachineLight, ZMachineResult, min_root_size,
};
pub use network::{Mycelium, Network, NetworkLight, Peer, PublicIp, PublicIp4, PublicIpResult};
pub use storage::{
    Encryption, QuantumCompression, QuantumSafeConfig, QuantumSafeFs, QuantumSafeFsConfig,
    QuantumSafeMeta, Volume, VolumeResult, ZMount, ZMountResult, Zdb, ZdbBackend, ZdbGroup,
    ZdbMode, ZdbResult,
};

use crate::challenge::Challenge;
use crate::error::ValidationError;
use crate::workload::{Capacity, Workload, WorkloadType};

/// The decoded data of a workload.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // one variant per workload type, named after it
pub enum WorkloadData {
    Zmount(ZMount),
    Volume(Volume),
    Zdb(Zdb),
    Network(Network),
    NetworkLight(NetworkLight),
    Zmachine(ZMachine),
    ZmachineLight(ZMachineLight),
    Ip(PublicIp),
    Ipv4(PublicIp4),
    GatewayNameProxy(GatewayNameProxy),
    GatewayFqdnProxy(GatewayFqdnProxy),
    Qsfs(QuantumSafeFs),
    Zlogs(ZLogs),
}

fn decode<T: DeserializeOwned>(go_type: &str, data: &Value) -> Result<T, ValidationError> {
    let context = format!("failed to load data into object of type '*zos.{go_type}'");
    if data.is_null() {
        // A missing `data` is an empty RawMessage upstream, which json.Unmarshal refuses.
        return Err(ValidationError::new("unexpected end of JSON input").wrap(context));
    }
    serde_json::from_value(crate::json::strip_nulls(data.clone()))
        .map_err(|e| ValidationError::new(e.to_string()).wrap(context))
}

impl WorkloadData {
    /// Decodes raw data for a (known) type.
    pub fn decode(t: &WorkloadType, data: &Value) -> Result<WorkloadData, ValidationError> {
        Ok(match t {
            WorkloadType::Zmount => WorkloadData::Zmount(decode("ZMount", data)?),
            WorkloadType::Volume => WorkloadData::Volume(decode("Volume", data)?),
            WorkloadType::Zdb => WorkloadData::Zdb(decode("ZDB", data)?),
            WorkloadType::Network => WorkloadData::Network(decode("Network", data)?),
            WorkloadType::NetworkLight => WorkloadData::NetworkLight(decode("NetworkLight", data)?),
            WorkloadType::Zmachine => WorkloadData::Zmachine(decode("ZMachine", data)?),
            WorkloadType::ZmachineLight => {
                WorkloadData::ZmachineLight(decode("ZMachineLight", data)?)
            }
            WorkloadType::Ip => WorkloadData::Ip(decode("PublicIP", data)?),
            WorkloadType::Ipv4 => WorkloadData::Ipv4(decode("PublicIP4", data)?),
            WorkloadType::GatewayNameProxy => {
                WorkloadData::GatewayNameProxy(decode("GatewayNameProxy", data)?)
            }
            WorkloadType::GatewayFqdnProxy => {
                WorkloadData::GatewayFqdnProxy(decode("GatewayFQDNProxy", data)?)
            }
            WorkloadType::Qsfs => WorkloadData::Qsfs(decode("QuantumSafeFS", data)?),
            WorkloadType::Zlogs => WorkloadData::Zlogs(decode("ZLogs", data)?),
            WorkloadType::Unknown(_) => {
                t.check()?;
                unreachable!("check() rejects unknown types")
            }
        })
    }

    /// Appends the type data challenge.
    pub fn write_challenge(&self, c: &mut Challenge) {
        match self {
            WorkloadData::Zmount(d) => d.challenge(c),
            WorkloadData::Volume(d) => d.challenge(c),
            WorkloadData::Zdb(d) => d.challenge(c),
            WorkloadData::Network(d) => d.challenge(c),
            WorkloadData::NetworkLight(d) => d.challenge(c),
            WorkloadData::Zmachine(d) => d.challenge(c),
            WorkloadData::ZmachineLight(d) => d.challenge(c),
            WorkloadData::Ip(d) => d.challenge(c),
            WorkloadData::Ipv4(_) => {}
            WorkloadData::GatewayNameProxy(d) => d.challenge(c),
            WorkloadData::GatewayFqdnProxy(d) => d.challenge(c),
            WorkloadData::Qsfs(d) => d.challenge(c),
            WorkloadData::Zlogs(d) => d.challenge(c),
        }
    }

    /// Upstream's type-specific `Valid(getter)`; `workloads` are the deployment's.
    pub fn validate(&self, workloads: &[Workload]) -> Result<(), ValidationError> {
        match self {
            WorkloadData::Zmount(d) => d.validate(),
            WorkloadData::Volume(d) => d.validate(),
            WorkloadData::Zdb(d) => d.validate(),
            WorkloadData::Network(d) => d.validate(),
            WorkloadData::NetworkLight(d) => d.validate(),
            WorkloadData::Zmachine(d) => d.validate(workloads),
            WorkloadData::ZmachineLight(d) => d.validate(),
            WorkloadData::Ip(d) => d.validate(),
            WorkloadData::Ipv4(_) => Ok(()),
            WorkloadData::GatewayNameProxy(d) => d.validate(),
            WorkloadData::GatewayFqdnProxy(d) => d.validate(),
            WorkloadData::Qsfs(d) => d.validate(),
            WorkloadData::Zlogs(d) => d.validate(workloads),
        }
    }

    /// The capacity the workload consumes.
    pub fn capacity(&self) -> Capacity {
        match self {
            WorkloadData::Zmount(d) => Capacity {
                sru: d.size,
                ..Default::default()
            },
            WorkloadData::Volume(d) => Capacity {
                sru: d.size,
                ..Default::default()
            },
            WorkloadData::Zdb(d) => Capacity {
                hru: d.size,
                ..Default::default()
            },
            WorkloadData::Zmachine(d) => d.capacity(),
            WorkloadData::ZmachineLight(d) => d.capacity(),
            WorkloadData::Ip(d) => Capacity {
                ipv4u: u64::from(d.v4),
                ..Default::default()
            },
            WorkloadData::Ipv4(_) => Capacity {
                ipv4u: 1,
                ..Default::default()
            },
            WorkloadData::Qsfs(d) => Capacity {
                cru: 1,
                mru: 1 << 30,
                sru: d.cache,
                ..Default::default()
            },
            WorkloadData::Network(_)
            | WorkloadData::NetworkLight(_)
            | WorkloadData::GatewayNameProxy(_)
            | WorkloadData::GatewayFqdnProxy(_)
            | WorkloadData::Zlogs(_) => Capacity::default(),
        }
    }
}
