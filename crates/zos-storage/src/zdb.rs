//! `zdb` workloads: the node runs one ZeroDB server per HDD pool (per SSD pool when it has no
//! HDD), each on the pool's `zdb` subvolume, supervised and restarted if it stops. A workload
//! is a namespace named by the workload id, managed over RESP with the server's admin password
//! (derived from the node seed, never written down).
//!
//! Servers and their supervision live in [`crate::zdb_server`]; this module is the namespace
//! side.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::pool::PoolKind;
use crate::storage::{AllocError, Storage};
use crate::zdb_server::Instance;

/// The subvolume holding ZeroDB data and index on a pool.
pub const ZDB_DIR: &str = "zdb";

/// Errors of ZeroDB servers and namespaces.
#[derive(Debug, thiserror::Error)]
pub enum ZdbError {
    /// No ZeroDB server runs on this node (no pools, or `start_zdb` not called).
    #[error("no ZeroDB server is running on this node")]
    NoServer,
    /// The workload data is not acceptable.
    #[error("zdb {id}: {reason}")]
    Invalid {
        /// Workload id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// No such namespace.
    #[error("zdb namespace {0} not found")]
    NotFound(String),
    /// Refused without harm (shrink, mode change): engine state `unchanged`.
    #[error("zdb {id}: {reason}")]
    Unchanged {
        /// Workload id.
        id: String,
        /// Why nothing changed.
        reason: String,
    },
    /// No pool can hold it.
    #[error("zdb {id}: {source}")]
    Alloc {
        /// Workload id.
        id: String,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// Talking to the server failed.
    #[error("zdb server {addr}: {op}: {source}")]
    Redis {
        /// Server address.
        addr: SocketAddr,
        /// What was sent.
        op: String,
        /// The failure.
        #[source]
        source: redis::RedisError,
    },
    /// A server could not be started.
    #[error("zdb server on pool {pool}: {reason}")]
    Launch {
        /// Pool name.
        pool: String,
        /// Why.
        reason: String,
    },
    /// Preparing the pool failed.
    #[error("zdb on pool {pool}: {source}")]
    Backend {
        /// Pool name.
        pool: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
    /// A file operation failed.
    #[error("zdb on pool {pool}: {op} {path}: {source}")]
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
}

impl ZdbError {
    /// True when the request was refused without harm (upstream `UnChanged`).
    pub fn is_unchanged(&self) -> bool {
        matches!(self, ZdbError::Unchanged { .. })
    }
}

/// A `zdb` workload's data (`{size, mode, password, public}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    /// Maximum data size in bytes.
    pub size: u64,
    /// `user` or `seq`.
    pub mode: NamespaceMode,
    /// Namespace password; empty means none.
    pub password: String,
    /// Readable without the password.
    pub public: bool,
}

/// Namespace index mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// Key-value.
    User,
    /// Sequential ids.
    Seq,
}

impl NamespaceMode {
    fn as_str(self) -> &'static str {
        match self {
            NamespaceMode::User => "user",
            NamespaceMode::Seq => "seq",
        }
    }
}

/// The `zdb` workload result (`{Namespace, IPs, Port}`), as `zos-types` defines it.
pub use zos_types::data::ZdbResult;

/// What `NSINFO` says about a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// `entries`.
    pub entries: u64,
    /// `data_limits_bytes` (0 = unlimited).
    pub max_size: u64,
    /// `public: yes`.
    pub public: bool,
    /// `password: yes`.
    pub has_password: bool,
    /// `mode` (`userkey` / `sequential`).
    pub mode: String,
    /// `locked: yes`.
    pub locked: bool,
}

/// Parse `NSINFO`'s `key: value` lines.
pub fn parse_nsinfo(text: &str) -> NamespaceInfo {
    let mut info = NamespaceInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "entries" => info.entries = v.parse().unwrap_or(0),
            "data_limits_bytes" => info.max_size = v.parse().unwrap_or(0),
            "public" => info.public = v == "yes",
            "password" => info.has_password = v == "yes",
            "mode" => info.mode = v.to_string(),
            "locked" => info.locked = v == "yes",
            _ => {}
        }
    }
    info
}

pub(crate) async fn connect(
    inst: &Instance,
) -> Result<redis::aio::MultiplexedConnection, ZdbError> {
    let rerr = |op: &str| {
        let op = op.to_string();
        move |source| ZdbError::Redis {
            addr: inst.addr,
            op,
            source,
        }
    };
    let client = redis::Client::open(redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(inst.addr.ip().to_string(), inst.addr.port()),
        redis: redis::RedisConnectionInfo::default(),
    })
    .map_err(rerr("connect"))?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(rerr("connect"))?;
    redis::cmd("AUTH")
        .arg(&inst.admin)
        .query_async::<()>(&mut c)
        .await
        .map_err(rerr("AUTH"))?;
    Ok(c)
}

async fn query<T: redis::FromRedisValue>(
    inst: &Instance,
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> Result<T, ZdbError> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    // Never echo a password into an error message.
    let op = if args.get(2) == Some(&"password") {
        format!("{} {} password", args[0], args[1])
    } else {
        args.join(" ")
    };
    cmd.query_async(c).await.map_err(|source| ZdbError::Redis {
        addr: inst.addr,
        op,
        source,
    })
}

