//! The in-memory backend for tests: what btrfs keeps in its metadata (volume limits, snapshots)
//! is kept in memory here; files (disk images, ZeroDB data, volume content) go to the pool's
//! directory, normally a temporary one. No root, no tools, no loop devices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Backend, BackendError, io};
use crate::dirpool;
use crate::pool::Pool;

/// A file tree copied into memory: relative path, and the bytes of a file (`None`: directory).
type Tree = Vec<(PathBuf, Option<Vec<u8>>)>;

#[derive(Debug, Default)]
struct Volume {
    size: u64,
    snapshots: BTreeMap<String, Tree>,
}

#[derive(Debug, Default)]
struct State {
    volumes: BTreeMap<String, Volume>,
    available: Option<u64>,
}

/// Volume sizes and snapshots in memory; see the module documentation.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

impl MemoryBackend {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its state is fine.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pretend the filesystem under the pool has only `bytes` free (`None`: no such limit), as
    /// a directory pool's host filesystem may.
    pub fn set_available(&self, bytes: Option<u64>) {
        self.state().available = bytes;
    }
}

fn copy_in(root: &Path) -> Result<Tree, BackendError> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let e = e.map_err(io("list", &dir))?;
            let rel = rel.join(e.file_name());
            let path = e.path();
            if e.file_type().map_err(io("stat", &path))?.is_dir() {
                out.push((rel.clone(), None));
                todo.push(rel);
            } else {
                out.push((rel, Some(std::fs::read(&path).map_err(io("read", &path))?)));
            }
        }
    }
    Ok(out)
}

fn copy_out(tree: &Tree, root: &Path) -> Result<(), BackendError> {
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(io("remove", root))?;
    }
    std::fs::create_dir(root).map_err(io("create", root))?;
    // Parents come before children in `copy_in`'s order.
    for (rel, content) in tree {
        let path = root.join(rel);
        match content {
            None => std::fs::create_dir_all(&path).map_err(io("create", &path))?,
            Some(bytes) => std::fs::write(&path, bytes).map_err(io("write", &path))?,
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn has_snapshots(&self) -> bool {
        true
    }

    async fn ensure_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError> {
        let path = pool.path(rel);
        std::fs::create_dir_all(&path).map_err(io("create dir", &path))?;
        Ok(path)
    }

    async fn usage(&self, pool: &Pool) -> Result<(u64, u64), BackendError> {
        Ok((pool.size, dirpool::usage_blocking(&pool.mountpoint).await?))
    }

    async fn available(&self, _pool: &Pool) -> Result<Option<u64>, BackendError> {
        Ok(self.state().available)
    }

    fn volume_exists(&self, pool: &Pool, id: &str) -> bool {
        self.state().volumes.contains_key(id) && pool.path(id).is_dir()
    }

    async fn volume_create(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError> {
        let path = pool.path(id);
        std::fs::create_dir_all(&path).map_err(io("create", &path))?;
        self.state().volumes.entry(id.into()).or_default().size = size;
        Ok(())
    }

    async fn volume_size(&self, _pool: &Pool, id: &str) -> Result<u64, BackendError> {
        Ok(self.state().volumes.get(id).map_or(0, |v| v.size))
    }

    async fn volume_set_size(&self, _pool: &Pool, id: &str, size: u64) -> Result<(), BackendError> {
        self.state().volumes.entry(id.into()).or_default().size = size;
        Ok(())
    }

    async fn volume_delete(&self, pool: &Pool, id: &str) -> Result<(), BackendError> {
        let path = pool.path(id);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        }
        self.state().volumes.remove(id);
        Ok(())
    }

    async fn volume_reservations(&self, _pool: &Pool) -> Result<u64, BackendError> {
        Ok(self
            .state()
            .volumes
            .values()
            .map(|v| v.size)
            .fold(0, u64::saturating_add))
    }

    fn snapshot_names(&self, _pool: &Pool, id: &str) -> Result<Vec<String>, BackendError> {
        Ok(self
            .state()
            .volumes
            .get(id)
            .map(|v| v.snapshots.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn snapshot_create(&self, pool: &Pool, id: &str, name: &str) -> Result<(), BackendError> {
        let tree = copy_in(&pool.path(id))?;
        self.state()
            .volumes
            .entry(id.into())
            .or_default()
            .snapshots
            .insert(name.into(), tree);
        Ok(())
    }

    async fn snapshot_delete(
        &self,
        _pool: &Pool,
        id: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        if let Some(v) = self.state().volumes.get_mut(id) {
            v.snapshots.remove(name);
        }
        Ok(())
    }

    async fn snapshot_restore(
        &self,
        pool: &Pool,
        id: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let tree = self
            .state()
            .volumes
            .get(id)
            .and_then(|v| v.snapshots.get(name).cloned())
            .ok_or_else(|| BackendError::Io {
                op: "find snapshot",
                path: PathBuf::from(name),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        copy_out(&tree, &pool.path(id))
    }
}
