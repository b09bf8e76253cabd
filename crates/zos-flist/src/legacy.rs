//! Legacy `.flist` reader (0-fs / g8ufs, rfs ≤ 1.1.1; spec §11): a tar (usually gzip) holding
//! `flistdb.sqlite3`, a key/value table `entries(key, value)` whose values are capnp `Dir`
//! records (schema in `schema/legacy.capnp`) keyed by the BLAKE2b-16 hex of the directory path;
//! ACLs are `ACI` records under their own keys. File blocks live outside the file (a zdb/redis
//! store): `GET hash` → XXTEA decrypt (16-byte key, length word at the end, as rfs v1's `xxtea`
//! crate) → snappy raw decompress.
//!
//! Untrusted input: record sizes and counts are bounded by capnp's traversal limit, the walk
//! refuses cycles and depth > 256, names with `/`, `.` or `..` are refused, and nothing here
//! panics on malformed data.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blake2::Digest as _;
use blake2::digest::consts::U16;

use crate::legacy_capnp::{a_c_i as aci, dir, inode, special};
use crate::store::{StoreError, ZdbStore};

/// Key of the root directory: BLAKE2b-16 of the empty path.
pub const ROOT_KEY: &str = "cae66941d9efbd404e4d88758ea67670";
/// Largest `flistdb.sqlite3` accepted.
pub const MAX_DB_BYTES: u64 = 1 << 30;
/// Deepest directory nesting walked.
pub const MAX_DEPTH: usize = 256;
/// rfs v1's default block store.
pub const DEFAULT_STORAGE: &str = "zdb://hub.grid.tf:9900";

/// Why a legacy flist could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a legacy flist, or a malformed one.
    #[error("legacy flist: {0}")]
    Format(String),
    /// The database.
    #[error("legacy flist db: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A block could not be fetched or decoded.
    #[error("legacy block {hash}: {reason}")]
    Block {
        /// Hex of the block hash.
        hash: String,
        /// The cause.
        reason: String,
    },
    /// The block store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn fmt(m: impl Into<String>) -> LegacyError {
    LegacyError::Format(m.into())
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> LegacyError + '_ {
    move |source| LegacyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// BLAKE2b with a 16-byte digest, lower-case hex (directory keys, ACL keys).
pub fn blake2b_16_hex(data: &[u8]) -> String {
    hex::encode(blake2::Blake2b::<U16>::digest(data))
}

// ---------------------------------------------------------------------------------------------
// XXTEA as rfs v1 uses it (the `xxtea` 0.2 crate's `decrypt`: little-endian words, the key's
// first 16 bytes zero-padded, the plaintext length in the last word), without its panics.

const DELTA: u32 = 0x9E37_79B9;

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

fn key_words(key: &[u8]) -> [u32; 4] {
    let mut k = [0u32; 4];
    for (i, w) in words(&key[..key.len().min(16)]).into_iter().enumerate() {
        k[i] = w;
    }
    k
}

fn mx(sum: u32, y: u32, z: u32, p: usize, e: u32, k: &[u32; 4]) -> u32 {
    ((z >> 5 ^ y << 2).wrapping_add(y >> 3 ^ z << 4))
        ^ ((sum ^ y).wrapping_add(k[(p & 3) ^ e as usize] ^ z))
}

/// XXTEA-encrypts `data` with its length appended (the writer side of [`xxtea_decrypt`]).
pub fn xxtea_encrypt(data: &[u8], key: &[u8]) -> Vec<u8> {
    let mut v = words(data);
    v.push(data.len() as u32);
    let k = key_words(key);
    let n = v.len();
    let mut z = v[n - 1];
    let mut sum: u32 = 0;
    let mut q = 6 + 52 / n;
    while q > 0 {
        sum = sum.wrapping_add(DELTA);
        let e = sum >> 2 & 3;
        for p in 0..n - 1 {
            let y = v[p + 1];
            v[p] = v[p].wrapping_add(mx(sum, y, z, p, e, &k));
            z = v[p];
        }
        let y = v[0];
        v[n - 1] = v[n - 1].wrapping_add(mx(sum, y, z, n - 1, e, &k));
        z = v[n - 1];
        q -= 1;
    }
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Decrypts an XXTEA blob whose last plaintext word is the length (`None` when malformed).
pub fn xxtea_decrypt(data: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 8 || data.len() % 4 != 0 {
        return None;
    }
    let mut v = words(data);
    let k = key_words(key);
    let n = v.len();
    let q = 6 + 52 / n as u32;
    let mut sum = q.wrapping_mul(DELTA);
    let mut y = v[0];
    while sum != 0 {
        let e = sum >> 2 & 3;
        for p in (1..n).rev() {
            let z = v[p - 1];
            v[p] = v[p].wrapping_sub(mx(sum, y, z, p, e, &k));
            y = v[p];
        }
        let z = v[n - 1];
        v[0] = v[0].wrapping_sub(mx(sum, y, z, 0, e, &k));
        y = v[0];
        sum = sum.wrapping_sub(DELTA);
    }
    let len = v.pop()? as usize;
    let max = v.len() * 4;
    if len > max || len + 3 < max {
        return None;
    }
    let mut out: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.truncate(len);
    Some(out)
}

/// A block as stored: its store key, its XXTEA key and the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBlock {
    /// Store key: BLAKE2b-16 of `blob`.
    pub hash: Vec<u8>,
    /// BLAKE2b-16 of the plaintext.
    pub key: Vec<u8>,
    /// XXTEA(snappy(plaintext)).
    pub blob: Vec<u8>,
}

