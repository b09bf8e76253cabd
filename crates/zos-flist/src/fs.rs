//! Read-only FUSE mount of an flist (spec §7), on the block cache.
//!
//! Metadata calls are answered on the FUSE session thread from SQLite (index lookups). Reads
//! are handed to the tokio runtime so many can wait on stores at once; each read also starts
//! fetching the next [`MountOptions::readahead`] chunks of the file in parallel. A block that
//! fails verification (wrong id, tag or key) fails that read with `EIO` and logs the block id;
//! wrong bytes are never returned. Hard links recorded by zos show as one inode (`nlink` > 1).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::block::{Block, CHUNK_SIZE};
use crate::cache::{BlockCache, read_file_range};
use crate::meta::{Inode, Kind, Reader};
use crate::store::Router;

const EIO: i32 = 5;
const ENOENT: i32 = 2;
const EISDIR: i32 = 21;
const ENOTDIR: i32 = 20;
const EINVAL: i32 = 22;

/// Attributes and entries never change in a read-only image.
const TTL: Duration = Duration::from_secs(3600);

/// Mount settings.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users see the mount (`allow_other`; needs root or `user_allow_other`).
    pub allow_other: bool,
    /// Chunks fetched ahead of a read, in parallel.
    pub readahead: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            readahead: 8,
        }
    }
}

/// The FUSE filesystem.
pub struct FlistFs {
    reader: Arc<Reader>,
    router: Router,
    cache: Arc<BlockCache>,
    rt: tokio::runtime::Handle,
    readahead: usize,
    open_files: HashMap<u64, (Arc<Vec<Block>>, u64)>,
    next_fh: u64,
    total_bytes: u64,
}

