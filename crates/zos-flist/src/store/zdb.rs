//! `zdb://[user[:pass]@]host[:port][/namespace]` or `zdb:///path/unix.sock`: blocks in a
//! ZeroDB namespace (ours or upstream's), keyed by the raw 32-byte id. Each new connection
//! runs `SELECT <ns> [password]` unless the namespace is absent or `default` (as upstream).

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo};
use tokio::sync::Mutex;

use super::StoreError;
use crate::block::BlockId;

/// ZeroDB default port (upstream default too).
pub const DEFAULT_PORT: u16 = 9900;

/// A ZeroDB namespace holding blocks.
pub struct ZdbStore {
    url: String,
    addr: ConnectionAddr,
    namespace: Option<String>,
    password: Option<String>,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for ZdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbStore")
            .field("url", &super::strip_password(&self.url))
            .finish()
    }
}

impl ZdbStore {
    /// Parses the URL; connects lazily on first use.
    pub fn from_url(url: &str) -> Result<ZdbStore, StoreError> {
        let bad = |why: &str| StoreError::BadSpec(super::strip_password(url), why.into());
        let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if u.scheme() != "zdb" {
            return Err(bad("expected zdb://"));
        }
        let password = u.password().map(|p| p.to_string());
        let (addr, namespace) = match u.host_str() {
            Some(host) if !host.is_empty() => {
                let ns = u
                    .path_segments()
                    .and_then(|mut s| s.next_back())
                    .filter(|s| !s.is_empty())
                    .map(String::from);
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                (
                    ConnectionAddr::Tcp(host, u.port().unwrap_or(DEFAULT_PORT)),
                    ns,
                )
            }
            _ => {
                if u.path().is_empty() || u.path() == "/" {
                    return Err(bad("no host or socket path"));
                }
                (ConnectionAddr::Unix(u.path().into()), None)
            }
        };
        Ok(ZdbStore {
            url: url.to_string(),
            addr,
            namespace,
            password,
            conn: Mutex::new(None),
        })
    }

    /// The namespace this store selects (None = default).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            url: super::strip_password(&self.url),
            reason: e.to_string(),
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let info = ConnectionInfo {
            addr: self.addr.clone(),
            redis: RedisConnectionInfo::default(),
        };
        let client = redis::Client::open(info).map_err(|e| self.err(e))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.err(e))?;
        if let Some(ns) = self.namespace.as_deref().filter(|n| *n != "default") {
            let mut select = redis::cmd("SELECT");
            select.arg(ns);
            if let Some(p) = &self.password {
                select.arg(p);
            }
            let _: redis::Value = select
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(format!("SELECT {ns}: {e}")))?;
        }
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a command; on a connection-level failure reconnects once (the SELECT is per
    /// connection and must be replayed).
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        for attempt in 0..2 {
            let mut conn = self.connect().await?;
            match cmd.query_async::<T>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *self.conn.lock().await = None;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(self.err("connection lost"))
    }
}

impl ZdbStore {
    /// `GET` of an arbitrary key: legacy `.flist` blocks are stored under 16-byte hashes.
    pub async fn get_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GET").arg(key)).await
    }
}

#[async_trait::async_trait]
impl super::Store for ZdbStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let v: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(&id.0[..])).await?;
        match v {
            None => Err(StoreError::NotFound(*id)),
            Some(b) if b.is_empty() => Err(StoreError::InvalidBlob {
                url: super::strip_password(&self.url),
                id: *id,
                reason: "empty".into(),
            }),
            Some(b) => Ok(b),
        }
    }

    async fn set(&self, id: &BlockId, blob: &[u8]) -> Result<(), StoreError> {
        if self.exists(id).await? {
            return Ok(());
        }
        let _: redis::Value = self.run(redis::cmd("SET").arg(&id.0[..]).arg(blob)).await?;
        Ok(())
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        let n: i64 = self.run(redis::cmd("EXISTS").arg(&id.0[..])).await?;
        Ok(n > 0)
    }

    fn url(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = ZdbStore::from_url("zdb://hub.grid.tf:9900/myns").expect("ok");
        assert_eq!(s.namespace(), Some("myns"));
        assert!(matches!(&s.addr, ConnectionAddr::Tcp(h, 9900) if h == "hub.grid.tf"));
        let s = ZdbStore::from_url("zdb://u:pw@[::1]/ns").expect("ok");
        assert!(matches!(&s.addr, ConnectionAddr::Tcp(h, 9900) if h == "::1"));
        assert_eq!(s.password.as_deref(), Some("pw"));
        let s = ZdbStore::from_url("zdb:///run/zdb.sock").expect("ok");
        assert!(matches!(&s.addr, ConnectionAddr::Unix(p) if p.to_str() == Some("/run/zdb.sock")));
        assert!(ZdbStore::from_url("zdb://").is_err());
        assert!(ZdbStore::from_url("redis://h").is_err());
    }
}
