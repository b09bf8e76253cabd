//! Pool backends: what differs between a btrfs pool, a directory pool and the in-memory pool
//! used by tests, behind one [`Backend`] trait. Allocation, volumes, zmount disks and ZeroDB
//! are written once against it (rules apart from the engine: the storage logic never asks
//! which backend it runs on, only what the backend can do, e.g. [`Backend::has_snapshots`]).
//!
//! - [`BtrfsBackend`]: volumes are subvolumes with qgroup limits and read-only snapshots;
//!   disk images live in a NOCOW subvolume; the pool is unmounted at shutdown.
//! - [`DirectoryBackend`]: volumes are directories whose size is recorded, not enforced; no
//!   snapshots; free space is also capped by the host filesystem's.
//! - [`MemoryBackend`]: volume sizes and snapshots kept in memory (snapshots copy the volume's
//!   files), files under a temporary directory, a settable "filesystem free space": the storage
//!   logic runs in tests without root, btrfs-progs or loop devices.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::btrfs::BtrfsError;
use crate::dirpool::DirError;
use crate::pool::Pool;

mod btrfs_pool;
mod directory;
mod memory;

pub use btrfs_pool::BtrfsBackend;
pub use directory::DirectoryBackend;
pub use memory::MemoryBackend;

/// A backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A btrfs tool or call failed.
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    /// A directory pool helper failed.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// This kind of pool has no snapshots.
    #[error("a {0} pool has no snapshots")]
    NoSnapshots(&'static str),
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.to_path_buf();
    move |source| BackendError::Io { op, path, source }
}

/// What one kind of pool does differently. Every method gets the [`Pool`] it works on; paths
/// are under [`Pool::mountpoint`]. Volume ids are already checked by the caller.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `btrfs`, `directory`, `memory` (for logs and errors).
    fn name(&self) -> &'static str;

    /// Whether volumes have snapshots (and restore).
    fn has_snapshots(&self) -> bool {
        false
    }

    /// Create `<pool>/<rel>` (a subvolume on btrfs, a directory elsewhere) unless it exists.
    async fn ensure_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError>;

    /// Like [`Backend::ensure_dir`], for disk images (btrfs makes it NOCOW).
    async fn ensure_image_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError> {
        self.ensure_dir(pool, rel).await
    }

    /// Size and used bytes of the pool (`zos.storage.pools`).
    async fn usage(&self, pool: &Pool) -> Result<(u64, u64), BackendError>;

    /// Bytes the host can still give the pool beyond what its size says, when that can be
    /// less (a directory on a shared filesystem); `None` when the size is the whole story.
    async fn available(&self, pool: &Pool) -> Result<Option<u64>, BackendError> {
        let _ = pool;
        Ok(None)
    }

    /// Releases the pool at shutdown (unmount); best effort, logs failures. Data stays.
    async fn release(&self, pool: &Pool) {
        let _ = pool;
    }

    /// Whether volume `id` exists on `pool` (btrfs also repairs an interrupted restore).
    fn volume_exists(&self, pool: &Pool, id: &str) -> bool;

    /// Create volume `id` with `size` bytes reserved.
    async fn volume_create(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError>;

    /// The size of volume `id` (0 when none is set).
    async fn volume_size(&self, pool: &Pool, id: &str) -> Result<u64, BackendError>;

    /// Set the size of volume `id` (the caller only ever grows it).
    async fn volume_set_size(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError>;

    /// Delete volume `id` with all its snapshots; absent is success.
    async fn volume_delete(&self, pool: &Pool, id: &str) -> Result<(), BackendError>;

    /// Σ sizes of the volumes on `pool` (their reservations).
    async fn volume_reservations(&self, pool: &Pool) -> Result<u64, BackendError>;

    /// Names of the snapshots of volume `id`, any order.
    fn snapshot_names(&self, pool: &Pool, id: &str) -> Result<Vec<String>, BackendError> {
        let _ = (pool, id);
        Ok(Vec::new())
    }

    /// Take read-only snapshot `name` of volume `id`.
    async fn snapshot_create(&self, pool: &Pool, id: &str, name: &str) -> Result<(), BackendError> {
        let _ = (pool, id, name);
        Err(BackendError::NoSnapshots(self.name()))
    }

    /// Delete snapshot `name` of volume `id`.
    async fn snapshot_delete(&self, pool: &Pool, id: &str, name: &str) -> Result<(), BackendError> {
        let _ = (pool, id, name);
        Err(BackendError::NoSnapshots(self.name()))
    }

    /// Replace the content of volume `id` with snapshot `name` (which exists), keeping the
    /// volume's size. The caller has snapshotted the current content first.
    async fn snapshot_restore(
        &self,
        pool: &Pool,
        id: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let _ = (pool, id, name);
        Err(BackendError::NoSnapshots(self.name()))
    }
}