/// All namespaces (except `default`) of a server with their NSINFO.
pub(crate) async fn namespaces(inst: &Instance) -> Result<Vec<(String, NamespaceInfo)>, ZdbError> {
    let mut c = connect(inst).await?;
    let names: Vec<String> = query(inst, &mut c, &["NSLIST"]).await?;
    let mut out = Vec::new();
    for n in names.into_iter().filter(|n| n != "default") {
        let text: String = query(inst, &mut c, &["NSINFO", &n]).await?;
        out.push((n, parse_nsinfo(&text)));
    }
    Ok(out)
}

impl Storage {
    fn result_for(&self, id: &str, inst: &Instance) -> ZdbResult {
        let ips = if self.cfg.zdb_public_ips.is_empty() {
            // A wildcard listen address is no address to hand out: fall back to loopback.
            vec![match inst.addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            }]
        } else {
            self.cfg.zdb_public_ips.clone()
        };
        ZdbResult {
            namespace: id.into(),
            ips: ips.iter().map(IpAddr::to_string).collect(),
            port: inst.addr.port(),
        }
    }

    /// The server holding namespace `id` and its NSINFO.
    async fn find_namespace(
        &self,
        id: &str,
    ) -> Result<Option<(Arc<Instance>, NamespaceInfo)>, ZdbError> {
        for inst in self.zdb.all() {
            let mut c = connect(&inst).await?;
            let names: Vec<String> = query(&inst, &mut c, &["NSLIST"]).await?;
            if names.iter().any(|n| n == id) {
                let text: String = query(&inst, &mut c, &["NSINFO", id]).await?;
                return Ok(Some((inst, parse_nsinfo(&text))));
            }
        }
        Ok(None)
    }

    /// NSINFO of namespace `id`, if it exists.
    pub async fn zdb_get(&self, id: &str) -> Result<Option<NamespaceInfo>, ZdbError> {
        Ok(self.find_namespace(id).await?.map(|(_, i)| i))
    }

    /// Create namespace `id` (or converge an existing one: size grows, password and public are
    /// set) on the server whose pool has the most room.
    pub async fn zdb_create(&self, id: &str, spec: &NamespaceSpec) -> Result<ZdbResult, ZdbError> {
        validate(id, spec)?;
        let _guard = self.lock.lock().await;
        if let Some((inst, info)) = self.find_namespace(id).await? {
            if info.entries == 0 && mode_of(&info) != Some(spec.mode) {
                // A crash between NSNEW and NSSET mode: still empty, so the mode can be set.
                let mut c = connect(&inst).await?;
                query::<()>(&inst, &mut c, &["NSSET", id, "mode", spec.mode.as_str()]).await?;
            }
            self.converge(id, &inst, &info, spec).await?;
            return Ok(self.result_for(id, &inst));
        }
        let inst = self.pick_zdb(id, spec.size).await?;
        let mut c = connect(&inst).await?;
        query::<()>(&inst, &mut c, &["NSNEW", id]).await?;
        // Mode can only be set while the namespace is empty: right after creating it.
        query::<()>(&inst, &mut c, &["NSSET", id, "mode", spec.mode.as_str()]).await?;
        self.converge(id, &inst, &NamespaceInfo::default(), spec)
            .await?;
        tracing::info!(id, pool = %inst.pool, size = spec.size, "zdb namespace created");
        Ok(self.result_for(id, &inst))
    }

    async fn converge(
        &self,
        id: &str,
        inst: &Instance,
        info: &NamespaceInfo,
        spec: &NamespaceSpec,
    ) -> Result<(), ZdbError> {
        let mut c = connect(inst).await?;
        let size = spec.size.max(info.max_size).to_string();
        query::<()>(inst, &mut c, &["NSSET", id, "maxsize", &size]).await?;
        let password = if spec.password.is_empty() {
            "*"
        } else {
            spec.password.as_str()
        };
        query::<()>(inst, &mut c, &["NSSET", id, "password", password]).await?;
        query::<()>(
            inst,
            &mut c,
            &["NSSET", id, "public", if spec.public { "1" } else { "0" }],
        )
        .await?;
        Ok(())
    }

    /// Update namespace `id`: grow its size, change password and public flag. A smaller size
    /// or another mode is refused as [`ZdbError::Unchanged`].
    pub async fn zdb_update(&self, id: &str, spec: &NamespaceSpec) -> Result<ZdbResult, ZdbError> {
        validate(id, spec)?;
        let _guard = self.lock.lock().await;
        let (inst, info) = self
            .find_namespace(id)
            .await?
            .ok_or_else(|| ZdbError::NotFound(id.into()))?;
        let unchanged = |reason: String| ZdbError::Unchanged {
            id: id.into(),
            reason,
        };
        if spec.size < info.max_size {
            return Err(unchanged(format!(
                "cannot shrink from {} to {} bytes",
                info.max_size, spec.size
            )));
        }
        if let Some(now) = mode_of(&info).filter(|m| *m != spec.mode) {
            return Err(unchanged(format!(
                "cannot change mode from {} to {}",
                now.as_str(),
                spec.mode.as_str()
            )));
        }
        let extra = spec.size - info.max_size;
        if extra > 0 {
            let pool = self
                .pools
                .iter()
                .find(|p| p.name == inst.pool)
                .ok_or(ZdbError::NoServer)?;
            self.check_room(pool, extra)
                .await
                .map_err(|source| ZdbError::Alloc {
                    id: id.into(),
                    source,
                })?;
        }
        self.converge(id, &inst, &info, spec).await?;
        Ok(self.result_for(id, &inst))
    }

    /// Lock (pause: read-only) or unlock namespace `id`.
    pub async fn zdb_lock(&self, id: &str, locked: bool) -> Result<(), ZdbError> {
        let (inst, _) = self
            .find_namespace(id)
            .await?
            .ok_or_else(|| ZdbError::NotFound(id.into()))?;
        let mut c = connect(&inst).await?;
        query::<()>(
            &inst,
            &mut c,
            &["NSSET", id, "lock", if locked { "1" } else { "0" }],
        )
        .await
    }

    /// Delete namespace `id` and its data. Absent is success.
    pub async fn zdb_delete(&self, id: &str) -> Result<(), ZdbError> {
        let _guard = self.lock.lock().await;
        if let Some((inst, _)) = self.find_namespace(id).await? {
            let mut c = connect(&inst).await?;
            query::<()>(&inst, &mut c, &["NSDEL", id]).await?;
            tracing::info!(id, pool = %inst.pool, "zdb namespace deleted");
        }
        Ok(())
    }

    async fn pick_zdb(&self, id: &str, size: u64) -> Result<Arc<Instance>, ZdbError> {
        let mut best: Option<(Arc<Instance>, u64, PoolKind)> = None;
        for inst in self.zdb.all() {
            let Some(pool) = self.pools.iter().find(|p| p.name == inst.pool) else {
                continue;
            };
            let free = self.free(pool).await.map_err(|source| ZdbError::Alloc {
                id: id.into(),
                source,
            })?;
            if best.as_ref().is_none_or(|(_, f, _)| free > *f) {
                best = Some((inst, free, pool.kind));
            }
        }
        match best {
            None => Err(ZdbError::NoServer),
            Some((inst, free, _)) if free >= size => Ok(inst),
            Some((_, free, kind)) => Err(ZdbError::Alloc {
                id: id.into(),
                source: AllocError::NoSpace {
                    kind,
                    requested: size,
                    largest_free: free,
                },
            }),
        }
    }
}

