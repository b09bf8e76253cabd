//! `volume` workloads: a btrfs subvolume `<wlid>` on an SSD pool with a qgroup limit equal to
//! its size. Grow-only; a read-only snapshot `.snapshots/<wlid>/<n>-<unix time>` is taken
//! before every update and before every restore, so a restore can itself be undone.
//!
//! On a directory pool ([`crate::dirpool`]) a volume is a plain directory whose size is
//! recorded and reserved but not enforced, and snapshot calls fail with
//! [`VolumeError::NoSnapshots`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::btrfs::{self, BtrfsError};
use crate::dirpool::{self, DirError};
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
    /// Recording a volume's size on a directory pool failed.
    #[error("volume {id}: {source}")]
    Dir {
        /// Volume id.
        id: String,
        /// The failure.
        #[source]
        source: DirError,
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
    /// A btrfs operation failed.
    #[error("volume {id}: {source}")]
    Btrfs {
        /// Volume id.
        id: String,
        /// The failure.
        #[source]
        source: BtrfsError,
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

impl Storage {
    fn vol_err(id: &str) -> impl Fn(BtrfsError) -> VolumeError + '_ {
        move |source| VolumeError::Btrfs {
            id: id.to_string(),
            source,
        }
    }

    fn dir_err(id: &str) -> impl Fn(DirError) -> VolumeError + '_ {
        move |source| VolumeError::Dir {
            id: id.to_string(),
            source,
        }
    }

    /// Find the pool holding volume `id`, repairing a restore interrupted by a crash.
    fn find_volume(&self, id: &str) -> Option<&Pool> {
        for p in self.pools.iter().filter(|p| p.kind == PoolKind::Ssd) {
            let path = p.path(id);
            if p.is_directory() {
                if path.is_dir() {
                    return Some(p);
                }
                continue;
            }
            let trash = p.path(&format!(".trash-{id}"));
            if !path.exists() && btrfs::is_subvolume(&trash) {
                // Crash between the two renames of a restore: the old data is still complete.
                tracing::warn!(id, "repairing interrupted restore");
                let _ = std::fs::rename(&trash, &path);
            }
            if btrfs::is_subvolume(&path) {
                return Some(p);
            }
        }
        None
    }

    async fn volume_size(&self, pool: &Pool, id: &str) -> Result<u64, VolumeError> {
        if pool.is_directory() {
            return Ok(dirpool::volume_size(pool, id));
        }
        let q = btrfs::qgroups(&pool.mountpoint)
            .await
            .map_err(Self::vol_err(id))?;
        Ok(q.iter()
            .find(|q| q.path == id)
            .and_then(|q| q.max_referenced)
            .unwrap_or(0))
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
                if pool.is_directory() {
                    // Size first: a crash before the directory exists leaves a size that
                    // reserves nothing (only sizes of existing directories count).
                    dirpool::set_volume_size(pool, id, size).map_err(Self::dir_err(id))?;
                    let path = pool.path(id);
                    std::fs::create_dir(&path).map_err(|source| VolumeError::Io {
                        id: id.into(),
                        op: "create",
                        path,
                        source,
                    })?;
                } else {
                    btrfs::subvolume_create(&pool.path(id))
                        .await
                        .map_err(Self::vol_err(id))?;
                }
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

    /// Update: snapshot, then grow the quota to `size`. A smaller size is refused
    /// ([`VolumeError::Shrink`], nothing changes); the same size only takes the snapshot.
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
        // A directory pool has no snapshots: the update still happens, without one.
        if !pool.is_directory() {
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
        if pool.is_directory() {
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
        let not_found = || VolumeError::SnapshotNotFound {
            id: id.into(),
            snapshot: name.into(),
        };
        let snaps = list_snapshots(pool, id)?;
        let target = snaps
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(not_found)?;
        let src = snapshot_path(pool, id, &target.name);
        let size = self.volume_size(pool, id).await?;
        let before = snapshot_locked(pool, id).await?;

        let live = pool.path(id);
        let staged = pool.path(&format!(".restore-{id}"));
        let trash = pool.path(&format!(".trash-{id}"));
        for leftover in [&staged, &trash] {
            if btrfs::is_subvolume(leftover) {
                btrfs::subvolume_delete(leftover)
                    .await
                    .map_err(Self::vol_err(id))?;
            }
        }
        btrfs::snapshot(&src, &staged, false)
            .await
            .map_err(Self::vol_err(id))?;
        if size > 0 {
            btrfs::qgroup_limit(&staged, size)
                .await
                .map_err(Self::vol_err(id))?;
        }
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| VolumeError::Io {
                id: id.into(),
                op,
                path,
                source,
            }
        };
        std::fs::rename(&live, &trash).map_err(io("move aside", &live))?;
        std::fs::rename(&staged, &live).map_err(io("move in", &staged))?;
        btrfs::subvolume_delete(&trash)
            .await
            .map_err(Self::vol_err(id))?;
        tracing::info!(id, snapshot = name, saved_as = %before.name, "volume restored");
        Ok(before)
    }

    /// Delete the volume and all its snapshots. Absent is success.
    pub async fn volume_delete(&self, id: &str) -> Result<(), VolumeError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        for pool in self.pools.iter().filter(|p| p.kind == PoolKind::Ssd) {
            if pool.is_directory() {
                let path = pool.path(id);
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(|source| VolumeError::Io {
                        id: id.into(),
                        op: "remove",
                        path: path.clone(),
                        source,
                    })?;
                }
                // After the directory: a crash in between leaves a size that reserves nothing.
                dirpool::remove_volume_size(pool, id).map_err(Self::dir_err(id))?;
                continue;
            }
            for name in [
                format!(".restore-{id}"),
                format!(".trash-{id}"),
                id.to_string(),
            ] {
                let path = pool.path(&name);
                if btrfs::is_subvolume(&path) {
                    btrfs::subvolume_delete(&path)
                        .await
                        .map_err(Self::vol_err(id))?;
                }
            }
            let dir = pool.path(SNAPSHOT_DIR).join(id);
            if dir.is_dir() {
                for s in list_snapshots(pool, id)? {
                    btrfs::subvolume_delete(&snapshot_path(pool, id, &s.name))
                        .await
                        .map_err(Self::vol_err(id))?;
                }
                std::fs::remove_dir_all(&dir).map_err(|source| VolumeError::Io {
                    id: id.into(),
                    op: "remove",
                    path: dir.clone(),
                    source,
                })?;
            }
            // Qgroups of deleted subvolumes linger until the cleaner is done; best effort.
            let _ = crate::exec::run(
                "btrfs",
                &["qgroup", "clear-stale", &pool.mountpoint.to_string_lossy()],
            )
            .await;
        }
        Ok(())
    }
}

