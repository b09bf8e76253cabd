//! Usage reports by nodes (the inputs of billing).

use zos_types::crypto::PublicKey;

use super::{Params, TxError, my_node, node, node_contract_of};
use crate::billing;
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{ContractResources, NruConsumption};

/// `report_contract_resources`: what a node's contracts use (billed from the next charge).
pub(super) fn contract_resources(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    who: &PublicKey,
    reports: &[ContractResources],
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let node_id = my_node(st, who)?;
    heard_from(st, p, now, node_id)?;
    for r in reports {
        let mut c = node_contract_of(st, r.contract_id, node_id)?;
        c.billing.used = r.used;
        if p.offline_cutoff.is_some() && c.billing.started.is_none() && r.ok.unwrap_or(true) {
            // Fair billing starts with the node's word that the deployment is up.
            c.billing.started = Some(now);
            c.billing.last_billed = now;
            ev.push(Event::ContractBillingStarted {
                contract_id: c.id,
                node_id,
                twin_id: c.twin_id,
            });
        }
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
    p: &Params,
    now: u64,
    who: &PublicKey,
    reports: &[NruConsumption],
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let node_id = my_node(st, who)?;
    heard_from(st, p, now, node_id)?;
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

/// A report is the node heard from (fair billing only: other ledgers keep the node as is).
fn heard_from(st: &mut Overlay<'_>, p: &Params, now: u64, node_id: u32) -> Result<(), TxError> {
    if p.offline_cutoff.is_none() {
        return Ok(());
    }
    let mut n = node(st, node_id)?;
    billing::node_heard_from(st, p, now, &mut n)?;
    st.put(keys::node(node_id), &n);
    Ok(())
}
