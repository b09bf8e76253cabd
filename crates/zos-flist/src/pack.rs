//! `pack`: a directory tree → an `.fl` plus blocks in the routed stores (spec §8).
//!
//! Differences from upstream that keep the output compatible: entries are visited in name
//! order (deterministic inode numbers), a chunk is read until it is full or the file ends
//! (never a short middle chunk), a file's block rows are written together, a failed pack
//! deletes the partial `.fl`, and hard links are recorded in the `zos_hardlink` extension
//! table (upstream readers still see an ordinary file with its own block rows).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;

use crate::block::{self, Block, CHUNK_SIZE};
use crate::meta::{self, NewInode, Writer};
use crate::store::Router;

/// Pack settings.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Keep passwords in route URLs (upstream `--no-strip-password`).
    pub keep_password: bool,
    /// Files uploaded at once.
    pub parallel_files: usize,
    /// Chunks of one file in flight at once.
    pub parallel_chunks: usize,
    /// Tags to write (`version`, `description`, `author`, or any).
    pub tags: Vec<(String, String)>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            keep_password: false,
            parallel_files: 8,
            parallel_chunks: 4,
            tags: Vec::new(),
        }
    }
}

/// What a pack did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PackReport {
    /// Directory entries written (root included).
    pub inodes: u64,
    /// Regular files (hard-link names included).
    pub files: u64,
    /// Bytes of file content read and encoded.
    pub bytes: u64,
    /// Block rows written.
    pub blocks: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Why a pack failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The `.fl` could not be written.
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// Reading the source tree failed.
    #[error("{path}: {source}")]
    Io {
        /// The entry.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some files could not be uploaded (every one is listed).
    #[error("{} file(s) failed: {}", .0.len(), .0.join("; "))]
    Files(Vec<String>),
    /// The source is not a directory.
    #[error("{0}: not a directory")]
    NotADir(PathBuf),
}

/// Hard-link groups: target inode → the later names' inodes.
pub(crate) type LinkGroups = HashMap<u64, Vec<u64>>;

/// One file whose content is read from `path` and whose block rows go to `ino`.
pub(crate) struct FileJob {
    pub(crate) path: PathBuf,
    pub(crate) ino: u64,
    pub(crate) size: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn new_inode<'a>(parent: u64, name: &'a str, m: &std::fs::Metadata) -> NewInode<'a> {
    NewInode {
        parent,
        name,
        size: m.size(),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        rdev: m.rdev(),
        ctime: m.ctime(),
        mtime: m.mtime(),
    }
}

/// Walks `src` and writes every inode; returns the upload jobs and the hard-link groups
/// (target ino → the later names' inos).
fn walk(
    src: &Path,
    w: &Writer,
    report: &mut PackReport,
) -> Result<(Vec<FileJob>, LinkGroups), PackError> {
    let root_meta = std::fs::metadata(src).map_err(io(src))?;
    if !root_meta.is_dir() {
        return Err(PackError::NotADir(src.to_path_buf()));
    }
    let root = w.insert_inode(&new_inode(0, "/", &root_meta))?;
    report.inodes += 1;
    let mut jobs = Vec::new();
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    let mut links: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut stack = vec![(src.to_path_buf(), root)];
    while let Some((dir, dir_ino)) = stack.pop() {
        let mut entries = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(&dir))?;
        entries.sort();
        for path in entries {
            let m = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let raw = path
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            let name = String::from_utf8_lossy(&raw).into_owned();
            if name.as_bytes() != raw.as_slice() {
                tracing::warn!(path = %path.display(), "name is not UTF-8; stored lossily (as upstream does)");
            }
            let ino = w.insert_inode(&new_inode(dir_ino, &name, &m))?;
            report.inodes += 1;
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push((path, ino));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                w.insert_extra(ino, target.as_os_str().as_bytes())?;
            } else if ft.is_file() {
                report.files += 1;
                if m.nlink() > 1 {
                    if let Some(&target) = seen.get(&(m.dev(), m.ino())) {
                        w.add_hardlink(ino, target)?;
                        links.entry(target).or_default().push(ino);
                        continue;
                    }
                    seen.insert((m.dev(), m.ino()), ino);
                }
                if m.size() > 0 {
                    jobs.push(FileJob {
                        path,
                        ino,
                        size: m.size(),
                    });
                }
            }
            // Devices, FIFOs and sockets: the inode (mode + rdev) is all there is.
        }
    }
    Ok((jobs, links))
}

