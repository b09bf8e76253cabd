//! One namespace's files: append-only data files `dN` and index files `iN` (same N), with
//! rotation, buffered appends, positioned reads and crash recovery. No sockets, no keys map:
//! the caller keeps the in-memory index and is told about every entry through [`Replay`].
//!
//! Appends go to an in-memory buffer that [`Store::flush`] writes in one `write` per file;
//! the server flushes before it sends any reply, so nothing is acknowledged before the
//! kernel has it (and, with `--sync`, before the disk has it: see `engine::Syncer`).

mod files;
mod recover;

pub use files::sync_dir;
pub(crate) use files::{create_pair, list_ids, open_rw, path_of, reset_file, write_pending};

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{
    DATA_HDR_LEN, DATA_MAGIC, DataHeader, FILE_HEADER_LEN, FLAG_ENCRYPTED, INDEX_HDR_LEN,
    INDEX_MAGIC, IndexEntry, Loc, data_entry_valid, decode_data_header, encode_data,
};

/// Ciphertext overhead of an encrypted payload: nonce (12) + tag (16).
pub const SEAL_OVERHEAD: u32 = 28;
/// Buffered bytes above which an append flushes by itself.
const FLUSH_THRESHOLD: usize = 4 << 20;
/// Buffered index bytes written in one go (see [`Store::flush`]).
pub const INDEX_LAZY: usize = 64 << 10;
/// Most old files kept open for reads.
const MAX_READERS: usize = 64;

