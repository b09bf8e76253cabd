//! `unpack`: an `.fl` → a directory tree, content fetched through the block cache (spec §7).
//!
//! Beyond upstream: hard links (zos extension table) are restored as links, file and
//! directory modes and mtimes are applied (directories last, so a read-only directory can
//! still be filled), and symlink targets are kept verbatim (upstream re-roots absolute ones
//! under the target directory, which breaks a root filesystem's links).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use crate::block::CHUNK_SIZE;
use crate::cache::{BlockCache, CacheError};
use crate::meta::{self, Inode, Kind, ROOT_INO, Reader};
use crate::store::Router;

/// Unpack settings.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Apply uid/gid (needs root).
    pub preserve_ownership: bool,
    /// Files fetched at once.
    pub parallel_files: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            preserve_ownership: false,
            parallel_files: 8,
        }
    }
}

/// Why an unpack failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the `.fl` failed.
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// A block could not be fetched or verified.
    #[error("{path}: {source}")]
    Block {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CacheError,
    },
    /// Writing the tree failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry name that would escape the target directory.
    #[error("inode {0}: unsafe entry name {1:?}")]
    BadName(u64, String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mtime(i: &Inode) -> SystemTime {
    if i.mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(i.mtime as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(i.mtime.unsigned_abs())
    }
}

/// Writes one file's content, chunk by chunk (a few chunks fetched ahead).
async fn write_file(
    reader: &Reader,
    cache: &BlockCache,
    router: &Router,
    inode: &Inode,
    path: &Path,
) -> Result<(), UnpackError> {
    use tokio::io::AsyncWriteExt as _;
    let blocks = reader.blocks(inode.ino)?;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(io(path))?;
    let mut remaining = inode.size;
    let mut chunks = futures::stream::iter(blocks.iter())
        .map(|b| async move { cache.read(router, b, 0, CHUNK_SIZE).await })
        .buffered(4);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|source| UnpackError::Block {
            path: path.to_path_buf(),
            source,
        })?;
        let take = (chunk.len() as u64).min(remaining) as usize;
        f.write_all(&chunk[..take]).await.map_err(io(path))?;
        remaining -= take as u64;
        if remaining == 0 {
            break;
        }
    }
    if remaining > 0 {
        return Err(UnpackError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("blocks end {remaining} bytes short"),
            ),
        });
    }
    f.flush().await.map_err(io(path))?;
    Ok(())
}

/// Extracts the flist into `target` (created if missing; existing files are not overwritten).
pub async fn unpack(
    reader: &Reader,
    cache: &BlockCache,
    router: &Router,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<(), UnpackError> {
    std::fs::create_dir_all(target).map_err(io(target))?;
    let root = reader
        .inode(ROOT_INO)?
        .ok_or_else(|| meta::MetaError::NoRoot(reader.path().into()))?;
    let mut dirs: Vec<(PathBuf, Inode)> = vec![(target.to_path_buf(), root)];
    let mut files: Vec<(PathBuf, Inode)> = Vec::new();
    let mut placed: HashMap<u64, PathBuf> = HashMap::new();
    let mut links: Vec<(PathBuf, u64, Inode)> = Vec::new();
    let mut others: Vec<(PathBuf, Inode)> = Vec::new();
    let mut i = 0;
    while i < dirs.len() {
        let dir_ino = dirs[i].1.ino;
        let dir_path = dirs[i].0.clone();
        i += 1;
        let mut offset = 0;
        loop {
            let page = reader.children(dir_ino, offset, 512)?;
            if page.is_empty() {
                break;
            }
            offset += page.len() as u64;
            for child in page {
                let n = &child.name;
                if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                    return Err(UnpackError::BadName(child.ino, n.clone()));
                }
                let path = dir_path.join(n);
                match child.kind() {
                    Kind::Dir => {
                        std::fs::create_dir(&path)
                            .or_else(|e| {
                                if e.kind() == std::io::ErrorKind::AlreadyExists {
                                    Ok(())
                                } else {
                                    Err(e)
                                }
                            })
                            .map_err(io(&path))?;
                        dirs.push((path, child));
                    }
                    Kind::File => match reader.hardlink_target(child.ino)? {
                        Some(t) => links.push((path, t, child)),
                        None => {
                            placed.insert(child.ino, path.clone());
                            files.push((path, child));
                        }
                    },
                    _ => others.push((path, child)),
                }
            }
        }
    }
    let results: Vec<Result<(), UnpackError>> = futures::stream::iter(files.iter())
        .map(|(path, inode)| async move {
            write_file(reader, cache, router, inode, path).await?;
            finish_entry(path, inode, opts, true)
        })
        .buffer_unordered(opts.parallel_files.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    let links = Arc::new(links);
    for (path, target_ino, inode) in links.iter() {
        match placed.get(target_ino) {
            Some(t) => std::fs::hard_link(t, path).map_err(io(path))?,
            None => {
                // The link target is missing (a foreign writer): materialise a copy.
                write_file(reader, cache, router, inode, path).await?;
                finish_entry(path, inode, opts, true)?;
            }
        }
    }
    for (path, inode) in &others {
        match inode.kind() {
            Kind::Symlink => {
                let target = std::ffi::OsStr::from_bytes(inode.data.as_deref().unwrap_or_default());
                std::os::unix::fs::symlink(target, path).map_err(io(path))?;
                if opts.preserve_ownership {
                    std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid))
                        .map_err(io(path))?;
                }
            }
            kind => {
                tracing::warn!(path = %path.display(), ?kind, "unpack: special file not materialised")
            }
        }
    }
    // Directories last and deepest first, so their own mtime and a read-only mode stick.
    for (path, inode) in dirs.iter().rev() {
        finish_entry(path, inode, opts, false)?;
    }
    Ok(())
}

fn finish_entry(
    path: &Path,
    inode: &Inode,
    opts: &UnpackOptions,
    is_file: bool,
) -> Result<(), UnpackError> {
    if opts.preserve_ownership {
        std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid)).map_err(io(path))?;
    }
    // Mode after chown: chown clears setuid/setgid bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(inode.perm()))
        .map_err(io(path))?;
    let f = if is_file {
        std::fs::OpenOptions::new().write(true).open(path)
    } else {
        std::fs::File::open(path)
    };
    match f {
        Ok(f) => f.set_modified(mtime(inode)).map_err(io(path))?,
        // A file without write permission for us (mode 0444 and not root): times are best effort.
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "unpack: mtime not set"),
    }
    Ok(())
}
