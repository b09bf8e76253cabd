//! Farm and node calls: farms, their public IP pools, nodes.

use zos_types::crypto::PublicKey;

use super::{Params, TxError, farm, invalid, my_twin, node, owned_farm};
use crate::billing;
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{
    Farm, Interface, Location, Maintenance, Node, PublicConfig, PublicIp, Resources,
};
use crate::validate::{check_ip, check_name};

/// `create_farm`: a uniquely named farm owned by the caller's twin.
pub(super) fn create_farm(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    name: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    check_name("farm name", name, 40, true)?;
    let twin = my_twin(st, who)?;
    if st.get::<u32>(&keys::farm_by_name(name))?.is_some() {
        return Err(TxError::Duplicate(format!("farm name {name:?}")));
    }
    let id = st.next_id("farm")? as u32;
    let farm = Farm {
        id,
        name: name.to_owned(),
        twin_id: twin.id,
        public_ips: Vec::new(),
    };
    st.put(keys::farm(id), &farm);
    st.put(keys::farm_by_name(name), &id);
    ev.push(Event::FarmStored { farm });
    Ok(())
}

/// `add_farm_ip`: one more public IP in a farm's pool (at most 256).
pub(super) fn add_ip(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    farm_id: &u32,
    ip: &str,
    gateway: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let mut farm = owned_farm(st, who, *farm_id)?;
    check_ip(ip, gateway)?;
    if farm.public_ips.iter().any(|p| p.ip == *ip) {
        return Err(TxError::Duplicate(format!("IP {ip} in farm {farm_id}")));
    }
    if farm.public_ips.len() >= 256 {
        return Err(invalid("ip", "farm already has 256 public IPs"));
    }
    farm.public_ips.push(PublicIp {
        ip: ip.to_owned(),
        gateway: gateway.to_owned(),
        contract_id: 0,
    });
    st.put(keys::farm(farm.id), &farm);
    ev.push(Event::FarmStored { farm });
    Ok(())
}

/// `remove_farm_ip`: an unused IP out of the pool.
pub(super) fn remove_ip(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    farm_id: &u32,
    ip: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    Ok(())
}

/// `create_node`: one node per twin, in an existing farm.
#[allow(clippy::too_many_arguments)] // one parameter per field of the call
pub(super) fn create_node(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    farm_id: &u32,
    resources: &Resources,
    location: &Location,
    interfaces: &[Interface],
    public_config: &Option<PublicConfig>,
    features: &[String],
    version: &str,
    virtualized: &bool,
    secure_boot: &bool,
    serial_number: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
        interfaces: interfaces.to_owned(),
        public_config: public_config.clone(),
        features: features.to_owned(),
        version: version.to_owned(),
        virtualized: *virtualized,
        secure_boot: *secure_boot,
        serial_number: serial_number.to_owned(),
        created: now,
        uptime: 0,
        updated_at: now,
        maintenance: None,
        last_seen: if p.offline_cutoff.is_some() { now } else { 0 },
    };
    st.put(keys::node(id), &node);
    st.put(keys::node_by_twin(twin.id), &id);
    ev.push(Event::NodeStored { node });
    Ok(())
}

/// `update_node`: by the node's own twin; no farm change with active contracts.
#[allow(clippy::too_many_arguments)] // one parameter per field of the call
pub(super) fn update_node(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    node_id: &u32,
    farm_id: &u32,
    resources: &Resources,
    location: &Location,
    interfaces: &[Interface],
    features: &[String],
    version: &str,
    virtualized: &bool,
    secure_boot: &bool,
    serial_number: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    node.interfaces = interfaces.to_owned();
    node.features = features.to_owned();
    node.version = version.to_owned();
    node.virtualized = *virtualized;
    node.secure_boot = *secure_boot;
    node.serial_number = serial_number.to_owned();
    node.updated_at = now;
    billing::node_heard_from(st, p, now, &mut node)?;
    st.put(keys::node(node.id), &node);
    ev.push(Event::NodeStored { node });
    Ok(())
}