/// Storage failures, with the file and offset involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file's content cannot be used and cannot be repaired automatically.
    #[error("corrupt {path} at offset {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Why.
        what: &'static str,
    },
    /// A position does not hold a valid entry (stale cursor, or data damaged on disk).
    #[error("no valid entry at file {file} offset {off}")]
    BadLoc {
        /// File id.
        file: u32,
        /// Offset.
        off: u32,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Receives every entry while a namespace is loaded.
pub trait Replay {
    /// The current version of `key` (history parent of an entry rebuilt from the data file).
    fn parent_of(&self, key: &[u8]) -> Loc;
    /// One valid entry, in write order.
    fn apply(&mut self, loc: Loc, entry: &IndexEntry);
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FileInfo {
    pub(crate) data_len: u64,
    pub(crate) idx_len: u64,
    pub(crate) last_idx: u32,
}

/// Called after a rotation with (closed index, new index, closed data, new data) paths
/// (`jump-index`/`jump-data` hooks).
pub type JumpHook = Arc<dyn Fn(&Path, &Path, &Path, &Path) + Send + Sync>;

/// Where an append landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// The index entry (also the cursor / history position).
    pub idx: Loc,
    /// Offset of the data entry in data file `idx.file`.
    pub data_off: u32,
}

/// The files of one namespace.
pub struct Store {
    data_dir: PathBuf,
    index_dir: PathBuf,
    datasize: u64,
    mode: u8,
    files: Vec<FileInfo>,
    cur_data: Arc<File>,
    cur_index: Arc<File>,
    data_pending: Vec<u8>,
    idx_pending: Vec<u8>,
    data_flushed: u64,
    idx_flushed: u64,
    readers: HashMap<(bool, u32), Arc<File>>,
    written: Vec<Arc<File>>,
    /// Index file ids appended to since the last `INDEX DIRTY RESET`.
    pub dirty_index: BTreeSet<u32>,
    /// Told about every rotation.
    pub on_jump: Option<JumpHook>,
}

pub(crate) fn stored_len(e: &IndexEntry) -> u64 {
    u64::from(e.length)
        + if e.flags & FLAG_ENCRYPTED != 0 {
            u64::from(SEAL_OVERHEAD)
        } else {
            0
        }
}

impl Store {
    /// Opens (creating if needed) the files in `data_dir`/`index_dir`, repairs a torn tail and
    /// replays every valid entry into `replay`. A damaged index is rebuilt from the data
    /// files (logged with the reason), or refused with `strict`.
    pub fn open(
        data_dir: &Path,
        index_dir: &Path,
        datasize: u64,
        mode: u8,
        strict: bool,
        replay: &mut dyn Replay,
    ) -> Result<Store, StoreError> {
        fs::create_dir_all(data_dir).map_err(io_err("mkdir", data_dir))?;
        fs::create_dir_all(index_dir).map_err(io_err("mkdir", index_dir))?;
        let mut ids = list_ids(data_dir, 'd')?;
        ids.extend(list_ids(index_dir, 'i')?);
        let max = ids.iter().copied().max().unwrap_or(0);
        let mut files = Vec::with_capacity(max as usize + 1);
        let mut last = None;
        for id in 0..=max {
            let (info, d, i) =
                recover::recover_file(data_dir, index_dir, id, mode, strict, replay)?;
            files.push(info);
            last = Some((d, i));
        }
        let (cur_data, cur_index) = last.ok_or(StoreError::BadLoc { file: 0, off: 0 })?;
        let info = files[max as usize];
        sync_dir(data_dir)?;
        sync_dir(index_dir)?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            index_dir: index_dir.to_path_buf(),
            datasize: datasize.clamp(1 << 16, u64::from(u32::MAX)),
            mode,
            files,
            cur_data: Arc::new(cur_data),
            cur_index: Arc::new(cur_index),
            data_pending: Vec::new(),
            idx_pending: Vec::new(),
            data_flushed: info.data_len,
            idx_flushed: info.idx_len,
            readers: HashMap::new(),
            written: Vec::new(),
            dirty_index: BTreeSet::new(),
            on_jump: None,
        })
    }

    fn cur_id(&self) -> u32 {
        (self.files.len() - 1) as u32
    }

    /// Id of the file currently appended to.
    pub fn current_file(&self) -> u32 {
        self.cur_id()
    }

    /// Bytes used on disk by data and index files (including unflushed appends).
    pub fn disk_sizes(&self) -> (u64, u64) {
        self.files
            .iter()
            .fold((0, 0), |(d, i), f| (d + f.data_len, i + f.idx_len))
    }

    /// Current data file id and append offset.
    pub fn data_position(&self) -> (u32, u64) {
        (self.cur_id(), self.files[self.cur_id() as usize].data_len)
    }

    /// Where the next append of an entry of `entry_len` bytes goes, (data file id, offset),
    /// rotating first if it must: an at-rest seal binds the record to that place before it is
    /// written ([`Store::append`] then puts it there).
    pub fn reserve(&mut self, entry_len: u64) -> Result<(u32, u32), StoreError> {
        let cur = self.files[self.cur_id() as usize];
        if cur.data_len + entry_len > self.datasize && cur.data_len > FILE_HEADER_LEN as u64 {
            self.jump()?;
        }
        let id = self.cur_id();
        Ok((id, self.files[id as usize].data_len as u32))
    }

    /// Appends one entry (data then index). `payload` is what is stored (ciphertext when
    /// encrypted), `length` the plaintext length.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        key: &[u8],
        flags: u8,
        payload: &[u8],
        length: u32,
        timestamp: u32,
        value_crc: u32,
        parent: Loc,
    ) -> Result<Appended, StoreError> {
        let key_len =
            u8::try_from(key.len()).map_err(|_| StoreError::BadLoc { file: 0, off: 0 })?;
        let entry_len = (DATA_HDR_LEN + key.len() + payload.len()) as u64;
        let (id, data_off) = self.reserve(entry_len)?;
        let info = &mut self.files[id as usize];
        let idx_off = info.idx_len as u32;
        let h = DataHeader {
            flags,
            key_len,
            stored_len: payload.len() as u32,
            timestamp,
            value_crc,
        };
        encode_data(&mut self.data_pending, &h, key, payload);
        let ie = IndexEntry {
            flags,
            key: key.to_vec(),
            data_off,
            length,
            timestamp,
            value_crc,
            prev: info.last_idx,
            parent,
        };
        ie.encode(&mut self.idx_pending);
        info.data_len += entry_len;
        info.idx_len += ie.encoded_len() as u64;
        info.last_idx = idx_off;
        self.dirty_index.insert(id);
        if self.data_pending.len() > FLUSH_THRESHOLD {
            self.flush()?;
        }
        Ok(Appended {
            idx: Loc {
                file: id,
                off: idx_off,
            },
            data_off,
        })
    }

    /// Writes buffered data entries to the kernel. Index entries are written only once
    /// [`INDEX_LAZY`] bytes are buffered (or on rotation and shutdown): the data file alone
    /// is enough to rebuild them, which recovery does, so acknowledging a write costs one
    /// `write` instead of two. Returns whether data was written. On error the unwritten
    /// rest stays buffered.
    pub fn flush(&mut self) -> Result<bool, StoreError> {
        self.flush_inner(false)
    }

    fn flush_inner(&mut self, force_index: bool) -> Result<bool, StoreError> {
        let id = self.cur_id();
        let wrote = !self.data_pending.is_empty();
        if wrote {
            let dpath = path_of(&self.data_dir, 'd', id);
            write_pending(
                &self.cur_data,
                &mut self.data_pending,
                &mut self.data_flushed,
                &dpath,
            )?;
            if !self.written.iter().any(|f| Arc::ptr_eq(f, &self.cur_data)) {
                self.written.push(self.cur_data.clone());
            }
        }
        if !self.idx_pending.is_empty() && (force_index || self.idx_pending.len() >= INDEX_LAZY) {
            let ipath = path_of(&self.index_dir, 'i', id);
            write_pending(
                &self.cur_index,
                &mut self.idx_pending,
                &mut self.idx_flushed,
                &ipath,
            )?;
        }
        Ok(wrote)
    }

    /// Data files written since the last call: what a group commit must fsync.
    pub fn take_written(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.written)
    }

    /// Closes the current files and starts file id + 1 (rotation, and `NSJUMP`).
    pub fn jump(&mut self) -> Result<(), StoreError> {
        self.flush_inner(true)?;
        let id = self.cur_id() + 1;
        let dpath = path_of(&self.data_dir, 'd', id);
        let ipath = path_of(&self.index_dir, 'i', id);
        let d = open_rw(&dpath)?;
        reset_file(&d, &dpath, DATA_MAGIC, id, self.mode)?;
        let i = open_rw(&ipath)?;
        reset_file(&i, &ipath, INDEX_MAGIC, id, self.mode)?;
        sync_dir(&self.data_dir)?;
        sync_dir(&self.index_dir)?;
        let h = FILE_HEADER_LEN as u64;
        self.files.push(FileInfo {
            data_len: h,
            idx_len: h,
            last_idx: 0,
        });
        self.cur_data = Arc::new(d);
        self.cur_index = Arc::new(i);
        self.data_flushed = h;
        self.idx_flushed = h;
        self.dirty_index.insert(id);
        if let Some(f) = &self.on_jump {
            f(
                &path_of(&self.index_dir, 'i', id - 1),
                &ipath,
                &path_of(&self.data_dir, 'd', id - 1),
                &dpath,
            );
        }
        Ok(())
    }

    /// Removes every file and starts again at id 0 (`FLUSH`).
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.data_pending.clear();
        self.idx_pending.clear();
        self.readers.clear();
        self.written.clear();
        for id in 0..=self.cur_id() {
            for p in [
                path_of(&self.data_dir, 'd', id),
                path_of(&self.index_dir, 'i', id),
            ] {
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove", &p)(e));
                    }
                    _ => {}
                }
            }
        }
        self.files.clear();
        let (d, i) = create_pair(&self.data_dir, &self.index_dir, 0, self.mode)?;
        let h = FILE_HEADER_LEN as u64;
        self.files.push(FileInfo {
            data_len: h,
            idx_len: h,
            last_idx: 0,
        });
        self.cur_data = Arc::new(d);
        self.cur_index = Arc::new(i);
        self.data_flushed = h;
        self.idx_flushed = h;
        self.dirty_index.insert(0);
        sync_dir(&self.data_dir)?;
        sync_dir(&self.index_dir)
    }

    /// For `--synctime`: writes every buffered entry (index ones too) to the kernel and
    /// returns the current file id with the current data and index files, so that the caller
    /// fsyncs them after releasing the namespace lock.
    pub fn flush_for_sync(&mut self) -> Result<(u32, Arc<File>, Arc<File>), StoreError> {
        self.flush_inner(true)?;
        Ok((self.cur_id(), self.cur_data.clone(), self.cur_index.clone()))
    }

    /// Paths of data and index file `id` (to fsync files rotated since the last round).
    pub fn paths_of(&self, id: u32) -> (PathBuf, PathBuf) {
        (
            path_of(&self.data_dir, 'd', id),
            path_of(&self.index_dir, 'i', id),
        )
    }

    /// Flushes and fsyncs the current files (shutdown).
    pub fn sync_all(&mut self) -> Result<(), StoreError> {
        self.flush_inner(true)?;
        let id = self.cur_id();
        self.cur_data
            .sync_data()
            .map_err(io_err("fsync", &path_of(&self.data_dir, 'd', id)))?;
        self.cur_index
            .sync_data()
            .map_err(io_err("fsync", &path_of(&self.index_dir, 'i', id)))
    }

    fn reader(&mut self, index: bool, file: u32) -> Result<Arc<File>, StoreError> {
        if file == self.cur_id() {
            return Ok(if index {
                self.cur_index.clone()
            } else {
                self.cur_data.clone()
            });
        }
        if let Some(f) = self.readers.get(&(index, file)) {
            return Ok(f.clone());
        }
        if self.readers.len() >= MAX_READERS {
            self.readers.clear();
        }
        let path = if index {
            path_of(&self.index_dir, 'i', file)
        } else {
            path_of(&self.data_dir, 'd', file)
        };
        let f = Arc::new(File::open(&path).map_err(io_err("open", &path))?);
        self.readers.insert((index, file), f.clone());
        Ok(f)
    }

    /// The open data file holding `[off, off + len)` of file `file` when that range is
    /// entirely on disk (not in the write buffer): such bytes never change (append-only), so
    /// they can be read without holding the namespace lock. `Ok(None)`: read it under the lock.
    pub fn data_file_for(
        &mut self,
        file: u32,
        off: u32,
        len: usize,
    ) -> Result<Option<Arc<File>>, StoreError> {
        let bad = StoreError::BadLoc { file, off };
        let info = *self.files.get(file as usize).ok_or(bad)?;
        let end = u64::from(off) + len as u64;
        if u64::from(off) < FILE_HEADER_LEN as u64 || end > info.data_len {
            return Err(StoreError::BadLoc { file, off });
        }
        if file == self.cur_id() && end > self.data_flushed {
            return Ok(None);
        }
        self.reader(false, file).map(Some)
    }

    /// Reads `len` bytes at `off` of data or index file `file`, from disk and/or the buffer.
    fn read_at(
        &mut self,
        index: bool,
        file: u32,
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let bad = StoreError::BadLoc {
            file,
            off: off as u32,
        };
        let info = *self.files.get(file as usize).ok_or(bad)?;
        let limit = if index { info.idx_len } else { info.data_len };
        if off < FILE_HEADER_LEN as u64 || off + len as u64 > limit {
            return Err(StoreError::BadLoc {
                file,
                off: off as u32,
            });
        }
        let mut buf = vec![0u8; len];
        let (flushed, pending) = if file == self.cur_id() {
            if index {
                (self.idx_flushed, &self.idx_pending)
            } else {
                (self.data_flushed, &self.data_pending)
            }
        } else {
            (u64::MAX, &self.idx_pending)
        };
        let from_file = (flushed.saturating_sub(off) as usize).min(len);
        if from_file < len {
            let start = (off + from_file as u64 - flushed) as usize;
            buf[from_file..].copy_from_slice(&pending[start..start + len - from_file]);
        }
        if from_file > 0 {
            let f = self.reader(index, file)?;
            f.read_exact_at(&mut buf[..from_file], off)
                .map_err(|source| StoreError::Io {
                    op: "read",
                    path: if index {
                        path_of(&self.index_dir, 'i', file)
                    } else {
                        path_of(&self.data_dir, 'd', file)
                    },
                    source,
                })?;
        }
        Ok(buf)
    }

    /// Reads and verifies the data entry of an index entry; returns the stored payload.
    pub fn read_payload(&mut self, file: u32, e: &IndexEntry) -> Result<Vec<u8>, StoreError> {
        self.read_payload_at(file, e.data_off, e.key.len(), stored_len(e) as usize)
    }

    /// Same as [`Store::read_payload`] from the raw position fields.
    pub fn read_payload_at(
        &mut self,
        file: u32,
        data_off: u32,
        key_len: usize,
        stored: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let head = DATA_HDR_LEN + key_len;
        let mut entry = self.read_at(false, file, u64::from(data_off), head + stored)?;
        if !data_entry_valid(&entry) {
            return Err(StoreError::BadLoc {
                file,
                off: data_off,
            });
        }
        entry.drain(..head);
        Ok(entry)
    }

    /// Reads a whole raw data entry (`DATA RAW`): header fields, key and stored payload.
    pub fn read_raw(
        &mut self,
        file: u32,
        off: u32,
    ) -> Result<(DataHeader, Vec<u8>, Vec<u8>), StoreError> {
        let hdr = self.read_at(false, file, u64::from(off), DATA_HDR_LEN)?;
        let h = decode_data_header(&hdr).ok_or(StoreError::BadLoc { file, off })?;
        let mut entry = self.read_at(false, file, u64::from(off), h.entry_len())?;
        if !data_entry_valid(&entry) {
            return Err(StoreError::BadLoc { file, off });
        }
        let payload = entry.split_off(DATA_HDR_LEN + h.key_len as usize);
        entry.drain(..DATA_HDR_LEN);
        Ok((h, entry, payload))
    }

    /// The consecutive index entries of file `file` from offset `off`, decoded from one read
    /// of at most `max_bytes` (at least one entry): mirror feeds read a batch this way.
    pub fn read_index_run(
        &mut self,
        file: u32,
        off: u32,
        max_bytes: usize,
    ) -> Result<Vec<(Loc, IndexEntry)>, StoreError> {
        let bad = StoreError::BadLoc { file, off };
        let end = self.files.get(file as usize).ok_or(bad)?.idx_len;
        let avail = end.saturating_sub(u64::from(off)) as usize;
        let want = avail.min(max_bytes.max(INDEX_HDR_LEN + 255));
        let buf = self.read_at(true, file, u64::from(off), want)?;
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + INDEX_HDR_LEN <= buf.len() {
            let len = INDEX_HDR_LEN + IndexEntry::key_len_of(&buf[pos..]);
            let Some(b) = buf.get(pos..pos + len) else {
                break;
            };
            let e = IndexEntry::decode(b).ok_or(StoreError::BadLoc {
                file,
                off: off + pos as u32,
            })?;
            out.push((
                Loc {
                    file,
                    off: off + pos as u32,
                },
                e,
            ));
            pos += len;
        }
        Ok(out)
    }

    /// `len` raw bytes of data file `file` at `off` (file and write buffer).
    pub fn read_data_span(
        &mut self,
        file: u32,
        off: u32,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        self.read_at(false, file, u64::from(off), len)
    }

    /// Reads and verifies the index entry at `loc`.
    pub fn read_index(&mut self, loc: Loc) -> Result<IndexEntry, StoreError> {
        let bad = StoreError::BadLoc {
            file: loc.file,
            off: loc.off,
        };
        let hdr = self.read_at(true, loc.file, u64::from(loc.off), INDEX_HDR_LEN)?;
        let len = INDEX_HDR_LEN + IndexEntry::key_len_of(&hdr);
        let b = self.read_at(true, loc.file, u64::from(loc.off), len)?;
        IndexEntry::decode(&b).ok_or(bad)
    }

    /// First entry position, if any.
    pub fn first(&self) -> Option<Loc> {
        self.first_from(0)
    }

    fn first_from(&self, file: u32) -> Option<Loc> {
        (file as usize..self.files.len())
            .find(|&i| self.files[i].idx_len > FILE_HEADER_LEN as u64)
            .map(|i| Loc {
                file: i as u32,
                off: FILE_HEADER_LEN as u32,
            })
    }

    /// Last entry position, if any.
    pub fn last(&self) -> Option<Loc> {
        self.last_before(self.files.len() as u32)
    }

    fn last_before(&self, file: u32) -> Option<Loc> {
        (0..file as usize)
            .rev()
            .find(|&i| self.files[i].last_idx != 0)
            .map(|i| Loc {
                file: i as u32,
                off: self.files[i].last_idx,
            })
    }

    /// Position after the entry `e` stored at `loc`.
    pub fn next(&self, loc: Loc, e: &IndexEntry) -> Option<Loc> {
        let next = u64::from(loc.off) + e.encoded_len() as u64;
        if next < self.files.get(loc.file as usize)?.idx_len {
            Some(Loc {
                file: loc.file,
                off: next as u32,
            })
        } else {
            self.first_from(loc.file + 1)
        }
    }

    /// Position before the entry `e` stored at `loc`.
    pub fn prev(&self, loc: Loc, e: &IndexEntry) -> Option<Loc> {
        if e.prev != 0 {
            Some(Loc {
                file: loc.file,
                off: e.prev,
            })
        } else {
            self.last_before(loc.file)
        }
    }
}
