//! Running the node's ZeroDB servers: the [`ZdbLauncher`] seam, the production launcher
//! [`InProcessZdb`] (a `zos_zdb::Server` in the node's process with an admin password and an
//! at-rest key derived from the key root, so namespace values are sealed on the pool,
//! `--sync` so that writes are on disk before they are acknowledged, and `--protect`), and the
//! supervisor that restarts a server on the same address whenever it stops unexpectedly.
//!
//! Each server's TCP port is chosen once and kept in `<pool>/zdb/port`, so results handed to
//! users (`{Namespace, IPs, Port}`) stay valid across restarts.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use zos_primitive::NodeSecret;

use crate::pool::{Pool, PoolKind};
use crate::storage::Storage;
use crate::zdb::{ZDB_DIR, ZdbError, namespaces};

/// What a launcher must start.
#[derive(Debug, Clone)]
pub struct ZdbServerSpec {
    /// Pool name (for logs).
    pub pool: String,
    /// `--data`.
    pub data_dir: PathBuf,
    /// `--index`.
    pub index_dir: PathBuf,
    /// TCP address; port 0 on the very first start.
    pub listen: SocketAddr,
    /// `--admin`.
    pub admin_password: String,
    /// The server's at-rest key (`zos_zdb::ServerConfig::at_rest_key`), derived from the key
    /// root: namespace values are stored sealed under it, so a copy of the pool is useless
    /// without the key root.
    pub at_rest_key: zos_zdb::crypto::AtRestKey,
}

/// Resolves when a launched server has stopped: `Ok` after a requested stop, `Err(reason)`
/// when it died.
pub type ZdbExit = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Starts one ZeroDB server.
#[async_trait::async_trait]
pub trait ZdbLauncher: Send + Sync + 'static {
    /// Start a server for `spec`; it must stop when `stop` turns true. Returns the bound
    /// address and a future that resolves when the server has stopped.
    async fn launch(
        &self,
        spec: &ZdbServerSpec,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, ZdbExit), String>;
}

/// Runs ZeroDB servers as tokio tasks of the node.
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcessZdb;

#[async_trait::async_trait]
impl ZdbLauncher for InProcessZdb {
    async fn launch(
        &self,
        spec: &ZdbServerSpec,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, ZdbExit), String> {
        let cfg = server_config(
            spec.data_dir.clone(),
            spec.index_dir.clone(),
            spec.listen,
            spec.admin_password.clone(),
            spec.at_rest_key.clone(),
        );
        let server = zos_zdb::Server::bind(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let addr = server
            .local_addr()
            .ok_or("the zdb server has no TCP address")?;
        let task = tokio::spawn(server.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let exit: ZdbExit = Box::pin(async move {
            match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("zdb server task failed: {e}")),
            }
        });
        Ok((addr, exit))
    }
}

/// How the node runs a pool's server, in its process or in one of its own: admin password,
/// at-rest key, `--sync` (on disk before acknowledged) and `--protect`.
pub(crate) fn server_config(
    data_dir: PathBuf,
    index_dir: PathBuf,
    listen: SocketAddr,
    admin_password: String,
    at_rest_key: zos_zdb::crypto::AtRestKey,
) -> zos_zdb::ServerConfig {
    zos_zdb::ServerConfig {
        data_dir,
        index_dir,
        listen: Some(listen),
        socket: None,
        admin_password: Some(admin_password),
        mode: None,
        sync: true,
        datasize: zos_zdb::DEFAULT_DATASIZE,
        protect: true,
        at_rest_key: Some(at_rest_key),
        ..zos_zdb::ServerConfig::default()
    }
}

/// One supervised server.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) pool: String,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: String,
    /// Bumped on every (re)start: tests and the node can watch restarts.
    pub(crate) starts: watch::Receiver<u64>,
    pub(crate) task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Supervises the node's ZeroDB servers.
#[derive(Debug)]
pub struct ZdbSupervisor {
    instances: std::sync::RwLock<Vec<Arc<Instance>>>,
    stop: watch::Sender<bool>,
}

impl Default for ZdbSupervisor {
    fn default() -> Self {
        ZdbSupervisor {
            instances: std::sync::RwLock::new(Vec::new()),
            stop: watch::channel(false).0,
        }
    }
}

/// A running server as reported by [`Storage::zdb_servers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZdbServerInfo {
    /// Pool it stores on.
    pub pool: String,
    /// Its TCP address.
    pub addr: SocketAddr,
    /// How many times it has been started (1 = never restarted).
    pub starts: u64,
}

impl ZdbSupervisor {
    pub(crate) fn all(&self) -> Vec<Arc<Instance>> {
        self.instances
            .read()
            .expect("zdb instance list lock is never poisoned: no panics while held")
            .clone()
    }

