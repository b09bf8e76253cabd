//! Directory pools: a pool that is a plain directory with a declared size, for hosts where the
//! node cannot have btrfs (no root, no loop devices, no btrfs-progs). No device, no mkfs, no
//! mount: workloads are plain files and directories under it.
//!
//! What they give up, and why: volume **quotas** (btrfs qgroups; a plain directory has no
//! per-directory limit without root, so a volume's size is reserved but not enforced) and volume
//! **snapshots/restore** (btrfs subvolume snapshots; a copy would cost the whole volume's
//! size outside any reservation). zmount disks and ZeroDB namespaces work as on btrfs.
//!
//! Layout (the directory is the truth, rediscovered at every start like a btrfs pool):
//! ```text
//! <dir>/.zos-pool                 marker: this directory is a zos pool
//! <dir>/.volume-sizes/<wlid>      a volume's size in bytes (its reservation)
//! <dir>/<wlid>/                   the volume: a plain directory
//! ```
//! The rest (`cache/`, `vdisks/`, `zdb/`) is as on a btrfs pool, as plain directories.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::exec::{self, CmdError};
use crate::pool::{Pool, PoolBackend, PoolError, PoolKind, parse_size};

/// The marker file that makes a directory a zos pool.
pub const MARKER: &str = ".zos-pool";

/// Directory (per directory pool) holding the size of every volume, outside the volumes
/// themselves so that whoever writes into a volume cannot change its reservation.
pub const VOLUME_SIZES_DIR: &str = ".volume-sizes";

const MARKER_TEXT: &str = "zos directory pool v1\n";

/// Errors of directory pool helpers.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// `stat -f` failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// `stat -f` printed something unexpected.
    #[error("cannot parse output of `stat -f` on {path}: {output:?}")]
    Parse {
        /// The directory asked about.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
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
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DirError {
    let path = path.to_path_buf();
    move |source| DirError::Io { op, path, source }
}

/// A directory pool: `dir:PATH:SIZE:ssd|hdd`, e.g. `dir:/var/lib/zos/ssd:10G:ssd`. The
/// directory is created if missing; SIZE is the most the node will reserve on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPoolSpec {
    /// The directory.
    pub dir: PathBuf,
    /// Declared size: reservations on the pool never exceed it.
    pub size: u64,
    /// How the pool is classified.
    pub kind: PoolKind,
}

/// The prefix that marks a directory pool spec.
pub const DIR_PREFIX: &str = "dir:";

impl FromStr for DirPoolSpec {
    type Err = PoolError;
    fn from_str(spec: &str) -> Result<Self, PoolError> {
        let rest = spec.strip_prefix(DIR_PREFIX).ok_or(PoolError::BadSpec {
            spec: spec.into(),
            reason: "a directory pool starts with dir: (dir:PATH:SIZE:ssd|hdd)",
        })?;
        let (dir, size, kind) = split_spec(spec, rest, "expected dir:PATH:SIZE:ssd|hdd")?;
        Ok(DirPoolSpec { dir, size, kind })
    }
}

/// Split `PATH:SIZE:KIND` from the right (the path may contain ':'); `spec` is the whole
/// specification for error messages.
pub(crate) fn split_spec(
    spec: &str,
    rest: &str,
    expected: &'static str,
) -> Result<(PathBuf, u64, PoolKind), PoolError> {
    let bad = |reason| PoolError::BadSpec {
        spec: spec.into(),
        reason,
    };
    let mut parts = rest.rsplitn(3, ':');
    let kind = parts.next().ok_or_else(|| bad(expected))?;
    let size = parts.next().ok_or_else(|| bad(expected))?;
    let path = parts
        .next()
        .filter(|f| !f.is_empty())
        .ok_or_else(|| bad(expected))?;
    let kind = kind.parse().map_err(|_| bad("type must be ssd or hdd"))?;
    let size = parse_size(size)
        .ok_or_else(|| bad("size must be a number with an optional K/M/G/T suffix"))?;
    if size == 0 {
        return Err(bad("size must not be zero"));
    }
    Ok((PathBuf::from(path), size, kind))
}

/// What [`adopt`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// The directory was missing or empty and is now a pool.
    New,
    /// It already was a pool (a restart).
    Existing,
    /// It holds files and no marker: not ours, left untouched.
    Foreign,
}

