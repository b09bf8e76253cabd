//! Crash recovery of one file pair: validate the index, check it against the data file,
//! rebuild missing or torn index entries from the data file, truncate a torn data tail.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    FileInfo, Replay, SEAL_OVERHEAD, StoreError, io_err, open_rw, path_of, reset_file, stored_len,
};
use crate::format::{
    DATA_HDR_LEN, DATA_MAGIC, FILE_HEADER_LEN, FLAG_DELETED, FLAG_ENCRYPTED, FileHeader,
    INDEX_HDR_LEN, INDEX_MAGIC, IndexEntry, Loc, data_entry_valid, decode_data_header,
};
use crate::resp::MAX_PAYLOAD;

/// Streams the index entries of one file; stops at the first invalid or torn one.
struct IndexReader {
    r: BufReader<File>,
    pos: u64,
}

impl IndexReader {
    fn new(f: &File, path: &Path) -> Result<IndexReader, StoreError> {
        let mut f = f.try_clone().map_err(io_err("dup", path))?;
        f.seek(SeekFrom::Start(FILE_HEADER_LEN as u64))
            .map_err(io_err("seek", path))?;
        Ok(IndexReader {
            r: BufReader::with_capacity(1 << 20, f),
            pos: FILE_HEADER_LEN as u64,
        })
    }

    fn next(&mut self) -> Option<(u32, IndexEntry)> {
        let mut buf = vec![0u8; INDEX_HDR_LEN];
        self.r.read_exact(&mut buf).ok()?;
        buf.resize(INDEX_HDR_LEN + IndexEntry::key_len_of(&buf), 0);
        self.r.read_exact(&mut buf[INDEX_HDR_LEN..]).ok()?;
        let e = IndexEntry::decode(&buf)?;
        let off = u32::try_from(self.pos).ok()?;
        self.pos += buf.len() as u64;
        Some((off, e))
    }
}

