//! Node-side flist resolution: a deployment's flist URL → a verified local `.fl` and its
//! stores, with flists and blocks cached under one directory (a pool's cache subvolume).
//!
//! Layout under the cache root:
//! - `fl/<md5>.fl` — flists by the md5 of their bytes (the name zos gives local copies);
//! - `urls/<md5 of the URL>` — the md5 last resolved for a URL (offline fallback);
//! - `blocks/` — the [`BlockCache`] shared by every mount and unpack.
//!
//! URL forms: `http(s)://…` (a `zos hub` URL `http://hub/flists/<twin>/<name>.fl`, or any web
//! server), `file:///abs/path` and `/abs/path`. The expected hash comes from the caller (a
//! deployment's hash field) or from the URL fragment `#md5=<hex>` / `#sha256=<hex>` (never sent
//! to the server); `md5` is of the `.fl` file (upstream's `<url>.md5`), `sha256` of the file
//! (fl-server's `checksum`). Without one, an HTTP server's `<url>.md5` sidecar, when it has
//! one, is checked instead. A mismatch is [`ResolveError::HashMismatch`].

use std::path::{Path, PathBuf};

use md5::Digest as _;

use crate::{BlockCache, Flist, FlistError};

/// Largest `.fl` downloaded.
pub const MAX_FLIST_BYTES: u64 = 256 * 1024 * 1024;

/// An expected flist hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlistHash {
    /// md5 of the `.fl` bytes (lower-case hex).
    Md5(String),
    /// sha256 of the `.fl` bytes (lower-case hex).
    Sha256(String),
}

impl FlistHash {
    /// Parses `md5:HEX`, `sha256:HEX`, or bare hex (32 digits: md5, 64: sha256).
    pub fn parse(s: &str) -> Result<FlistHash, ResolveError> {
        let s = s.trim();
        let (alg, hex) = match s.split_once([':', '=']) {
            Some((a, h)) => (Some(a.to_ascii_lowercase()), h),
            None => (None, s),
        };
        let bad = || ResolveError::BadHash(s.to_string());
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let hex = hex.to_ascii_lowercase();
        match (alg.as_deref(), hex.len()) {
            (Some("md5") | None, 32) => Ok(FlistHash::Md5(hex)),
            (Some("sha256") | None, 64) => Ok(FlistHash::Sha256(hex)),
            _ => Err(bad()),
        }
    }

    fn matches(&self, d: &Digests) -> bool {
        match self {
            FlistHash::Md5(h) => *h == d.md5,
            FlistHash::Sha256(h) => *h == d.sha256,
        }
    }
}

impl std::fmt::Display for FlistHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlistHash::Md5(h) => write!(f, "md5:{h}"),
            FlistHash::Sha256(h) => write!(f, "sha256:{h}"),
        }
    }
}

/// Why a flist could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The URL form is not supported.
    #[error("flist URL {0:?}: expected http(s)://, file:// or an absolute path")]
    BadUrl(String),
    /// The expected hash is malformed.
    #[error("flist hash {0:?}: expected md5:HEX32, sha256:HEX64 or bare hex")]
    BadHash(String),
    /// The flist's bytes do not hash to what was expected.
    #[error("flist {url}: hash mismatch: expected {expected}, got md5:{md5} sha256:{sha256}")]
    HashMismatch {
        /// The URL.
        url: String,
        /// What the deployment (or the server's `.md5`) says.
        expected: String,
        /// md5 of what was received.
        md5: String,
        /// sha256 of what was received.
        sha256: String,
    },
    /// Download failed (and nothing usable was cached).
    #[error("flist {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// The cause.
        reason: String,
    },
    /// Cache directory I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable flist.
    #[error(transparent)]
    Flist(#[from] FlistError),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> ResolveError + '_ {
    move |source| ResolveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct Digests {
    md5: String,
    sha256: String,
}

fn digests(bytes: &[u8]) -> Digests {
    Digests {
        md5: hex::encode(md5::Md5::digest(bytes)),
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
    }
}

/// A resolved flist.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The local `.fl` (in the cache, or the node-local file itself).
    pub path: PathBuf,
    /// md5 of its bytes.
    pub md5: String,
    /// sha256 of its bytes.
    pub sha256: String,
    /// Whether it was served from the cache without a download.
    pub cached: bool,
    /// The flist opened with its stores.
    pub flist: Flist,
}

/// Flists and blocks cached under one directory.
#[derive(Debug, Clone)]
pub struct FlistCache {
    root: PathBuf,
    http: reqwest::Client,
}

