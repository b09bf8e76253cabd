//! Block stores and the router (spec §5–§6). A store maps a [`BlockId`] to the encrypted bytes;
//! the [`Router`] picks stores by the id's first byte: writes go to every matching store
//! (replication), reads try the matching stores in random order (first success wins).

mod dir;
mod http;
mod zdb;

use std::sync::Arc;

use rand::seq::SliceRandom as _;

pub use dir::DirStore;
pub use http::HttpStore;
pub use zdb::ZdbStore;

use crate::block::BlockId;
use crate::meta::Route;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store does not have the block.
    #[error("block {0} not found")]
    NotFound(BlockId),
    /// The store answered with something that is not a block (e.g. an empty reply).
    #[error("{url}: invalid blob for {id}: {reason}")]
    InvalidBlob {
        /// Store URL.
        url: String,
        /// Block.
        id: BlockId,
        /// What was wrong.
        reason: String,
    },
    /// I/O or protocol failure talking to the store.
    #[error("{url}: {reason}")]
    Backend {
        /// Store URL (password stripped).
        url: String,
        /// The cause.
        reason: String,
    },
    /// The store is read-only (http).
    #[error("{0}: store is read-only")]
    ReadOnly(String),
    /// A bad store URL or spec.
    #[error("bad store spec {0:?}: {1}")]
    BadSpec(String, String),
    /// No route covers the id's first byte.
    #[error("no store routes block {0} (prefix {p:02x})", p = .0.0[0])]
    NotRoutable(BlockId),
    /// Every matching store failed.
    #[error("block {id}: every store failed: {}", .errors.join("; "))]
    AllFailed {
        /// Block.
        id: BlockId,
        /// One message per store.
        errors: Vec<String>,
    },
}

impl StoreError {
    /// True when the block is simply absent (as opposed to an unreachable store).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
}

/// A place blocks live.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The encrypted bytes of `id`.
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError>;
    /// Stores `blob` under `id` (idempotent: content-addressed).
    async fn set(&self, id: &BlockId, blob: &[u8]) -> Result<(), StoreError>;
    /// Whether `id` is present.
    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        match self.get(id).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// The canonical URL, as written into `route` rows (including any password; the packer
    /// strips it).
    fn url(&self) -> String;
}

/// Opens a store from its URL: `dir:///path`, `zdb://[user[:pass]@]host[:port][/ns]`,
/// `zdb:///unix.sock`, `http(s)://host[:port]/base`.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "dir" => Ok(Arc::new(DirStore::from_url(url)?)),
        "zdb" => Ok(Arc::new(ZdbStore::from_url(url)?)),
        "http" | "https" => Ok(Arc::new(HttpStore::from_url(url)?)),
        "s3" | "s3s" | "server" => Err(StoreError::BadSpec(
            url.into(),
            format!("`{scheme}` stores are not supported by zos yet"),
        )),
        _ => Err(StoreError::BadSpec(
            url.into(),
            "unknown scheme (dir, zdb, http, https)".into(),
        )),
    }
}

/// Parses a CLI store spec `[xx-xx=]<url>` (lower-case hex range, inclusive; default `00-ff`).
pub fn parse_spec(spec: &str) -> Result<(u8, u8, String), StoreError> {
    let bad = |why: &str| StoreError::BadSpec(spec.into(), why.into());
    if let Some((range, url)) = spec.split_once('=') {
        let b = range.as_bytes();
        let is_hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
        if b.len() == 5 && b[2] == b'-' && b[..2].iter().all(is_hex) && b[3..].iter().all(is_hex) {
            let start = u8::from_str_radix(&range[..2], 16).map_err(|_| bad("range"))?;
            let end = u8::from_str_radix(&range[3..], 16).map_err(|_| bad("range"))?;
            if start > end {
                return Err(bad("range start is after its end"));
            }
            return Ok((start, end, url.to_string()));
        }
    }
    // Upstream's regex only matches the range form; anything else is a whole URL.
    Ok((0x00, 0xff, spec.to_string()))
}

/// Removes a password from a URL (username kept), as upstream pack does by default.
pub fn strip_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// One routed store.
#[derive(Clone)]
pub struct RouteEntry {
    /// First id byte, inclusive.
    pub start: u8,
    /// Last id byte, inclusive.
    pub end: u8,
    /// The store.
    pub store: Arc<dyn Store>,
}

