//! Store format migrations, one per format change (run by [`crate::Chain`] when it opens a store).
//!
//! **v1 → v2** (format 2 added state roots, block signatures and a producer key). A v1 ledger's
//! history cannot be re-signed or re-rooted without changing every block hash, and its genesis
//! cannot gain a producer or nonce without changing the genesis hash that every transaction
//! signs. So the migration keeps both and draws a line instead:
//!
//! - blocks `0..=height` stay legacy: the same header fields and hash (`zos-ledger/block/v1`,
//!   no state root), unsigned. They are re-encoded with an empty `state_root` (the marker of a
//!   legacy block) so that every reader decodes one `Block` type; their hashes do not change;
//! - the [`Upgrade`] record in the meta table names that height and the producer key, which
//!   signs every block from `height + 1` on (genesis keeps naming none);
//! - block `height + 1` is produced in the same write: no transactions, at the legacy head's
//!   time (billing runs as in any block, so the audit replay derives it), carrying the state
//!   root, signed, so that proofs against a signed head work at once.
//!
//! All of it, with the format bump, is one store batch (one redb write transaction): a crash
//! leaves either the v1 store untouched or the v2 one complete, and a v2 store is not migrated
//! again. `verify` re-executes the legacy prefix as before and checks roots and signatures after.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zos_types::crypto::PublicKey;

use super::{Batch, LedgerStore, StoreError, Table};
use crate::tx::{Block, BlockHeader, SignedTransaction, decode32};

/// The format a store gets its [`Upgrade`] record from.
pub const LEGACY_FORMAT: u32 = 1;

/// Meta key of the [`Upgrade`] record.
pub const META_UPGRADE: &[u8] = b"upgrade";

/// Where a migrated ledger's legacy history ends (meta record of a store migrated from v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The store format migrated from.
    pub from_format: u32,
    /// The last legacy block (unsigned, no state root); every later block is v2.
    pub height: u64,
    /// The producer key that signs blocks after `height` (genesis names none).
    pub producer: PublicKey,
}

/// Errors of a migration: the stored data is not what the old format wrote.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A legacy block does not decode or does not hash to its stored hash.
    #[error("legacy block {key}: {reason}")]
    BadLegacyBlock {
        /// Hex store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A block as format 1 wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyBlock {
    header: LegacyHeader,
    hash: String,
    transactions: Vec<SignedTransaction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyHeader {
    height: u64,
    parent_hash: String,
    timestamp: u64,
    tx_hashes: Vec<String>,
    events_hash: String,
}

/// Whether `header` is a legacy (format 1) header: no state root.
pub fn is_legacy(header: &BlockHeader) -> bool {
    header.state_root.is_empty()
}

/// The format 1 block hash: `sha256("zos-ledger/block/v1" ‖ height ‖ parent(32) ‖ timestamp ‖
/// tx_count ‖ tx_hash(32)… ‖ events_hash(32))`, integers u64 BE; `None` on malformed hex.
pub fn legacy_hash(header: &BlockHeader) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"zos-ledger/block/v1");
    h.update(header.height.to_be_bytes());
    h.update(decode32(&header.parent_hash)?);
    h.update(header.timestamp.to_be_bytes());
    h.update((header.tx_hashes.len() as u64).to_be_bytes());
    for t in &header.tx_hashes {
        h.update(decode32(t)?);
    }
    h.update(decode32(&header.events_hash)?);
    Some(h.finalize().into())
}

/// Decodes a stored format 1 block into a legacy [`Block`] (empty state root, no signature),
/// checking that it hashes to its stored hash.
pub fn legacy_block(key: &[u8], bytes: &[u8]) -> Result<Block, MigrationError> {
    let bad = |reason: String| MigrationError::BadLegacyBlock {
        key: hex::encode(key),
        reason,
    };
    let old: LegacyBlock = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let header = BlockHeader {
        height: old.header.height,
        parent_hash: old.header.parent_hash,
        timestamp: old.header.timestamp,
        tx_hashes: old.header.tx_hashes,
        events_hash: old.header.events_hash,
        state_root: String::new(),
    };
    if key != header.height.to_be_bytes() {
        return Err(bad(format!("holds height {}", header.height)));
    }
    if legacy_hash(&header).map(hex::encode) != Some(old.hash.clone()) {
        return Err(bad("hash does not match its header".into()));
    }
    Ok(Block {
        header,
        hash: old.hash,
        signature: None,
        transactions: old.transactions,
    })
}

/// Adds to `batch` every stored v1 block re-encoded as a legacy [`Block`]; returns the legacy
/// head (the block at `head`).
pub fn rewrite_legacy_blocks(
    store: &dyn LedgerStore,
    head: u64,
    batch: &mut Batch,
) -> Result<Block, MigrationError> {
    let mut last = None;
    for (k, v) in store.range(Table::Blocks, &[], None)? {
        let block = legacy_block(&k, &v)?;
        let json = serde_json::to_vec(&block).expect("blocks always serialise");
        if block.header.height == head {
            last = Some(block);
        }
        batch.put(Table::Blocks, k, json);
    }
    last.ok_or_else(|| MigrationError::BadLegacyBlock {
        key: hex::encode(head.to_be_bytes()),
        reason: "head block missing".into(),
    })
}
