//! Storage for a zos node: pools, volumes, VM disks and ZeroDB namespaces.
//!
//! **Design.** Every disk is one btrfs filesystem (a *pool*), mounted under the node's runtime
//! directory with quotas enabled; in development a pool is a loop file (`FILE:SIZE:ssd|hdd`).
//! Workloads are plain btrfs objects named by workload id, so the on-disk state *is* the
//! truth: nothing else is persisted, and a restart rediscovers everything.
//! - `volume` → subvolume `<wlid>` with a qgroup limit; read-only snapshots in
//!   `.snapshots/<wlid>/` before every update; restore swaps in a writable snapshot.
//! - `zmount` → `vdisks/<wlid>` sparse NOCOW file, qcow2+LUKS with a key derived from the
//!   node seed (dm-crypt is not available; QEMU opens the image itself).
//! - `zdb` → a namespace on the ZeroDB server the node runs on an HDD pool.
//!
//! Allocation compares *reservations* (quotas, virtual disk sizes, namespace sizes) with pool
//! sizes: a pool is never promised more than it holds.
//!
//! **Limits.** Tools are run as processes (`losetup`, `mkfs.btrfs`, `mount`, `btrfs`,
//! `qemu-img`, `chattr`, `blkid`), so this needs root and btrfs-progs and qemu-utils.
//!
//! **Read first:** [`pool`], then [`storage::Storage`], then the workload modules. `docs/storage.md`
//! has the user-facing side (snapshot commands, formats).
#![forbid(unsafe_code)]

/// Typed wrappers over `mkfs.btrfs`, `mount`, `btrfs` and `blkid`.
pub mod btrfs;
/// Running system tools with errors that carry command, status and stderr.
pub mod exec;
/// Pools: discovery, loop files, format, mount, quota, shutdown.
pub mod pool;
/// The node primitives (`volume`, `zmount`, `zdb`), pool reporter and snapshot API.
pub mod primitives;
/// The shared `Storage` handle and allocation.
pub mod storage;
/// `volume` workloads: subvolumes with quotas and snapshots.
pub mod volume;
/// `zdb` workloads: supervised ZeroDB servers and namespaces.
pub mod zdb;
/// ZeroDB servers: launcher seam, in-process launcher, supervision.
pub mod zdb_server;
/// `zmount` workloads: encrypted sparse VM disks.
pub mod zmount;

pub use pool::{LoopPoolSpec, Pool, PoolConfig, PoolError, PoolInfo, PoolKind, PoolManager};
pub use primitives::register;
pub use storage::{AllocError, PoolCapacity, Storage, StorageConfig};
pub use volume::{SnapshotInfo, VolumeError, VolumeInfo};
pub use zdb::{NamespaceMode, NamespaceSpec, ZdbError, ZdbResult};
pub use zdb_server::{InProcessZdb, ZdbExit, ZdbLauncher, ZdbServerSpec};
pub use zmount::{DiskError, DiskInfo, DiskKey};