impl FlistCache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> FlistCache {
        FlistCache {
            root: root.into(),
            http: crate::http_client()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(std::time::Duration::from_secs(600))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The block cache every mount/unpack of these flists should use.
    pub fn blocks(&self) -> BlockCache {
        BlockCache::new(self.root.join("blocks"))
    }

    /// Where an flist with this md5 is kept.
    pub fn flist_path(&self, md5: &str) -> PathBuf {
        self.root.join("fl").join(format!("{md5}.fl"))
    }

    fn url_index(&self, url: &str) -> PathBuf {
        self.root
            .join("urls")
            .join(hex::encode(md5::Md5::digest(url.as_bytes())))
    }

    /// Resolves `url` (see the module docs) to a verified local flist. `expected` overrides a
    /// hash in the URL fragment.
    pub async fn resolve(
        &self,
        url: &str,
        expected: Option<&FlistHash>,
    ) -> Result<Resolved, ResolveError> {
        let (base, frag) = match url.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (url, None),
        };
        let from_url = match frag {
            Some(f) if !f.is_empty() => Some(FlistHash::parse(f)?),
            _ => None,
        };
        let expected = expected.cloned().or(from_url);
        if let Some(p) = base
            .strip_prefix("file://")
            .or(base.starts_with('/').then_some(base))
        {
            return self
                .resolve_local(url, Path::new(p), expected.as_ref())
                .await;
        }
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ResolveError::BadUrl(url.to_string()));
        }
        // Content-addressed hit: the expected md5 is already here (no network needed).
        if let Some(FlistHash::Md5(h)) = &expected {
            let p = self.flist_path(h);
            if let Some(r) = self.cached(&p, base, expected.as_ref())? {
                return Ok(r);
            }
        }
        let sidecar = if expected.is_none() {
            self.sidecar_md5(base).await
        } else {
            None
        };
        if let Some(h) = &sidecar {
            let p = self.flist_path(h);
            if let Some(r) = self.cached(&p, base, Some(&FlistHash::Md5(h.clone())))? {
                return Ok(r);
            }
        }
        let check = expected.clone().or(sidecar.map(FlistHash::Md5));
        match self.download(base, check.as_ref()).await {
            Ok(r) => Ok(r),
            Err(e @ ResolveError::Fetch { .. }) if check.is_none() => {
                // Offline, nothing to verify against: the copy this URL last resolved to.
                let idx = self.url_index(base);
                let Ok(md5) = std::fs::read_to_string(&idx) else {
                    return Err(e);
                };
                let p = self.flist_path(md5.trim());
                match self.cached(&p, base, Some(&FlistHash::Md5(md5.trim().to_string())))? {
                    Some(r) => {
                        tracing::warn!(url = %base, error = %e, "flist download failed; using the cached copy");
                        Ok(r)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A cached `.fl` at `p` if present and matching `expected` (a damaged copy is dropped).
    fn cached(
        &self,
        p: &Path,
        url: &str,
        expected: Option<&FlistHash>,
    ) -> Result<Option<Resolved>, ResolveError> {
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(p)(e)),
        };
        let d = digests(&bytes);
        if expected.is_some_and(|h| !h.matches(&d)) {
            tracing::warn!(path = %p.display(), "cached flist does not match its name; dropped");
            let _ = std::fs::remove_file(p);
            return Ok(None);
        }
        tracing::debug!(%url, path = %p.display(), "flist from cache");
        Ok(Some(Resolved {
            path: p.to_path_buf(),
            flist: Flist::open(p)?,
            md5: d.md5,
            sha256: d.sha256,
            cached: true,
        }))
    }

    /// `<url>.md5` when the server has one (zos' `FlistHash`); anything else is ignored.
    async fn sidecar_md5(&self, url: &str) -> Option<String> {
        let resp = self.http.get(format!("{url}.md5")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let text = resp.text().await.ok()?;
        let h = text.split_whitespace().next()?.to_ascii_lowercase();
        (h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
    }

    async fn download(
        &self,
        url: &str,
        expected: Option<&FlistHash>,
    ) -> Result<Resolved, ResolveError> {
        let fail = |reason: String| ResolveError::Fetch {
            url: url.to_string(),
            reason,
        };
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() as u64 + chunk.len() as u64 > MAX_FLIST_BYTES {
                return Err(fail(format!("larger than {MAX_FLIST_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let d = digests(&body);
        if let Some(h) = expected {
            if !h.matches(&d) {
                return Err(ResolveError::HashMismatch {
                    url: url.to_string(),
                    expected: h.to_string(),
                    md5: d.md5,
                    sha256: d.sha256,
                });
            }
        }
        let path = self.flist_path(&d.md5);
        let dir = self.root.join("fl");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let tmp = dir.join(format!(".{}.{}.tmp", d.md5, rand::random::<u32>()));
        std::fs::write(&tmp, &body).map_err(io_at(&tmp))?;
        // Refuse to cache something that is not an flist.
        if let Err(e) = Flist::open(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        let idx = self.url_index(url);
        if let Some(p) = idx.parent() {
            std::fs::create_dir_all(p).map_err(io_at(p))?;
        }
        std::fs::write(&idx, &d.md5).map_err(io_at(&idx))?;
        tracing::info!(%url, md5 = %d.md5, bytes = body.len(), "flist downloaded");
        Ok(Resolved {
            flist: Flist::open(&path)?,
            path,
            md5: d.md5,
            sha256: d.sha256,
            cached: false,
        })
    }

    async fn resolve_local(
        &self,
        url: &str,
        p: &Path,
        expected: Option<&FlistHash>,
    ) -> Result<Resolved, ResolveError> {
        let bytes = tokio::fs::read(p).await.map_err(|e| ResolveError::Fetch {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let d = digests(&bytes);
        if let Some(h) = expected {
            if !h.matches(&d) {
                return Err(ResolveError::HashMismatch {
                    url: url.to_string(),
                    expected: h.to_string(),
                    md5: d.md5,
                    sha256: d.sha256,
                });
            }
        }
        Ok(Resolved {
            flist: Flist::open(p)?,
            path: p.to_path_buf(),
            md5: d.md5,
            sha256: d.sha256,
            cached: true,
        })
    }
}
