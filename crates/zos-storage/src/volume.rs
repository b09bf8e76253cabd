//! `volume` workloads: a btrfs subvolume `<wlid>` on an SSD pool with a qgroup limit equal to
//! its size. Grow-only; a read-only snapshot `.snapshots/<wlid>/<n>-<unix time>` is taken
//! before every update and before every restore, so a restore can itself be undone.
//!
//! On a directory pool ([`crate::dirpool`]) a volume is a plain directory whose size is
//! recorded and reserved but not enforced, and snapshot calls fail with
//! [`VolumeError::NoSnapshots`]. What differs per pool is in [`crate::backend`]; this module
//! is the logic they share (allocation, grow-only, snapshot naming, pruning, restore order).

use std::path::PathBuf;

use serde::Serialize;

use crate::backend::BackendError;
use crate::pool::{Pool, PoolKind};
use crate::storage::{AllocError, Storage};

/// Directory (per pool) holding the snapshots of every volume.
pub const SNAPSHOT_DIR: &str = ".snapshots";

/// Snapshots kept per volume; taking one more deletes the oldest. Snapshots are not counted in
/// reservations, so they must not pile up without bound.
pub const MAX_SNAPSHOTS: usize = 16;

/// Errors of volume operations.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The id is not a safe, non-reserved name.
    #[error(
        "invalid volume id {0:?}: use 1-128 of [A-Za-z0-9_-], not starting with 'zdb' or a reserved name"
    )]
    InvalidId(String),
    /// Sizes must be positive.
    #[error("volume {0}: size must not be zero")]
    ZeroSize(String),
    /// No such volume.
    #[error("volume {0} not found")]
    NotFound(String),
    /// A shrink was requested: refused, nothing changed (engine state `unchanged`).
    #[error("volume {id}: cannot shrink from {current} to {requested} bytes")]
    Shrink {
        /// Volume id.
        id: String,
        /// Current size.
        current: u64,
        /// Requested size.
        requested: u64,
    },
    /// The volume is on a directory pool, which has no snapshots.
    #[error(
        "volume {id}: snapshots are not available: pool {pool} is a plain directory, not btrfs \
         (run `zos up` as root, or give `zos node run` a btrfs pool FILE:SIZE:ssd as root, for \
         snapshots and quotas)"
    )]
    NoSnapshots {
        /// Volume id.
        id: String,
        /// The directory pool holding it.
        pool: String,
    },
    /// No such snapshot.
    #[error("volume {id}: snapshot {snapshot:?} not found")]
    SnapshotNotFound {
        /// Volume id.
        id: String,
        /// The snapshot name asked for.
        snapshot: String,
    },
    /// No pool can hold it.
    #[error("volume {id}: {source}")]
    Alloc {
        /// Volume id.
        id: String,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// The pool's backend failed (btrfs, directory).
    #[error("volume {id}: {source}")]
    Backend {
        /// Volume id.
        id: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
    /// A file operation failed.
    #[error("volume {id}: {op} {path}: {source}")]
    Io {
        /// Volume id.
        id: String,
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// True when the request was refused without harm (upstream `UnChanged`).
    pub fn is_unchanged(&self) -> bool {
        matches!(self, VolumeError::Shrink { .. })
    }
}

/// A volume as it exists on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    /// Workload id.
    pub id: String,
    /// The pool it lives on.
    pub pool: String,
    /// The subvolume path (what a VM mounts).
    pub path: PathBuf,
    /// The quota in bytes (on a directory pool: the reservation, not enforced).
    pub size: u64,
}

/// A read-only snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// `<seq>-<unix time>`: what `restore` takes.
    pub name: String,
    /// Sequence number, increasing per volume.
    pub seq: u64,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// Names that live at a pool's top level and are not volumes.
const RESERVED: [&str; 3] = [
    crate::pool::CACHE_SUBVOLUME,
    crate::zmount::VDISKS_DIR,
    crate::zdb::ZDB_DIR,
];

/// Whether a top-level pool entry name is a (possible) volume: safe characters, not reserved,
/// not hidden, not `zdb*` (upstream reserves that prefix).
pub fn is_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with("zdb")
        && !RESERVED.contains(&name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn backend_err(id: &str) -> impl FnOnce(BackendError) -> VolumeError + '_ {
    move |source| VolumeError::Backend {
        id: id.to_string(),
        source,
    }
}

impl Storage {
    /// Find the SSD pool holding volume `id` (btrfs repairs a restore interrupted by a crash).
    fn find_volume(&self, id: &str) -> Option<&Pool> {
        self.pools
            .iter()
            .filter(|p| p.kind == PoolKind::Ssd)
            .find(|p| p.ops().volume_exists(p, id))
    }

    async fn volume_size(&self, pool: &Pool, id: &str) -> Result<u64, VolumeError> {
        pool.ops()
            .volume_size(pool, id)
            .await
            .map_err(backend_err(id))
    }

    /// The volume, if it exists.
    pub async fn volume_get(&self, id: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        check_id(id)?;
        let Some(pool) = self.find_volume(id) else {
            return Ok(None);
        };
        let size = self.volume_size(pool, id).await?;
        Ok(Some(VolumeInfo {
            id: id.into(),
            pool: pool.name.clone(),
            path: pool.path(id),
            size,
        }))
    }

    /// Create volume `id` of `size` bytes, or converge an existing one (its quota is raised to
    /// `size` if lower, never lowered).
    pub async fn volume_create(&self, id: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        check_id(id)?;
        if size == 0 {
            return Err(VolumeError::ZeroSize(id.into()));
        }
        let _guard = self.lock.lock().await;
        let pool = match self.find_volume(id) {
            Some(p) => p,
            None => {
                let pool = self
                    .pick_pool(PoolKind::Ssd, size)
                    .await
                    .map_err(|source| VolumeError::Alloc {
                        id: id.into(),
                        source,
                    })?;
                pool.ops()
                    .volume_create(pool, id, size)
                    .await
                    .map_err(backend_err(id))?;
                tracing::info!(id, pool = %pool.name, size, "volume created");
                pool
            }
        };
        let current = self.volume_size(pool, id).await?;
        if current < size {
            set_limit(pool, id, size).await?;
        }
        Ok(VolumeInfo {
            id: id.into(),
            pool: pool.name.clone(),
            path: pool.path(id),
            size: current.max(size),
        })
    }

    /// Update: snapshot (where the pool has snapshots), then grow the quota to `size`. A
    /// smaller size is refused ([`VolumeError::Shrink`], nothing changes); the same size only
    /// takes the snapshot.
    pub async fn volume_update(&self, id: &str, size: u64) -> Result<VolumeInfo, VolumeError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        let pool = self
            .find_volume(id)
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        let current = self.volume_size(pool, id).await?;
        if size < current {
            return Err(VolumeError::Shrink {
                id: id.into(),
                current,
                requested: size,
            });
        }
        let extra = size - current;
        if extra > 0 {
            self.check_room(pool, extra)
                .await
                .map_err(|source| VolumeError::Alloc {
                    id: id.into(),
                    source,
                })?;
        }
        // A pool without snapshots (directory) still gets the update, without one.
        if pool.ops().has_snapshots() {
            snapshot_locked(pool, id).await?;
        }
        if extra > 0 {
            set_limit(pool, id, size).await?;
            tracing::info!(id, from = current, to = size, "volume grown");
        }
        Ok(VolumeInfo {
            id: id.into(),
            pool: pool.name.clone(),
            path: pool.path(id),
            size,
        })
    }

    /// Take a read-only snapshot now.
    pub async fn volume_snapshot(&self, id: &str) -> Result<SnapshotInfo, VolumeError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        let pool = self.find_volume_with_snapshots(id)?;
        snapshot_locked(pool, id).await
    }

    /// The pool of volume `id`, if it can have snapshots.
    fn find_volume_with_snapshots(&self, id: &str) -> Result<&Pool, VolumeError> {
        let pool = self
            .find_volume(id)
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        if !pool.ops().has_snapshots() {
            return Err(VolumeError::NoSnapshots {
                id: id.into(),
                pool: pool.name.clone(),
            });
        }
        Ok(pool)
    }

    /// The volume's snapshots, oldest first.
    pub async fn volume_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>, VolumeError> {
        check_id(id)?;
        let pool = self.find_volume_with_snapshots(id)?;
        list_snapshots(pool, id)
    }

    /// Replace the volume's content with snapshot `name` (see [`Storage::volume_snapshots`]).
    /// The current content is snapshotted first, so a restore can be undone by restoring
    /// that snapshot. The quota stays as it is. Whoever has the volume mounted (a VM) keeps
    /// seeing the old content until it remounts: restore a volume of a stopped VM.
    pub async fn volume_restore(&self, id: &str, name: &str) -> Result<SnapshotInfo, VolumeError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        let pool = self.find_volume_with_snapshots(id)?;
        let target = list_snapshots(pool, id)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| VolumeError::SnapshotNotFound {
                id: id.into(),
                snapshot: name.into(),
            })?;
        let before = snapshot_locked(pool, id).await?;
        pool.ops()
            .snapshot_restore(pool, id, &target.name)
            .await
            .map_err(backend_err(id))?;
        tracing::info!(id, snapshot = name, saved_as = %before.name, "volume restored");
        Ok(before)
    }

    /// Delete the volume and all its snapshots. Absent is success.
    pub async fn volume_delete(&self, id: &str) -> Result<(), VolumeError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        for pool in self.pools.iter().filter(|p| p.kind == PoolKind::Ssd) {
            pool.ops()
                .volume_delete(pool, id)
                .await
                .map_err(backend_err(id))?;
        }
        Ok(())
    }
}

