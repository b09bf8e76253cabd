//! The state layout (keys of the `State` table) and a write overlay over a store.
//!
//! A block is built in an [`Overlay`]: each transaction writes into a transaction layer that is
//! merged into the block layer when it succeeds and dropped when it is rejected, so a rejected
//! transaction leaves no trace. The block layer becomes one [`Batch`](crate::store::Batch).
//!
//! Values are JSON; keys are a short ASCII prefix plus big-endian ids, so that range scans walk
//! ids in order.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zos_types::crypto::{KeyType, PublicKey};

use crate::store::{LedgerStore, Pairs, StoreError, Table, prefix_end};

/// Errors reading or decoding state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value did not decode (corruption or a format change without migration).
    #[error("corrupt value in table {table:?} at key {key}: {reason}")]
    Corrupt {
        /// Table.
        table: Table,
        /// Hex key.
        key: String,
        /// Decoder message.
        reason: String,
    },
}

/// Keys of the `State` table.
pub mod keys {
    use super::*;

    fn account_bytes(a: &PublicKey) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = match a.key_type {
            KeyType::Ed25519 => 0,
            KeyType::Sr25519 => 1,
        };
        out[1..].copy_from_slice(&a.bytes);
        out
    }

    fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }

    /// `Account` of a public key.
    pub fn account(a: &PublicKey) -> Vec<u8> {
        join(b"acct/", &[&account_bytes(a)])
    }
    /// `Twin` by id.
    pub fn twin(id: u32) -> Vec<u8> {
        join(b"twin/", &[&id.to_be_bytes()])
    }
    /// Twin id by account.
    pub fn twin_by_account(a: &PublicKey) -> Vec<u8> {
        join(b"twin_acct/", &[&account_bytes(a)])
    }
    /// `Farm` by id.
    pub fn farm(id: u32) -> Vec<u8> {
        join(b"farm/", &[&id.to_be_bytes()])
    }
    /// Farm id by name.
    pub fn farm_by_name(name: &str) -> Vec<u8> {
        join(b"farm_name/", &[name.as_bytes()])
    }
    /// `Node` by id.
    pub fn node(id: u32) -> Vec<u8> {
        join(b"node/", &[&id.to_be_bytes()])
    }
    /// Node id by twin.
    pub fn node_by_twin(twin: u32) -> Vec<u8> {
        join(b"node_twin/", &[&twin.to_be_bytes()])
    }
    /// `Contract` by id.
    pub fn contract(id: u64) -> Vec<u8> {
        join(b"contract/", &[&id.to_be_bytes()])
    }
    /// Prefix of the active node contracts of a node.
    pub fn node_contracts_prefix(node: u32) -> Vec<u8> {
        join(b"node_contract/", &[&node.to_be_bytes()])
    }
    /// Index entry: active contract `id` on `node`.
    pub fn node_contract(node: u32, id: u64) -> Vec<u8> {
        join(b"node_contract/", &[&node.to_be_bytes(), &id.to_be_bytes()])
    }
    /// Prefix of all contracts (any state) of a twin.
    pub fn twin_contracts_prefix(twin: u32) -> Vec<u8> {
        join(b"twin_contract/", &[&twin.to_be_bytes()])
    }
    /// Index entry: contract `id` belongs to `twin` (kept after deletion).
    pub fn twin_contract(twin: u32, id: u64) -> Vec<u8> {
        join(b"twin_contract/", &[&twin.to_be_bytes(), &id.to_be_bytes()])
    }
    /// Active contract id by (node, deployment hash).
    pub fn node_hash(node: u32, hash: &str) -> Vec<u8> {
        join(b"node_hash/", &[&node.to_be_bytes(), hash.as_bytes()])
    }
    /// Active name contract id by name.
    pub fn name_contract(name: &str) -> Vec<u8> {
        join(b"name/", &[name.as_bytes()])
    }
    /// Prefix of the billing queue.
    pub const DUE_PREFIX: &[u8] = b"due/";
    /// Billing queue entry: contract `id` is due at ledger time `at`.
    pub fn due(at: u64, id: u64) -> Vec<u8> {
        join(DUE_PREFIX, &[&at.to_be_bytes(), &id.to_be_bytes()])
    }
    /// The id counter of `kind` (`twin`, `farm`, `node`, `contract`).
    pub fn counter(kind: &str) -> Vec<u8> {
        join(b"counter/", &[kind.as_bytes()])
    }
    /// The pricing policy.
    pub const PRICING: &[u8] = b"cfg/pricing";
    /// The target software version.
    pub const ZOS_VERSION: &[u8] = b"cfg/zos_version";
}

