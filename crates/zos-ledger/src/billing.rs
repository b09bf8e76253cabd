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
//!
//! **Fair billing** (ledgers whose genesis sets `offline_cutoff_secs`): a node contract is
//! charged only from the node's first report that the deployment is up (`started`), and not for
//! time its node did not serve it: silent (no transaction of its own) for longer than the
//! cut-off, counted from `last_seen + cutoff`, or paused for maintenance. That time is recorded
//! as a gap (`offline_secs`, `gaps`) when a charge runs during it and when the node is heard
//! from again, and left out of the next charge (`offline_pending`).

use zos_types::crypto::PublicKey;

use crate::runtime::{Params, TxError, account, pricing, transfer};
use crate::state::{Overlay, keys, trailing_id};
use crate::store::Table;
use crate::tx::Event;
use crate::types::{
    Balance, BillingGap, BillingInfo, Contract, ContractKind, ContractState, Farm, MAX_GAPS, Node,
    PricingPolicy, Resources, Twin,
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

/// What `c` owes at `now`: the carried debt, elapsed time (less the unserved time recorded
/// since the last charge) and unbilled traffic.
pub fn amount_due(c: &Contract, policy: &PricingPolicy, now: u64) -> Balance {
    let elapsed = u128::from(
        now.saturating_sub(c.billing.last_billed)
            .saturating_sub(c.billing.offline_pending),
    );
    let time = hourly_cost(c, policy) * elapsed / 3600;
    let nu = u128::from(c.billing.nru_unbilled) * u128::from(policy.nu_per_gb) / GIB;
    let total = u128::from(c.billing.amount_unbilled) + time + nu;
    Balance::try_from(total).unwrap_or(Balance::MAX)
}

/// Fair billing: records that `c` was not served during `[from, to)`. A gap never reaches back
/// before the last one's end (nothing is counted twice) and joins it when they touch.
pub fn record_gap(c: &mut Contract, from: u64, to: u64) {
    let b = &mut c.billing;
    let from = from.max(b.gaps.last().map_or(0, |g| g.to));
    if to <= from {
        return;
    }
    b.offline_secs = b.offline_secs.saturating_add(to - from);
    b.offline_pending = b.offline_pending.saturating_add(to - from);
    match b.gaps.last_mut() {
        Some(g) if g.to == from => g.to = to,
        _ => {
            b.gaps.push(BillingGap { from, to });
            if b.gaps.len() > MAX_GAPS {
                b.gaps.remove(0);
            }
        }
    }
}

/// Fair billing: records the time up to `now` during which `node` has not served `c` since
/// its last charge: silent since `last_seen + cutoff`, or paused for maintenance.
pub fn account_unserved(c: &mut Contract, node: &Node, cutoff: u64, now: u64) {
    let Some(started) = c.billing.started else {
        return;
    };
    let mut from = if node.last_seen > 0 {
        node.last_seen.saturating_add(cutoff)
    } else {
        u64::MAX
    };
    if let Some(m) = node.maintenance.filter(|m| m.pause) {
        from = from.min(m.since);
    }
    record_gap(c, from.max(c.billing.last_billed).max(started), now);
}

/// Fair billing, when the node of `node_id` is heard from at `now` (any transaction of its
/// own): a silence past the cut-off ends, and its contracts record what was not served.
/// Updates `node.last_seen`; the caller stores the node.
pub fn node_heard_from(
    st: &mut Overlay<'_>,
    p: &Params,
    now: u64,
    node: &mut Node,
) -> Result<(), TxError> {
    let Some(cutoff) = p.offline_cutoff else {
        return Ok(());
    };
    if node.last_seen > 0 && now > node.last_seen.saturating_add(cutoff) {
        for_each_active_contract(st, node.id, |c| account_unserved(c, node, cutoff, now))?;
    }
    node.last_seen = now;
    Ok(())
}

/// Applies `f` to every active contract of `node_id` and stores it.
pub fn for_each_active_contract(
    st: &mut Overlay<'_>,
    node_id: u32,
    mut f: impl FnMut(&mut Contract),
) -> Result<(), TxError> {
    let prefix = keys::node_contracts_prefix(node_id);
    for (key, _) in st.scan_prefix(&prefix)? {
        let id = trailing_id(Table::State, &key)?;
        if let Some(mut c) = st.get::<Contract>(&keys::contract(id))? {
            if c.state.is_active() {
                f(&mut c);
                st.put(keys::contract(id), &c);
            }
        }
    }
    Ok(())
}

/// Fair billing's view of `c` at `now` before a charge: not started → nothing accrues; else
/// the unserved time is recorded. No-op on other ledgers and for name contracts.
fn fair_account(st: &Overlay<'_>, p: &Params, c: &mut Contract, now: u64) -> Result<(), TxError> {
    let (Some(cutoff), Some(node_id)) = (p.offline_cutoff, c.node_id()) else {
        return Ok(());
    };
    if c.billing.started.is_none() {
        c.billing.last_billed = now;
        return Ok(());
    }
    if let Some(node) = st.get::<Node>(&keys::node(node_id))? {
        account_unserved(c, &node, cutoff, now);
    }
    Ok(())
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
    fair_account(st, p, &mut c, now)?;
    let policy = pricing(st)?;
    let due = amount_due(&c, &policy, now);
    let payer = owner_account(st, c.twin_id)?;
    let balance = account(st, &payer)?.balance;
    c.billing.last_billed = now;
    c.billing.offline_pending = 0;
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
    fair_account(st, p, &mut c, now)?;
    let policy = pricing(st)?;
    let due = amount_due(&c, &policy, now);
    let payer = owner_account(st, c.twin_id)?;
    let amount = due.min(account(st, &payer)?.balance);
    c.billing.last_billed = now;
    c.billing.offline_pending = 0;
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
