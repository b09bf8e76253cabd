//! Contract calls: node and name contracts, updates, cancellation.

use zos_types::crypto::PublicKey;

use super::{Params, TxError, contract, farm, invalid, my_twin, node};
use crate::billing;
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{Contract, ContractKind, ContractState};
use crate::validate::{check_data, check_hash, check_name};

/// `create_node_contract`: unique hash per node, public IPs reserved from the farm, first charge due one interval later.
#[allow(clippy::too_many_arguments)] // one parameter per field of the call
pub(super) fn create_node_contract(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    node_id: &u32,
    deployment_hash: &str,
    deployment_data: &str,
    public_ips: &u32,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let twin = my_twin(st, who)?;
    check_hash(deployment_hash)?;
    check_data(deployment_data)?;
    let node = node(st, *node_id)?;
    if node.maintenance.is_some() {
        return Err(TxError::NodeInMaintenance(*node_id));
    }
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
            deployment_hash: deployment_hash.to_owned(),
            deployment_data: deployment_data.to_owned(),
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
        deployment_hash: deployment_hash.to_owned(),
        public_ips_list: list,
    });
    Ok(())
}

/// `update_node_contract`: new hash and data of a created contract.
pub(super) fn update_node_contract(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    contract_id: &u64,
    deployment_hash: &str,
    deployment_data: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    *old_hash = deployment_hash.to_owned();
    *old_data = deployment_data.to_owned();
    st.put(keys::contract(c.id), &c);
    ev.push(Event::NodeContractUpdated {
        contract_id: c.id,
        node_id,
        twin_id: c.twin_id,
        deployment_hash: deployment_hash.to_owned(),
    });
    Ok(())
}

/// `cancel_contract`: settles what is owed, then deletes.
pub(super) fn cancel(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    contract_id: &u64,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    let c = billing::settle_on_cancel(st, p, now, c, ev)?;
    billing::delete_contract(st, p, c, "canceled_by_user", ev)?;
    Ok(())
}

/// `create_name_contract`: a unique name.
pub(super) fn create_name_contract(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    name: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
        kind: ContractKind::Name {
            name: name.to_owned(),
        },
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
        name: name.to_owned(),
    });
    Ok(())
}