    pub(crate) fn on_pool(&self, pool: &str) -> Option<Arc<Instance>> {
        self.all().into_iter().find(|i| i.pool == pool)
    }

    /// Bytes reserved by namespaces of the server on `pool` (Σ maxsize); 0 when it has none
    /// or cannot be asked (logged).
    pub async fn reserved_on(&self, pool: &str) -> u64 {
        let Some(inst) = self.on_pool(pool) else {
            return 0;
        };
        match namespaces(&inst).await {
            Ok(list) => list
                .iter()
                .map(|(_, i)| i.max_size)
                .fold(0, u64::saturating_add),
            Err(e) => {
                tracing::warn!(pool, error = %e, "cannot read zdb reservations");
                0
            }
        }
    }

    /// Stop every server and wait for them.
    pub async fn stop_all(&self) {
        self.stop.send_replace(true);
        for inst in self.all() {
            if let Some(task) = inst.task.lock().await.take() {
                let _ = task.await;
            }
        }
        self.instances
            .write()
            .expect("zdb instance list lock is never poisoned")
            .clear();
    }
}

/// The admin password of the server on `pool`: 24 bytes of `NodeSecret::derive("zdb-admin",
/// pool)` (the key root), hex. ZeroDB keeps no trace of its admin password (it is a start
/// option; namespaces have their own passwords), so servers of a node upgraded in place
/// moved from the seed-derived `LegacyKey::ZdbAdminV1` to this one with nothing to migrate.
fn admin_password(secret: &NodeSecret, pool: &str) -> String {
    hex::encode(&secret.derive("zdb-admin", pool)[..24])
}

/// The pool's ZeroDB at-rest key: from the key root only (nothing on the pools derives it).
fn at_rest_key(secret: &NodeSecret, pool: &str) -> zos_zdb::crypto::AtRestKey {
    zos_zdb::crypto::AtRestKey(secret.derive("zdb-at-rest", pool))
}

impl Storage {
    /// Start (and from then on supervise) one ZeroDB server per HDD pool, or per SSD pool when
    /// the node has no HDD. Idempotent: pools that already have a server are skipped.
    pub async fn start_zdb(&self, launcher: Arc<dyn ZdbLauncher>) -> Result<(), ZdbError> {
        let hdd: Vec<&Pool> = self
            .pools
            .iter()
            .filter(|p| p.kind == PoolKind::Hdd)
            .collect();
        let pools = if hdd.is_empty() {
            self.pools.iter().collect()
        } else {
            hdd
        };
        self.zdb.stop.send_replace(false);
        for pool in pools {
            if self.zdb.on_pool(&pool.name).is_some() {
                continue;
            }
            let inst = self.launch_supervised(pool, launcher.clone()).await?;
            self.zdb
                .instances
                .write()
                .expect("zdb instance list lock is never poisoned")
                .push(inst);
        }
        Ok(())
    }