/// The mode NSINFO reports (`userkey`/`sequential`, or our `user`/`seq`).
fn mode_of(info: &NamespaceInfo) -> Option<NamespaceMode> {
    match info.mode.as_str() {
        "userkey" | "user" => Some(NamespaceMode::User),
        "sequential" | "seq" => Some(NamespaceMode::Seq),
        _ => None,
    }
}

fn validate(id: &str, spec: &NamespaceSpec) -> Result<(), ZdbError> {
    let invalid = |reason: &str| ZdbError::Invalid {
        id: id.into(),
        reason: reason.into(),
    };
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid("namespace name must be 1-128 of [A-Za-z0-9_-]"));
    }
    if id == "default" {
        return Err(invalid("the default namespace is reserved"));
    }
    if spec.size == 0 {
        return Err(invalid("size must not be zero"));
    }
    if spec.password == "*" {
        return Err(invalid(
            "password '*' is reserved (it clears the password in ZeroDB)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsinfo_parses() {
        let t = "# namespace\nname: 1-2-x\nentries: 3\npublic: no\nworm: no\nlocked: yes\npassword: yes\ndata_limits_bytes: 1048576\nmode: sequential\n";
        let i = parse_nsinfo(t);
        assert_eq!(
            i,
            NamespaceInfo {
                entries: 3,
                max_size: 1 << 20,
                public: false,
                has_password: true,
                mode: "sequential".into(),
                locked: true
            }
        );
    }

    #[test]
    fn workload_validation() {
        let ok = NamespaceSpec {
            size: 1,
            mode: NamespaceMode::User,
            password: "p".into(),
            public: false,
        };
        assert!(validate("1-2-x", &ok).is_ok());
        assert!(validate("default", &ok).is_err());
        assert!(validate("a b", &ok).is_err());
        assert!(
            validate(
                "1-2-x",
                &NamespaceSpec {
                    size: 0,
                    ..ok.clone()
                }
            )
            .is_err()
        );
        assert!(
            validate(
                "1-2-x",
                &NamespaceSpec {
                    password: "*".into(),
                    ..ok
                }
            )
            .is_err()
        );
    }

    #[test]
    fn result_uses_upstream_keys() {
        let r = ZdbResult {
            namespace: "1-2-x".into(),
            ips: vec!["::1".into()],
            port: 9900,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Namespace":"1-2-x","IPs":["::1"],"Port":9900}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn nsinfo_parser_never_panics(s in ".*") {
            let _ = parse_nsinfo(&s);
        }
    }
}
