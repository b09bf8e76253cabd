//! `zmount` workloads (VM disks): a sparse file `vdisks/<wlid>` on an SSD pool. The `vdisks`
//! subvolume is NOCOW (`chattr +C`), so disk images do not fragment under random writes.
//!
//! Encrypted at rest by default: the file is qcow2 with a LUKS payload. dm-crypt is not
//! available on our hosts, and the consumer of the disk is QEMU, which opens qcow2+LUKS itself;
//! so the data is encrypted from the VM's write down to the disk with no device mapper. The
//! passphrase is derived (HKDF-SHA256) from the node seed and the workload id: nothing to
//! store, the same after every restart. It reaches `qemu-img` through a pipe on stdin
//! (`--object secret,file=/dev/stdin`), never through a file or an argument.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use zos_primitive::{LegacyKey, NodeSecret};

use crate::backend::BackendError;
use crate::exec::{self, CmdError};
use crate::pool::{Pool, PoolKind};
use crate::storage::{AllocError, Storage};

/// The NOCOW subvolume holding disk images on each SSD pool.
pub const VDISKS_DIR: &str = "vdisks";

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Errors of zmount operations.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The id is not a safe file name.
    #[error("invalid disk id {0:?}: use 1-128 of [A-Za-z0-9_-]")]
    InvalidId(String),
    /// Sizes must be positive.
    #[error("disk {0}: size must not be zero")]
    ZeroSize(String),
    /// No such disk.
    #[error("disk {0} not found")]
    NotFound(String),
    /// A shrink was requested: refused, nothing changed (engine state `unchanged`).
    #[error("disk {id}: cannot shrink from {current} to {requested} bytes")]
    Shrink {
        /// Disk id.
        id: String,
        /// Current virtual size.
        current: u64,
        /// Requested size.
        requested: u64,
    },
    /// No pool can hold it.
    #[error("disk {id}: {source}")]
    Alloc {
        /// Disk id.
        id: String,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// `qemu-img`, `chattr` failed.
    #[error("disk {id}: {source}")]
    Cmd {
        /// Disk id.
        id: String,
        /// The failure.
        #[source]
        source: CmdError,
    },
    /// The pool's backend failed (creating the image directory).
    #[error("disk {id}: {source}")]
    Backend {
        /// Disk id.
        id: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
    /// A file operation failed.
    #[error("disk {id}: {op} {path}: {source}")]
    Io {
        /// Disk id.
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

impl DiskError {
    /// True when the request was refused without harm (upstream `UnChanged`).
    pub fn is_unchanged(&self) -> bool {
        matches!(self, DiskError::Shrink { .. })
    }
}

/// The passphrase of one disk's LUKS payload. Not `Debug`/`Display`, to keep it out of logs.
pub struct DiskKey([u8; 32]);

impl DiskKey {
    /// The key of disk `id`: [`LegacyKey::ZmountDiskV1`] of the node secret (HKDF-SHA256,
    /// salt `zos-storage-zmount-v1`, info = the workload id). Frozen: every encrypted disk
    /// written so far opens only with it.
    pub fn derive(secret: &NodeSecret, id: &str) -> DiskKey {
        DiskKey(secret.derive_legacy(LegacyKey::ZmountDiskV1, id))
    }

    /// The passphrase as QEMU gets it (`secret` object data): 64 lowercase hex characters.
    /// Feed it to QEMU through a pipe or an fd, never a file or the command line.
    pub fn passphrase(&self) -> String {
        hex::encode(self.0)
    }
}

/// A zmount disk as it exists on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskInfo {
    /// Workload id.
    pub id: String,
    /// The pool holding it.
    pub pool: String,
    /// The image file.
    pub path: PathBuf,
    /// Virtual size in bytes (what the VM sees).
    pub size: u64,
    /// qcow2+LUKS (true) or raw (false).
    pub encrypted: bool,
}

impl DiskInfo {
    /// QEMU `-blockdev`/`--image-opts` options opening this disk; for an encrypted disk the
    /// caller defines `--object secret,id=<secret_id>,file=…` with [`DiskKey::passphrase`].
    pub fn qemu_image_opts(&self, secret_id: &str) -> String {
        let file = self.path.to_string_lossy().replace(',', ",,");
        if self.encrypted {
            format!("driver=qcow2,file.filename={file},encrypt.key-secret={secret_id}")
        } else {
            format!("driver=raw,file.filename={file}")
        }
    }
}

fn check_id(id: &str) -> Result<(), DiskError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DiskError::InvalidId(id.into()))
    }
}

