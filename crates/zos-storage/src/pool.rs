//! Pools: one btrfs filesystem per disk (or per loop file in development), mounted under the
//! node's runtime directory, quota enabled; or, where btrfs cannot be had (no root), a plain
//! directory with a declared size ([`crate::dirpool`]). The [`PoolManager`] finds, formats,
//! mounts and at shutdown releases them.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, BtrfsBackend, DirectoryBackend, MemoryBackend};
use crate::btrfs::{self, BtrfsError};
use crate::dirpool::{self, DirError, DirPoolSpec};
use crate::exec::{self, CmdError};

pub use crate::disks::{DiskCandidate, usable_disks};

/// Name of the subvolume holding the node's own state on the first SSD pool.
pub const CACHE_SUBVOLUME: &str = "cache";

/// The kind of disk under a pool (the contract's: the agent counts SRU/HRU by it).
pub use zos_primitive::PoolKind;

/// Errors of pool discovery, setup and teardown.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A `FILE:SIZE:ssd|hdd` or `dir:PATH:SIZE:ssd|hdd` specification did not parse.
    #[error("bad pool spec {spec:?}: {reason}")]
    BadSpec {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A device already holds a filesystem that is not btrfs: it is left untouched.
    #[error("device {device} of pool {pool} holds a {fs} filesystem, refusing to format it")]
    ForeignFilesystem {
        /// Pool name.
        pool: String,
        /// The block device.
        device: String,
        /// The filesystem found.
        fs: String,
    },
    /// A directory pool's directory holds files but no pool marker: it is left untouched.
    #[error(
        "directory {path} of pool {pool} is not empty and not a zos pool (no {marker}), refusing to use it"
    )]
    ForeignDirectory {
        /// Pool name.
        pool: String,
        /// The directory.
        path: PathBuf,
        /// The marker file name that was missing.
        marker: &'static str,
    },
    /// A directory pool operation failed.
    #[error("pool {pool}: {source}")]
    Dir {
        /// Pool name.
        pool: String,
        /// The failure.
        #[source]
        source: DirError,
    },
    /// Two pools ended up with the same name.
    #[error("two pools are named {0:?}")]
    DuplicateName(String),
    /// A system command failed.
    #[error("pool {pool}: {source}")]
    Cmd {
        /// Pool name (or device).
        pool: String,
        /// The failure.
        #[source]
        source: CmdError,
    },
    /// A btrfs operation failed.
    #[error("pool {pool}: {source}")]
    Btrfs {
        /// Pool name.
        pool: String,
        /// The failure.
        #[source]
        source: BtrfsError,
    },
    /// A file operation failed.
    #[error("pool {pool}: {op} {path}: {source}")]
    Io {
        /// Pool name.
        pool: String,
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pool backend operation failed.
    #[error("pool {pool}: {source}")]
    Backend {
        /// Pool name.
        pool: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
    /// `lsblk` printed something unexpected.
    #[error("cannot parse lsblk output: {0}")]
    Lsblk(String),
}

/// A development pool backed by a file: `FILE:SIZE:ssd|hdd`, SIZE in bytes or with a K/M/G/T
/// (binary) suffix. The file is created sparse if missing, and kept (with its data) afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopPoolSpec {
    /// The backing file.
    pub file: PathBuf,
    /// Its size when created.
    pub size: u64,
    /// How the pool is classified.
    pub kind: PoolKind,
}

impl FromStr for LoopPoolSpec {
    type Err = PoolError;
    fn from_str(spec: &str) -> Result<Self, PoolError> {
        let (file, size, kind) = dirpool::split_spec(spec, spec, "expected FILE:SIZE:ssd|hdd")?;
        Ok(LoopPoolSpec { file, size, kind })
    }
}

/// A pool as given on the command line (`zos node run --pool`): a loop file
/// `FILE:SIZE:ssd|hdd`, or a directory `dir:PATH:SIZE:ssd|hdd` (write `./dir:…` for a loop
/// file whose path starts with `dir:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSpec {
    /// A btrfs pool on a loop file (needs root).
    Loop(LoopPoolSpec),
    /// A plain directory (no root needed; no quotas, no snapshots).
    Dir(DirPoolSpec),
}

