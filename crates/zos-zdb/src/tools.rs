//! Offline tools on a stopped server's directories: `check` (every data entry's CRCs, every
//! index entry against its data entry), `repair` (cut a damaged data tail, rebuild every
//! index from the data files, say what was lost) and `dump` (print every entry).
//!
//! They read files with bounded buffers: one data entry (≤ 8 MiB + header) at a time, and per
//! data file 24 bytes per entry to match the index against it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::CacheBudget;
use crate::descriptor::{DESCRIPTOR_FILE, Descriptor};
use crate::engine::valid_ns_name;
use crate::format::{
    DATA_HDR_LEN, DATA_MAGIC, FILE_HEADER_LEN, FLAG_DELETED, FLAG_ENCRYPTED, FileHeader,
    INDEX_HDR_LEN, INDEX_MAGIC, IndexEntry, data_entry_valid, decode_data_header,
};
use crate::namespace::Namespace;
use crate::resp::MAX_PAYLOAD;
use crate::store::{SEAL_OVERHEAD, StoreError, io_err, list_ids, path_of};

/// What a check (or the check before a repair) found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Namespaces looked at.
    pub namespaces: usize,
    /// Data/index file pairs looked at.
    pub files: usize,
    /// Valid data entries.
    pub data_entries: u64,
    /// Valid index entries that match their data entry.
    pub index_entries: u64,
    /// Damage: each line names the file, the offset and what is wrong.
    pub errors: Vec<String>,
    /// Not damage: data entries written after the index's last entry (the index is written
    /// lazily, the server indexes them at start).
    pub notes: Vec<String>,
    /// Bytes of data files that hold no valid entry (a torn or damaged tail).
    pub bad_data_bytes: u64,
    /// Valid-looking data entries found after damage in the same file (lost by a repair,
    /// which cuts at the first bad entry).
    pub entries_after_damage: u64,
}

impl Report {
    /// No damage found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A valid data entry as the index must describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DataSummary {
    key_crc: u32,
    flags: u8,
    stored_len: u32,
    timestamp: u32,
    value_crc: u32,
}

