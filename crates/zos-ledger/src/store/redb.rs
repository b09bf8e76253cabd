//! The embedded, crash-safe backend: one redb file, one redb table per [`Table`], one redb
//! write transaction per [`Batch`] (redb's default durability: fsync before `commit` returns).

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use super::{Batch, LedgerStore, Pairs, StoreError, Table};

fn def(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

fn backend(op: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// A [`LedgerStore`] in a redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the database file at `path` and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| backend("open")(e.into()))?;
        let txn = db.begin_write().map_err(|e| backend("open")(e.into()))?;
        for t in Table::ALL {
            txn.open_table(def(t))
                .map_err(|e| backend("open")(e.into()))?;
        }
        txn.commit().map_err(|e| backend("open")(e.into()))?;
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LedgerStore for RedbStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| backend("read")(e.into()))?;
        let t = txn
            .open_table(def(table))
            .map_err(|e| backend("read")(e.into()))?;
        let v = t.get(key).map_err(|e| backend("read")(e.into()))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| backend("read")(e.into()))?;
        let t = txn
            .open_table(def(table))
            .map_err(|e| backend("read")(e.into()))?;
        let iter = match end {
            Some(end) => t.range::<&[u8]>(start..end),
            None => t.range::<&[u8]>(start..),
        }
        .map_err(|e| backend("read")(e.into()))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| backend("read")(e.into()))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| backend("commit")(e.into()))?;
        {
            // Open each table once; writes keep their order within a table.
            let mut tables = Vec::new();
            for t in Table::ALL {
                tables.push(
                    txn.open_table(def(t))
                        .map_err(|e| backend("commit")(e.into()))?,
                );
            }
            for (table, key, value) in &batch.writes {
                let idx = Table::ALL
                    .iter()
                    .position(|t| t == table)
                    .expect("every table is in Table::ALL");
                let t = &mut tables[idx];
                match value {
                    Some(v) => {
                        t.insert(key.as_slice(), v.as_slice())
                            .map_err(|e| backend("commit")(e.into()))?;
                    }
                    None => {
                        t.remove(key.as_slice())
                            .map_err(|e| backend("commit")(e.into()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| backend("commit")(e.into()))?;
        Ok(())
    }
}
