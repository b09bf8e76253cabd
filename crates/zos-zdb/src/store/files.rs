//! File-level helpers: names, creation with a header, directory fsync, buffered writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{StoreError, io_err};
use crate::format::{DATA_MAGIC, FileHeader, INDEX_MAGIC};

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn path_of(dir: &Path, prefix: char, id: u32) -> PathBuf {
    dir.join(format!("{prefix}{id}"))
}

pub(crate) fn list_ids(dir: &Path, prefix: char) -> Result<Vec<u32>, StoreError> {
    let mut ids = Vec::new();
    for ent in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let ent = ent.map_err(io_err("read dir", dir))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(prefix) {
            if let Ok(id) = rest.parse::<u32>() {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// fsyncs a directory so that a created or removed file name survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

pub(crate) fn open_rw(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err("open", path))
}

/// Writes a fresh header into an empty (or truncated) file.
pub(crate) fn reset_file(
    f: &File,
    path: &Path,
    magic: [u8; 4],
    id: u32,
    mode: u8,
) -> Result<(), StoreError> {
    f.set_len(0).map_err(io_err("truncate", path))?;
    let hdr = FileHeader {
        magic,
        fileid: id,
        mode,
        created: now(),
    };
    (&*f)
        .write_all(&hdr.encode())
        .map_err(io_err("write header", path))
}

pub(crate) fn write_pending(
    f: &File,
    pending: &mut Vec<u8>,
    flushed: &mut u64,
    path: &Path,
) -> Result<(), StoreError> {
    let mut done = 0;
    while done < pending.len() {
        match (&*f).write(&pending[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                pending.drain(..done);
                *flushed += done as u64;
                return Err(io_err("write", path)(e));
            }
        }
    }
    *flushed += done as u64;
    pending.drain(..done);
    if pending.is_empty() {
        Ok(())
    } else {
        Err(io_err("write", path)(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write",
        )))
    }
}

pub(crate) fn create_pair(
    data_dir: &Path,
    index_dir: &Path,
    id: u32,
    mode: u8,
) -> Result<(File, File), StoreError> {
    let dpath = path_of(data_dir, 'd', id);
    let ipath = path_of(index_dir, 'i', id);
    let d = open_rw(&dpath)?;
    reset_file(&d, &dpath, DATA_MAGIC, id, mode)?;
    let i = open_rw(&ipath)?;
    reset_file(&i, &ipath, INDEX_MAGIC, id, mode)?;
    Ok((d, i))
}