/// Namespaces under `index_dir` (directories holding a descriptor), sorted.
pub fn namespaces(index_dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(index_dir).map_err(io_err("read dir", index_dir))? {
        let ent = ent.map_err(io_err("read dir", index_dir))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if valid_ns_name(&name) && ent.path().join(DESCRIPTOR_FILE).exists() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn file_ids(data: &Path, index: &Path) -> Result<Vec<u32>, StoreError> {
    let mut ids = Vec::new();
    for (dir, p) in [(data, 'd'), (index, 'i')] {
        if dir.exists() {
            ids.extend(list_ids(dir, p)?);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn len_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Reads one data entry at the reader's position; `None` if it is torn or invalid.
fn next_data_entry(r: &mut impl Read, pos: u64, dlen: u64) -> Option<(Vec<u8>, u64)> {
    let mut hdr = [0u8; DATA_HDR_LEN];
    r.read_exact(&mut hdr).ok()?;
    let h = decode_data_header(&hdr)?;
    let len = h.entry_len() as u64;
    if h.stored_len as usize > MAX_PAYLOAD + SEAL_OVERHEAD as usize || pos + len > dlen {
        return None;
    }
    let mut entry = hdr.to_vec();
    entry.resize(len as usize, 0);
    r.read_exact(&mut entry[DATA_HDR_LEN..]).ok()?;
    data_entry_valid(&entry).then_some((entry, len))
}

/// Counts the valid entries that follow damage at `from`: resynchronises on every offset
/// (an entry's CRC makes a false match about one in four billion), so that the report says
/// how much a cut at `from` loses.
fn entries_after(path: &Path, from: u64, dlen: u64) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let mut n = 0;
    let mut pos = from as usize + 1;
    while pos + DATA_HDR_LEN <= bytes.len() && (pos as u64) < dlen {
        let ok = decode_data_header(&bytes[pos..]).is_some_and(|h| {
            let end = pos + h.entry_len();
            end <= bytes.len() && data_entry_valid(&bytes[pos..end])
        });
        if ok {
            n += 1;
            let h = decode_data_header(&bytes[pos..]).map_or(1, |h| h.entry_len());
            pos += h;
        } else {
            pos += 1;
        }
    }
    n
}

/// Checks every namespace under the two roots. Errors only for what cannot be read at all.
pub fn check(data_dir: &Path, index_dir: &Path) -> Result<Report, StoreError> {
    let mut rep = Report::default();
    for ns in namespaces(index_dir)? {
        check_ns(&data_dir.join(&ns), &index_dir.join(&ns), &ns, &mut rep)?;
    }
    Ok(rep)
}

fn check_ns(data: &Path, index: &Path, ns: &str, rep: &mut Report) -> Result<(), StoreError> {
    rep.namespaces += 1;
    if let Err(e) = Descriptor::load(index) {
        rep.errors.push(format!("{ns}: descriptor unreadable: {e}"));
    }
    for id in file_ids(data, index)? {
        rep.files += 1;
        let dpath = path_of(data, 'd', id);
        let ipath = path_of(index, 'i', id);
        let entries = check_data(&dpath, id, ns, rep)?;
        check_index(&ipath, id, ns, &entries, rep)?;
    }
    Ok(())
}

/// Walks a data file; returns its valid entries by offset.
fn check_data(
    dpath: &Path,
    id: u32,
    ns: &str,
    rep: &mut Report,
) -> Result<HashMap<u32, DataSummary>, StoreError> {
    let mut entries = HashMap::new();
    let dlen = len_of(dpath);
    let h = FILE_HEADER_LEN as u64;
    let Ok(f) = File::open(dpath) else {
        rep.errors
            .push(format!("{ns}: {} missing", dpath.display()));
        return Ok(entries);
    };
    let mut hdr = [0u8; FILE_HEADER_LEN];
    let mut r = BufReader::with_capacity(1 << 20, f);
    if dlen < h
        || r.read_exact(&mut hdr).is_err()
        || FileHeader::decode(&hdr, DATA_MAGIC).is_none_or(|x| x.fileid != id)
    {
        if dlen > 0 {
            rep.errors.push(format!(
                "{ns}: {}: bad file header ({dlen} bytes unusable)",
                dpath.display()
            ));
            rep.bad_data_bytes += dlen;
        }
        return Ok(entries);
    }
    let mut pos = h;
    while pos < dlen {
        match next_data_entry(&mut r, pos, dlen) {
            Some((e, len)) => {
                let Some(dh) = decode_data_header(&e) else {
                    break;
                };
                let key = &e[DATA_HDR_LEN..DATA_HDR_LEN + dh.key_len as usize];
                entries.insert(
                    pos as u32,
                    DataSummary {
                        key_crc: crc32fast::hash(key),
                        flags: dh.flags,
                        stored_len: dh.stored_len,
                        timestamp: dh.timestamp,
                        value_crc: dh.value_crc,
                    },
                );
                rep.data_entries += 1;
                pos += len;
            }
            None => {
                let after = entries_after(dpath, pos, dlen);
                rep.errors.push(format!(
                    "{ns}: {}: invalid or torn entry at offset {pos}: {} bytes to the end unreadable, {after} valid-looking entries after it",
                    dpath.display(),
                    dlen - pos
                ));
                rep.bad_data_bytes += dlen - pos;
                rep.entries_after_damage += after;
                break;
            }
        }
    }
    Ok(entries)
}

fn check_index(
    ipath: &Path,
    id: u32,
    ns: &str,
    data: &HashMap<u32, DataSummary>,
    rep: &mut Report,
) -> Result<(), StoreError> {
    let ilen = len_of(ipath);
    let h = FILE_HEADER_LEN as u64;
    let bytes = match std::fs::read(ipath) {
        Ok(b) => b,
        Err(_) => {
            if !data.is_empty() {
                rep.notes.push(format!(
                    "{ns}: {} missing: {} data entries to index",
                    ipath.display(),
                    data.len()
                ));
            }
            return Ok(());
        }
    };
    if ilen < h || FileHeader::decode(&bytes, INDEX_MAGIC).is_none_or(|x| x.fileid != id) {
        if ilen >= h {
            rep.errors
                .push(format!("{ns}: {}: bad file header", ipath.display()));
        }
        return Ok(());
    }
    let mut pos = FILE_HEADER_LEN;
    let mut seen = 0usize;
    let mut last_off = None;
    while pos + INDEX_HDR_LEN <= bytes.len() {
        let len = INDEX_HDR_LEN + IndexEntry::key_len_of(&bytes[pos..]);
        let Some(e) = bytes.get(pos..pos + len).and_then(IndexEntry::decode) else {
            break;
        };
        let want = data.get(&e.data_off);
        let enc = e.flags & FLAG_ENCRYPTED != 0 && e.flags & FLAG_DELETED == 0;
        let stored = e.length + if enc { SEAL_OVERHEAD } else { 0 };
        let ok = want.is_some_and(|d| {
            d.key_crc == crc32fast::hash(&e.key)
                && d.flags == e.flags
                && d.stored_len == stored
                && d.timestamp == e.timestamp
                && d.value_crc == e.value_crc
        });
        if !ok {
            rep.errors.push(format!(
                "{ns}: {}: entry at offset {pos} does not match data offset {} ({})",
                ipath.display(),
                e.data_off,
                if want.is_some() {
                    "different key or fields"
                } else {
                    "no valid data entry there"
                }
            ));
        } else {
            rep.index_entries += 1;
        }
        if last_off.is_some_and(|l| e.data_off <= l) {
            rep.errors.push(format!(
                "{ns}: {}: entry at offset {pos} goes backwards in the data file",
                ipath.display()
            ));
        }
        last_off = Some(e.data_off);
        seen += 1;
        pos += len;
    }
    if pos < bytes.len() {
        // A partial last entry is what a crash leaves; more than one entry's worth is not.
        let rest = bytes.len() - pos;
        let line = format!(
            "{ns}: {}: {rest} bytes after the last valid entry (offset {pos})",
            ipath.display()
        );
        if rest < INDEX_HDR_LEN + 256 {
            rep.notes.push(line + ": torn write");
        } else {
            rep.errors.push(line);
        }
    }
    if data.len() > seen {
        rep.notes.push(format!(
            "{ns}: {}: {} data entries not indexed yet",
            ipath.display(),
            data.len() - seen
        ));
    }
    Ok(())
}

/// What `repair` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// What the check before the repair found.
    pub before: Report,
    /// Data files cut at their first bad entry: (path, new length, bytes cut).
    pub truncated: Vec<(PathBuf, u64, u64)>,
    /// Data files with a bad header, moved aside to `<name>.damaged`.
    pub moved_aside: Vec<PathBuf>,
    /// Index files rebuilt from data.
    pub indexes_rebuilt: usize,
    /// Live keys after the repair, summed over namespaces.
    pub live_entries: u64,
    /// The check after the repair.
    pub after: Report,
}

/// Repairs every namespace: data files are cut at their first invalid entry (a bad header
/// moves the file aside), every index is rebuilt from the data files, then all is checked
/// again. Run only on a stopped server's directories.
pub fn repair(data_dir: &Path, index_dir: &Path) -> Result<RepairReport, StoreError> {
    let mut out = RepairReport {
        before: check(data_dir, index_dir)?,
        ..RepairReport::default()
    };
    for ns in namespaces(index_dir)? {
        let data = data_dir.join(&ns);
        let index = index_dir.join(&ns);
        for id in file_ids(&data, &index)? {
            let dpath = path_of(&data, 'd', id);
            cut_data(&dpath, id, &mut out)?;
            let ipath = path_of(&index, 'i', id);
            match std::fs::remove_file(&ipath) {
                Ok(()) => out.indexes_rebuilt += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &ipath)(e)),
            }
        }
        // Opening rebuilds every index from the data files (recovery's own code path).
        let n = Namespace::open(
            &ns,
            data.clone(),
            index.clone(),
            u64::from(u32::MAX),
            false,
            Descriptor::default(),
            CacheBudget::new(0),
        )?;
        let n = Arc::new(n);
        let mut st = n.lock();
        st.store.sync_all()?;
        out.live_entries += st.entries();
    }
    out.after = check(data_dir, index_dir)?;
    Ok(out)
}

fn cut_data(dpath: &Path, id: u32, out: &mut RepairReport) -> Result<(), StoreError> {
    let dlen = len_of(dpath);
    let h = FILE_HEADER_LEN as u64;
    let Ok(f) = File::open(dpath) else {
        return Ok(());
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut hdr = [0u8; FILE_HEADER_LEN];
    if dlen < h
        || r.read_exact(&mut hdr).is_err()
        || FileHeader::decode(&hdr, DATA_MAGIC).is_none_or(|x| x.fileid != id)
    {
        if dlen > 0 {
            let aside = dpath.with_extension("damaged");
            std::fs::rename(dpath, &aside).map_err(io_err("rename", dpath))?;
            out.moved_aside.push(aside);
        }
        return Ok(());
    }
    let mut pos = h;
    while pos < dlen {
        match next_data_entry(&mut r, pos, dlen) {
            Some((_, len)) => pos += len,
            None => break,
        }
    }
    if pos < dlen {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dpath)
            .map_err(io_err("open", dpath))?;
        f.set_len(pos).map_err(io_err("truncate", dpath))?;
        f.sync_all().map_err(io_err("fsync", dpath))?;
        out.truncated.push((dpath.to_path_buf(), pos, dlen - pos));
    }
    Ok(())
}

/// Prints every namespace's descriptor and every index entry (`--dump`): one line per
/// entry, keys as escaped text. Returns the number of entries printed.
pub fn dump(data_dir: &Path, index_dir: &Path, out: &mut dyn Write) -> Result<u64, StoreError> {
    let mut n = 0;
    let w = |out: &mut dyn Write, s: String| {
        out.write_all(s.as_bytes())
            .map_err(io_err("write", Path::new("<stdout>")))
    };
    for ns in namespaces(index_dir)? {
        let index = index_dir.join(&ns);
        let data = data_dir.join(&ns);
        let d = Descriptor::load(&index)?.unwrap_or_default();
        w(
            out,
            format!(
                "namespace {ns}: mode {} public {} worm {} password {} maxsize {}\n",
                d.mode.name(),
                u8::from(d.public),
                u8::from(d.worm),
                if d.password.is_some() { "yes" } else { "no" },
                d.maxsize
            ),
        )?;
        for id in file_ids(&data, &index)? {
            let ipath = path_of(&index, 'i', id);
            let bytes = std::fs::read(&ipath).unwrap_or_default();
            w(
                out,
                format!(
                    "  file {id}: data {} bytes, index {} bytes\n",
                    len_of(&path_of(&data, 'd', id)),
                    bytes.len()
                ),
            )?;
            let mut pos = FILE_HEADER_LEN;
            while pos + INDEX_HDR_LEN <= bytes.len() {
                let len = INDEX_HDR_LEN + IndexEntry::key_len_of(&bytes[pos..]);
                let Some(e) = bytes.get(pos..pos + len).and_then(IndexEntry::decode) else {
                    break;
                };
                let mut flags = Vec::new();
                if e.flags & FLAG_DELETED != 0 {
                    flags.push("deleted");
                }
                if e.flags & FLAG_ENCRYPTED != 0 {
                    flags.push("encrypted");
                }
                w(
                    out,
                    format!(
                        "    [{id}:{pos}] key \"{}\" length {} time {} crc {:08x} data@{} parent {}:{}{}\n",
                        e.key.escape_ascii(),
                        e.length,
                        e.timestamp,
                        e.value_crc,
                        e.data_off,
                        e.parent.file,
                        e.parent.off,
                        if flags.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", flags.join(","))
                        }
                    ),
                )?;
                n += 1;
                pos += len;
            }
        }
    }
    Ok(n)
}
