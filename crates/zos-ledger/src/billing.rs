//! Billing: what a contract costs and what happens when its owner cannot pay.
//!
//! Each active contract sits in a queue (`due/{time}{id}` keys) and is charged when ledger time
//! reaches its slot, for the time elapsed since its last charge: CU and SU of the resources its
//! node reported, public IPv4 addresses per hour, network bytes reported (NU), or the flat hourly
//! price of a name. Payment goes to the farmer of the node (name contracts: to the council).
//! Unpaid → grace period (`ContractGracePeriodStarted`), the debt is carried; a later charge that
//! succeeds ends it (`ContractGracePeriodEnded`); still unpaid when the grace period is over →
//! deleted (`NodeContractCanceled` / `NameContractCanceled`), IPs freed.
//!
//! All arithmetic is integer (u128 intermediates), so a replay computes the same amounts.

use zos_types::crypto::PublicKey;

use crate::runtime::{Params, TxError, account, pricing, transfer};
use crate::state::{Overlay, keys, trailing_id};
use crate::store::Table;
use crate::tx::Event;
use crate::types::{
    Balance, BillingInfo, Contract, ContractKind, ContractState, Farm, Node, PricingPolicy,
    Resources, Twin,
};

const GIB: u128 = 1 << 30;

/// Billing bookkeeping of a contract created at `now`.
pub fn new_info(now: u64, interval: u64) -> BillingInfo {
    BillingInfo {
        last_billed: now,
        next_bill: now.saturating_add(interval),
        ..BillingInfo::default()
    }
}

/// Compute units × 1000 for `r` (upstream `calculate_cu`, with memory in GiB).
pub fn cu_milli(r: &Resources) -> u128 {
    let mru = u128::from(r.mru) * 1000 / GIB;
    let cru = u128::from(r.cru) * 1000;
    let a = (mru / 4).max(cru / 2);
    let b = (mru / 8).max(cru);
    let c = (mru / 2).max(cru / 4);
    a.min(b).min(c)
}

/// Storage units × 1000 for `r` (upstream: hru/1200 + sru/200, in GiB).
pub fn su_milli(r: &Resources) -> u128 {
    u128::from(r.hru) * 1000 / GIB / 1200 + u128::from(r.sru) * 1000 / GIB / 200
}

/// Price per hour of a contract under `policy`.
pub fn hourly_cost(c: &Contract, policy: &PricingPolicy) -> u128 {
    match &c.kind {
        ContractKind::Node { public_ips, .. } => {
            let used = &c.billing.used;
            (cu_milli(used) * u128::from(policy.cu_per_hour)
                + su_milli(used) * u128::from(policy.su_per_hour))
                / 1000
                + u128::from(*public_ips) * u128::from(policy.ipv4_per_hour)
        }
        ContractKind::Name { .. } => u128::from(policy.name_per_hour),
    }
}

/// What `c` owes at `now`: the carried debt, elapsed time and unbilled traffic.
pub fn amount_due(c: &Contract, policy: &PricingPolicy, now: u64) -> Balance {
    let elapsed = u128::from(now.saturating_sub(c.billing.last_billed));
    let time = hourly_cost(c, policy) * elapsed / 3600;
    let nu = u128::from(c.billing.nru_unbilled) * u128::from(policy.nu_per_gb) / GIB;
    let total = u128::from(c.billing.amount_unbilled) + time + nu;
    Balance::try_from(total).unwrap_or(Balance::MAX)
}

/// Charges every contract whose slot is at or before `now`.
pub fn run(st: &mut Overlay<'_>, p: &Params, now: u64, ev: &mut Vec<Event>) -> Result<(), TxError> {
    let end = keys::due(now.saturating_add(1), 0);
    let due = st.range_raw(keys::DUE_PREFIX, Some(&end))?;
    for (key, _) in due {
        let id = trailing_id(Table::State, &key)?;
        st.delete(key);
        bill(st, p, now, id, ev)?;
    }
    Ok(())
}

/// Is any contract due at or before `now`?
pub fn any_due(st: &Overlay<'_>, now: u64) -> Result<bool, TxError> {
    let end = keys::due(now.saturating_add(1), 0);
    Ok(!st.range_raw(keys::DUE_PREFIX, Some(&end))?.is_empty())
}

