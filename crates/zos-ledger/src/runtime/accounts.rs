//! Account calls.

use zos_types::crypto::PublicKey;

use super::{TxError, invalid, transfer};
use crate::state::Overlay;
use crate::tx::Event;
use crate::types::Balance;

/// `transfer`: moves funds between accounts.
pub(super) fn transfer_call(
    st: &mut Overlay<'_>,
    who: &PublicKey,
    to: &PublicKey,
    amount: &Balance,
    ev: &mut Vec<Event>,
) -> Result<(), TxError> {
    if *amount == 0 {
        return Err(invalid("amount", "must be > 0"));
    }
    transfer(st, who, to, *amount)?;
    ev.push(Event::Transfer {
        from: *who,
        to: *to,
        amount: *amount,
    });
    Ok(())
}
