//! In-memory store: a `BTreeMap` per table behind a lock. Not durable.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Batch, LedgerStore, Pairs, StoreError, Table};

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`LedgerStore`] in memory (tests and replays).
#[derive(Debug, Default)]
pub struct MemStore {
    tables: RwLock<Tables>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend {
        op: "lock",
        source: "memory store lock poisoned".into(),
    }
}

impl LedgerStore for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.tables.read().map_err(|_| poisoned())?;
        Ok(t.get(&table).and_then(|m| m.get(key)).cloned())
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StoreError> {
        let t = self.tables.read().map_err(|_| poisoned())?;
        let Some(m) = t.get(&table) else {
            return Ok(Vec::new());
        };
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(m.range((Bound::Included(start.to_vec()), upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut t = self.tables.write().map_err(|_| poisoned())?;
        for (table, key, value) in batch.writes {
            let m = t.entry(table).or_default();
            match value {
                Some(v) => {
                    m.insert(key, v);
                }
                None => {
                    m.remove(&key);
                }
            }
        }
        Ok(())
    }
}