/// Stores selected by the first byte of the block id.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<RouteEntry>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{:02x}-{:02x}={}",
                    r.start,
                    r.end,
                    strip_password(&r.store.url())
                )
            })
            .collect();
        f.debug_list().entries(v).finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn Store>) {
        self.routes.push(RouteEntry { start, end, store });
    }

    /// From CLI specs (`[xx-xx=]url`), in order.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Router, StoreError> {
        let mut r = Router::new();
        for s in specs {
            let (start, end, url) = parse_spec(s.as_ref())?;
            r.add(start, end, open(&url)?);
        }
        Ok(r)
    }

    /// From an flist's route table. Stores that cannot be opened (unsupported scheme) are
    /// skipped with a warning as long as one route remains.
    pub fn from_routes(routes: &[Route]) -> Result<Router, StoreError> {
        let mut r = Router::new();
        let mut errors = Vec::new();
        for route in routes {
            match open(&route.url) {
                Ok(s) => r.add(route.start, route.end, s),
                Err(e) => {
                    tracing::warn!(url = %strip_password(&route.url), error = %e, "skipping flist route");
                    errors.push(e);
                }
            }
        }
        if r.routes.is_empty() {
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
            return Err(StoreError::BadSpec(
                String::new(),
                "the flist has no routes".into(),
            ));
        }
        Ok(r)
    }

    /// The route rows to write into an flist (passwords stripped unless `keep_password`).
    pub fn routes(&self, keep_password: bool) -> Vec<Route> {
        self.routes
            .iter()
            .map(|r| {
                let url = r.store.url();
                Route {
                    start: r.start,
                    end: r.end,
                    url: if keep_password {
                        url
                    } else {
                        strip_password(&url)
                    },
                }
            })
            .collect()
    }

    fn matching(&self, id: &BlockId) -> Vec<&RouteEntry> {
        self.routes
            .iter()
            .filter(|r| r.start <= id.0[0] && id.0[0] <= r.end)
            .collect()
    }

    /// Writes to every matching store, in order; the first error aborts.
    pub async fn set(&self, id: &BlockId, blob: &[u8]) -> Result<(), StoreError> {
        let stores = self.matching(id);
        if stores.is_empty() {
            return Err(StoreError::NotRoutable(*id));
        }
        for r in stores {
            r.store.set(id, blob).await?;
        }
        Ok(())
    }

    /// Reads from the matching stores in random order; first success wins.
    pub async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let mut stores = self.matching(id);
        if stores.is_empty() {
            return Err(StoreError::NotRoutable(*id));
        }
        stores.shuffle(&mut rand::thread_rng());
        let mut errors = Vec::new();
        for r in stores {
            match r.store.get(id).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    tracing::debug!(block = %id, store = %strip_password(&r.store.url()), error = %e, "store read failed");
                    errors.push(e.to_string())
                }
            }
        }
        Err(StoreError::AllFailed { id: *id, errors })
    }

    /// Whether some matching store has the block.
    pub async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        let stores = self.matching(id);
        if stores.is_empty() {
            return Err(StoreError::NotRoutable(*id));
        }
        let mut last = None;
        for r in stores {
            match r.store.exists(id).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("00-80=dir:///a").expect("ok"),
            (0, 0x80, "dir:///a".into())
        );
        assert_eq!(
            parse_spec("dir:///a").expect("ok"),
            (0, 0xff, "dir:///a".into())
        );
        // Upper-case hex is not a range for upstream's regex: the whole string is the URL.
        assert_eq!(
            parse_spec("0A-FF=dir:///a").expect("ok").2,
            "0A-FF=dir:///a"
        );
        assert!(parse_spec("90-10=dir:///a").is_err());
        assert_eq!(
            strip_password("zdb://user:secret@host:9900/ns"),
            "zdb://user@host:9900/ns"
        );
        assert_eq!(strip_password("dir:///tmp/x"), "dir:///tmp/x");
    }

    #[tokio::test]
    async fn routing_shards_and_replicates() {
        let d = tempfile::tempdir().expect("tmp");
        let a = d.path().join("a");
        let b = d.path().join("b");
        let c = d.path().join("c");
        let specs = [
            format!("00-80=dir://{}", a.display()),
            format!("81-ff=dir://{}", b.display()),
            format!("81-ff=dir://{}", c.display()),
        ];
        let r = Router::from_specs(&specs).expect("router");
        // V1's id starts with 0xd1: it must land in b and c, not a.
        let (blk, enc) = crate::block::encode(b"hello world\n").expect("enc");
        r.set(&blk.id, &enc).await.expect("set");
        let hex = blk.id.hex();
        assert!(b.join(&hex[..2]).join(&hex).exists());
        assert!(c.join(&hex[..2]).join(&hex).exists());
        assert!(!a.join(&hex[..2]).join(&hex).exists());
        // Either replica serves it; with one gone the other still does.
        std::fs::remove_file(b.join(&hex[..2]).join(&hex)).expect("rm");
        for _ in 0..8 {
            assert_eq!(r.get(&blk.id).await.expect("get"), enc);
        }
        std::fs::remove_file(c.join(&hex[..2]).join(&hex)).expect("rm");
        assert!(matches!(
            r.get(&blk.id).await,
            Err(StoreError::AllFailed { .. })
        ));
        let empty = Router::new();
        assert!(matches!(
            empty.get(&blk.id).await,
            Err(StoreError::NotRoutable(_))
        ));
    }
}