/// Make `dir` a pool: create it (and the marker) when missing or empty; recognise an existing
/// pool by its marker; refuse (without touching it) a directory that holds other files.
pub fn adopt(dir: &Path) -> Result<Adopted, DirError> {
    if dir.join(MARKER).is_file() {
        return Ok(Adopted::Existing);
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut entries = std::fs::read_dir(dir).map_err(io("list", dir))?;
    if entries.next().is_some() {
        return Ok(Adopted::Foreign);
    }
    let marker = dir.join(MARKER);
    std::fs::write(&marker, MARKER_TEXT).map_err(io("write", &marker))?;
    Ok(Adopted::New)
}

/// Bytes available to the node's user on the filesystem holding `dir` (`statvfs` f_bavail),
/// from `stat -f` rather than a libc call: this crate has no unsafe code.
pub async fn fs_available(dir: &Path) -> Result<u64, DirError> {
    let out = exec::run("stat", &["-f", "-c", "%a %S", &dir.to_string_lossy()]).await?;
    parse_stat_f(&out).ok_or_else(|| DirError::Parse {
        path: dir.to_path_buf(),
        output: out.trim().chars().take(200).collect(),
    })
}

/// Parse `stat -f -c '%a %S'`: available blocks and the fundamental block size.
pub fn parse_stat_f(out: &str) -> Option<u64> {
    let mut it = out.split_whitespace();
    let blocks: u64 = it.next()?.parse().ok()?;
    let bsize: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    blocks.checked_mul(bsize)
}

/// Bytes allocated under `dir` (like `du -s`: sparse files count what they hold), not
/// following symlinks and not crossing into other filesystems.
pub fn usage(dir: &Path) -> Result<u64, DirError> {
    let root = std::fs::symlink_metadata(dir).map_err(io("stat", dir))?;
    let mut total = root.blocks().saturating_mul(512);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Removed while walking (a workload deleted meanwhile): nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &d)(e)),
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != root.dev() {
                continue;
            }
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    Ok(total)
}

/// Adopt a directory pool: named after the directory, refused if it holds foreign files.
pub(crate) async fn setup(spec: &DirPoolSpec) -> Result<Pool, PoolError> {
    let stem = spec
        .dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("pool");
    let name = crate::pool::sanitize_label(stem);
    let dir_err = |source| PoolError::Dir {
        pool: name.clone(),
        source,
    };
    match adopt(&spec.dir).map_err(dir_err)? {
        Adopted::Foreign => {
            return Err(PoolError::ForeignDirectory {
                pool: name.clone(),
                path: spec.dir.clone(),
                marker: MARKER,
            });
        }
        Adopted::New => {
            tracing::info!(pool = %name, dir = %spec.dir.display(), "directory pool created")
        }
        Adopted::Existing => {}
    }
    let dir = spec.dir.canonicalize().map_err(|source| PoolError::Io {
        pool: name.clone(),
        op: "resolve",
        path: spec.dir.clone(),
        source,
    })?;
    // The declared size is a promise, like a sparse loop file's: say so when the filesystem
    // cannot keep it today (allocation also checks the filesystem's free space).
    match fs_available(&dir).await {
        Ok(avail) if avail < spec.size => tracing::warn!(
            pool = %name, declared = spec.size, available = avail,
            "directory pool is larger than the free space of its filesystem"
        ),
        Ok(_) => {}
        Err(e) => return Err(dir_err(e)),
    }
    Ok(Pool {
        name,
        kind: spec.kind,
        mountpoint: dir,
        size: spec.size,
        backend: PoolBackend::Directory,
    })
}

