//! Persistence behind one small trait, so that a replicated backend can replace the embedded one.
//!
//! The ledger needs ordered key/value tables, point reads, range scans and one atomic batch
//! commit per block. [`RedbStore`] is the real backend (one redb write transaction per block,
//! durable on return); [`MemStore`] keeps everything in memory (tests, `verify`'s replay).
//! `tests/store_conformance.rs` runs the same suite against both.

/// The etcd-replicated backend (ledger clusters).
#[cfg(feature = "server")]
pub mod etcd;
mod mem;
pub mod migrate;
#[cfg(feature = "server")]
mod redb;

#[cfg(feature = "server")]
pub use self::etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use self::mem::MemStore;
#[cfg(feature = "server")]
pub use self::redb::RedbStore;

/// Key/value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The tables of a ledger store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Chain metadata: genesis, head, dev time offset.
    Meta,
    /// Current state (accounts, twins, farms, nodes, contracts, indexes).
    State,
    /// Blocks by height (u64 BE).
    Blocks,
    /// Event lists by block height (u64 BE).
    Events,
    /// Transaction hash → location.
    TxIndex,
}

impl Table {
    /// All tables (for creation and full scans).
    pub const ALL: [Table; 5] = [
        Table::Meta,
        Table::State,
        Table::Blocks,
        Table::Events,
        Table::TxIndex,
    ];

    /// Stable name (redb table name).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::State => "state",
            Table::Blocks => "blocks",
            Table::Events => "events",
            Table::TxIndex => "tx_index",
        }
    }
}

/// A set of writes applied atomically by [`LedgerStore::commit`]; `None` deletes.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Writes in order.
    pub writes: Vec<(Table, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((table, key, Some(value)));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.writes.push((table, key, None));
    }
}

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("store {op} failed: {source}")]
    Backend {
        /// The operation (`open`, `read`, `commit`, …).
        op: &'static str,
        /// The backend error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Ordered key/value persistence of a ledger.
pub trait LedgerStore: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// All pairs with `start <= key < end` (`end = None`: unbounded), in key order.
    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StoreError>;

    /// Applies all writes atomically and durably: after `Ok`, a crash keeps all of them; after a
    /// crash during the call, either all or none are visible.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;

    /// All pairs whose key starts with `prefix`.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let end = prefix_end(prefix);
        self.range(table, prefix, end.as_deref())
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