/// A legacy block as a lib0stor-style writer makes it (⚠ writer side not verified against
/// upstream; readers never depend on it): `key = BLAKE2b-16(plain)`,
/// `blob = XXTEA(snappy(plain))`, `hash = BLAKE2b-16(blob)`.
pub fn encode_block(plain: &[u8]) -> Result<EncodedBlock, LegacyError> {
    let key = blake2::Blake2b::<U16>::digest(plain).to_vec();
    let c = snap::raw::Encoder::new()
        .compress_vec(plain)
        .map_err(|e| fmt(format!("snappy: {e}")))?;
    let blob = xxtea_encrypt(&c, &key);
    let hash = blake2::Blake2b::<U16>::digest(&blob).to_vec();
    Ok(EncodedBlock { hash, key, blob })
}

/// Decodes a stored legacy block with its key (XXTEA, then snappy raw).
pub fn decode_block(blob: &[u8], key: &[u8]) -> Result<Vec<u8>, String> {
    let c = xxtea_decrypt(blob, key).ok_or("XXTEA: malformed or wrong key")?;
    snap::raw::Decoder::new()
        .decompress_vec(&c)
        .map_err(|e| format!("snappy: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The metadata.

/// One block of a legacy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyBlock {
    /// Store key (usually 16 bytes).
    pub hash: Vec<u8>,
    /// XXTEA key (usually 16 bytes).
    pub key: Vec<u8>,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyKind {
    /// A directory (its record key).
    Dir,
    /// A regular file and its blocks, in order.
    File(Vec<LegacyBlock>),
    /// A symlink and its target.
    Link(String),
    /// A device, FIFO or socket: `st_mode` type bits and `rdev`.
    Special {
        /// `S_IFCHR`, `S_IFBLK`, `S_IFIFO` or `S_IFSOCK`.
        kind: u32,
        /// Device number (`makedev(major, minor)` from the `major,minor` data).
        rdev: u64,
    },
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    /// Path relative to the root (`""` for the root).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Full `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: u32,
    /// What it is.
    pub kind: LegacyKind,
}

/// An opened legacy flist.
pub struct LegacyFlist {
    conn: Mutex<rusqlite::Connection>,
    tmp: Option<PathBuf>,
}

impl std::fmt::Debug for LegacyFlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyFlist").finish_non_exhaustive()
    }
}

impl Drop for LegacyFlist {
    fn drop(&mut self) {
        if let Some(p) = &self.tmp {
            let _ = std::fs::remove_file(p);
        }
    }
}

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// Whether `path` is a legacy flist (anything but a bare SQLite file: `.fl` files are SQLite).
pub fn is_legacy(path: &Path) -> bool {
    let mut head = [0u8; 16];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => head != SQLITE_MAGIC,
        Err(_) => false,
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Looks a name up in `/etc/passwd`-style `file` (field 3 = id).
fn lookup_id(file: &str, name: &str) -> Option<u32> {
    if name == "root" {
        return Some(0);
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[derive(Debug, Clone, Copy)]
struct Perm {
    mode: u32,
    uid: u32,
    gid: u32,
}

fn capnp_err(key: &str) -> impl Fn(capnp::Error) -> LegacyError + '_ {
    move |e| fmt(format!("record {key}: {e}"))
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>, key: &str) -> Result<String, LegacyError> {
    let t = r.map_err(capnp_err(key))?;
    t.to_string().map_err(|e| fmt(format!("record {key}: {e}")))
}

impl LegacyFlist {
    /// Opens a legacy flist: a tar (plain or gzip) holding `flistdb.sqlite3` (extracted into
    /// `work_dir`, removed on drop), or the bare `flistdb.sqlite3` itself.
    pub fn open(path: &Path, work_dir: &Path) -> Result<LegacyFlist, LegacyError> {
        let mut f = std::fs::File::open(path).map_err(io_at(path))?;
        let mut head = [0u8; 16];
        let n = f.read(&mut head).map_err(io_at(path))?;
        if head[..n] == *SQLITE_MAGIC {
            return Self::open_db(path, None);
        }
        let f = std::fs::File::open(path).map_err(io_at(path))?;
        let reader: Box<dyn Read> = if head[..n].starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                f,
            )))
        } else {
            Box::new(std::io::BufReader::new(f))
        };
        let mut ar = tar::Archive::new(reader);
        std::fs::create_dir_all(work_dir).map_err(io_at(work_dir))?;
        let tmp = work_dir.join(format!(".legacy-{}.sqlite3", rand::random::<u64>()));
        for e in ar.entries().map_err(io_at(path))? {
            let mut e = e.map_err(io_at(path))?;
            let name = e.path_bytes().into_owned();
            let is_db = name.rsplit(|&b| b == b'/').next() == Some(b"flistdb.sqlite3");
            if !is_db || !e.header().entry_type().is_file() {
                continue;
            }
            if e.size() > MAX_DB_BYTES {
                return Err(fmt(format!(
                    "flistdb.sqlite3 is larger than {MAX_DB_BYTES} bytes"
                )));
            }
            let mut out = std::fs::File::create(&tmp).map_err(io_at(&tmp))?;
            if let Err(err) = std::io::copy(&mut (&mut e).take(MAX_DB_BYTES), &mut out) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_at(path)(err));
            }
            return Self::open_db(&tmp, Some(tmp.clone()));
        }
        Err(fmt("no flistdb.sqlite3 in the archive"))
    }

    fn open_db(path: &Path, tmp: Option<PathBuf>) -> Result<LegacyFlist, LegacyError> {
        let fl = LegacyFlist {
            conn: Mutex::new(rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?),
            tmp,
        };
        // Refuse early what is not one (a `.fl`, a random database).
        let has: i64 = fl.conn().query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'entries'",
            [],
            |r| r.get(0),
        )?;
        if has == 0 {
            return Err(fmt("no entries table (not a legacy flist)"));
        }
        Ok(fl)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn value(&self, key: &str) -> Result<Option<Vec<u8>>, LegacyError> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .conn()
            .query_row("SELECT value FROM entries WHERE key = ?", [key], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?)
    }

    /// The block store named by the `backend` metadata tag (`{host, port, namespace?,
    /// password?}` JSON), as a `zdb://` URL.
    pub fn backend(&self) -> Result<Option<String>, LegacyError> {
        use rusqlite::OptionalExtension as _;
        let has: i64 = self.conn().query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'metadata'",
            [],
            |r| r.get(0),
        )?;
        if has == 0 {
            return Ok(None);
        }
        let v: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT CAST(value AS BLOB) FROM metadata WHERE key = 'backend'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(v) = v else { return Ok(None) };
        #[derive(serde::Deserialize)]
        struct Backend {
            host: String,
            port: Option<u16>,
            namespace: Option<String>,
            password: Option<String>,
        }
        let b: Backend =
            serde_json::from_slice(&v).map_err(|e| fmt(format!("backend tag: {e}")))?;
        let auth = b.password.map(|p| format!(":{p}@")).unwrap_or_default();
        let ns = b.namespace.map(|n| format!("/{n}")).unwrap_or_default();
        Ok(Some(format!(
            "zdb://{auth}{}:{}{ns}",
            b.host,
            b.port.unwrap_or(9900)
        )))
    }

    fn perm(&self, aclkey: &str, default_mode: u32) -> Result<Perm, LegacyError> {
        let fallback = Perm {
            mode: default_mode,
            uid: 0,
            gid: 0,
        };
        if aclkey.is_empty() {
            return Ok(fallback);
        }
        let Some(v) = self.value(aclkey)? else {
            tracing::warn!(
                aclkey,
                "legacy flist: ACL record missing; default permissions"
            );
            return Ok(fallback);
        };
        let msg = capnp::serialize::read_message(&mut v.as_slice(), Default::default())
            .map_err(capnp_err(aclkey))?;
        let a: aci::Reader<'_> = msg.get_root().map_err(capnp_err(aclkey))?;
        let id = |v: i64, name: capnp::Result<capnp::text::Reader<'_>>, file: &str| -> u32 {
            if v >= 0 {
                return u32::try_from(v).unwrap_or(u32::MAX);
            }
            // −1: resolve the name on this host, else 1000 (rfs v1).
            name.ok()
                .and_then(|n| n.to_str().ok().and_then(|n| lookup_id(file, n)))
                .unwrap_or(1000)
        };
        Ok(Perm {
            mode: u32::from(a.get_mode()) & 0o7777,
            uid: id(a.get_uid(), a.get_uname(), "/etc/passwd"),
            gid: id(a.get_gid(), a.get_gname(), "/etc/group"),
        })
    }

    /// Every entry, depth first from the root (the root itself first, path `""`).
    pub fn walk(&self) -> Result<Vec<LegacyEntry>, LegacyError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<(String, String, usize)> =
            vec![(ROOT_KEY.to_string(), String::new(), 0)];
        let mut root = true;
        while let Some((key, path, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(fmt(format!("{path}: nested deeper than {MAX_DEPTH}")));
            }
            if !seen.insert(key.clone()) {
                return Err(fmt(format!("{path}: directory record {key} used twice")));
            }
            let v = self
                .value(&key)?
                .ok_or_else(|| fmt(format!("directory record {key} ({path:?}) missing")))?;
            let msg = capnp::serialize::read_message(&mut v.as_slice(), Default::default())
                .map_err(capnp_err(&key))?;
            let d: dir::Reader<'_> = msg.get_root().map_err(capnp_err(&key))?;
            if root {
                let p = self.perm(&text(d.get_aclkey(), &key)?, 0o755)?;
                out.push(LegacyEntry {
                    path: String::new(),
                    size: d.get_size(),
                    mode: S_IFDIR | p.mode,
                    uid: p.uid,
                    gid: p.gid,
                    mtime: d.get_modification_time(),
                    kind: LegacyKind::Dir,
                });
                root = false;
            }
            let mut subdirs = Vec::new();
            for i in d.get_contents().map_err(capnp_err(&key))?.iter() {
                let name = text(i.get_name(), &key)?;
                if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                    return Err(fmt(format!("{path}: bad entry name {name:?}")));
                }
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                let aclkey = text(i.get_aclkey(), &key)?;
                use inode::attributes::Which;
                let (kind, type_bits, default_mode) = match i
                    .get_attributes()
                    .which()
                    .map_err(|e| fmt(format!("record {key}: unknown attribute {}", e.0)))?
                {
                    Which::Dir(s) => {
                        let sub = text(s.map_err(capnp_err(&key))?.get_key(), &key)?;
                        subdirs.push((sub, child.clone()));
                        (LegacyKind::Dir, S_IFDIR, 0o755)
                    }
                    Which::File(f) => {
                        let f = f.map_err(capnp_err(&key))?;
                        let mut blocks = Vec::new();
                        for b in f.get_blocks().map_err(capnp_err(&key))?.iter() {
                            blocks.push(LegacyBlock {
                                hash: b.get_hash().map_err(capnp_err(&key))?.to_vec(),
                                key: b.get_key().map_err(capnp_err(&key))?.to_vec(),
                            });
                        }
                        (LegacyKind::File(blocks), S_IFREG, 0o644)
                    }
                    Which::Link(l) => {
                        let t = text(l.map_err(capnp_err(&key))?.get_target(), &key)?;
                        (LegacyKind::Link(t), S_IFLNK, 0o777)
                    }
                    Which::Special(s) => {
                        let s = s.map_err(capnp_err(&key))?;
                        let data = s.get_data().map_err(capnp_err(&key))?;
                        let kind = match s.get_type() {
                            Ok(special::Type::Socket) => 0o140000,
                            Ok(special::Type::Block) => 0o060000,
                            Ok(special::Type::Chardev) => 0o020000,
                            Ok(special::Type::Fifopipe) => 0o010000,
                            _ => {
                                tracing::warn!(path = %child, "legacy flist: unknown special type; skipped");
                                continue;
                            }
                        };
                        // "major,minor" for devices.
                        let s = String::from_utf8_lossy(data);
                        let rdev = s
                            .split_once(',')
                            .and_then(|(a, b)| {
                                Some(makedev(a.trim().parse().ok()?, b.trim().parse().ok()?))
                            })
                            .unwrap_or(0);
                        (LegacyKind::Special { kind, rdev }, kind, 0o644)
                    }
                };
                let p = self.perm(&aclkey, default_mode)?;
                out.push(LegacyEntry {
                    path: child,
                    size: i.get_size(),
                    mode: type_bits | p.mode,
                    uid: p.uid,
                    gid: p.gid,
                    mtime: i.get_modification_time(),
                    kind,
                });
            }
            for (sub, child) in subdirs.into_iter().rev() {
                stack.push((sub, child, depth + 1));
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks and unpack.

/// Where legacy blocks come from: a zdb/redis store (`zdb://` or `redis://`, host or socket).
#[derive(Debug)]
pub struct LegacyStore {
    zdb: ZdbStore,
}

impl LegacyStore {
    /// From `zdb://[user[:pass]@]host[:port][/ns]` or the same with `redis://`.
    pub fn from_url(url: &str) -> Result<LegacyStore, LegacyError> {
        let url = match url.strip_prefix("redis://") {
            Some(rest) => format!("zdb://{rest}"),
            None => url.to_string(),
        };
        Ok(LegacyStore {
            zdb: ZdbStore::from_url(&url)?,
        })
    }

    /// Fetches and decodes one block.
    pub async fn get(&self, b: &LegacyBlock) -> Result<Vec<u8>, LegacyError> {
        let hash = hex::encode(&b.hash);
        let blob = self
            .zdb
            .get_key(&b.hash)
            .await?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| LegacyError::Block {
                hash: hash.clone(),
                reason: "not in the store".into(),
            })?;
        decode_block(&blob, &b.key).map_err(|reason| LegacyError::Block { hash, reason })
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LegacyUnpackReport {
    /// Directories, files, symlinks made.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Devices/FIFOs/sockets skipped (as rfs does).
    pub skipped: u64,
}

/// Extracts the flist into `target` (created; existing files are not overwritten), reading
/// blocks from `store` through the legacy cache layout `<cache>/hh/hh/<hex>` (plaintext).
pub async fn unpack(
    fl: &LegacyFlist,
    store: &LegacyStore,
    cache: Option<&Path>,
    target: &Path,
    preserve_ownership: bool,
) -> Result<LegacyUnpackReport, LegacyError> {
    let entries = fl.walk()?;
    let mut report = LegacyUnpackReport::default();
    let mut dirs = Vec::new();
    for e in &entries {
        let p = target.join(&e.path);
        match &e.kind {
            LegacyKind::Dir => {
                std::fs::create_dir_all(&p).map_err(io_at(&p))?;
                dirs.push((p.clone(), e));
            }
            LegacyKind::File(blocks) => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(io_at(&p))?;
                let mut written = 0u64;
                for b in blocks {
                    let data = cached_block(store, cache, b).await?;
                    std::io::Write::write_all(&mut f, &data).map_err(io_at(&p))?;
                    written += data.len() as u64;
                }
                if written != e.size {
                    tracing::warn!(path = %e.path, size = e.size, written, "legacy file size differs from its blocks");
                }
                report.bytes += written;
                f.set_permissions(std::fs::Permissions::from_mode(e.mode & 0o7777))
                    .map_err(io_at(&p))?;
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.into());
                f.set_modified(t).map_err(io_at(&p))?;
            }
            LegacyKind::Link(t) => {
                std::os::unix::fs::symlink(t, &p).map_err(io_at(&p))?;
            }
            LegacyKind::Special { .. } => {
                tracing::warn!(path = %e.path, "legacy unpack: special file skipped");
                report.skipped += 1;
                continue;
            }
        }
        if preserve_ownership {
            std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).map_err(io_at(&p))?;
        }
        report.entries += 1;
    }
    // Directory modes last (a read-only directory must be filled first).
    for (p, e) in dirs.into_iter().rev() {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(io_at(&p))?;
    }
    Ok(report)
}

async fn cached_block(
    store: &LegacyStore,
    cache: Option<&Path>,
    b: &LegacyBlock,
) -> Result<Vec<u8>, LegacyError> {
    let hex = hex::encode(&b.hash);
    let path = match cache {
        Some(c) if hex.len() >= 4 => Some(c.join(&hex[0..2]).join(&hex[2..4]).join(&hex)),
        _ => None,
    };
    if let Some(p) = &path {
        if let Ok(d) = std::fs::read(p) {
            if !d.is_empty() {
                return Ok(d);
            }
        }
    }
    let data = store.get(b).await?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        let tmp = p.with_extension(format!("tmp{}", rand::random::<u32>()));
        std::fs::write(&tmp, &data).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, p).map_err(io_at(p))?;
    }
    Ok(data)
}
