//! The on-disk block cache shared by every mount, unpack and warm-up on a machine:
//! `<dir>/<hex[0..2]>/<hex[2..4]>/<hex(id)>` holds a block's decrypted, decompressed plaintext
//! (upstream's layout, so one directory can serve rfs and zos alike).
//!
//! Unlike upstream, nothing unverified is ever served: a fetched block must hash to its id and
//! decrypt/decompress to plaintext that hashes to its key before it is written (via a
//! temporary file and a rename, so other processes never see a partial chunk); a chunk already
//! on disk is re-hashed the first time this process uses it, and a corrupt one is fetched
//! again. Concurrent requests for the same block in this process share one download.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::block::{self, Block, BlockError, BlockId, CHUNK_SIZE};
use crate::store::{Router, StoreError};

/// Why a block could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No store delivered it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store delivered bytes that are not the block (corrupt or forged).
    #[error("bad block: {0}")]
    Bad(#[from] BlockError),
    /// The cache directory failed.
    #[error("cache {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A block cache directory.
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    inflight: Mutex<HashMap<BlockId, Arc<tokio::sync::Mutex<()>>>>,
    verified: Mutex<HashSet<BlockId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlockCache {
    /// A cache in `dir` (created as needed).
    pub fn new(dir: impl Into<PathBuf>) -> BlockCache {
        BlockCache {
            dir: dir.into(),
            inflight: Mutex::default(),
            verified: Mutex::default(),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the plaintext of `id` is kept.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        let hex = id.hex();
        self.dir.join(&hex[..2]).join(&hex[2..4]).join(hex)
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Makes sure the verified plaintext of `block` is in the cache; returns its path.
    pub async fn ensure(&self, router: &Router, block: &Block) -> Result<PathBuf, CacheError> {
        let path = self.path_of(&block.id);
        if lock(&self.verified).contains(&block.id) {
            return Ok(path);
        }
        let gate = lock(&self.inflight).entry(block.id).or_default().clone();
        let _held = gate.lock().await;
        let result = self.ensure_locked(router, block, &path).await;
        lock(&self.inflight).remove(&block.id);
        result.map(|()| path)
    }

    async fn ensure_locked(
        &self,
        router: &Router,
        block: &Block,
        path: &Path,
    ) -> Result<(), CacheError> {
        if lock(&self.verified).contains(&block.id) {
            return Ok(()); // another task finished it while we waited
        }
        // A chunk left by an earlier run (or another process): trust it only once it hashes
        // to the key.
        let (p, key) = (path.to_path_buf(), block.key);
        // Read and hash in one blocking hop.
        let verdict = tokio::task::spawn_blocking(move || match std::fs::read(&p) {
            Ok(existing) if !existing.is_empty() => Some(block::blake2b_256(&existing) == key.0),
            _ => None,
        })
        .await
        .unwrap_or(None);
        match verdict {
            Some(true) => {
                lock(&self.verified).insert(block.id);
                return Ok(());
            }
            Some(false) => {
                tracing::warn!(block = %block.id, path = %path.display(), "cached chunk is corrupt; fetching it again");
                let _ = tokio::fs::remove_file(path).await;
            }
            None => {}
        }
        let stored = router.get(&block.id).await?;
        let b = *block;
        let plain = tokio::task::spawn_blocking(move || block::decode(&b, &stored))
            .await
            .map_err(|e| CacheError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })??;
        let dir = path.parent().unwrap_or(&self.dir);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Self::io(dir))?;
        let tmp = dir.join(format!(".{}.{}.tmp", block.id.hex(), rand::random::<u64>()));
        tokio::fs::write(&tmp, &plain)
            .await
            .map_err(Self::io(&tmp))?;
        if let Err(e) = tokio::fs::rename(&tmp, path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Self::io(path)(e));
        }
        lock(&self.verified).insert(block.id);
        Ok(())
    }

    /// Up to `len` bytes of the block's plaintext from `offset` (fewer at its end).
    pub async fn read(
        &self,
        router: &Router,
        block: &Block,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>, CacheError> {
        let len = len.min(CHUNK_SIZE.saturating_sub(offset));
        if !lock(&self.verified).contains(&block.id) {
            // First use in this process of a chunk already on disk: read it once, check it and
            // serve the range from those bytes (one blocking hop instead of three). Anything
            // else (absent, corrupt) goes through `ensure`, which fetches under the per-block gate.
            let (p, key) = (self.path_of(&block.id), block.key);
            let hit = tokio::task::spawn_blocking(move || match std::fs::read(&p) {
                Ok(b) if !b.is_empty() && block::blake2b_256(&b) == key.0 => {
                    let start = offset.min(b.len());
                    let end = (start + len).min(b.len());
                    Some(b[start..end].to_vec())
                }
                _ => None,
            })
            .await
            .unwrap_or(None);
            if let Some(range) = hit {
                lock(&self.verified).insert(block.id);
                return Ok(range);
            }
        }
        let path = self.ensure(router, block).await?;
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, CacheError> {
            let f = std::fs::File::open(&path).map_err(Self::io(&path))?;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match f.read_at(&mut buf[got..], (offset + got) as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Self::io(&path)(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        })
        .await
        .map_err(|e| CacheError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }

    /// Forgets that blocks were verified (tests and `zos flist cache --verify` use it to make
    /// the next read re-check the disk).
    pub fn forget_verified(&self) {
        lock(&self.verified).clear();
    }
}

/// Reads `len` bytes at `offset` of a file made of `blocks` and `size` bytes: spans chunks,
/// stops at end of file. Every byte returned came from a verified block.
pub async fn read_file_range(
    cache: &BlockCache,
    router: &Router,
    blocks: &[Block],
    size: u64,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, CacheError> {
    let end = size.min(offset.saturating_add(len as u64));
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut pos = offset;
    while pos < end {
        let idx = (pos / CHUNK_SIZE as u64) as usize;
        let Some(block) = blocks.get(idx) else { break };
        let within = (pos % CHUNK_SIZE as u64) as usize;
        let want = ((end - pos) as usize).min(CHUNK_SIZE - within);
        let part = cache.read(router, block, within, want).await?;
        if part.is_empty() {
            break;
        }
        pos += part.len() as u64;
        out.extend_from_slice(&part);
        if part.len() < want {
            break; // short chunk: the file ends here
        }
    }
    Ok(out)
}
