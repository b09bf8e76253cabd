//! Registration (upstream `pkg/registrar`): the node's twin (with its RMB relay and e2e key)
//! and the node record (farm, capacity, interfaces, features, virtualization) on the ledger,
//! written only when something changed; periodic uptime reports.

use zos_ledger::{Call, Interface, Node, Resources};

use crate::chain::ChainError;
use crate::ledger::NodeLedger;
use crate::primitives::{PoolKind, PrimitiveRegistry};
use crate::sysinfo;

/// Registration failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    /// The farm given with `--farm` does not exist: the node idles until it does.
    #[error("farm {0} does not exist on the ledger: the node idles until it does")]
    NoFarm(u32),
    /// A ledger call failed.
    #[error(transparent)]
    Ledger(#[from] ChainError),
    /// The ledger accepted the transaction but the record is not there.
    #[error("{0} not found after registration")]
    Missing(&'static str),
}

/// What registration established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node's twin.
    pub twin_id: u32,
    /// The node id.
    pub node_id: u32,
    /// The farm's twin (may call `zos.admin.*`).
    pub farm_twin: u32,
    /// The node's public config as stored on the ledger.
    pub public_config: Option<zos_ledger::PublicConfig>,
    /// The farmer's maintenance mode on the ledger.
    pub maintenance: Option<zos_ledger::Maintenance>,
}

/// The node record fields the node itself decides.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// Farm.
    pub farm_id: u32,
    /// Total capacity.
    pub resources: Resources,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Supported workload types and features.
    pub features: Vec<String>,
    /// Software version.
    pub version: String,
    /// Runs in a VM.
    pub virtualized: bool,
    /// Board serial.
    pub serial_number: String,
}

/// Discovers capacity (cores, RAM, storage per pool kind), interfaces and virtualization.
pub async fn discover(farm_id: u32, registry: &PrimitiveRegistry) -> NodeFacts {
    let host = crate::engine::HostCapacity::discover();
    let pools = match registry.pool_reporter() {
        Some(r) => r.pools().await,
        None => Vec::new(),
    };
    let sum = |k: PoolKind| {
        pools
            .iter()
            .filter(|p| p.kind == k)
            .map(|p| p.size)
            .sum::<u64>()
    };
    let mut features = registry.features();
    if sysinfo::has_kvm() {
        features.push("kvm".into());
    }
    NodeFacts {
        farm_id,
        resources: Resources {
            cru: host.cores,
            sru: sum(PoolKind::Ssd),
            hru: sum(PoolKind::Hdd),
            mru: host.memory,
        },
        interfaces: sysinfo::interface_list()
            .into_iter()
            .map(|(name, mac, ips)| Interface { name, mac, ips })
            .collect(),
        features,
        version: env!("CARGO_PKG_VERSION").to_string(),
        virtualized: sysinfo::virtualized(),
        serial_number: sysinfo::board_serial(),
    }
}

fn differs(n: &Node, f: &NodeFacts) -> bool {
    n.farm_id != f.farm_id
        || n.resources != f.resources
        || n.interfaces != f.interfaces
        || n.features != f.features
        || n.version != f.version
        || n.virtualized != f.virtualized
        || n.serial_number != f.serial_number
}

/// Ensures the twin and the node exist and are up to date. Idempotent: writes nothing when
/// the ledger already holds these facts.
pub async fn register(
    ledger: &NodeLedger,
    public: &zos_types::crypto::PublicKey,
    relays: &[String],
    e2e_key: &str,
    facts: &NodeFacts,
) -> Result<Registration, RegistrarError> {
    let c = ledger.client();
    let le = |op: &'static str| {
        move |e: zos_ledger::ClientError| ChainError {
            op,
            rejected: false,
            message: e.to_string(),
        }
    };
    let farm = c
        .farm(facts.farm_id)
        .await
        .map_err(le("get farm"))?
        .ok_or(RegistrarError::NoFarm(facts.farm_id))?;
    let e2e = Some(e2e_key.to_string());
    let twin = match c.twin_by_account(public).await.map_err(le("get twin"))? {
        Some(t) => {
            if t.relays != relays || t.e2e_key != e2e {
                tracing::info!(twin = t.id, "updating twin relays / e2e key");
                ledger
                    .send(
                        "update twin",
                        Call::UpdateTwin {
                            relays: relays.to_vec(),
                            e2e_key: e2e.clone(),
                        },
                    )
                    .await?;
            }
            t
        }
        None => {
            ledger
                .send(
                    "create twin",
                    Call::CreateTwin {
                        relays: relays.to_vec(),
                        e2e_key: e2e.clone(),
                    },
                )
                .await?;
            let t = c
                .twin_by_account(public)
                .await
                .map_err(le("get twin"))?
                .ok_or(RegistrarError::Missing("twin"))?;
            tracing::info!(twin = t.id, "twin created");
            t
        }
    };
    let node = match c.node_by_twin(twin.id).await.map_err(le("get node"))? {
        Some(n) => {
            if differs(&n, facts) {
                tracing::info!(node = n.id, "node facts changed: updating the node record");
                ledger
                    .send(
                        "update node",
                        Call::UpdateNode {
                            node_id: n.id,
                            farm_id: facts.farm_id,
                            resources: facts.resources,
                            location: n.location.clone(),
                            interfaces: facts.interfaces.clone(),
                            features: facts.features.clone(),
                            version: facts.version.clone(),
                            virtualized: facts.virtualized,
                            secure_boot: false,
                            serial_number: facts.serial_number.clone(),
                        },
                    )
                    .await?;
            }
            n
        }
        None => {
            ledger
                .send(
                    "create node",
                    Call::CreateNode {
                        farm_id: facts.farm_id,
                        resources: facts.resources,
                        location: Default::default(),
                        interfaces: facts.interfaces.clone(),
                        public_config: None,
                        features: facts.features.clone(),
                        version: facts.version.clone(),
                        virtualized: facts.virtualized,
                        secure_boot: false,
                        serial_number: facts.serial_number.clone(),
                    },
                )
                .await?;
            let n = c
                .node_by_twin(twin.id)
                .await
                .map_err(le("get node"))?
                .ok_or(RegistrarError::Missing("node"))?;
            tracing::info!(node = n.id, farm = facts.farm_id, "node registered");
            n
        }
    };
    Ok(Registration {
        twin_id: twin.id,
        node_id: node.id,
        farm_twin: farm.twin_id,
        public_config: node.public_config.clone(),
        maintenance: node.maintenance,
    })
}

/// Reports uptime (seconds since boot).
pub async fn report_uptime(ledger: &NodeLedger) -> Result<(), ChainError> {
    ledger
        .send(
            "report uptime",
            Call::ReportUptime {
                uptime: sysinfo::uptime(),
            },
        )
        .await
        .map(|_| ())
}