/// Set the volume's size: the qgroup limit (btrfs) or the recorded reservation (directory).
async fn set_limit(pool: &Pool, id: &str, size: u64) -> Result<(), VolumeError> {
    if pool.is_directory() {
        return dirpool::set_volume_size(pool, id, size).map_err(|source| VolumeError::Dir {
            id: id.into(),
            source,
        });
    }
    btrfs::qgroup_limit(&pool.path(id), size)
        .await
        .map_err(|source| VolumeError::Btrfs {
            id: id.into(),
            source,
        })
}

fn check_id(id: &str) -> Result<(), VolumeError> {
    if is_volume_name(id) {
        Ok(())
    } else {
        Err(VolumeError::InvalidId(id.into()))
    }
}

fn snapshot_path(pool: &Pool, id: &str, name: &str) -> PathBuf {
    pool.path(SNAPSHOT_DIR).join(id).join(name)
}

fn list_snapshots(pool: &Pool, id: &str) -> Result<Vec<SnapshotInfo>, VolumeError> {
    let dir = pool.path(SNAPSHOT_DIR).join(id);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(VolumeError::Io {
                id: id.into(),
                op: "list",
                path: dir,
                source,
            });
        }
    };
    let mut out: Vec<SnapshotInfo> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
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

async fn snapshot_locked(pool: &Pool, id: &str) -> Result<SnapshotInfo, VolumeError> {
    let dir = pool.path(SNAPSHOT_DIR).join(id);
    std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
        id: id.into(),
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let seq = list_snapshots(pool, id)?.last().map_or(1, |s| s.seq + 1);
    let created = now();
    let name = format!("{seq}-{created}");
    btrfs::snapshot(&pool.path(id), &dir.join(&name), true)
        .await
        .map_err(|source| VolumeError::Btrfs {
            id: id.into(),
            source,
        })?;
    tracing::info!(id, snapshot = %name, "volume snapshot taken");
    let all = list_snapshots(pool, id)?;
    for old in &all[..all.len().saturating_sub(MAX_SNAPSHOTS)] {
        btrfs::subvolume_delete(&dir.join(&old.name))
            .await
            .map_err(|source| VolumeError::Btrfs {
                id: id.into(),
                source,
            })?;
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