fn kind_of(k: Kind) -> FileType {
    match k {
        Kind::File | Kind::Unknown => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Block => FileType::BlockDevice,
        Kind::Char => FileType::CharDevice,
        Kind::Socket => FileType::Socket,
        Kind::Fifo => FileType::NamedPipe,
    }
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl FlistFs {
    /// A filesystem over `reader`, fetching through `router` into `cache`; reads run on `rt`.
    pub fn new(
        reader: Arc<Reader>,
        router: Router,
        cache: Arc<BlockCache>,
        rt: tokio::runtime::Handle,
        opts: &MountOptions,
    ) -> FlistFs {
        let total_bytes = reader.stats().map(|s| s.file_bytes).unwrap_or(0);
        FlistFs {
            reader,
            router,
            cache,
            rt,
            readahead: opts.readahead,
            open_files: HashMap::new(),
            next_fh: 1,
            total_bytes,
        }
    }

    /// The inode FUSE sees for a flist inode: hard-link names map to their target.
    fn canonical(&self, inode: Inode) -> Result<Inode, i32> {
        match self.reader.hardlink_target(inode.ino) {
            Ok(Some(t)) => match self.reader.inode(t) {
                Ok(Some(target)) => Ok(target),
                Ok(None) => Ok(inode), // dangling link record: show the entry as itself
                Err(e) => Err(self.meta_err(e)),
            },
            Ok(None) => Ok(inode),
            Err(e) => Err(self.meta_err(e)),
        }
    }

    fn meta_err(&self, e: crate::meta::MetaError) -> i32 {
        tracing::error!(error = %e, "flist metadata error");
        EIO
    }

    fn attr(&self, i: &Inode) -> Result<FileAttr, i32> {
        let kind = i.kind();
        let nlink = match kind {
            Kind::Dir => {
                2 + self
                    .reader
                    .subdir_count(i.ino)
                    .map_err(|e| self.meta_err(e))?
            }
            Kind::File => self
                .reader
                .link_count(i.ino)
                .map_err(|e| self.meta_err(e))?,
            _ => 1,
        };
        Ok(FileAttr {
            ino: i.ino,
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: time(i.mtime),
            mtime: time(i.mtime),
            ctime: time(i.ctime),
            crtime: time(i.ctime),
            kind: kind_of(kind),
            perm: (i.perm() & 0o7777) as u16,
            nlink: nlink.min(u32::MAX as u64) as u32,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn get(&self, ino: u64) -> Result<Inode, i32> {
        match self.reader.inode(ino) {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(ENOENT),
            Err(e) => Err(self.meta_err(e)),
        }
    }

    /// Starts fetching chunks `from..from+readahead` into the cache (errors are reported by
    /// the read that needs the chunk).
    fn prefetch(&self, blocks: &Arc<Vec<Block>>, from: usize) {
        let end = (from + self.readahead).min(blocks.len());
        for idx in from..end {
            let b = blocks[idx];
            let cache = self.cache.clone();
            let router = self.router.clone();
            self.rt.spawn(async move {
                if let Err(e) = cache.ensure(&router, &b).await {
                    tracing::debug!(block = %b.id, error = %e, "prefetch failed");
                }
            });
        }
    }
}

impl Filesystem for FlistFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(ENOENT);
        };
        let r = match self.reader.lookup(parent, name) {
            Ok(Some(i)) => self.canonical(i).and_then(|i| self.attr(&i)),
            Ok(None) => Err(ENOENT),
            Err(e) => Err(self.meta_err(e)),
        };
        match r {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.get(ino).and_then(|i| self.attr(&i)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.get(ino) {
            Ok(i) if i.kind() == Kind::Symlink => reply.data(i.data.as_deref().unwrap_or_default()),
            Ok(_) => reply.error(EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        // Read-only: refuse any write access mode.
        if flags & 0o3 != 0 {
            return reply.error(30); // EROFS
        }
        let inode = match self.get(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if inode.kind() == Kind::Dir {
            return reply.error(EISDIR);
        }
        let blocks = match self.reader.blocks(ino) {
            Ok(b) => Arc::new(b),
            Err(e) => return reply.error(self.meta_err(e)),
        };
        self.prefetch(&blocks, 0);
        let fh = self.next_fh;
        self.next_fh += 1;
        self.open_files.insert(fh, (blocks, inode.size));
        // FOPEN_KEEP_CACHE: content never changes, keep the kernel page cache across opens.
        reply.opened(fh, 1 << 1);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let (blocks, file_size) = match self.open_files.get(&fh) {
            Some((b, s)) => (b.clone(), *s),
            None => match (self.get(ino), self.reader.blocks(ino)) {
                (Ok(i), Ok(b)) if i.kind() != Kind::Dir => (Arc::new(b), i.size),
                (Ok(_), _) => return reply.error(EISDIR),
                (Err(e), _) => return reply.error(e),
            },
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(EINVAL);
        };
        if offset >= file_size || blocks.is_empty() {
            return reply.data(&[]);
        }
        let next = ((offset + size as u64) / CHUNK_SIZE as u64) as usize + 1;
        self.prefetch(&blocks, next);
        let cache = self.cache.clone();
        let router = self.router.clone();
        self.rt.spawn(async move {
            match read_file_range(&cache, &router, &blocks, file_size, offset, size as usize).await
            {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::error!(ino, offset, error = %e, "flist read failed: EIO");
                    reply.error(EIO);
                }
            }
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open_files.remove(&fh);
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.get(ino) {
            Ok(i) if i.kind() == Kind::Dir => reply.opened(0, 0),
            Ok(_) => reply.error(ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.get(ino) {
            Ok(i) if i.kind() == Kind::Dir => i,
            Ok(_) => return reply.error(ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let mut off = offset.max(0) as u64;
        // Offsets: 1 = ".", 2 = "..", 3.. = children in row order.
        if off == 0 {
            if reply.add(dir.ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            off = 1;
        }
        if off == 1 {
            let parent = if dir.parent == 0 { dir.ino } else { dir.parent };
            if reply.add(parent, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            off = 2;
        }
        loop {
            let page = match self.reader.children(dir.ino, off - 2, 128) {
                Ok(p) => p,
                Err(e) => return reply.error(self.meta_err(e)),
            };
            if page.is_empty() {
                break;
            }
            for child in page {
                off += 1;
                let kind = kind_of(child.kind());
                let ino = match self.reader.hardlink_target(child.ino) {
                    Ok(Some(t)) => t,
                    _ => child.ino,
                };
                if reply.add(ino, off as i64, kind, &child.name) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = self.total_bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

/// A live mount; dropping it unmounts.
pub struct MountHandle {
    session: fuser::BackgroundSession,
}

impl MountHandle {
    /// Unmounts now (same as dropping).
    pub fn unmount(self) {
        self.session.join();
    }
}

/// Mounts `fs` read-only at `target`, served by a background thread.
pub fn mount(fs: FlistFs, target: &Path, opts: &MountOptions) -> std::io::Result<MountHandle> {
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName("zos-flist".into()),
        MountOption::Subtype("flist".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.allow_other {
        options.push(MountOption::AllowOther);
    }
    let session = fuser::spawn_mount2(fs, target, &options)?;
    Ok(MountHandle { session })
}
