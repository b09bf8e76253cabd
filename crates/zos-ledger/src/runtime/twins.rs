//! Twin calls.

use zos_types::crypto::PublicKey;

use super::{TxError, invalid, my_twin};
use crate::state::{Overlay, keys};
use crate::tx::{Event, rotate_account_message};
use crate::types::Twin;
use crate::validate::check_twin_fields;

/// The e2e key rules on top of the format check: a 32-byte key is an X25519 key (zos's bus)
/// and must not be a small-order point, since every shared secret with one is all zeros and
/// anything sealed to it is readable by all. Other lengths (upstream's secp256k1 keys) pass.
fn check_e2e_key(e2e_key: &Option<String>) -> Result<(), TxError> {
    let Some(k) = e2e_key else { return Ok(()) };
    let Ok(bytes) = hex::decode(k) else {
        return Err(invalid("e2e_key", "must be hex"));
    };
    if let Ok(x) = <[u8; 32]>::try_from(bytes.as_slice()) {
        if zos_types::crypto::x25519_low_order(&x) {
            return Err(invalid(
                "e2e_key",
                "a small-order X25519 point (every shared secret would be zero)",
            ));
        }
    }
    Ok(())
}

/// `create_twin`: one twin per account.
pub(super) fn create(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    relays: &[String],
    e2e_key: &Option<String>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    check_twin_fields(relays, e2e_key)?;
    check_e2e_key(e2e_key)?;
    if st.get::<u32>(&keys::twin_by_account(who))?.is_some() {
        return Err(TxError::Duplicate(format!("twin of account {who}")));
    }
    let id = st.next_id("twin")? as u32;
    let twin = Twin {
        id,
        account: *who,
        relays: relays.to_owned(),
        e2e_key: e2e_key.clone(),
    };
    st.put(keys::twin(id), &twin);
    st.put(keys::twin_by_account(who), &id);
    ev.push(Event::TwinStored { twin });
    Ok(())
}

/// `update_twin`: relays and e2e key of the caller's twin (e2e key rotation).
pub(super) fn update(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    relays: &[String],
    e2e_key: &Option<String>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    check_twin_fields(relays, e2e_key)?;
    check_e2e_key(e2e_key)?;
    let mut twin = my_twin(st, who)?;
    twin.relays = relays.to_owned();
    twin.e2e_key = e2e_key.clone();
    st.put(keys::twin(twin.id), &twin);
    ev.push(Event::TwinStored { twin });
    Ok(())
}

/// `rotate_twin_account`: the caller's twin moves to `new_account`, which consented. The twin
/// id, its farms, nodes and contracts stay; the old account's balance stays with the old
/// account, and the new one pays the twin's bills from now on.
pub(super) fn rotate_account(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    new_account: &PublicKey,
    consent: &str,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    let mut twin = my_twin(st, who)?;
    if new_account == who {
        return Err(invalid("new_account", "is already the twin's account"));
    }
    let sig = hex::decode(consent)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| invalid("consent", "must be a 64-byte hex signature"))?;
    if !new_account.verify(&rotate_account_message(twin.id, who, new_account), &sig) {
        return Err(invalid(
            "consent",
            "not a signature by new_account over this rotation",
        ));
    }
    if st
        .get::<u32>(&keys::twin_by_account(new_account))?
        .is_some()
    {
        return Err(TxError::Duplicate(format!("twin of account {new_account}")));
    }
    st.delete(keys::twin_by_account(who));
    st.put(keys::twin_by_account(new_account), &twin.id);
    twin.account = *new_account;
    st.put(keys::twin(twin.id), &twin);
    ev.push(Event::TwinStored { twin });
    Ok(())
}