/// [`usage`] on the blocking pool: a big pool takes a while to walk.
pub async fn usage_blocking(dir: &Path) -> Result<u64, DirError> {
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || usage(&owned))
        .await
        .map_err(|e| DirError::Io {
            op: "measure",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?
}

fn size_file(pool: &Pool, id: &str) -> PathBuf {
    pool.path(VOLUME_SIZES_DIR).join(id)
}

/// The recorded size of volume `id` (0 when none is recorded).
pub fn volume_size(pool: &Pool, id: &str) -> u64 {
    std::fs::read_to_string(size_file(pool, id))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Record the size of volume `id` (write to a temporary name, then rename: a crash leaves the
/// old size or the new one, never a torn number).
pub fn set_volume_size(pool: &Pool, id: &str, size: u64) -> Result<(), DirError> {
    let dir = pool.path(VOLUME_SIZES_DIR);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let tmp = dir.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, size.to_string()).map_err(io("write", &tmp))?;
    let path = size_file(pool, id);
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    Ok(())
}

/// Forget the size of volume `id` (absent is fine).
pub fn remove_volume_size(pool: &Pool, id: &str) -> Result<(), DirError> {
    let path = size_file(pool, id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// Σ sizes of the volumes on `pool`: only those whose directory exists (a size recorded just
/// before a crash, for a directory never made, reserves nothing).
pub fn volume_reservations(pool: &Pool) -> u64 {
    let Ok(entries) = std::fs::read_dir(pool.path(VOLUME_SIZES_DIR)) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| crate::volume::is_volume_name(id) && pool.path(id).is_dir())
        .map(|id| volume_size(pool, &id))
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_specs_parse() {
        let s: DirPoolSpec = "dir:/tmp/a:b:512M:ssd".parse().unwrap();
        assert_eq!(s.dir, PathBuf::from("/tmp/a:b"));
        assert_eq!(s.size, 512 << 20);
        assert_eq!(s.kind, PoolKind::Ssd);
        assert_eq!(
            "dir:rel/hdd:2GiB:hdd".parse::<DirPoolSpec>().unwrap().kind,
            PoolKind::Hdd
        );
        for bad in [
            "",
            "dir:",
            "/tmp/x:1G:ssd",
            "dir:x:1G",
            "dir::1G:ssd",
            "dir:x:0:ssd",
            "dir:x:1G:nvme",
            "dir:x:lots:hdd",
        ] {
            assert!(bad.parse::<DirPoolSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stat_f_output_parses() {
        assert_eq!(parse_stat_f("10 4096\n"), Some(40960));
        assert_eq!(parse_stat_f("0 512"), Some(0));
        for bad in ["", "10", "x 4096", "10 4096 1", "18446744073709551615 4096"] {
            assert_eq!(parse_stat_f(bad), None, "{bad}");
        }
    }

    fn pool(dir: &Path) -> Pool {
        Pool {
            name: "p".into(),
            kind: PoolKind::Ssd,
            mountpoint: dir.to_path_buf(),
            size: 1 << 30,
            backend: PoolBackend::Directory,
        }
    }

    #[test]
    fn adopt_refuses_foreign_directories() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("a/b");
        assert_eq!(adopt(&fresh).unwrap(), Adopted::New);
        assert_eq!(adopt(&fresh).unwrap(), Adopted::Existing);
        let foreign = t.path().join("home");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        assert_eq!(adopt(&foreign).unwrap(), Adopted::Foreign);
        assert!(!foreign.join(MARKER).exists(), "left untouched");
    }

    #[test]
    fn volume_sizes_count_only_existing_volumes() {
        let t = tempfile::tempdir().unwrap();
        let p = pool(t.path());
        assert_eq!(volume_size(&p, "1-1-a"), 0);
        set_volume_size(&p, "1-1-a", 100).unwrap();
        set_volume_size(&p, "1-1-b", 50).unwrap();
        std::fs::create_dir(t.path().join("1-1-a")).unwrap();
        assert_eq!(volume_size(&p, "1-1-a"), 100);
        assert_eq!(volume_reservations(&p), 100, "1-1-b has no directory");
        set_volume_size(&p, "1-1-a", 300).unwrap();
        assert_eq!(volume_reservations(&p), 300);
        remove_volume_size(&p, "1-1-a").unwrap();
        remove_volume_size(&p, "1-1-a").unwrap();
        assert_eq!(volume_reservations(&p), 0);
    }

    #[test]
    fn usage_counts_allocated_bytes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![1u8; 64 << 10]).unwrap();
        let sparse = std::fs::File::create(t.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let used = usage(t.path()).unwrap();
        assert!(used >= 64 << 10, "{used}");
        assert!(used < 1 << 30, "sparse files count what they hold: {used}");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = s.parse::<DirPoolSpec>();
            let _ = parse_stat_f(&s);
        }
    }
}