/// Reads chunk `idx` of `file` in full (or up to `size`): short reads are retried, so every
/// chunk but the last is exactly `CHUNK_SIZE` bytes.
fn read_chunk(
    file: &std::fs::File,
    path: &Path,
    idx: u64,
    size: u64,
) -> Result<Vec<u8>, PackError> {
    let start = idx * CHUNK_SIZE as u64;
    let want = (size - start).min(CHUNK_SIZE as u64) as usize;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], start + got as u64) {
            Ok(0) => {
                return Err(PackError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while packing",
                    ),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(PackError::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Ok(buf)
}

async fn upload_file(
    job: &FileJob,
    router: &Router,
    parallel_chunks: usize,
) -> Result<Vec<Block>, String> {
    let file = Arc::new(
        std::fs::File::open(&job.path).map_err(|e| format!("{}: {e}", job.path.display()))?,
    );
    let chunks = job.size.div_ceil(CHUNK_SIZE as u64);
    let results: Vec<Result<Block, String>> = futures::stream::iter(0..chunks)
        .map(|idx| {
            let file = file.clone();
            let path = job.path.clone();
            let size = job.size;
            async move {
                let (blk, enc) = tokio::task::spawn_blocking(move || {
                    let plain = read_chunk(&file, &path, idx, size).map_err(|e| e.to_string())?;
                    block::encode(&plain).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())??;
                router.set(&blk.id, &enc).await.map_err(|e| e.to_string())?;
                Ok(blk)
            }
        })
        .buffered(parallel_chunks.max(1))
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", job.path.display()))
}

/// Packs `src` into a new `.fl` at `out`, writing blocks through `router`. On failure the
/// partial `.fl` is removed.
pub async fn pack(
    src: &Path,
    out: &Path,
    router: &Router,
    opts: &PackOptions,
) -> Result<PackReport, PackError> {
    let src_dir = src.to_path_buf();
    pack_with(out, router, opts, move |w, report| {
        walk(&src_dir, w, report)
    })
    .await
}

/// Writes a new `.fl` at `out`: `inodes` inserts every inode (on a blocking thread) and
/// returns the files to upload; their blocks then go through `router`. On failure the partial
/// `.fl` is removed.
pub(crate) async fn pack_with<F>(
    out: &Path,
    router: &Router,
    opts: &PackOptions,
    inodes: F,
) -> Result<PackReport, PackError>
where
    F: FnOnce(&Writer, &mut PackReport) -> Result<(Vec<FileJob>, LinkGroups), PackError>
        + Send
        + 'static,
{
    let started = Instant::now();
    let result = pack_inner(out, router, opts, inodes).await;
    match result {
        Ok(mut r) => {
            r.seconds = started.elapsed().as_secs_f64();
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

async fn pack_inner<F>(
    out: &Path,
    router: &Router,
    opts: &PackOptions,
    inodes: F,
) -> Result<PackReport, PackError>
where
    F: FnOnce(&Writer, &mut PackReport) -> Result<(Vec<FileJob>, LinkGroups), PackError>
        + Send
        + 'static,
{
    let (writer, jobs, links, mut report) = {
        let out_path = out.to_path_buf();
        let routes = router.routes(opts.keep_password);
        let tags = opts.tags.clone();
        tokio::task::spawn_blocking(move || -> Result<_, PackError> {
            let w = Writer::create(&out_path)?;
            for r in &routes {
                w.add_route(r)?;
            }
            for (k, v) in &tags {
                w.set_tag(k, v)?;
            }
            let mut report = PackReport::default();
            let (jobs, links) = inodes(&w, &mut report)?;
            Ok((w, jobs, links, report))
        })
        .await
        .map_err(|e| PackError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::other(e),
        })??
    };
    let writer = Mutex::new(writer);
    let mut failed = Vec::new();
    let mut stream = futures::stream::iter(jobs.iter())
        .map(|job| async move { (job, upload_file(job, router, opts.parallel_chunks).await) })
        .buffer_unordered(opts.parallel_files.max(1));
    while let Some((job, res)) = stream.next().await {
        match res {
            Ok(blocks) => {
                let w = writer.lock().unwrap_or_else(|p| p.into_inner());
                // Hard-link names repeat the target's rows so upstream readers see the content.
                for ino in std::iter::once(job.ino)
                    .chain(links.get(&job.ino).into_iter().flatten().copied())
                {
                    w.insert_blocks(ino, &blocks)?;
                    report.blocks += blocks.len() as u64;
                }
                report.bytes += job.size;
            }
            Err(e) => {
                tracing::error!(error = %e, "pack: file failed");
                failed.push(e);
            }
        }
    }
    drop(stream);
    if !failed.is_empty() {
        return Err(PackError::Files(failed));
    }
    writer
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .finish()?;
    Ok(report)
}
