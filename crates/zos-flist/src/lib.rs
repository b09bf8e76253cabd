//! Flists: content-addressed, read-only filesystem images compatible with upstream rfs `.fl`.
//!
//! An flist is a small SQLite file ([`meta`]) naming 512 KiB content blocks ([`block`]) that
//! live in stores selected by id prefix ([`store`]). A node (or the `zos flist` CLI) uses the
//! crate as: [`fetch`] an `.fl` by URL → [`meta::Reader::open`] → [`Flist::router`] →
//! [`verify`] (every block reachable) → [`warm`] (fill the [`cache::BlockCache`]) →
//! [`fs::mount`] (read-only FUSE) or [`unpack::unpack`].

pub mod block;
pub mod cache;
pub mod fs;
pub mod hub;
pub mod image;
pub mod pack;
pub mod resolve;
pub mod store;
pub mod unpack;

pub mod meta;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;

pub use block::{Block, BlockId, CHUNK_SIZE};
pub use cache::BlockCache;
pub use meta::Reader;
pub use store::Router;

/// An opened flist and the stores its blocks come from.
#[derive(Debug, Clone)]
pub struct Flist {
    /// Its metadata.
    pub reader: Arc<Reader>,
    /// Its stores (the file's route table unless overridden).
    pub router: Router,
}

/// Errors of the high-level operations.
#[derive(Debug, thiserror::Error)]
pub enum FlistError {
    /// Metadata.
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// Stores.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Blocks.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// Download of the `.fl` itself.
    #[error("fetch {url}: {reason}")]
    Fetch {
        /// URL.
        url: String,
        /// Cause.
        reason: String,
    },
}

impl Flist {
    /// Opens `path` with the stores of its route table.
    pub fn open(path: &Path) -> Result<Flist, FlistError> {
        let reader = Reader::open(path)?;
        let router = Router::from_routes(&reader.routes()?)?;
        Ok(Flist {
            reader: Arc::new(reader),
            router,
        })
    }

    /// Opens `path` but reads blocks from `router` instead of its route table (a local mirror,
    /// or routes whose passwords were stripped at pack time).
    pub fn open_with(path: &Path, router: Router) -> Result<Flist, FlistError> {
        Ok(Flist {
            reader: Arc::new(Reader::open(path)?),
            router,
        })
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Distinct blocks checked.
    pub blocks: u64,
    /// Blocks no store has (hex ids).
    pub missing: Vec<String>,
    /// Blocks that failed to decode (only with `deep`), with the reason.
    pub bad: Vec<String>,
}

/// Checks every block of the flist: present in some store, and with `deep` also fetched and
/// fully decoded (id, tag, key). `parallel` requests at once.
pub async fn verify(
    flist: &Flist,
    deep: bool,
    parallel: usize,
) -> Result<VerifyReport, FlistError> {
    let blocks = flist.reader.all_blocks()?;
    let router = &flist.router;
    let results: Vec<(Block, Result<(), String>)> = futures::stream::iter(blocks.iter().copied())
        .map(|b| async move {
            let r = if deep {
                match router.get(&b.id).await {
                    Ok(enc) => block::decode(&b, &enc)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("missing: {e}")),
                }
            } else {
                match router.exists(&b.id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("missing".to_string()),
                    Err(e) => Err(format!("missing: {e}")),
                }
            };
            (b, r)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut report = VerifyReport {
        blocks: blocks.len() as u64,
        ..Default::default()
    };
    for (b, r) in results {
        if let Err(e) = r {
            if e.starts_with("missing") {
                report.missing.push(b.id.hex());
            } else {
                report.bad.push(format!("{}: {e}", b.id));
            }
        }
    }
    Ok(report)
}

/// Fills `cache` with every block of the flist (`parallel` downloads at once); returns how
/// many blocks are now cached.
pub async fn warm(flist: &Flist, cache: &BlockCache, parallel: usize) -> Result<u64, FlistError> {
    let blocks = flist.reader.all_blocks()?;
    let results: Vec<Result<PathBuf, cache::CacheError>> = futures::stream::iter(blocks.iter())
        .map(|b| cache.ensure(&flist.router, b))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut n = 0;
    for r in results {
        r?;
        n += 1;
    }
    Ok(n)
}

/// Downloads an `.fl` from `url` into `dir`, named by the md5 of its bytes (as zos names local
/// flist copies); returns the path. The file is written via a temporary name and a rename.
pub async fn fetch(url: &str, dir: &Path) -> Result<PathBuf, FlistError> {
    use md5::Digest as _;
    let err = |reason: String| FlistError::Fetch {
        url: url.to_string(),
        reason,
    };
    let resp = reqwest::get(url).await.map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
    let name = hex::encode(md5::Md5::digest(&body));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| err(e.to_string()))?;
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, &body)
        .await
        .map_err(|e| err(e.to_string()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| err(e.to_string()))?;
    // Refuse to hand out something that is not an flist.
    Reader::open(&path)?;
    Ok(path)
}