/// Virtual size and whether it is qcow2 with encryption, read from the file header (the
/// qcow2 header is not encrypted). Raw files: their length.
pub fn image_info(path: &Path) -> std::io::Result<(u64, bool)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = [0u8; 36];
    let n = f.read(&mut h)?;
    if n >= 36 && &h[..4] == QCOW2_MAGIC {
        let size = u64::from_be_bytes(h[24..32].try_into().expect("8 bytes"));
        let crypt = u32::from_be_bytes(h[32..36].try_into().expect("4 bytes"));
        return Ok((size, crypt != 0));
    }
    Ok((f.metadata()?.len(), false))
}

/// Σ virtual sizes of the disks on `pool` (its zmount reservations).
pub fn reserved_on(pool: &Pool) -> u64 {
    let Ok(entries) = std::fs::read_dir(pool.path(VDISKS_DIR)) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| image_info(&e.path()).ok())
        .map(|(size, _)| size)
        .fold(0u64, u64::saturating_add)
}

fn secret_args() -> [&'static str; 2] {
    ["--object", "secret,id=sec0,file=/dev/stdin"]
}

impl Storage {
    /// The key of disk `id` (for the VM that opens it).
    pub fn disk_key(&self, id: &str) -> DiskKey {
        DiskKey::derive(&self.secret, id)
    }

    fn find_disk(&self, id: &str) -> Option<&Pool> {
        self.pools
            .iter()
            .filter(|p| p.kind == PoolKind::Ssd)
            .find(|p| p.path(VDISKS_DIR).join(id).is_file())
    }

    fn disk_info(pool: &Pool, id: &str) -> Result<DiskInfo, DiskError> {
        let path = pool.path(VDISKS_DIR).join(id);
        let (size, encrypted) = image_info(&path).map_err(|source| DiskError::Io {
            id: id.into(),
            op: "read header of",
            path: path.clone(),
            source,
        })?;
        Ok(DiskInfo {
            id: id.into(),
            pool: pool.name.clone(),
            path,
            size,
            encrypted,
        })
    }

    /// The disk, if it exists.
    pub fn disk_get(&self, id: &str) -> Result<Option<DiskInfo>, DiskError> {
        check_id(id)?;
        self.find_disk(id)
            .map(|p| Self::disk_info(p, id))
            .transpose()
    }

