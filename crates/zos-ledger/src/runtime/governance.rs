//! Council calls.

use zos_types::crypto::PublicKey;

use super::{Params, TxError, farm, invalid, my_twin, node};
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{
    MAX_ROLLBACK_REASON, MAX_ROLLOUT_FARMS, MAX_VERSION_LEN, PricingPolicy, RolloutHalt, ZosVersion,
};

/// `set_zos_version`: council only. A new target (even the same version again) starts a new
/// rollout: the stage is replaced and any halt cleared.
#[allow(clippy::too_many_arguments)] // one parameter per field of the call
pub(super) fn set_zos_version(
    st: &mut Overlay<'_>,
    p: &Params,
    who: &PublicKey,
    version: &str,
    safe_to_upgrade: bool,
    farms: &[u32],
    share_percent: Option<u8>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if *who != p.council {
        return Err(TxError::NotCouncil("set_zos_version"));
    }
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(invalid("version", "must be 1..=64 characters"));
    }
    if farms.len() > MAX_ROLLOUT_FARMS {
        return Err(invalid(
            "farms",
            format!("{} farms, at most {MAX_ROLLOUT_FARMS}", farms.len()),
        ));
    }
    let mut staged: Vec<u32> = farms.to_vec();
    staged.sort_unstable();
    staged.dedup();
    if staged.len() != farms.len() {
        return Err(invalid("farms", "lists a farm twice"));
    }
    for id in farms {
        farm(st, *id)?;
    }
    if let Some(s) = share_percent {
        if !(1..=100).contains(&s) {
            return Err(invalid("share_percent", format!("{s} is not in 1..=100")));
        }
    }
    let v = ZosVersion {
        version: version.to_owned(),
        safe_to_upgrade,
        farms: farms.to_vec(),
        share_percent,
        halted: None,
    };
    st.put(keys::ZOS_VERSION.to_vec(), &v);
    ev.push(Event::ZosVersionUpdated {
        version: v.version,
        safe_to_upgrade: v.safe_to_upgrade,
        farms: v.farms,
        share_percent: v.share_percent,
    });
    Ok(())
}

/// `report_rollback`: the node's twin says the node rolled back from `version`. On the current
/// target this halts the rollout (the first report's reason is kept until the council sets a
/// version again); any other report is only an event. Over-long fields are refused, not cut:
/// the ledger stores exactly what was signed (`Call::report_rollback` cuts before signing).
pub(super) fn report_rollback(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    node_id: u32,
    version: &str,
    reason: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(invalid("version", "must be 1..=64 bytes"));
    }
    if reason.len() > MAX_ROLLBACK_REASON {
        return Err(invalid(
            "reason",
            format!("{} bytes, at most {MAX_ROLLBACK_REASON}", reason.len()),
        ));
    }
    let twin = my_twin(st, who)?;
    if node(st, node_id)?.twin_id != twin.id {
        return Err(TxError::NotOwner(format!("node {node_id}")));
    }
    let mut target: ZosVersion = st.get(keys::ZOS_VERSION)?.unwrap_or_default();
    if target.version == version && target.halted.is_none() {
        target.halted = Some(RolloutHalt {
            node_id,
            version: version.to_owned(),
            reason: reason.to_owned(),
        });
        st.put(keys::ZOS_VERSION.to_vec(), &target);
        ev.push(Event::RolloutHalted {
            node_id,
            version: version.to_owned(),
            reason: reason.to_owned(),
        });
    } else {
        ev.push(Event::RollbackReported {
            node_id,
            version: version.to_owned(),
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

/// `set_pricing_policy`: council only.
pub(super) fn set_pricing_policy(
    st: &mut Overlay<'_>,
    p: &Params,
    who: &PublicKey,
    policy: &PricingPolicy,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if *who != p.council {
        return Err(TxError::NotCouncil("set_pricing_policy"));
    }
    st.put(keys::PRICING.to_vec(), policy);
    ev.push(Event::PricingPolicyStored {
        policy: policy.clone(),
    });
    Ok(())
}