    async fn launch_supervised(
        &self,
        pool: &Pool,
        launcher: Arc<dyn ZdbLauncher>,
    ) -> Result<Arc<Instance>, ZdbError> {
        let root = pool
            .ensure_dir(ZDB_DIR)
            .await
            .map_err(|source| ZdbError::Backend {
                pool: pool.name.clone(),
                source,
            })?;
        let io = |op, path: PathBuf| {
            move |source| ZdbError::Io {
                pool: pool.name.clone(),
                op,
                path,
                source,
            }
        };
        let (data_dir, index_dir) = (root.join("data"), root.join("index"));
        for d in [&data_dir, &index_dir] {
            std::fs::create_dir_all(d).map_err(io("create", d.clone()))?;
        }
        // Namespace descriptors hold namespace passwords and the data is users': owner only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod 0700", root.clone()))?;
        }
        let port_file = root.join("port");
        let port: u16 = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut spec = ZdbServerSpec {
            pool: pool.name.clone(),
            data_dir,
            index_dir,
            listen: SocketAddr::new(self.cfg.zdb_listen, port),
            admin_password: admin_password(&self.secret, &pool.name),
            at_rest_key: at_rest_key(&self.secret, &pool.name),
        };
        let first = launcher.launch(&spec, self.zdb.stop.subscribe()).await;
        let (addr, exit) = match first {
            Ok(x) => x,
            Err(reason) if port != 0 => {
                // The remembered port is taken: users must be told the new one by re-provisioning.
                tracing::warn!(pool = %pool.name, port, %reason, "remembered zdb port unavailable, picking a new one");
                spec.listen.set_port(0);
                launcher
                    .launch(&spec, self.zdb.stop.subscribe())
                    .await
                    .map_err(|reason| ZdbError::Launch {
                        pool: pool.name.clone(),
                        reason,
                    })?
            }
            Err(reason) => {
                return Err(ZdbError::Launch {
                    pool: pool.name.clone(),
                    reason,
                });
            }
        };
        if addr.port() != port {
            let tmp = root.join("port.tmp");
            std::fs::write(&tmp, addr.port().to_string()).map_err(io("write", tmp.clone()))?;
            std::fs::rename(&tmp, &port_file).map_err(io("rename", tmp.clone()))?;
        }
        spec.listen = addr;
        tracing::info!(pool = %pool.name, %addr, "zdb server started");
        let (starts_tx, starts) = watch::channel(1u64);
        let stop = self.zdb.stop.subscribe();
        let task = tokio::spawn(supervise(launcher, spec.clone(), exit, stop, starts_tx));
        Ok(Arc::new(Instance {
            pool: pool.name.clone(),
            addr,
            admin: spec.admin_password,
            starts,
            task: tokio::sync::Mutex::new(Some(task)),
        }))
    }

    /// The running ZeroDB servers.
    pub fn zdb_servers(&self) -> Vec<ZdbServerInfo> {
        self.zdb
            .all()
            .iter()
            .map(|i| ZdbServerInfo {
                pool: i.pool.clone(),
                addr: i.addr,
                starts: *i.starts.borrow(),
            })
            .collect()
    }

    /// Wait until the server on `pool` has been started more than `n` times.
    pub async fn zdb_wait_starts(&self, pool: &str, n: u64) -> Result<(), ZdbError> {
        let inst = self.zdb.on_pool(pool).ok_or(ZdbError::NoServer)?;
        let mut rx = inst.starts.clone();
        rx.wait_for(|s| *s > n)
            .await
            .map_err(|_| ZdbError::NoServer)?;
        Ok(())
    }
}

/// Keep one server running until `stop`: relaunch (same address) whenever it exits.
async fn supervise(
    launcher: Arc<dyn ZdbLauncher>,
    spec: ZdbServerSpec,
    mut exit: ZdbExit,
    mut stop: watch::Receiver<bool>,
    starts: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            r = &mut exit => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(result) = result else {
            // Let the server finish its own shutdown.
            let _ = exit.await;
            return;
        };
        if *stop.borrow() {
            return;
        }
        tracing::error!(pool = %spec.pool, result = ?result, "zdb server stopped unexpectedly, restarting");
        loop {
            let stopped = tokio::select! {
                _ = tokio::time::sleep(backoff) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                return;
            }
            match launcher.launch(&spec, stop.clone()).await {
                Ok((_, e)) => {
                    exit = e;
                    starts.send_modify(|n| *n += 1);
                    backoff = Duration::from_millis(100);
                    break;
                }
                Err(reason) => {
                    tracing::error!(pool = %spec.pool, %reason, "zdb restart failed");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The at-rest key: from the key root, not the seed copied on the pools.
    #[test]
    fn at_rest_key_comes_from_the_key_root_only() {
        let a = NodeSecret::new([0x5a; 32]).with_legacy_seed([1; 32]);
        let b = NodeSecret::new([0x5a; 32]).with_legacy_seed([2; 32]);
        let c = NodeSecret::new([0x5b; 32]).with_legacy_seed([1; 32]);
        // Another seed (the one copied on the pools) changes nothing; another root does.
        assert_eq!(at_rest_key(&a, "hdd"), at_rest_key(&b, "hdd"));
        assert_ne!(at_rest_key(&a, "hdd"), at_rest_key(&c, "hdd"));
        assert_ne!(at_rest_key(&a, "hdd"), at_rest_key(&a, "ssd"));
        assert_ne!(
            at_rest_key(&a, "hdd").0[..24],
            a.derive("zdb-admin", "hdd")[..24]
        );
    }

    /// From the key root, not the seed: pinned (RFC 5869 computed in Python) and unlike the
    /// legacy password the seed gives.
    #[test]
    fn admin_password_comes_from_the_key_root() {
        let s = NodeSecret::new([0x5a; 32]).with_legacy_seed([0x5a; 32]);
        assert_eq!(
            admin_password(&s, "hdd"),
            "651ce90eebd0d781e2af5ae29c07787939f9cd48498987a1"
        );
        let legacy = s
            .derive_legacy(zos_primitive::LegacyKey::ZdbAdminV1, "hdd")
            .unwrap();
        assert_ne!(admin_password(&s, "hdd"), hex::encode(&legacy[..24]));
        assert_ne!(admin_password(&s, "hdd"), admin_password(&s, "hdd2"));
    }
}
