//! Usage reports by nodes (the inputs of billing).

use zos_types::crypto::PublicKey;

use super::{TxError, my_node, node_contract_of};
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{ContractResources, NruConsumption};

/// `report_contract_resources`: what a node's contracts use (billed from the next charge).
pub(super) fn contract_resources(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    reports: &[ContractResources],
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    Ok(())
}

/// `add_nru_reports`: network units a node's contracts consumed.
pub(super) fn nru(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    reports: &[NruConsumption],
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
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
    Ok(())
}