impl FromStr for PoolSpec {
    type Err = PoolError;
    fn from_str(spec: &str) -> Result<Self, PoolError> {
        if spec.starts_with(dirpool::DIR_PREFIX) {
            spec.parse().map(PoolSpec::Dir)
        } else {
            spec.parse().map(PoolSpec::Loop)
        }
    }
}

/// Parse `123`, `512M`, `2G`, `1GiB`, `10T` (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match suffix.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// A pool the node uses.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The pool name: the filesystem label (btrfs), the directory's name (directory pool).
    pub name: String,
    /// SSD or HDD.
    pub kind: PoolKind,
    /// Where the pool's files are: the btrfs mount point, or the directory itself.
    pub mountpoint: PathBuf,
    /// Size in bytes: of the device (btrfs), or as declared (directory pool).
    pub size: u64,
    /// What the pool is made of.
    pub backend: PoolBackend,
}

/// What a pool is made of, and so what it can do.
#[derive(Debug, Clone)]
pub enum PoolBackend {
    /// A btrfs filesystem on a block device: volumes have quotas and snapshots.
    Btrfs {
        /// The block device (`/dev/sdb`, `/dev/loop3`).
        device: PathBuf,
        /// Backing file when this is a loop pool.
        loop_file: Option<PathBuf>,
    },
    /// A plain directory: volumes are directories without quota or snapshots.
    Directory,
    /// Volume sizes and snapshots in memory, files in a directory: for tests.
    Memory(Arc<MemoryBackend>),
}