/// Loads file pair `id`: validates the index, checks it against the data file, rebuilds
/// missing or torn index entries from the data file and truncates a torn data tail.
pub(super) fn recover_file(
    data_dir: &Path,
    index_dir: &Path,
    id: u32,
    mode: u8,
    strict: bool,
    replay: &mut dyn Replay,
) -> Result<(FileInfo, File, File), StoreError> {
    let dpath = path_of(data_dir, 'd', id);
    let ipath = path_of(index_dir, 'i', id);
    let h = FILE_HEADER_LEN as u64;
    let d = open_rw(&dpath)?;
    let i = open_rw(&ipath)?;
    let dlen = d.metadata().map_err(io_err("stat", &dpath))?.len();
    let mut hdr = [0u8; FILE_HEADER_LEN];
    let data_ok = dlen >= h
        && d.read_exact_at(&mut hdr, 0).is_ok()
        && FileHeader::decode(&hdr, DATA_MAGIC).is_some_and(|x| x.fileid == id);
    if !data_ok {
        if dlen > h {
            return Err(StoreError::Corrupt {
                path: dpath,
                offset: 0,
                what: "bad data file header",
            });
        }
        // An index with entries means data was acknowledged from this file: never paper
        // over a missing or emptied data file.
        let ilen = i.metadata().map_err(io_err("stat", &ipath))?.len();
        if ilen > h {
            return Err(StoreError::Corrupt {
                path: dpath,
                offset: 0,
                what: "data file missing or empty while its index has entries",
            });
        }
        // New pair, or a crash while creating it: nothing was ever acknowledged from it.
        if dlen > 0 {
            tracing::warn!(path = %dpath.display(), "torn data file header, recreating the pair");
        }
        reset_file(&d, &dpath, DATA_MAGIC, id, mode)?;
        reset_file(&i, &ipath, INDEX_MAGIC, id, mode)?;
        return Ok((
            FileInfo {
                data_len: h,
                idx_len: h,
                last_idx: 0,
            },
            d,
            i,
        ));
    }
    let ilen = i.metadata().map_err(io_err("stat", &ipath))?.len();
    let index_ok = ilen >= h
        && i.read_exact_at(&mut hdr, 0).is_ok()
        && FileHeader::decode(&hdr, INDEX_MAGIC).is_some_and(|x| x.fileid == id);

    // Pass 1: find the valid end of the index and its last entry.
    let mut valid_end = h;
    let mut last: Option<(u32, IndexEntry)> = None;
    if index_ok {
        let mut r = IndexReader::new(&i, &ipath)?;
        while let Some((off, e)) = r.next() {
            last = Some((off, e));
            valid_end = r.pos;
        }
    }
    // The index is usable if its last entry points at a valid data entry with the same key.
    // A missing or torn header (a crash while creating the pair) is rebuilt quietly.
    let mut rebuild = (!index_ok && ilen >= h).then_some("bad index file header");
    let mut data_end = h;
    if let Some((_, e)) = &last {
        let end = u64::from(e.data_off) + (DATA_HDR_LEN + e.key.len()) as u64 + stored_len(e);
        let mut entry = vec![0u8; (end.saturating_sub(u64::from(e.data_off))) as usize];
        let ok = end <= dlen
            && d.read_exact_at(&mut entry, u64::from(e.data_off)).is_ok()
            && data_entry_valid(&entry)
            && entry[DATA_HDR_LEN..DATA_HDR_LEN + e.key.len()] == e.key[..];
        if ok {
            data_end = end
        } else {
            rebuild = Some("its last entry does not match a valid data entry");
        }
    }
    if let Some(why) = rebuild {
        if strict {
            return Err(StoreError::Corrupt {
                path: ipath,
                offset: 0,
                what: why,
            });
        }
        tracing::warn!(
            path = %ipath.display(),
            reason = why,
            "damaged index, rebuilding it from the data file (--strict-index refuses instead)"
        );
        reset_file(&i, &ipath, INDEX_MAGIC, id, mode)?;
        valid_end = h;
        last = None;
    } else if !index_ok {
        reset_file(&i, &ipath, INDEX_MAGIC, id, mode)?;
        valid_end = h;
        last = None;
    } else if valid_end < ilen {
        // One partial entry is what a crash leaves; more is damage inside the index.
        if ilen - valid_end > (INDEX_HDR_LEN + 255) as u64 {
            if strict {
                return Err(StoreError::Corrupt {
                    path: ipath,
                    offset: valid_end,
                    what: "invalid index entry followed by more data",
                });
            }
            tracing::warn!(
                path = %ipath.display(),
                offset = valid_end,
                bytes = ilen - valid_end,
                reason = "invalid index entry followed by more data",
                "damaged index, rebuilding it from the data file after the last valid entry (--strict-index refuses instead)"
            );
        } else {
            tracing::warn!(path = %ipath.display(), valid_end, ilen, "torn index tail, truncating");
        }
        i.set_len(valid_end).map_err(io_err("truncate", &ipath))?;
    }
    let mut info = FileInfo {
        data_len: h,
        idx_len: valid_end,
        last_idx: 0,
    };
    // Pass 2: replay the valid index entries.
    if last.is_some() {
        let mut r = IndexReader::new(&i, &ipath)?;
        while r.pos < valid_end {
            let Some((off, e)) = r.next() else { break };
            replay.apply(Loc { file: id, off }, &e);
            info.last_idx = off;
        }
    }
    // Data written after the last indexed entry: index it, up to the first torn entry.
    let mut pos = data_end;
    let mut reader = {
        let mut f = d.try_clone().map_err(io_err("dup", &dpath))?;
        f.seek(SeekFrom::Start(pos))
            .map_err(io_err("seek", &dpath))?;
        BufReader::with_capacity(1 << 20, f)
    };
    let mut new_index = Vec::new();
    let mut rebuilt = 0u64;
    while pos < dlen {
        let Some((e, len)) = read_data_entry(&mut reader, pos, dlen) else {
            tracing::warn!(path = %dpath.display(), offset = pos, dlen, "torn data tail, truncating");
            d.set_len(pos).map_err(io_err("truncate", &dpath))?;
            break;
        };
        let mut e = e;
        e.prev = info.last_idx;
        e.parent = replay.parent_of(&e.key);
        let off = info.idx_len as u32;
        e.encode(&mut new_index);
        info.idx_len += e.encoded_len() as u64;
        info.last_idx = off;
        replay.apply(Loc { file: id, off }, &e);
        pos += len;
        rebuilt += 1;
    }
    if !new_index.is_empty() {
        (&i).write_all(&new_index)
            .map_err(io_err("write", &ipath))?;
        // After a crash the index lags its data (index entries are written lazily): that is
        // the normal case and logged at info; a rebuilt index was warned about above.
        tracing::info!(
            path = %ipath.display(),
            entries = rebuilt,
            bytes = new_index.len(),
            from_offset = data_end,
            whole_file = rebuild.is_some(),
            "index entries rebuilt from the data file"
        );
    }
    info.data_len = pos.min(dlen).max(data_end);
    Ok((info, d, i))
}

/// Reads and validates one data entry at `pos`; `None` if it is torn or invalid.
fn read_data_entry(r: &mut BufReader<File>, pos: u64, dlen: u64) -> Option<(IndexEntry, u64)> {
    let mut hdr = [0u8; DATA_HDR_LEN];
    r.read_exact(&mut hdr).ok()?;
    let h = decode_data_header(&hdr)?;
    let len = h.entry_len() as u64;
    // Never allocate from a length that the file cannot hold or the protocol cannot produce.
    if h.stored_len as usize > MAX_PAYLOAD + SEAL_OVERHEAD as usize || pos + len > dlen {
        return None;
    }
    let mut entry = hdr.to_vec();
    entry.resize(len as usize, 0);
    r.read_exact(&mut entry[DATA_HDR_LEN..]).ok()?;
    if !data_entry_valid(&entry) {
        return None;
    }
    let enc = h.flags & FLAG_ENCRYPTED != 0;
    let length = if h.flags & FLAG_DELETED != 0 || !enc {
        h.stored_len
    } else {
        h.stored_len.checked_sub(SEAL_OVERHEAD)?
    };
    let key = entry[DATA_HDR_LEN..DATA_HDR_LEN + h.key_len as usize].to_vec();
    let e = IndexEntry {
        flags: h.flags,
        key,
        data_off: pos as u32,
        length,
        timestamp: h.timestamp,
        value_crc: h.value_crc,
        prev: 0,
        parent: Loc::NONE,
    };
    Some((e, len))
}
