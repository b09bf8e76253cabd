//! Applying one call to the state: every rule and every rejection lives here.
//!
//! [`apply`] writes into the overlay's transaction layer and returns the events; on `Err` the
//! caller rolls the layer back, so a rejected transaction leaves no trace.
//!
//! [`apply`] only dispatches: each call family has its module (accounts, twins, farms and
//! nodes, contracts, node usage reports, governance); billing lives in [`crate::billing`].
//! The lookups that enforce ownership (`my_twin`, `owned_farm`, …) are here, shared by all.

use zos_types::crypto::PublicKey;

pub use crate::error::TxError;
use crate::state::{Overlay, StateError, keys};
use crate::tx::{Call, Event};
use crate::types::{Account, Balance, Contract, Farm, Node, PricingPolicy, Twin};

mod accounts;
mod contracts;
mod farms;
mod governance;
mod reports;
mod twins;

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
    /// Fair billing's cut-off (`Genesis::offline_cutoff_secs`); `None`: billing from creation.
    pub offline_cutoff: Option<u64>,
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
        Call::Transfer { to, amount } => accounts::transfer_call(st, who, to, amount, &mut ev)?,
        Call::CreateTwin { relays, e2e_key } => twins::create(st, who, relays, e2e_key, &mut ev)?,
        Call::UpdateTwin { relays, e2e_key } => twins::update(st, who, relays, e2e_key, &mut ev)?,
        Call::RotateTwinAccount {
            new_account,
            consent,
        } => twins::rotate_account(st, who, new_account, consent, &mut ev)?,
        Call::CreateFarm { name } => farms::create_farm(st, who, name, &mut ev)?,
        Call::AddFarmIp {
            farm_id,
            ip,
            gateway,
        } => farms::add_ip(st, who, farm_id, ip, gateway, &mut ev)?,
        Call::RemoveFarmIp { farm_id, ip } => farms::remove_ip(st, who, farm_id, ip, &mut ev)?,
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
        } => farms::create_node(
            st,
            p,
            now,
            who,
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
            &mut ev,
        )?,
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
        } => farms::update_node(
            st,
            p,
            now,
            who,
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
            &mut ev,
        )?,
        Call::ReportUptime { uptime } => farms::report_uptime(st, p, now, who, uptime, &mut ev)?,
        Call::SetNodeMaintenance { node_id, on, pause } => {
            farms::set_maintenance(st, p, now, who, *node_id, *on, *pause, &mut ev)?
        }
        Call::MoveNode { from, to } => farms::move_node(st, p, now, who, *from, *to, &mut ev)?,
        Call::SetNodePublicConfig { node_id, config } => {
            farms::set_public_config(st, now, who, node_id, config, &mut ev)?
        }
        Call::CreateNodeContract {
            node_id,
            deployment_hash,
            deployment_data,
            public_ips,
        } => contracts::create_node_contract(
            st,
            p,
            now,
            who,
            node_id,
            deployment_hash,
            deployment_data,
            public_ips,
            &mut ev,
        )?,
        Call::UpdateNodeContract {
            contract_id,
            deployment_hash,
            deployment_data,
        } => contracts::update_node_contract(
            st,
            who,
            contract_id,
            deployment_hash,
            deployment_data,
            &mut ev,
        )?,
        Call::CancelContract { contract_id } => {
            contracts::cancel(st, p, now, who, contract_id, &mut ev)?
        }
        Call::CreateNameContract { name } => {
            contracts::create_name_contract(st, p, now, who, name, &mut ev)?
        }
        Call::ReportContractResources(reports) => {
            reports::contract_resources(st, p, now, who, reports, &mut ev)?
        }
        Call::AddNruReports(reports) => reports::nru(st, p, now, who, reports, &mut ev)?,
        Call::SetZosVersion {
            version,
            safe_to_upgrade,
            farms,
            share_percent,
        } => governance::set_zos_version(
            st,
            p,
            who,
            version,
            *safe_to_upgrade,
            farms,
            *share_percent,
            &mut ev,
        )?,
        Call::SetPricingPolicy { policy } => {
            governance::set_pricing_policy(st, p, who, policy, &mut ev)?
        }
        Call::ReportRollback {
            node_id,
            version,
            reason,
        } => governance::report_rollback(st, who, *node_id, version, reason, &mut ev)?,
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