impl PartialEq for PoolBackend {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                PoolBackend::Btrfs { device, loop_file },
                PoolBackend::Btrfs {
                    device: d,
                    loop_file: l,
                },
            ) => device == d && loop_file == l,
            (PoolBackend::Directory, PoolBackend::Directory) => true,
            (PoolBackend::Memory(a), PoolBackend::Memory(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Pool {
    /// `<mountpoint>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// What this kind of pool does differently: the one place that looks at
    /// [`Pool::backend`]; everything else asks the [`Backend`].
    pub fn ops(&self) -> &dyn Backend {
        match &self.backend {
            PoolBackend::Btrfs { .. } => &BtrfsBackend,
            PoolBackend::Directory => &DirectoryBackend,
            PoolBackend::Memory(m) => m.as_ref(),
        }
    }

    /// A pool in `dir` (created if missing) on a fresh [`MemoryBackend`], for tests of the
    /// storage logic without root; the backend is returned too, to set its free space.
    pub fn memory(
        name: &str,
        kind: PoolKind,
        dir: &Path,
        size: u64,
    ) -> Result<(Pool, Arc<MemoryBackend>), PoolError> {
        std::fs::create_dir_all(dir).map_err(|source| PoolError::Io {
            pool: name.into(),
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let backend = Arc::new(MemoryBackend::default());
        let pool = Pool {
            name: name.into(),
            kind,
            mountpoint: dir.to_path_buf(),
            size,
            backend: PoolBackend::Memory(backend.clone()),
        };
        Ok((pool, backend))
    }

    /// Create `<pool>/<rel>` (a subvolume on btrfs, a directory elsewhere) unless it exists.
    pub(crate) async fn ensure_dir(&self, rel: &str) -> Result<PathBuf, BackendError> {
        self.ops().ensure_dir(self, rel).await
    }
}

/// What `zos.storage.pools` reports for one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// `ssd` or `hdd`.
    #[serde(rename = "type")]
    pub kind: PoolKind,
    /// Device size in bytes.
    pub size: u64,
    /// Bytes used on the filesystem (data and metadata).
    pub used: u64,
}

/// Where btrfs pools are mounted (`<runtime_dir>/pools/<name>`): a disk mounted below it is
/// the node's own pool.
pub fn mount_root(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("pools")
}

/// How the [`PoolManager`] finds its pools.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    /// Pools are mounted under `<runtime_dir>/pools/<name>`.
    pub runtime_dir: PathBuf,
    /// Loop-file pools (development and tests).
    pub loop_pools: Vec<LoopPoolSpec>,
    /// Directory pools (no root: fewer features), after the loop pools.
    pub dir_pools: Vec<DirPoolSpec>,
    /// Also take every unused whole disk (formats blank disks!) and every btrfs disk labelled
    /// `zos-*`. Off by default: a development machine's disks are not ours.
    pub discover_disks: bool,
}

/// Owns the node's pools from start to shutdown.
#[derive(Debug)]
pub struct PoolManager {
    pools: Vec<Pool>,
    /// Loop devices attached (or adopted) for loop pools, detached at shutdown.
    loops: Vec<PathBuf>,
}

struct Candidate {
    name: Option<String>,
    kind: PoolKind,
    device: PathBuf,
    size: u64,
    loop_file: Option<PathBuf>,
}

impl PoolConfig {
    /// Add a pool given as `FILE:SIZE:ssd|hdd` or `dir:PATH:SIZE:ssd|hdd`.
    pub fn add(&mut self, spec: PoolSpec) {
        match spec {
            PoolSpec::Loop(l) => self.loop_pools.push(l),
            PoolSpec::Dir(d) => self.dir_pools.push(d),
        }
    }
}

impl PoolManager {
    /// Attach loop files, discover disks (if enabled), format blank ones, mount all, enable
    /// quotas and create the cache subvolume on the first SSD pool. Re-running on the same
    /// files/disks keeps their data. On error, everything already set up is released again.
    pub async fn start(cfg: &PoolConfig) -> Result<Self, PoolError> {
        let mut mgr = PoolManager {
            pools: Vec::new(),
            loops: Vec::new(),
        };
        match mgr.start_inner(cfg).await {
            Ok(()) => Ok(mgr),
            Err(e) => {
                mgr.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_inner(&mut self, cfg: &PoolConfig) -> Result<(), PoolError> {
        let mut candidates = Vec::new();
        for spec in &cfg.loop_pools {
            let device = attach_loop(spec).await?;
            // Remember right away so that a later failure detaches it again.
            self.loops.push(device.clone());
            let stem = spec
                .file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("pool");
            candidates.push(Candidate {
                name: Some(sanitize_label(stem)),
                kind: spec.kind,
                device,
                size: std::fs::metadata(&spec.file)
                    .map(|m| m.len())
                    .unwrap_or(spec.size),
                loop_file: Some(spec.file.clone()),
            });
        }
        if cfg.discover_disks {
            let out = exec::run(
                "lsblk",
                &[
                    "-J",
                    "-b",
                    "-o",
                    "NAME,PATH,SIZE,ROTA,TYPE,FSTYPE,LABEL,MOUNTPOINT,RO",
                ],
            )
            .await
            .map_err(|source| PoolError::Cmd {
                pool: "lsblk".into(),
                source,
            })?;
            for d in usable_disks(&out, &mount_root(&cfg.runtime_dir))? {
                candidates.push(Candidate {
                    name: d.label,
                    kind: d.kind,
                    device: d.path,
                    size: d.size,
                    loop_file: None,
                });
            }
        }
        let mut loop_candidates = candidates.into_iter();
        // Loop pools come first, then directory pools, then discovered disks.
        let loops: Vec<_> = loop_candidates
            .by_ref()
            .take(cfg.loop_pools.len())
            .collect();
        for c in loops {
            self.add_btrfs(c, &cfg.runtime_dir).await?;
        }
        for spec in &cfg.dir_pools {
            let p = dirpool::setup(spec).await?;
            self.push_unique(p)?;
        }
        for c in loop_candidates {
            self.add_btrfs(c, &cfg.runtime_dir).await?;
        }
        self.ensure_cache().await?;
        tracing::info!(pools = ?self.pools.iter().map(|p| &p.name).collect::<Vec<_>>(), "storage pools ready");
        Ok(())
    }

    /// Pools built by the caller (e.g. [`Pool::memory`] in tests): names must be unique; the
    /// `cache` directory is made on the first SSD pool as by [`PoolManager::start`].
    pub async fn adopt(pools: Vec<Pool>) -> Result<Self, PoolError> {
        let mut mgr = PoolManager {
            pools: Vec::new(),
            loops: Vec::new(),
        };
        for p in pools {
            mgr.push_unique(p)?;
        }
        mgr.ensure_cache().await?;
        Ok(mgr)
    }

    async fn ensure_cache(&self) -> Result<(), PoolError> {
        if let Some(first) = self.first_ssd() {
            first
                .ensure_dir(CACHE_SUBVOLUME)
                .await
                .map_err(|source| PoolError::Backend {
                    pool: first.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    async fn add_btrfs(&mut self, c: Candidate, runtime: &Path) -> Result<(), PoolError> {
        match setup_pool(c, runtime).await {
            Ok(p) => self.push_unique(p),
            Err((partial, e)) => {
                self.pools.push(partial);
                Err(e)
            }
        }
    }

    fn push_unique(&mut self, p: Pool) -> Result<(), PoolError> {
        let dup = self.pools.iter().any(|q| q.name == p.name);
        let name = p.name.clone();
        // Pushed either way, so that shutdown releases it.
        self.pools.push(p);
        if dup {
            return Err(PoolError::DuplicateName(name));
        }
        Ok(())
    }

    /// All pools, in configuration order (loop pools, directory pools, discovered disks).
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Pools of one kind.
    pub fn of_kind(&self, kind: PoolKind) -> impl Iterator<Item = &Pool> {
        self.pools.iter().filter(move |p| p.kind == kind)
    }

    fn first_ssd(&self) -> Option<&Pool> {
        self.of_kind(PoolKind::Ssd).next()
    }

    /// The node's state directory (identity, engine store): the `cache` subvolume of the
    /// first SSD pool. `None` when the node has no SSD (upstream then refuses to register).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.first_ssd().map(|p| p.path(CACHE_SUBVOLUME))
    }

    /// Name, type, size and used bytes of every pool (`zos.storage.pools`).
    pub async fn infos(&self) -> Result<Vec<PoolInfo>, PoolError> {
        let mut out = Vec::with_capacity(self.pools.len());
        for p in &self.pools {
            let (size, used) = p
                .ops()
                .usage(p)
                .await
                .map_err(|source| PoolError::Backend {
                    pool: p.name.clone(),
                    source,
                })?;
            out.push(PoolInfo {
                name: p.name.clone(),
                kind: p.kind,
                size,
                used,
            });
        }
        Ok(out)
    }

    /// Unmount every pool and detach the loop devices of loop pools. Best effort: failures
    /// are logged, and the rest is still released. Data stays in the files and disks.
    /// Call it after everything using the pools (ZeroDB servers, VMs) has stopped.
    pub async fn shutdown(&mut self) {
        for p in self.pools.drain(..).rev() {
            p.ops().release(&p).await;
        }
        for dev in self.loops.drain(..).rev() {
            if let Err(e) = exec::run("losetup", &["-d", &dev.to_string_lossy()]).await {
                tracing::warn!(device = %dev.display(), error = %e, "loop detach failed");
            }
        }
    }
}

/// Create the file if needed and attach it to a loop device, reusing an existing attachment
/// (left behind by a crash) rather than attaching twice.
async fn attach_loop(spec: &LoopPoolSpec) -> Result<PathBuf, PoolError> {
    let pool = spec.file.display().to_string();
    let io = |op, source| PoolError::Io {
        pool: pool.clone(),
        op,
        path: spec.file.clone(),
        source,
    };
    if !spec.file.exists() {
        if let Some(dir) = spec.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("create dir for", e))?;
        }
        let f = std::fs::File::create_new(&spec.file).map_err(|e| io("create", e))?;
        f.set_len(spec.size).map_err(|e| io("size", e))?;
    }
    let file = spec.file.canonicalize().map_err(|e| io("resolve", e))?;
    let file = file.to_string_lossy();
    let cmd = |source| PoolError::Cmd {
        pool: pool.clone(),
        source,
    };
    let existing = exec::run("losetup", &["-n", "-O", "NAME", "-j", &file])
        .await
        .map_err(cmd)?;
    if let Some(dev) = existing.lines().map(str::trim).find(|l| !l.is_empty()) {
        tracing::info!(file = %file, dev, "reusing loop device");
        return Ok(PathBuf::from(dev));
    }
    let dev = exec::run("losetup", &["--find", "--show", &file])
        .await
        .map_err(cmd)?;
    Ok(PathBuf::from(dev.trim()))
}

/// Format (if blank), mount and enable quota. On failure returns what was set up so far so
/// that the caller can release it.
async fn setup_pool(c: Candidate, runtime: &Path) -> Result<Pool, (Pool, PoolError)> {
    let mut pool = Pool {
        name: c.name.clone().unwrap_or_default(),
        kind: c.kind,
        mountpoint: PathBuf::new(),
        size: c.size,
        backend: PoolBackend::Btrfs {
            device: c.device.clone(),
            loop_file: c.loop_file.clone(),
        },
    };
    let bt = |pool: &Pool, source| PoolError::Btrfs {
        pool: pool.name.clone(),
        source,
    };
    match btrfs::fs_type(&c.device).await {
        Ok(None) => {
            if pool.name.is_empty() {
                pool.name = sanitize_label(&format!(
                    "zos-{}",
                    c.device
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("disk")
                ));
            }
            tracing::info!(pool = %pool.name, device = %c.device.display(), "formatting blank device");
            if let Err(e) = btrfs::mkfs(&c.device, &pool.name).await {
                let e = bt(&pool, e);
                return Err((pool, e));
            }
        }
        Ok(Some(fs)) if fs == "btrfs" => {
            if let Ok(label) = exec::run(
                "blkid",
                &[
                    "-p",
                    "-o",
                    "value",
                    "-s",
                    "LABEL",
                    &c.device.to_string_lossy(),
                ],
            )
            .await
            {
                if !label.trim().is_empty() {
                    pool.name = label.trim().to_string();
                }
            }
        }
        Ok(Some(fs)) => {
            let e = PoolError::ForeignFilesystem {
                pool: pool.name.clone(),
                device: c.device.display().to_string(),
                fs,
            };
            return Err((pool, e));
        }
        Err(e) => {
            let e = bt(&pool, e);
            return Err((pool, e));
        }
    }
    let mnt = mount_root(runtime).join(&pool.name);
    if !btrfs::is_mountpoint(&mnt) {
        if let Err(e) = btrfs::mount(&c.device, &mnt).await {
            let e = bt(&pool, e);
            return Err((pool, e));
        }
    }
    pool.mountpoint = mnt;
    if let Err(e) = btrfs::quota_enable(&pool.mountpoint).await {
        let e = bt(&pool, e);
        return Err((pool, e));
    }
    Ok(pool)
}

/// Btrfs labels: at most 255 bytes; we also keep them to path-safe characters.
pub(crate) fn sanitize_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("pool");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_specs_parse() {
        let s: LoopPoolSpec = "/tmp/a:b.img:512M:ssd".parse().unwrap();
        assert_eq!(s.file, PathBuf::from("/tmp/a:b.img"));
        assert_eq!(s.size, 512 << 20);
        assert_eq!(s.kind, PoolKind::Ssd);
        assert_eq!("x:2GiB:hdd".parse::<LoopPoolSpec>().unwrap().size, 2 << 30);
        for bad in [
            "",
            "x",
            "x:1G",
            "x:1G:nvme",
            ":1G:ssd",
            "x:0:ssd",
            "x:1Q:ssd",
            "x:99999999999T:hdd",
        ] {
            assert!(bad.parse::<LoopPoolSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_specs_pick_the_backend() {
        assert!(matches!(
            "/x/ssd.img:1G:ssd".parse::<PoolSpec>().unwrap(),
            PoolSpec::Loop(LoopPoolSpec {
                size: 0x4000_0000,
                ..
            })
        ));
        match "dir:/x/hdd:2G:hdd".parse::<PoolSpec>().unwrap() {
            PoolSpec::Dir(d) => {
                assert_eq!(d.dir, PathBuf::from("/x/hdd"));
                assert_eq!(d.kind, PoolKind::Hdd);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            "./dir:x:1G:ssd".parse::<PoolSpec>().unwrap(),
            PoolSpec::Loop(_)
        ));
        let mut cfg = PoolConfig::default();
        cfg.add("dir:/a:1G:ssd".parse().unwrap());
        cfg.add("/b.img:1G:hdd".parse().unwrap());
        assert_eq!((cfg.loop_pools.len(), cfg.dir_pools.len()), (1, 1));
    }

    proptest::proptest! {
        #[test]
        fn spec_parsers_never_panic(s in ".*") {
            let _ = s.parse::<LoopPoolSpec>();
            let _ = s.parse::<PoolSpec>();
            let _ = parse_size(&s);
        }
    }
}