fn bill(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    id: u64,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let Some(mut c) = st.get::<Contract>(&keys::contract(id))? else {
        return Ok(());
    };
    if !c.state.is_active() {
        return Ok(());
    }
    let policy = pricing(st)?;
    let due = amount_due(&c, &policy, now);
    let payer = owner_account(st, c.twin_id)?;
    let balance = account(st, &payer)?.balance;
    c.billing.last_billed = now;
    c.billing.nru_unbilled = 0;
    let (node_id, twin_id) = (c.node_id().unwrap_or(0), c.twin_id);
    if balance >= due {
        pay(st, p, &mut c, &payer, due, now, ev)?;
        if matches!(c.state, ContractState::GracePeriod { .. }) {
            c.state = ContractState::Created;
            ev.push(Event::ContractGracePeriodEnded {
                contract_id: id,
                node_id,
                twin_id,
            });
        }
    } else {
        c.billing.amount_unbilled = due;
        match c.state {
            ContractState::Created => {
                c.state = ContractState::GracePeriod { since: now };
                ev.push(Event::ContractGracePeriodStarted {
                    contract_id: id,
                    node_id,
                    twin_id,
                });
            }
            ContractState::GracePeriod { since } if now >= since.saturating_add(p.grace_period) => {
                return delete_contract(st, p, c, "out_of_funds", ev);
            }
            _ => {}
        }
    }
    c.billing.next_bill = now.saturating_add(p.billing_interval);
    st.put(keys::due(c.billing.next_bill, id), &());
    st.put(keys::contract(id), &c);
    Ok(())
}

/// Charges what is owed at cancel time, as far as the balance goes.
pub fn settle_on_cancel(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    mut c: Contract,
    ev: &mut Vec<Event>,
) -> Result<Contract, TxError> {
    let policy = pricing(st)?;
    let due = amount_due(&c, &policy, now);
    let payer = owner_account(st, c.twin_id)?;
    let amount = due.min(account(st, &payer)?.balance);
    c.billing.last_billed = now;
    c.billing.nru_unbilled = 0;
    pay(st, p, &mut c, &payer, amount, now, ev)?;
    Ok(c)
}

fn pay(
    st: &mut Overlay<'_>,
    p: &Params,
    c: &mut Contract,
    payer: &PublicKey,
    amount: Balance,
    now: u64,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    c.billing.amount_unbilled = 0;
    if amount == 0 {
        return Ok(());
    }
    let to = beneficiary(st, p, c)?;
    transfer(st, payer, &to, amount)?;
    c.billing.total_billed = c.billing.total_billed.saturating_add(amount);
    ev.push(Event::ContractBilled {
        contract_id: c.id,
        timestamp: now,
        amount,
    });
    Ok(())
}

/// Ends a contract: state Deleted, indexes and billing slot removed, IPs freed, event emitted.
pub fn delete_contract(
    st: &mut Overlay<'_>,
    _p: &Params,
    mut c: Contract,
    reason: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    st.delete(keys::due(c.billing.next_bill, c.id));
    match &mut c.kind {
        ContractKind::Node {
            node_id,
            deployment_hash,
            public_ips_list,
            ..
        } => {
            st.delete(keys::node_contract(*node_id, c.id));
            st.delete(keys::node_hash(*node_id, deployment_hash));
            if !public_ips_list.is_empty() {
                let node: Option<Node> = st.get(&keys::node(*node_id))?;
                if let Some(node) = node {
                    if let Some(mut farm) = st.get::<Farm>(&keys::farm(node.farm_id))? {
                        for ip in farm
                            .public_ips
                            .iter_mut()
                            .filter(|ip| ip.contract_id == c.id)
                        {
                            ip.contract_id = 0;
                        }
                        st.put(keys::farm(farm.id), &farm);
                    }
                }
            }
            ev.push(Event::NodeContractCanceled {
                contract_id: c.id,
                node_id: *node_id,
                twin_id: c.twin_id,
            });
        }
        ContractKind::Name { name } => {
            st.delete(keys::name_contract(name));
            ev.push(Event::NameContractCanceled {
                contract_id: c.id,
                twin_id: c.twin_id,
                name: name.clone(),
            });
        }
    }
    c.state = ContractState::Deleted {
        reason: reason.to_string(),
    };
    st.put(keys::contract(c.id), &c);
    Ok(())
}

fn owner_account(st: &Overlay<'_>, twin_id: u32) -> Result<PublicKey, TxError> {
    let twin: Twin = st
        .get(&keys::twin(twin_id))?
        .ok_or(TxError::UnknownTwin(twin_id))?;
    Ok(twin.account)
}

/// The farmer of the contract's node, or the council for names (and for orphaned nodes).
fn beneficiary(st: &Overlay<'_>, p: &Params, c: &Contract) -> Result<PublicKey, TxError> {
    if let Some(node_id) = c.node_id() {
        if let Some(node) = st.get::<Node>(&keys::node(node_id))? {
            if let Some(farm) = st.get::<Farm>(&keys::farm(node.farm_id))? {
                return owner_account(st, farm.twin_id);
            }
        }
    }
    Ok(p.council)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cu_su_follow_upstream_formulas() {
        let r = Resources {
            cru: 2,
            mru: 4 * GIB as u64,
            sru: 100 * GIB as u64,
            hru: 0,
        };
        // min(max(1, 1), max(0.5, 2), max(2, 0.5)) = 1
        assert_eq!(cu_milli(&r), 1000);
        assert_eq!(su_milli(&r), 500);
    }
}
