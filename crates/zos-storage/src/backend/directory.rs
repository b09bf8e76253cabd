//! Directory pools (no root): volumes are directories with a recorded size, no snapshots.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Backend, BackendError, io};
use crate::dirpool;
use crate::pool::Pool;

/// A plain directory with a declared size (see [`crate::dirpool`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectoryBackend;

#[async_trait]
impl Backend for DirectoryBackend {
    fn name(&self) -> &'static str {
        "directory"
    }

    /// NOCOW is a btrfs attribute, and the host filesystem under a directory pool is not ours
    /// to tune: image directories are plain directories too.
    async fn ensure_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError> {
        let path = pool.path(rel);
        std::fs::create_dir_all(&path).map_err(io("create dir", &path))?;
        Ok(path)
    }

    async fn usage(&self, pool: &Pool) -> Result<(u64, u64), BackendError> {
        Ok((pool.size, dirpool::usage_blocking(&pool.mountpoint).await?))
    }

    async fn available(&self, pool: &Pool) -> Result<Option<u64>, BackendError> {
        Ok(Some(dirpool::fs_available(&pool.mountpoint).await?))
    }

    // A directory pool was never mounted by us: whatever is mounted there is not ours, so
    // `release` keeps the default (nothing).

    fn volume_exists(&self, pool: &Pool, id: &str) -> bool {
        pool.path(id).is_dir()
    }

    async fn volume_create(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError> {
        // Size first: a crash before the directory exists leaves a size that reserves nothing
        // (only sizes of existing directories count).
        dirpool::set_volume_size(pool, id, size)?;
        let path = pool.path(id);
        std::fs::create_dir(&path).map_err(io("create", &path))
    }

    async fn volume_size(&self, pool: &Pool, id: &str) -> Result<u64, BackendError> {
        Ok(dirpool::volume_size(pool, id))
    }

    async fn volume_set_size(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError> {
        Ok(dirpool::set_volume_size(pool, id, size)?)
    }

    async fn volume_delete(&self, pool: &Pool, id: &str) -> Result<(), BackendError> {
        let path = pool.path(id);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
        }
        // After the directory: a crash in between leaves a size that reserves nothing.
        Ok(dirpool::remove_volume_size(pool, id)?)
    }

    async fn volume_reservations(&self, pool: &Pool) -> Result<u64, BackendError> {
        Ok(dirpool::volume_reservations(pool))
    }
}