type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// State of one block under construction, over a store (see the module doc).
pub struct Overlay<'a> {
    store: &'a dyn LedgerStore,
    block: Layer,
    tx: Layer,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `store`.
    pub fn new(store: &'a dyn LedgerStore) -> Self {
        Overlay {
            store,
            block: Layer::new(),
            tx: Layer::new(),
        }
    }

    /// Reads raw bytes, newest layer first.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.tx.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.block.get(key) {
            return Ok(v.clone());
        }
        Ok(self.store.get(Table::State, key)?)
    }

    /// Reads and decodes a JSON value.
    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(bytes) => decode(Table::State, key, &bytes).map(Some),
        }
    }

    /// Writes a JSON value into the transaction layer.
    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        let bytes = serde_json::to_vec(value).expect("state values always serialise");
        self.tx.insert(key, Some(bytes));
    }

    /// Deletes a key in the transaction layer.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.tx.insert(key, None);
    }

    /// Keys and values in `[start, end)`, merged across layers.
    pub fn range_raw(&self, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StateError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .range(Table::State, start, end)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        let bounds = (Bound::Included(start.to_vec()), upper);
        for layer in [&self.block, &self.tx] {
            for (k, v) in layer.range(bounds.clone()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Keys and values starting with `prefix`.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StateError> {
        let end = prefix_end(prefix);
        self.range_raw(prefix, end.as_deref())
    }

    /// Next id of `kind` (starting at 1), advancing the counter.
    pub fn next_id(&mut self, kind: &str) -> Result<u64, StateError> {
        let key = keys::counter(kind);
        let next = self.get::<u64>(&key)?.unwrap_or(0) + 1;
        self.put(key, &next);
        Ok(next)
    }

    /// Keeps the transaction layer's writes (the transaction succeeded).
    pub fn commit_tx(&mut self) {
        let tx = std::mem::take(&mut self.tx);
        self.block.extend(tx);
    }

    /// Drops the transaction layer's writes (the transaction was rejected).
    pub fn rollback_tx(&mut self) {
        self.tx.clear();
    }

    /// The block's writes (call after the last `commit_tx`).
    pub fn into_writes(self) -> Layer {
        self.block
    }
}

/// The trailing big-endian u64 id of an index key (`…{id}`), or a corruption error.
pub fn trailing_id(table: Table, key: &[u8]) -> Result<u64, StateError> {
    key.len()
        .checked_sub(8)
        .and_then(|i| key[i..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StateError::Corrupt {
            table,
            key: hex::encode(key),
            reason: "index key shorter than its 8-byte id".into(),
        })
}

/// Decodes a JSON value read from `table` at `key`.
pub fn decode<T: DeserializeOwned>(
    table: Table,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        table,
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, MemStore};

    #[test]
    fn layers_merge_and_rollback() {
        let store = MemStore::new();
        let mut b = Batch::default();
        b.put(Table::State, b"p/1".to_vec(), b"1".to_vec());
        b.put(Table::State, b"p/2".to_vec(), b"2".to_vec());
        store.commit(b).unwrap();

        let mut o = Overlay::new(&store);
        o.delete(b"p/1".to_vec());
        o.put(b"p/3".to_vec(), &3u64);
        o.commit_tx();
        o.put(b"p/4".to_vec(), &4u64);
        o.rollback_tx();
        let keys: Vec<_> = o
            .scan_prefix(b"p/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"p/2".to_vec(), b"p/3".to_vec()]);
        assert_eq!(o.get::<u64>(b"p/4").unwrap(), None);
    }

    #[test]
    fn corrupt_values_are_reported_with_key() {
        let store = MemStore::new();
        let mut b = Batch::default();
        b.put(Table::State, b"k".to_vec(), b"{not json".to_vec());
        store.commit(b).unwrap();
        let o = Overlay::new(&store);
        let err = o.get::<u64>(b"k").unwrap_err();
        assert!(err.to_string().contains("6b"), "{err}");
    }
}
