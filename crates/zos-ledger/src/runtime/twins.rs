//! Twin calls.

use zos_types::crypto::PublicKey;

use super::{TxError, my_twin};
use crate::state::{Overlay, keys};
use crate::tx::Event;
use crate::types::Twin;
use crate::validate::check_twin_fields;

/// `create_twin`: one twin per account.
pub(super) fn create(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    relays: &[String],
    e2e_key: &Option<String>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    check_twin_fields(relays, e2e_key)?;
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

/// `update_twin`: relays and e2e key of the caller's twin.
pub(super) fn update(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    relays: &[String],
    e2e_key: &Option<String>,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    check_twin_fields(relays, e2e_key)?;
    let mut twin = my_twin(st, who)?;
    twin.relays = relays.to_owned();
    twin.e2e_key = e2e_key.clone();
    st.put(keys::twin(twin.id), &twin);
    ev.push(Event::TwinStored { twin });
    Ok(())
}