/// Set the volume's size: the qgroup limit (btrfs) or the recorded reservation (directory).
async fn set_limit(pool: &Pool, id: &str, size: u64) -> Result<(), VolumeError> {
    pool.ops()
        .volume_set_size(pool, id, size)
        .await
        .map_err(backend_err(id))
}

fn check_id(id: &str) -> Result<(), VolumeError> {
    if is_volume_name(id) {
        Ok(())
    } else {
        Err(VolumeError::InvalidId(id.into()))
    }
}

/// The snapshots of volume `id`, oldest first (names the backend holds that are not
/// `<seq>-<unix time>` are not ours and are left out).
fn list_snapshots(pool: &Pool, id: &str) -> Result<Vec<SnapshotInfo>, VolumeError> {
    let mut out: Vec<SnapshotInfo> = pool
        .ops()
        .snapshot_names(pool, id)
        .map_err(backend_err(id))?
        .into_iter()
        .filter_map(|name| {
            let (seq, created) = name.split_once('-')?;
            Some(SnapshotInfo {
                seq: seq.parse().ok()?,
                created: created.parse().ok()?,
                name,
            })
        })
        .collect();
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// Take the next snapshot of `id` and prune the oldest beyond [`MAX_SNAPSHOTS`]. Callers hold
/// the storage lock.
async fn snapshot_locked(pool: &Pool, id: &str) -> Result<SnapshotInfo, VolumeError> {
    let seq = list_snapshots(pool, id)?.last().map_or(1, |s| s.seq + 1);
    let created = now();
    let name = format!("{seq}-{created}");
    pool.ops()
        .snapshot_create(pool, id, &name)
        .await
        .map_err(backend_err(id))?;
    tracing::info!(id, snapshot = %name, "volume snapshot taken");
    let all = list_snapshots(pool, id)?;
    for old in &all[..all.len().saturating_sub(MAX_SNAPSHOTS)] {
        pool.ops()
            .snapshot_delete(pool, id, &old.name)
            .await
            .map_err(backend_err(id))?;
        tracing::info!(id, snapshot = %old.name, "old volume snapshot pruned");
    }
    Ok(SnapshotInfo { name, seq, created })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert!(is_volume_name("12-34-data"));
        for bad in [
            "",
            "cache",
            "vdisks",
            "zdb",
            "zdb-1",
            ".snapshots",
            "a/b",
            "..",
            "x y",
            &"a".repeat(129),
        ] {
            assert!(!is_volume_name(bad), "{bad}");
        }
    }
}
