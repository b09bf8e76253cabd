//! The [`Storage`] handle: pools plus the node seed, shared by the volume, zmount and zdb
//! operations; and allocation (which pool gets a new reservation).

use std::path::PathBuf;

use zos_primitive::NodeSecret;

use crate::backend::BackendError;
use crate::pool::{Pool, PoolConfig, PoolError, PoolInfo, PoolKind, PoolManager};
use crate::zdb_server::ZdbSupervisor;

/// No pool can take a reservation.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The node has no pool of that kind at all.
    #[error("no {kind:?} pool on this node")]
    NoPool {
        /// The kind asked for.
        kind: PoolKind,
    },
    /// Every pool of that kind is too full.
    #[error(
        "not enough storage: {requested} bytes requested on {kind:?}, largest free is {largest_free} bytes"
    )]
    NoSpace {
        /// The kind asked for.
        kind: PoolKind,
        /// Bytes requested.
        requested: u64,
        /// Free bytes on the emptiest pool.
        largest_free: u64,
    },
    /// Reading a pool's reservations or free space failed.
    #[error("pool {pool}: {source}")]
    Backend {
        /// Pool name.
        pool: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
}

/// Allocation view of one pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolCapacity {
    /// Pool name.
    pub name: String,
    /// SSD or HDD.
    #[serde(rename = "type")]
    pub kind: PoolKind,
    /// Device size in bytes (directory pool: the declared size).
    pub size: u64,
    /// Bytes promised to workloads.
    pub reserved: u64,
    /// `size - reserved`; for a directory pool at most the filesystem's free space too.
    pub free: u64,
}

/// Storage settings beyond the pools.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Pools to bring up.
    pub pools: PoolConfig,
    /// Whether new zmount disks are qcow2+LUKS (the default) or raw sparse files.
    pub encrypt_disks: bool,
    /// Address the ZeroDB servers listen on (upstream: `::`; tests: `127.0.0.1`).
    pub zdb_listen: std::net::IpAddr,
    /// IPs reported to users in zdb results (`IPs`); when empty, the listen address (loopback
    /// if that is a wildcard). Set it when listening on `::`/`0.0.0.0`.
    pub zdb_public_ips: Vec<std::net::IpAddr>,
}

impl StorageConfig {
    /// Defaults: encrypted disks, ZeroDB on `127.0.0.1` (the node's network code widens it).
    pub fn new(pools: PoolConfig) -> Self {
        StorageConfig {
            pools,
            encrypt_disks: true,
            zdb_listen: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            zdb_public_ips: Vec::new(),
        }
    }
}

/// Everything storage: pools, the node secret for disk keys and ZeroDB passwords, and the
/// ZeroDB supervisor. Share it as `Arc<Storage>`.
pub struct Storage {
    pub(crate) pools: Vec<Pool>,
    manager: tokio::sync::Mutex<PoolManager>,
    pub(crate) secret: NodeSecret,
    pub(crate) cfg: StorageConfig,
    /// Serialises allocating operations so that two workloads never get the same free space.
    pub(crate) lock: tokio::sync::Mutex<()>,
    pub(crate) zdb: ZdbSupervisor,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Bring up the pools only (the node then reads its identity from [`PoolManager::cache_dir`]
    /// and calls [`Storage::new`] with the seed).
    pub async fn start_pools(cfg: &PoolConfig) -> Result<PoolManager, PoolError> {
        PoolManager::start(cfg).await
    }

    /// Wrap started pools with the node secret (or its seed, in tests). ZeroDB servers are not
    /// started yet: call [`Storage::start_zdb`] (the storage [`crate::primitives::StorageSet`]
    /// does, as its lifecycle start).
    pub fn new(manager: PoolManager, secret: impl Into<NodeSecret>, cfg: StorageConfig) -> Self {
        let pools = manager.pools().to_vec();
        Storage {
            pools,
            manager: tokio::sync::Mutex::new(manager),
            secret: secret.into(),
            cfg,
            lock: tokio::sync::Mutex::new(()),
            zdb: ZdbSupervisor::default(),
        }
    }

    /// All pools.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The node's state directory (`cache` subvolume, or directory, of the first SSD pool).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.pools
            .iter()
            .find(|p| p.kind == PoolKind::Ssd)
            .map(|p| p.path(crate::pool::CACHE_SUBVOLUME))
    }

