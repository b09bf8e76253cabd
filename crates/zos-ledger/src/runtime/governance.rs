//! Council calls.

use zos_types::crypto::PublicKey;

use super::{Params, TxError, invalid};
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::{PricingPolicy, ZosVersion};

/// `set_zos_version`: council only.
pub(super) fn set_zos_version(
    st: &mut Overlay<'_>,
    p: &Params,
    who: &PublicKey,
    version: &str,
    safe_to_upgrade: &bool,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if *who != p.council {
        return Err(TxError::NotCouncil("set_zos_version"));
    }
    if version.is_empty() || version.len() > 64 {
        return Err(invalid("version", "must be 1..=64 characters"));
    }
    let v = ZosVersion {
        version: version.to_owned(),
        safe_to_upgrade: *safe_to_upgrade,
    };
    st.put(keys::ZOS_VERSION.to_vec(), &v);
    ev.push(Event::ZosVersionUpdated {
        version: v.version,
        safe_to_upgrade: v.safe_to_upgrade,
    });
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
