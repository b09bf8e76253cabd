//! Applying one call to the state: every rule and every rejection lives here.
//!
//! [`apply`] writes into the overlay's transaction layer and returns the events; on `Err` the
//! caller rolls the layer back, so a rejected transaction leaves no trace.

use zos_types::crypto::PublicKey;

use crate::billing;
pub use crate::error::TxError;
use crate::state::{Overlay, StateError, keys};
use crate::tx::{Call, Event};
use crate::types::{
    Account, Balance, Contract, ContractKind, ContractState, Farm, Node, PricingPolicy, PublicIp,
    Twin, ZosVersion,
};
use crate::validate::{check_data, check_hash, check_ip, check_name, check_twin_fields};

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> TxError {
    TxError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Chain parameters a call may need.
#[derive(Debug, Clone)]
pub struct Params {
    /// Governance account.
    pub council: PublicKey,
    /// Seconds between charges.
    pub billing_interval: u64,
    /// Seconds of grace before deletion.
    pub grace_period: u64,
}

/// Maximum length of `deployment_data` (upstream `MaxDeploymentDataLength`).
pub const MAX_DEPLOYMENT_DATA: usize = 512;

/// Applies `call` by `who` at ledger time `now` (signature and nonce already checked).
pub fn apply(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    call: &Call,
) -> Result<Vec<Event>, TxError> {
    let mut ev = Vec::new();
    match call {
        Call::Transfer { to, amount } => {
            if *amount == 0 {
                return Err(invalid("amount", "must be > 0"));
            }
            transfer(st, who, to, *amount)?;
            ev.push(Event::Transfer {
                from: *who,
                to: *to,
                amount: *amount,
            });
        }
        Call::CreateTwin { relays, e2e_key } => {
            check_twin_fields(relays, e2e_key)?;
            if st.get::<u32>(&keys::twin_by_account(who))?.is_some() {
                return Err(TxError::Duplicate(format!("twin of account {who}")));
            }
            let id = st.next_id("twin")? as u32;
            let twin = Twin {
                id,
                account: *who,
                relays: relays.clone(),
                e2e_key: e2e_key.clone(),
            };
            st.put(keys::twin(id), &twin);
            st.put(keys::twin_by_account(who), &id);
            ev.push(Event::TwinStored { twin });
        }
        Call::UpdateTwin { relays, e2e_key } => {
            check_twin_fields(relays, e2e_key)?;
            let mut twin = my_twin(st, who)?;
            twin.relays = relays.clone();
            twin.e2e_key = e2e_key.clone();
            st.put(keys::twin(twin.id), &twin);
            ev.push(Event::TwinStored { twin });
        }
        Call::CreateFarm { name } => {
            check_name("farm name", name, 40, true)?;
            let twin = my_twin(st, who)?;
            if st.get::<u32>(&keys::farm_by_name(name))?.is_some() {
                return Err(TxError::Duplicate(format!("farm name {name:?}")));
            }
            let id = st.next_id("farm")? as u32;
            let farm = Farm {
                id,
                name: name.clone(),
                twin_id: twin.id,
                public_ips: Vec::new(),
            };
            st.put(keys::farm(id), &farm);
            st.put(keys::farm_by_name(name), &id);
            ev.push(Event::FarmStored { farm });
        }
        Call::AddFarmIp {
            farm_id,
            ip,
            gateway,
        } => {
            let mut farm = owned_farm(st, who, *farm_id)?;
            check_ip(ip, gateway)?;
            if farm.public_ips.iter().any(|p| p.ip == *ip) {
                return Err(TxError::Duplicate(format!("IP {ip} in farm {farm_id}")));
            }
            if farm.public_ips.len() >= 256 {
                return Err(invalid("ip", "farm already has 256 public IPs"));
            }
            farm.public_ips.push(PublicIp {
                ip: ip.clone(),
                gateway: gateway.clone(),
                contract_id: 0,
            });
            st.put(keys::farm(farm.id), &farm);
            ev.push(Event::FarmStored { farm });
        }
        Call::RemoveFarmIp { farm_id, ip } => {
            let mut farm = owned_farm(st, who, *farm_id)?;
            let Some(pos) = farm.public_ips.iter().position(|p| p.ip == *ip) else {
                return Err(invalid("ip", format!("{ip} is not in farm {farm_id}")));
            };
            if farm.public_ips[pos].contract_id != 0 {
                return Err(invalid(
                    "ip",
                    format!(
                        "{ip} is used by contract {}",
                        farm.public_ips[pos].contract_id
                    ),
                ));
            }
            farm.public_ips.remove(pos);
            st.put(keys::farm(farm.id), &farm);
            ev.push(Event::FarmStored { farm });
        }
        Call::CreateNode {
            farm_id,
            resources,
            location,
            interfaces,
            public_config,
            features,
            version,
            virtualized,
            secure_boot,
            serial_number,
        } => {
            let twin = my_twin(st, who)?;
            farm(st, *farm_id)?;
            if st.get::<u32>(&keys::node_by_twin(twin.id))?.is_some() {
                return Err(TxError::Duplicate(format!("node of twin {}", twin.id)));
            }
            let id = st.next_id("node")? as u32;
            let node = Node {
                id,
                farm_id: *farm_id,
                twin_id: twin.id,
                resources: *resources,
                location: location.clone(),
                interfaces: interfaces.clone(),
                public_config: public_config.clone(),
                features: features.clone(),
                version: version.clone(),
                virtualized: *virtualized,
                secure_boot: *secure_boot,
                serial_number: serial_number.clone(),
                created: now,
                uptime: 0,
                updated_at: now,
            };
            st.put(keys::node(id), &node);
            st.put(keys::node_by_twin(twin.id), &id);
            ev.push(Event::NodeStored { node });
        }
        Call::UpdateNode {
            node_id,
            farm_id,
            resources,
            location,
            interfaces,
            features,
            version,
            virtualized,
            secure_boot,
            serial_number,
        } => {
            let twin = my_twin(st, who)?;
            let mut node = node(st, *node_id)?;
            if node.twin_id != twin.id {
                return Err(TxError::NotOwner(format!("node {node_id}")));
            }
            farm(st, *farm_id)?;
            // Reserved IPs belong to the old farm's pool: moving would strand them.
            if *farm_id != node.farm_id
                && !st
                    .scan_prefix(&keys::node_contracts_prefix(node.id))?
                    .is_empty()
            {
                return Err(invalid(
                    "farm_id",
                    format!("node {node_id} has active contracts and cannot change farm"),
                ));
            }
            node.farm_id = *farm_id;
            node.resources = *resources;
            node.location = location.clone();
            node.interfaces = interfaces.clone();
            node.features = features.clone();
            node.version = version.clone();
            node.virtualized = *virtualized;
            node.secure_boot = *secure_boot;
            node.serial_number = serial_number.clone();
            node.updated_at = now;
            st.put(keys::node(node.id), &node);
            ev.push(Event::NodeStored { node });
        }
        Call::ReportUptime { uptime } => {
            let twin = my_twin(st, who)?;
            let Some(id) = st.get::<u32>(&keys::node_by_twin(twin.id))? else {
                return Err(invalid("caller", format!("twin {} has no node", twin.id)));
            };
            let mut node = node(st, id)?;
            node.uptime = *uptime;
            node.updated_at = now;
            st.put(keys::node(id), &node);
            ev.push(Event::NodeUptimeReported {
                node_id: id,
                timestamp: now,
                uptime: *uptime,
            });
        }
        Call::SetNodePublicConfig { node_id, config } => {
            let mut node = node(st, *node_id)?;
            owned_farm(st, who, node.farm_id)
                .map_err(|_| TxError::NotOwner(format!("farm of node {node_id}")))?;
            node.public_config = config.clone();
            node.updated_at = now;
            st.put(keys::node(node.id), &node);
            ev.push(Event::NodePublicConfigStored {
                node_id: *node_id,
                config: config.clone(),
            });
        }
        Call::CreateNodeContract {
            node_id,
            deployment_hash,
            deployment_data,
            public_ips,
        } => {
            let twin = my_twin(st, who)?;
            check_hash(deployment_hash)?;
            check_data(deployment_data)?;
            let node = node(st, *node_id)?;
            if st
                .get::<u64>(&keys::node_hash(*node_id, deployment_hash))?
                .is_some()
            {
                return Err(TxError::Duplicate(format!(
                    "contract with hash {deployment_hash} on node {node_id}"
                )));
            }
            let id = st.next_id("contract")?;
            let mut list = Vec::new();
            if *public_ips > 0 {
                let mut farm = farm(st, node.farm_id)?;
                let free = farm
                    .public_ips
                    .iter()
                    .filter(|p| p.contract_id == 0)
                    .count() as u32;
                if free < *public_ips {
                    return Err(TxError::IpPoolExhausted {
                        farm_id: farm.id,
                        requested: *public_ips,
                        free,
                    });
                }
                for ip in farm.public_ips.iter_mut().filter(|p| p.contract_id == 0) {
                    if list.len() as u32 == *public_ips {
                        break;
                    }
                    ip.contract_id = id;
                    list.push(ip.clone());
                }
                st.put(keys::farm(farm.id), &farm);
            }
            let contract = Contract {
                id,
                twin_id: twin.id,
                state: ContractState::Created,
                kind: ContractKind::Node {
                    node_id: *node_id,
                    deployment_hash: deployment_hash.clone(),
                    deployment_data: deployment_data.clone(),
                    public_ips: *public_ips,
                    public_ips_list: list.clone(),
                },
                created: now,
                billing: billing::new_info(now, p.billing_interval),
            };
            st.put(keys::contract(id), &contract);
            st.put(keys::twin_contract(twin.id, id), &());
            st.put(keys::node_contract(*node_id, id), &());
            st.put(keys::node_hash(*node_id, deployment_hash), &id);
            st.put(keys::due(now.saturating_add(p.billing_interval), id), &());
            ev.push(Event::NodeContractCreated {
                contract_id: id,
                node_id: *node_id,
                twin_id: twin.id,
                deployment_hash: deployment_hash.clone(),
                public_ips_list: list,
            });
        }
        Call::UpdateNodeContract {
            contract_id,
            deployment_hash,
            deployment_data,
        } => {
            check_hash(deployment_hash)?;
            check_data(deployment_data)?;
            let twin = my_twin(st, who)?;
            let mut c = contract(st, *contract_id)?;
            if c.twin_id != twin.id {
                return Err(TxError::NotOwner(format!("contract {contract_id}")));
            }
            if c.state != ContractState::Created {
                return Err(TxError::BadContractState {
                    id: c.id,
                    state: format!("{:?}", c.state),
                });
            }
            let ContractKind::Node {
                node_id,
                deployment_hash: old_hash,
                deployment_data: old_data,
                ..
            } = &mut c.kind
            else {
                return Err(invalid("contract_id", "not a node contract"));
            };
            let node_id = *node_id;
            if old_hash != deployment_hash {
                if st
                    .get::<u64>(&keys::node_hash(node_id, deployment_hash))?
                    .is_some()
                {
                    return Err(TxError::Duplicate(format!(
                        "contract with hash {deployment_hash} on node {node_id}"
                    )));
                }
                st.delete(keys::node_hash(node_id, old_hash));
                st.put(keys::node_hash(node_id, deployment_hash), contract_id);
            }
            *old_hash = deployment_hash.clone();
            *old_data = deployment_data.clone();
            st.put(keys::contract(c.id), &c);
            ev.push(Event::NodeContractUpdated {
                contract_id: c.id,
                node_id,
                twin_id: c.twin_id,
                deployment_hash: deployment_hash.clone(),
            });
        }
        Call::CancelContract { contract_id } => {
            let twin = my_twin(st, who)?;
            let c = contract(st, *contract_id)?;
            if c.twin_id != twin.id {
                return Err(TxError::NotOwner(format!("contract {contract_id}")));
            }
            if !c.state.is_active() {
                return Err(TxError::BadContractState {
                    id: c.id,
                    state: format!("{:?}", c.state),
                });
            }
            // Settle what is owed up to now with what the owner has; the rest is forgiven.
            let c = billing::settle_on_cancel(st, p, now, c, &mut ev)?;
            billing::delete_contract(st, p, c, "canceled_by_user", &mut ev)?;
        }
        Call::CreateNameContract { name } => {
            check_name("name", name, 63, false)?;
            let twin = my_twin(st, who)?;
            if st.get::<u64>(&keys::name_contract(name))?.is_some() {
                return Err(TxError::Duplicate(format!("name contract {name:?}")));
            }
            let id = st.next_id("contract")?;
            let contract = Contract {
                id,
                twin_id: twin.id,
                state: ContractState::Created,
                kind: ContractKind::Name { name: name.clone() },
                created: now,
                billing: billing::new_info(now, p.billing_interval),
            };
            st.put(keys::contract(id), &contract);
            st.put(keys::twin_contract(twin.id, id), &());
            st.put(keys::name_contract(name), &id);
            st.put(keys::due(now.saturating_add(p.billing_interval), id), &());
            ev.push(Event::NameContractCreated {
                contract_id: id,
                twin_id: twin.id,
                name: name.clone(),
            });
        }
        Call::ReportContractResources(reports) => {
            let node_id = my_node(st, who)?;
            for r in reports {
                let mut c = node_contract_of(st, r.contract_id, node_id)?;
                c.billing.used = r.used;
                st.put(keys::contract(c.id), &c);
                ev.push(Event::ContractResourcesReported {
                    contract_id: c.id,
                    used: r.used,
                });
            }
        }
        Call::AddNruReports(reports) => {
            let node_id = my_node(st, who)?;
            for r in reports {
                let mut c = node_contract_of(st, r.contract_id, node_id)?;
                c.billing.nru_unbilled = c.billing.nru_unbilled.saturating_add(r.nru);
                st.put(keys::contract(c.id), &c);
                ev.push(Event::NruReported {
                    contract_id: c.id,
                    nru: r.nru,
                });
            }
        }
        Call::SetZosVersion {
            version,
            safe_to_upgrade,
        } => {
            if *who != p.council {
                return Err(TxError::NotCouncil("set_zos_version"));
            }
            if version.is_empty() || version.len() > 64 {
                return Err(invalid("version", "must be 1..=64 characters"));
            }
            let v = ZosVersion {
                version: version.clone(),
                safe_to_upgrade: *safe_to_upgrade,
            };
            st.put(keys::ZOS_VERSION.to_vec(), &v);
            ev.push(Event::ZosVersionUpdated {
                version: v.version,
                safe_to_upgrade: v.safe_to_upgrade,
            });
        }
        Call::SetPricingPolicy { policy } => {
            if *who != p.council {
                return Err(TxError::NotCouncil("set_pricing_policy"));
            }
            st.put(keys::PRICING.to_vec(), policy);
            ev.push(Event::PricingPolicyStored {
                policy: policy.clone(),
            });
        }
    }
    Ok(ev)
}

/// Moves `amount` from `from` to `to`.
pub fn transfer(
    st: &mut Overlay<'_>,
    from: &PublicKey,
    to: &PublicKey,
    amount: Balance,
) -> Result<(), TxError> {
    let mut a = account(st, from)?;
    if a.balance < amount {
        return Err(TxError::InsufficientFunds {
            needed: amount,
            available: a.balance,
        });
    }
    a.balance -= amount;
    st.put(keys::account(from), &a);
    let mut b = account(st, to)?;
    b.balance = b.balance.saturating_add(amount);
    st.put(keys::account(to), &b);
    Ok(())
}

/// The account of `who` (zero balance and nonce if never seen).
pub fn account(st: &Overlay<'_>, who: &PublicKey) -> Result<Account, StateError> {
    Ok(st.get(&keys::account(who))?.unwrap_or_default())
}

/// The current pricing policy.
pub fn pricing(st: &Overlay<'_>) -> Result<PricingPolicy, StateError> {
    Ok(st.get(keys::PRICING)?.unwrap_or_default())
}

fn my_twin(st: &Overlay<'_>, who: &PublicKey) -> Result<Twin, TxError> {
    let id = st
        .get::<u32>(&keys::twin_by_account(who))?
        .ok_or(TxError::NoTwin(*who))?;
    st.get(&keys::twin(id))?.ok_or(TxError::UnknownTwin(id))
}

fn my_node(st: &Overlay<'_>, who: &PublicKey) -> Result<u32, TxError> {
    let twin = my_twin(st, who)?;
    st.get::<u32>(&keys::node_by_twin(twin.id))?
        .ok_or_else(|| invalid("caller", format!("twin {} has no node", twin.id)))
}

fn farm(st: &Overlay<'_>, id: u32) -> Result<Farm, TxError> {
    st.get(&keys::farm(id))?.ok_or(TxError::UnknownFarm(id))
}

fn owned_farm(st: &Overlay<'_>, who: &PublicKey, id: u32) -> Result<Farm, TxError> {
    let twin = my_twin(st, who)?;
    let farm = farm(st, id)?;
    if farm.twin_id != twin.id {
        return Err(TxError::NotOwner(format!("farm {id}")));
    }
    Ok(farm)
}

fn node(st: &Overlay<'_>, id: u32) -> Result<Node, TxError> {
    st.get(&keys::node(id))?.ok_or(TxError::UnknownNode(id))
}

fn contract(st: &Overlay<'_>, id: u64) -> Result<Contract, TxError> {
    st.get(&keys::contract(id))?
        .ok_or(TxError::UnknownContract(id))
}

/// An active node contract that lives on `node_id` (node-side reports).
fn node_contract_of(st: &Overlay<'_>, id: u64, node_id: u32) -> Result<Contract, TxError> {
    let c = contract(st, id)?;
    if c.node_id() != Some(node_id) {
        return Err(TxError::NotOwner(format!(
            "contract {id} (it is not on node {node_id})"
        )));
    }
    if !c.state.is_active() {
        return Err(TxError::BadContractState {
            id,
            state: format!("{:?}", c.state),
        });
    }
    Ok(c)
}