    /// `zos.storage.pools`: name, type, size and used bytes (filesystem use) of each pool.
    pub async fn pool_infos(&self) -> Result<Vec<PoolInfo>, PoolError> {
        self.manager.lock().await.infos().await
    }

    /// Stop the ZeroDB servers, then unmount pools and detach loop devices. Data stays.
    pub async fn shutdown(&self) {
        self.zdb.stop_all().await;
        self.manager.lock().await.shutdown().await;
    }

    /// Bytes reserved on a pool: volume quotas, zmount virtual sizes and ZeroDB namespace
    /// sizes. This, not the bytes written, is what allocation compares with the pool size.
    pub async fn reserved(&self, pool: &Pool) -> Result<u64, AllocError> {
        let mut total = pool
            .ops()
            .volume_reservations(pool)
            .await
            .map_err(|source| AllocError::Backend {
                pool: pool.name.clone(),
                source,
            })?;
        total = total.saturating_add(crate::zmount::reserved_on(pool));
        total = total.saturating_add(self.zdb.reserved_on(&pool.name).await);
        Ok(total)
    }

    /// Bytes `pool` can still promise: size − reserved. A directory pool's size is only
    /// declared, so it also gets no more than its filesystem has free right now
    /// ([`crate::backend::Backend::available`]).
    pub async fn free(&self, pool: &Pool) -> Result<u64, AllocError> {
        let reserved = self.reserved(pool).await?;
        self.free_after(pool, reserved).await
    }

    async fn free_after(&self, pool: &Pool, reserved: u64) -> Result<u64, AllocError> {
        let free = pool.size.saturating_sub(reserved);
        let avail = pool
            .ops()
            .available(pool)
            .await
            .map_err(|source| AllocError::Backend {
                pool: pool.name.clone(),
                source,
            })?;
        Ok(avail.map_or(free, |a| free.min(a)))
    }

    /// Pick the pool of `kind` with the most free (unreserved) bytes that can take `size`.
    /// Callers hold `self.lock` from here until the reservation exists on disk.
    pub(crate) async fn pick_pool(&self, kind: PoolKind, size: u64) -> Result<&Pool, AllocError> {
        let mut best: Option<(&Pool, u64)> = None;
        for p in self.pools.iter().filter(|p| p.kind == kind) {
            let free = self.free(p).await?;
            if best.is_none_or(|(_, f)| free > f) {
                best = Some((p, free));
            }
        }
        match best {
            None => Err(AllocError::NoPool { kind }),
            Some((p, free)) if free >= size => Ok(p),
            Some((_, free)) => Err(AllocError::NoSpace {
                kind,
                requested: size,
                largest_free: free,
            }),
        }
    }

    /// Grow a reservation on `pool` by `extra` bytes, or say why not ([`AllocError::NoSpace`]).
    pub(crate) async fn check_room(&self, pool: &Pool, extra: u64) -> Result<(), AllocError> {
        let free = self.free(pool).await?;
        if extra <= free {
            return Ok(());
        }
        Err(AllocError::NoSpace {
            kind: pool.kind,
            requested: extra,
            largest_free: free,
        })
    }

    /// Size, reserved and free bytes of every pool, for statistics and the ledger
    /// (total SRU = Σ SSD sizes, HRU = Σ HDD sizes; used = Σ reserved).
    pub async fn capacity(&self) -> Result<Vec<PoolCapacity>, AllocError> {
        let mut out = Vec::new();
        for p in &self.pools {
            let reserved = self.reserved(p).await?;
            out.push(PoolCapacity {
                name: p.name.clone(),
                kind: p.kind,
                size: p.size,
                reserved,
                free: self.free_after(p, reserved).await?,
            });
        }
        Ok(out)
    }
}