    /// Create disk `id` of `size` bytes (qcow2+LUKS unless the node is configured for raw
    /// disks), or return the existing one unchanged (idempotent; use [`Storage::disk_update`]
    /// to grow). Created under a temporary name and renamed, so a crash never leaves a
    /// half-made image under the real name.
    pub async fn disk_create(&self, id: &str, size: u64) -> Result<DiskInfo, DiskError> {
        check_id(id)?;
        if size == 0 {
            return Err(DiskError::ZeroSize(id.into()));
        }
        let _guard = self.lock.lock().await;
        if let Some(p) = self.find_disk(id) {
            return Self::disk_info(p, id);
        }
        let size = size.div_ceil(512) * 512;
        let pool = self
            .pick_pool(PoolKind::Ssd, size)
            .await
            .map_err(|source| DiskError::Alloc {
                id: id.into(),
                source,
            })?;
        let dir = ensure_vdisks(pool, id).await?;
        let tmp = dir.join(format!(".{id}.tmp"));
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskError::Io {
                id: id.into(),
                op,
                path,
                source,
            }
        };
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(io("remove stale", &tmp))?;
        }
        let tmp_s = tmp.to_string_lossy().into_owned();
        if self.cfg.encrypt_disks {
            let key = self.disk_key(id).passphrase();
            let [o, sec] = secret_args();
            let size_s = size.to_string();
            // iter-time: PBKDF2 stretching protects weak human passphrases; ours is 256 random
            // bits, and qemu's default (2 s per open) would only slow every create/grow/VM start.
            let args = [
                "create",
                "-q",
                "-f",
                "qcow2",
                o,
                sec,
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,preallocation=off",
                &tmp_s,
                &size_s,
            ];
            exec::run_with_stdin("qemu-img", &args, Some(key.as_bytes()))
                .await
                .map_err(|source| DiskError::Cmd {
                    id: id.into(),
                    source,
                })?;
        } else {
            let f = std::fs::File::create_new(&tmp).map_err(io("create", &tmp))?;
            f.set_len(size).map_err(io("size", &tmp))?;
        }
        let path = dir.join(id);
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        tracing::info!(id, pool = %pool.name, size, encrypted = self.cfg.encrypt_disks, "disk created");
        Self::disk_info(pool, id)
    }

    /// Grow disk `id` to `size`. Smaller is refused ([`DiskError::Shrink`]); equal is a no-op.
    /// Upstream also refuses while a running VM uses the disk: that check belongs to the VM
    /// primitive, which knows.
    pub async fn disk_update(&self, id: &str, size: u64) -> Result<DiskInfo, DiskError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        let pool = self
            .find_disk(id)
            .ok_or_else(|| DiskError::NotFound(id.into()))?;
        let info = Self::disk_info(pool, id)?;
        let size = size.div_ceil(512) * 512;
        if size < info.size {
            return Err(DiskError::Shrink {
                id: id.into(),
                current: info.size,
                requested: size,
            });
        }
        if size == info.size {
            return Ok(info);
        }
        self.check_room(pool, size - info.size)
            .await
            .map_err(|source| DiskError::Alloc {
                id: id.into(),
                source,
            })?;
        if info.encrypted {
            let key = self.disk_key(id).passphrase();
            let [o, sec] = secret_args();
            let opts = info.qemu_image_opts("sec0");
            let size_s = size.to_string();
            let args = ["resize", "-q", o, sec, "--image-opts", &opts, &size_s];
            exec::run_with_stdin("qemu-img", &args, Some(key.as_bytes()))
                .await
                .map_err(|source| DiskError::Cmd {
                    id: id.into(),
                    source,
                })?;
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&info.path)
                .map_err(|source| DiskError::Io {
                    id: id.into(),
                    op: "open",
                    path: info.path.clone(),
                    source,
                })?;
            f.set_len(size).map_err(|source| DiskError::Io {
                id: id.into(),
                op: "grow",
                path: info.path.clone(),
                source,
            })?;
        }
        tracing::info!(id, from = info.size, to = size, "disk grown");
        Self::disk_info(pool, id)
    }

    /// Delete disk `id`. Absent is success.
    pub async fn disk_delete(&self, id: &str) -> Result<(), DiskError> {
        check_id(id)?;
        let _guard = self.lock.lock().await;
        while let Some(pool) = self.find_disk(id) {
            let path = pool.path(VDISKS_DIR).join(id);
            std::fs::remove_file(&path).map_err(|source| DiskError::Io {
                id: id.into(),
                op: "remove",
                path,
                source,
            })?;
            tracing::info!(id, pool = %pool.name, "disk deleted");
        }
        Ok(())
    }
}

/// Create the `vdisks` directory on first use (a NOCOW subvolume on btrfs).
async fn ensure_vdisks(pool: &Pool, id: &str) -> Result<PathBuf, DiskError> {
    pool.ops()
        .ensure_image_dir(pool, VDISKS_DIR)
        .await
        .map_err(|source| DiskError::Backend {
            id: id.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_disk_and_per_node() {
        let one = NodeSecret::new([1; 32]);
        let a = DiskKey::derive(&one, "1-2-disk").passphrase();
        assert_eq!(a, DiskKey::derive(&one, "1-2-disk").passphrase());
        assert_eq!(a.len(), 64);
        assert_ne!(a, DiskKey::derive(&one, "1-2-other").passphrase());
        assert_ne!(
            a,
            DiskKey::derive(&NodeSecret::new([2; 32]), "1-2-disk").passphrase()
        );
    }

    /// Disks made by the previous version (its own HKDF in this module) open with the key
    /// derived now: the passphrase the previous build printed for seed 0x5a×32.
    #[test]
    fn keys_match_disks_of_the_previous_version() {
        assert_eq!(
            DiskKey::derive(&NodeSecret::new([0x5a; 32]), "7-42-disk").passphrase(),
            "8bf146026f481b9ed67bf943c25041bd0ebc983980c9e6374d6ef7349a971e8b"
        );
    }

    #[test]
    fn header_parsing_handles_short_and_raw_files() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [0u8; 10]).unwrap();
        assert_eq!(image_info(&raw).unwrap(), (10, false));
        let mut q = Vec::from(*QCOW2_MAGIC);
        q.resize(36, 0);
        q[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        q[35] = 2;
        let qf = dir.path().join("q");
        std::fs::write(&qf, &q).unwrap();
        assert_eq!(image_info(&qf).unwrap(), (1 << 30, true));
        std::fs::write(&qf, &q[..20]).unwrap();
        assert_eq!(image_info(&qf).unwrap(), (20, false));
    }
}
