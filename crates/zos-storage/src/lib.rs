//! Storage for a zos node: pools, volumes, VM disks and ZeroDB namespaces.
//!
//! **Design.** Every disk is one btrfs filesystem (a *pool*), mounted under the node's runtime
//! directory with quotas enabled; in development a pool is a loop file (`FILE:SIZE:ssd|hdd`).
//! Workloads are plain btrfs objects named by workload id, so the on-disk state *is* the
//! truth: nothing else is persisted, and a restart rediscovers everything.
//! - `volume` → subvolume `<wlid>` with a qgroup limit; read-only snapshots in
//!   `.snapshots/<wlid>/` before every update; restore swaps in a writable snapshot.
//! - `zmount` → `vdisks/<wlid>` sparse NOCOW file, qcow2+LUKS with a key derived from the
//!   node's key root, which is kept off the pools (dm-crypt is not available; QEMU opens the
//!   image itself). Disks from before the key root open with the legacy seed-derived key.
//! - `zdb` → a namespace on the ZeroDB server the node runs on an HDD pool.
//!
//! Allocation compares *reservations* (quotas, virtual disk sizes, namespace sizes) with pool
//! sizes: a pool is never promised more than it holds.
//!
//! **Without root** a pool can be a plain directory with a declared size
//! (`dir:PATH:SIZE:ssd|hdd`, [`dirpool`]): the same layout as plain directories, so zmount
//! disks, ZeroDB namespaces and the node's `cache` work as on btrfs, but volumes are directories
//! whose size is reserved and *not enforced*, and have no snapshots (those calls fail with
//! [`VolumeError::NoSnapshots`], which says to run as root). One [`Pool`] type covers both;
//! [`PoolBackend`] says which it is, and [`backend::Backend`] holds what differs (an
//! in-memory backend runs the storage logic in tests without root).
//!
//! **Limits.** Tools are run as processes (`losetup`, `mkfs.btrfs`, `mount`, `btrfs`,
//! `qemu-img`, `chattr`, `blkid`), so btrfs pools need root and btrfs-progs; zmount disks need
//! qemu-utils (which works without root).
//!
//! **Read first:** [`pool`], then [`storage::Storage`], then the workload modules. `docs/storage.md`
//! has the user-facing side (snapshot commands, formats, directory pools).
#![forbid(unsafe_code)]

/// Pool backends (btrfs, directory, in-memory for tests) behind one trait.
pub mod backend;
/// Typed wrappers over `mkfs.btrfs`, `mount`, `btrfs` and `blkid`.
pub mod btrfs;
/// Directory pools (no root): spec, marker, free space, usage, volume sizes.
pub mod dirpool;
/// Disk discovery: `lsblk` output to pool candidates.
pub mod disks;
/// Running system tools with errors that carry command, status and stderr.
pub mod exec;
/// Pools: discovery, loop files, directories, format, mount, quota, shutdown.
pub mod pool;
/// The node primitives (`volume`, `zmount`, `zdb`), pool reporter and snapshot API.
pub mod primitives;
/// The shared `Storage` handle and allocation.
pub mod storage;
/// `volume` workloads: subvolumes with quotas and snapshots.
pub mod volume;
/// `zdb` workloads: supervised ZeroDB servers and namespaces.
pub mod zdb;
/// ZeroDB servers in processes of their own, outliving the node.
pub mod zdb_process;
/// ZeroDB servers: launcher seam, in-process launcher, supervision.
pub mod zdb_server;
/// `zmount` workloads: encrypted sparse VM disks.
pub mod zmount;

pub use backend::{Backend, BackendError, MemoryBackend};
pub use dirpool::DirPoolSpec;
pub use pool::{
    LoopPoolSpec, Pool, PoolBackend, PoolConfig, PoolError, PoolInfo, PoolKind, PoolManager,
    PoolSpec,
};
pub use primitives::{StorageSet, register, register_with};
pub use storage::{AllocError, PoolCapacity, Storage, StorageConfig};
pub use volume::{SnapshotInfo, VolumeError, VolumeInfo};
pub use zdb::{NamespaceMode, NamespaceSpec, ZdbError, ZdbResult};
pub use zdb_process::ProcessZdb;
pub use zdb_server::{InProcessZdb, ZdbExit, ZdbLauncher, ZdbServerSpec};
pub use zmount::{DiskError, DiskInfo, DiskKey, KeyGeneration};
