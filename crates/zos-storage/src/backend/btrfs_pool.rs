//! Btrfs pools: subvolumes, qgroup limits, read-only snapshots, NOCOW image directories.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Backend, BackendError, io};
use crate::btrfs::{self, BtrfsError};
use crate::pool::Pool;
use crate::volume::{SNAPSHOT_DIR, is_volume_name};

/// A btrfs filesystem on a disk or loop device (see [`crate::pool`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct BtrfsBackend;

fn snapshot_path(pool: &Pool, id: &str, name: &str) -> PathBuf {
    pool.path(SNAPSHOT_DIR).join(id).join(name)
}

#[async_trait]
impl Backend for BtrfsBackend {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn has_snapshots(&self) -> bool {
        true
    }

    async fn ensure_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError> {
        let path = pool.path(rel);
        btrfs::ensure_subvolume(&path).await?;
        Ok(path)
    }

    async fn ensure_image_dir(&self, pool: &Pool, rel: &str) -> Result<PathBuf, BackendError> {
        let dir = pool.path(rel);
        if !btrfs::is_subvolume(&dir) {
            btrfs::subvolume_create(&dir).await?;
            // +C only applies to files created afterwards: set it while the directory is empty.
            crate::exec::run("chattr", &["+C", &dir.to_string_lossy()])
                .await
                .map_err(BtrfsError::from)?;
        }
        Ok(dir)
    }

    async fn usage(&self, pool: &Pool) -> Result<(u64, u64), BackendError> {
        Ok(btrfs::usage(&pool.mountpoint).await?)
    }

    async fn release(&self, pool: &Pool) {
        if !pool.mountpoint.as_os_str().is_empty() && btrfs::is_mountpoint(&pool.mountpoint) {
            if let Err(e) = btrfs::umount(&pool.mountpoint).await {
                tracing::warn!(pool = %pool.name, error = %e, "unmount failed");
            }
        }
    }

    fn volume_exists(&self, pool: &Pool, id: &str) -> bool {
        let path = pool.path(id);
        let trash = pool.path(&format!(".trash-{id}"));
        if !path.exists() && btrfs::is_subvolume(&trash) {
            // Crash between the two renames of a restore: the old data is still complete.
            tracing::warn!(id, "repairing interrupted restore");
            let _ = std::fs::rename(&trash, &path);
        }
        btrfs::is_subvolume(&path)
    }

    async fn volume_create(&self, pool: &Pool, id: &str, _size: u64) -> Result<(), BackendError> {
        // The limit is set by the caller (volume_set_size) right after.
        Ok(btrfs::subvolume_create(&pool.path(id)).await?)
    }

    async fn volume_size(&self, pool: &Pool, id: &str) -> Result<u64, BackendError> {
        let q = btrfs::qgroups(&pool.mountpoint).await?;
        Ok(q.iter()
            .find(|q| q.path == id)
            .and_then(|q| q.max_referenced)
            .unwrap_or(0))
    }

    async fn volume_set_size(&self, pool: &Pool, id: &str, size: u64) -> Result<(), BackendError> {
        Ok(btrfs::qgroup_limit(&pool.path(id), size).await?)
    }

    async fn volume_delete(&self, pool: &Pool, id: &str) -> Result<(), BackendError> {
        for name in [
            format!(".restore-{id}"),
            format!(".trash-{id}"),
            id.to_string(),
        ] {
            let path = pool.path(&name);
            if btrfs::is_subvolume(&path) {
                btrfs::subvolume_delete(&path).await?;
            }
        }
        let dir = pool.path(SNAPSHOT_DIR).join(id);
        if dir.is_dir() {
            for s in self.snapshot_names(pool, id)? {
                let path = snapshot_path(pool, id, &s);
                if btrfs::is_subvolume(&path) {
                    btrfs::subvolume_delete(&path).await?;
                }
            }
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        // Qgroups of deleted subvolumes linger until the cleaner is done; best effort.
        let _ = crate::exec::run(
            "btrfs",
            &["qgroup", "clear-stale", &pool.mountpoint.to_string_lossy()],
        )
        .await;
        Ok(())
    }

    async fn volume_reservations(&self, pool: &Pool) -> Result<u64, BackendError> {
        let mut total = 0u64;
        for q in btrfs::qgroups(&pool.mountpoint).await? {
            if is_volume_name(&q.path) && btrfs::is_subvolume(&pool.path(&q.path)) {
                total = total.saturating_add(q.max_referenced.unwrap_or(0));
            }
        }
        Ok(total)
    }

    fn snapshot_names(&self, pool: &Pool, id: &str) -> Result<Vec<String>, BackendError> {
        let dir = pool.path(SNAPSHOT_DIR).join(id);
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("list", &dir)(e)),
        }
    }

    async fn snapshot_create(&self, pool: &Pool, id: &str, name: &str) -> Result<(), BackendError> {
        let dir = pool.path(SNAPSHOT_DIR).join(id);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(btrfs::snapshot(&pool.path(id), &dir.join(name), true).await?)
    }

    async fn snapshot_delete(&self, pool: &Pool, id: &str, name: &str) -> Result<(), BackendError> {
        Ok(btrfs::subvolume_delete(&snapshot_path(pool, id, name)).await?)
    }

    /// A writable snapshot of `name` is staged beside the volume, then swapped in with two
    /// renames (a crash between them is repaired by [`Backend::volume_exists`]).
    async fn snapshot_restore(
        &self,
        pool: &Pool,
        id: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let size = self.volume_size(pool, id).await?;
        let live = pool.path(id);
        let staged = pool.path(&format!(".restore-{id}"));
        let trash = pool.path(&format!(".trash-{id}"));
        for leftover in [&staged, &trash] {
            if btrfs::is_subvolume(leftover) {
                btrfs::subvolume_delete(leftover).await?;
            }
        }
        btrfs::snapshot(&snapshot_path(pool, id, name), &staged, false).await?;
        if size > 0 {
            btrfs::qgroup_limit(&staged, size).await?;
        }
        std::fs::rename(&live, &trash).map_err(io("move aside", &live))?;
        std::fs::rename(&staged, &live).map_err(io("move in", &staged))?;
        btrfs::subvolume_delete(&trash).await?;
        Ok(())
    }
}