/// `report_uptime`: by the node's twin.
pub(super) fn report_uptime(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    uptime: &u64,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let twin = my_twin(st, who)?;
    let Some(id) = st.get::<u32>(&keys::node_by_twin(twin.id))? else {
        return Err(invalid("caller", format!("twin {} has no node", twin.id)));
    };
    let mut node = node(st, id)?;
    node.uptime = *uptime;
    node.updated_at = now;
    billing::node_heard_from(st, p, now, &mut node)?;
    st.put(keys::node(id), &node);
    ev.push(Event::NodeUptimeReported {
        node_id: id,
        timestamp: now,
        uptime: *uptime,
    });
    Ok(())
}

/// `set_node_public_config`: by the farm's owner.
pub(super) fn set_public_config(
    st: &mut Overlay<'_>,
    now: u64,
    who: &PublicKey,
    node_id: &u32,
    config: &Option<PublicConfig>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    Ok(())
}

/// `set_node_maintenance`: by the owner of the node's farm. Entering refuses new contracts on
/// the node; each active contract's owner gets a `contract_node_maintenance` notice. Leaving a
/// paused maintenance records the paused time as unbilled (fair billing).
#[allow(clippy::too_many_arguments)] // one parameter per field of the call
pub(super) fn set_maintenance(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    node_id: u32,
    on: bool,
    pause: bool,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let mut node = node(st, node_id)?;
    owned_farm(st, who, node.farm_id)
        .map_err(|_| TxError::NotOwner(format!("farm of node {node_id}")))?;
    if !on && pause {
        return Err(invalid("pause", "only when entering maintenance"));
    }
    let before = node.clone();
    if let (Some(cutoff), Some(m)) = (p.offline_cutoff, before.maintenance) {
        // Leaving a paused maintenance, or changing it: the paused time so far is unserved.
        if m.pause {
            billing::for_each_active_contract(st, node_id, |c| {
                billing::account_unserved(c, &before, cutoff, now)
            })?;
        }
    }
    node.maintenance = on.then_some(Maintenance {
        since: match before.maintenance {
            // Changing `pause` restarts the clock the unserved time is counted from.
            Some(m) if m.pause == pause => m.since,
            _ => now,
        },
        pause,
    });
    node.updated_at = now;
    st.put(keys::node(node_id), &node);
    ev.push(Event::NodeMaintenanceSet { node_id, on, pause });
    let mut notices = Vec::new();
    billing::for_each_active_contract(st, node_id, |c| {
        notices.push(Event::ContractNodeMaintenance {
            contract_id: c.id,
            node_id,
            twin_id: c.twin_id,
            on,
            pause,
        })
    })?;
    ev.extend(notices);
    Ok(())
}

/// `move_node`: by the owner of both nodes' farm. Node `from` (its id, contracts, public
/// config) now belongs to the twin of node `to`, whose record is removed.
pub(super) fn move_node(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    from: u32,
    to: u32,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if from == to {
        return Err(invalid("to", "a node cannot move to itself"));
    }
    let mut old = node(st, from)?;
    let new = node(st, to)?;
    owned_farm(st, who, old.farm_id)
        .map_err(|_| TxError::NotOwner(format!("farm of node {from}")))?;
    if new.farm_id != old.farm_id {
        return Err(invalid(
            "to",
            format!(
                "node {to} is in farm {}, node {from} in farm {}",
                new.farm_id, old.farm_id
            ),
        ));
    }
    if !st.scan_prefix(&keys::node_contracts_prefix(to))?.is_empty() {
        return Err(invalid(
            "to",
            format!("node {to} has active contracts: cancel them first"),
        ));
    }
    st.delete(keys::node_by_twin(old.twin_id));
    st.delete(keys::node(to));
    st.put(keys::node_by_twin(new.twin_id), &from);
    old.twin_id = new.twin_id;
    old.resources = new.resources;
    old.interfaces = new.interfaces;
    old.features = new.features;
    old.version = new.version;
    old.virtualized = new.virtualized;
    old.secure_boot = new.secure_boot;
    old.serial_number = new.serial_number;
    old.uptime = new.uptime;
    old.updated_at = now;
    if p.offline_cutoff.is_some() {
        // Heard from through the new identity: the old one's silence ends here.
        billing::node_heard_from(st, p, now, &mut old)?;
    }
    st.put(keys::node(from), &old);
    ev.push(Event::NodeMoved {
        from,
        to,
        twin_id: old.twin_id,
    });
    ev.push(Event::NodeStored { node: old });
    Ok(())
}
