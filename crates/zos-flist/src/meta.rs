//! The `.fl` metadata file: a plain SQLite database with upstream's schema (spec §2–§3).
//!
//! [`Writer`] builds a new file inside one transaction (a failed pack leaves nothing half
//! written: the caller deletes the file). [`Reader`] opens a file read-only and answers the
//! queries a mount, unpack or inspect needs; every value read is range-checked, so a hostile
//! `.fl` yields errors, never panics.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use crate::block::{Block, BlockError, BlockId, BlockKey};

/// Upstream's schema (rfs `schema/schema.sql`, unchanged since v2.0.0), plus the `names`
/// index of the development branch. Every statement is `IF NOT EXISTS`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer,
    end integer,
    url VARCHAR(2048)
);
";

/// zos extension, ignored by upstream readers (they only query the tables above): hard links.
/// Upstream has no hard links, so every name still gets its own inode row with its own block
/// rows (upstream mounts see independent copies); this table says which inode a later name
/// is a link to, so our mount and unpack restore the link (one inode, `nlink` > 1).
const ZOS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS zos_hardlink (
    ino INTEGER PRIMARY KEY,
    target INTEGER
);
";

/// `S_IFMT` and the file types (spec §3).
pub mod mode {
    /// Type mask.
    pub const S_IFMT: u32 = 0o170000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o010000;
}

/// The root directory's inode number (hard-coded by upstream's walk, FUSE and readdir).
pub const ROOT_INO: u64 = 1;

/// What kind of entry an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file (has blocks).
    File,
    /// Directory.
    Dir,
    /// Symbolic link (target in `data`).
    Symlink,
    /// Block device.
    Block,
    /// Character device.
    Char,
    /// Socket.
    Socket,
    /// FIFO.
    Fifo,
    /// A type bit pattern that is none of the above.
    Unknown,
}

/// One `inode` row joined with its `extra` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (`ROOT_INO` for the root).
    pub ino: u64,
    /// Parent inode (0 for the root).
    pub parent: u64,
    /// Entry name (`"/"` for the root).
    pub name: String,
    /// `st_size`.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group (the true gid; upstream's reader shows the uid here, spec §3 bug).
    pub gid: u32,
    /// Full `st_mode`.
    pub mode: u32,
    /// Device number.
    pub rdev: u64,
    /// Seconds since the epoch.
    pub ctime: i64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// `extra.data`: the symlink target for links.
    pub data: Option<Vec<u8>>,
}

impl Inode {
    /// The entry type from the mode bits.
    pub fn kind(&self) -> Kind {
        match self.mode & mode::S_IFMT {
            mode::S_IFREG => Kind::File,
            mode::S_IFDIR => Kind::Dir,
            mode::S_IFLNK => Kind::Symlink,
            mode::S_IFBLK => Kind::Block,
            mode::S_IFCHR => Kind::Char,
            mode::S_IFSOCK => Kind::Socket,
            mode::S_IFIFO => Kind::Fifo,
            _ => Kind::Unknown,
        }
    }

    /// Permission bits (including setuid/setgid/sticky).
    pub fn perm(&self) -> u32 {
        self.mode & !mode::S_IFMT
    }
}

/// A new inode for [`Writer::insert_inode`].
#[derive(Debug, Clone)]
pub struct NewInode<'a> {
    /// Parent inode number (0 for the root).
    pub parent: u64,
    /// Entry name.
    pub name: &'a str,
    /// `st_size`.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full `st_mode`.
    pub mode: u32,
    /// Device number.
    pub rdev: u64,
    /// Seconds.
    pub ctime: i64,
    /// Seconds.
    pub mtime: i64,
}

/// A `route` row: blocks whose id starts with a byte in `start..=end` live at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// First id byte, inclusive.
    pub start: u8,
    /// Last id byte, inclusive.
    pub end: u8,
    /// Store URL (password stripped when packed).
    pub url: String,
}

/// Errors reading or writing a `.fl`.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// SQLite failed (I/O, not a database, malformed).
    #[error("{path}: {source}")]
    Sqlite {
        /// The `.fl` file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database lacks a table every `.fl` has.
    #[error("{0}: not an .fl (no `{1}` table)")]
    NotAnFlist(PathBuf, &'static str),
    /// A column held a value out of its range or of the wrong type.
    #[error("{path}: bad {what} for inode {ino}")]
    BadValue {
        /// The `.fl` file.
        path: PathBuf,
        /// Which value.
        what: &'static str,
        /// The row's inode.
        ino: i64,
    },
    /// A block row with an id/key of the wrong length.
    #[error("{path}: inode {ino}: {source}")]
    BadBlock {
        /// The `.fl` file.
        path: PathBuf,
        /// The row's inode.
        ino: i64,
        /// What was wrong.
        #[source]
        source: BlockError,
    },
    /// The root inode (1) is missing or not a directory.
    #[error("{0}: no root directory (inode 1)")]
    NoRoot(PathBuf),
    /// Filesystem error around the database file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, MetaError>;

fn ctx(path: &Path) -> impl Fn(rusqlite::Error) -> MetaError + '_ {
    move |source| MetaError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds a new `.fl`. Everything is written in one transaction committed by [`Writer::finish`].
pub struct Writer {
    conn: Connection,
    path: PathBuf,
}

impl Writer {
    /// Creates `path`, replacing any existing file (as upstream's pack does), with the schema.
    pub fn create(path: &Path) -> Result<Writer> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(MetaError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let conn = Connection::open(path).map_err(ctx(path))?;
        let c = ctx(path);
        // Upstream writes with journal mode DELETE; keep the file a single self-contained db.
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(&c)?;
        conn.execute_batch(SCHEMA).map_err(&c)?;
        conn.execute_batch(ZOS_SCHEMA).map_err(&c)?;
        conn.execute_batch("BEGIN").map_err(&c)?;
        Ok(Writer {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Inserts an inode and returns its number (the first insert gets 1: the root).
    pub fn insert_inode(&self, i: &NewInode<'_>) -> Result<u64> {
        self.conn
            .prepare_cached(
                "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    i.parent as i64,
                    i.name,
                    i.size as i64,
                    i.uid,
                    i.gid,
                    i.mode,
                    i.rdev as i64,
                    i.ctime,
                    i.mtime
                ])
            })
            .map_err(ctx(&self.path))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Stores per-inode data (a symlink target) as a BLOB, as upstream binds it.
    pub fn insert_extra(&self, ino: u64, data: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO extra (ino, data) VALUES (?, ?)")
            .and_then(|mut st| st.execute(params![ino as i64, data]))
            .map_err(ctx(&self.path))?;
        Ok(())
    }

    /// Appends a file's block rows in chunk order (row order is chunk order).
    pub fn insert_blocks(&self, ino: u64, blocks: &[Block]) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT INTO block (ino, id, key) VALUES (?, ?, ?)")
            .map_err(ctx(&self.path))?;
        for b in blocks {
            st.execute(params![ino as i64, &b.id.0[..], &b.key.0[..]])
                .map_err(ctx(&self.path))?;
        }
        Ok(())
    }

    /// Adds a route row.
    pub fn add_route(&self, route: &Route) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO route (start, end, url) VALUES (?, ?, ?)",
                params![route.start, route.end, route.url],
            )
            .map_err(ctx(&self.path))?;
        Ok(())
    }

    /// Sets a tag (`INSERT OR REPLACE`, as upstream).
    pub fn set_tag(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO tag (key, value) VALUES (?, ?)",
                params![key, value],
            )
            .map_err(ctx(&self.path))?;
        Ok(())
    }

    /// Records that inode `ino` is a hard link to `target` (zos extension table).
    pub fn add_hardlink(&self, ino: u64, target: u64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO zos_hardlink (ino, target) VALUES (?, ?)")
            .and_then(|mut st| st.execute(params![ino as i64, target as i64]))
            .map_err(ctx(&self.path))?;
        Ok(())
    }

    /// Commits. Until this returns the file is not a complete flist.
    pub fn finish(self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(ctx(&self.path))?;
        self.conn.close().map_err(|(_, e)| MetaError::Sqlite {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// Read-only access to a `.fl`. `Sync`: one connection behind a mutex, statements cached;
/// the queries are index lookups that take microseconds.
pub struct Reader {
    conn: Mutex<Connection>,
    path: PathBuf,
    has_hardlinks: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).finish()
    }
}

fn get_u64(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &'static str,
    path: &Path,
    ino: i64,
) -> Result<u64> {
    let v: Option<i64> = row.get(idx).map_err(|_| MetaError::BadValue {
        path: path.into(),
        what,
        ino,
    })?;
    u64::try_from(v.unwrap_or(0)).map_err(|_| MetaError::BadValue {
        path: path.into(),
        what,
        ino,
    })
}

fn get_u32(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &'static str,
    path: &Path,
    ino: i64,
) -> Result<u32> {
    let v = get_u64(row, idx, what, path, ino)?;
    u32::try_from(v).map_err(|_| MetaError::BadValue {
        path: path.into(),
        what,
        ino,
    })
}

const INODE_COLS: &str =
    "i.ino, i.parent, i.name, i.size, i.uid, i.gid, i.mode, i.rdev, i.ctime, i.mtime, e.data";

impl Reader {
    /// Opens `path` read-only and checks it has the `.fl` tables.
    pub fn open(path: &Path) -> Result<Reader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(ctx(path))?;
        let has_table = |name: &str| -> Result<bool> {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(ctx(path))
        };
        for t in ["inode", "extra", "block", "route"] {
            if !has_table(t)? {
                return Err(MetaError::NotAnFlist(path.to_path_buf(), t));
            }
        }
        let has_hardlinks = has_table("zos_hardlink")?;
        let r = Reader {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            has_hardlinks,
        };
        match r.inode(ROOT_INO)? {
            Some(root) if root.kind() == Kind::Dir => Ok(r),
            _ => Err(MetaError::NoRoot(path.to_path_buf())),
        }
    }

    /// The file this reader has open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a read-only connection inconsistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn row_to_inode(&self, row: &rusqlite::Row<'_>) -> Result<Inode> {
        let p = &self.path;
        let ino: i64 = row.get(0).map_err(ctx(p))?;
        let name: Option<String> = row.get(2).map_err(|_| MetaError::BadValue {
            path: p.into(),
            what: "name",
            ino,
        })?;
        let data: Option<Vec<u8>> = match row.get_ref(10).map_err(ctx(p))? {
            rusqlite::types::ValueRef::Null => None,
            rusqlite::types::ValueRef::Blob(b) => Some(b.to_vec()),
            // Foreign writers may have stored the target as TEXT; accept it.
            rusqlite::types::ValueRef::Text(t) => Some(t.to_vec()),
            _ => {
                return Err(MetaError::BadValue {
                    path: p.into(),
                    what: "extra data",
                    ino,
                });
            }
        };
        Ok(Inode {
            ino: u64::try_from(ino).map_err(|_| MetaError::BadValue {
                path: p.into(),
                what: "ino",
                ino,
            })?,
            parent: get_u64(row, 1, "parent", p, ino)?,
            name: name.unwrap_or_default(),
            size: get_u64(row, 3, "size", p, ino)?,
            uid: get_u32(row, 4, "uid", p, ino)?,
            gid: get_u32(row, 5, "gid", p, ino)?,
            mode: get_u32(row, 6, "mode", p, ino)?,
            rdev: get_u64(row, 7, "rdev", p, ino)?,
            ctime: row.get::<_, Option<i64>>(8).ok().flatten().unwrap_or(0),
            mtime: row.get::<_, Option<i64>>(9).ok().flatten().unwrap_or(0),
            data,
        })
    }

    /// The inode `ino`, if present.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {INODE_COLS} FROM inode i LEFT JOIN extra e ON e.ino = i.ino WHERE i.ino = ?"))
            .map_err(ctx(&self.path))?;
        let mut rows = st.query([ino as i64]).map_err(ctx(&self.path))?;
        match rows.next().map_err(ctx(&self.path))? {
            Some(row) => Ok(Some(self.row_to_inode(row)?)),
            None => Ok(None),
        }
    }

    /// The child of `parent` called `name`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<Inode>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {INODE_COLS} FROM inode i LEFT JOIN extra e ON e.ino = i.ino \
                 WHERE i.parent = ? AND i.name = ? LIMIT 1"
            ))
            .map_err(ctx(&self.path))?;
        let mut rows = st
            .query(params![parent as i64, name])
            .map_err(ctx(&self.path))?;
        match rows.next().map_err(ctx(&self.path))? {
            Some(row) => Ok(Some(self.row_to_inode(row)?)),
            None => Ok(None),
        }
    }

    /// Children of `parent` in row order, `limit` from `offset` (upstream pages the same way).
    pub fn children(&self, parent: u64, offset: u64, limit: u64) -> Result<Vec<Inode>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {INODE_COLS} FROM inode i LEFT JOIN extra e ON e.ino = i.ino \
                 WHERE i.parent = ? AND i.ino != i.parent ORDER BY i.ino LIMIT ? OFFSET ?"
            ))
            .map_err(ctx(&self.path))?;
        let mut rows = st
            .query(params![
                parent as i64,
                limit.min(i64::MAX as u64) as i64,
                offset.min(i64::MAX as u64) as i64
            ])
            .map_err(ctx(&self.path))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(ctx(&self.path))? {
            out.push(self.row_to_inode(row)?);
        }
        Ok(out)
    }

    /// Number of sub-directories of `ino` (for a directory's `nlink` = 2 + this).
    pub fn subdir_count(&self, ino: u64) -> Result<u64> {
        let conn = self.conn();
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM inode WHERE parent = ? AND (mode & 61440) = 16384 AND ino != parent")
            .and_then(|mut st| st.query_row([ino as i64], |r| r.get(0)))
            .map_err(ctx(&self.path))?;
        Ok(n.max(0) as u64)
    }

    /// A file's blocks in chunk order.
    pub fn blocks(&self, ino: u64) -> Result<Vec<Block>> {
        let conn = self.conn();
        // rowid order is insertion order, which upstream relies on without saying so.
        let mut st = conn
            .prepare_cached("SELECT id, key FROM block WHERE ino = ? ORDER BY rowid")
            .map_err(ctx(&self.path))?;
        let mut rows = st.query([ino as i64]).map_err(ctx(&self.path))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(ctx(&self.path))? {
            out.push(self.row_to_block(ino as i64, row)?);
        }
        Ok(out)
    }

    fn row_to_block(&self, ino: i64, row: &rusqlite::Row<'_>) -> Result<Block> {
        let bad = |source| MetaError::BadBlock {
            path: self.path.clone(),
            ino,
            source,
        };
        let blob = |i: usize| -> Result<Vec<u8>> {
            match row.get_ref(i).map_err(ctx(&self.path))? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                    Ok(b.to_vec())
                }
                _ => Err(bad(BlockError::BadLength(0))),
            }
        };
        Ok(Block {
            id: BlockId::from_slice(&blob(0)?).map_err(bad)?,
            key: BlockKey::from_slice(&blob(1)?).map_err(bad)?,
        })
    }

    /// Every distinct block of the flist (for verify, warm-up, copy to another store).
    pub fn all_blocks(&self) -> Result<Vec<Block>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id, key, min(ino) FROM block GROUP BY id, key ORDER BY min(rowid)")
            .map_err(ctx(&self.path))?;
        let mut rows = st.query([]).map_err(ctx(&self.path))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(ctx(&self.path))? {
            let ino: i64 = row.get(2).unwrap_or(0);
            out.push(self.row_to_block(ino, row)?);
        }
        Ok(out)
    }

    /// The route table in row order.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT start, end, url FROM route ORDER BY rowid")
            .map_err(ctx(&self.path))?;
        let mut rows = st.query([]).map_err(ctx(&self.path))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(ctx(&self.path))? {
            let bad = || MetaError::BadValue {
                path: self.path.clone(),
                what: "route",
                ino: 0,
            };
            let start: i64 = row.get(0).map_err(|_| bad())?;
            let end: i64 = row.get(1).map_err(|_| bad())?;
            out.push(Route {
                start: u8::try_from(start).map_err(|_| bad())?,
                end: u8::try_from(end).map_err(|_| bad())?,
                url: row.get(2).map_err(|_| bad())?,
            });
        }
        Ok(out)
    }

    /// All tags (usually none: upstream's pack writes no tags).
    pub fn tags(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let has: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tag'",
                [],
                |r| r.get(0),
            )
            .map_err(ctx(&self.path))?;
        if has == 0 {
            return Ok(Vec::new());
        }
        let mut st = conn
            .prepare("SELECT key, value FROM tag ORDER BY key")
            .map_err(ctx(&self.path))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .map_err(ctx(&self.path))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ctx(&self.path))
    }

    /// If `ino` is a later name of a hard-linked file, the inode it links to.
    pub fn hardlink_target(&self, ino: u64) -> Result<Option<u64>> {
        if !self.has_hardlinks {
            return Ok(None);
        }
        let conn = self.conn();
        let t: Option<i64> = conn
            .prepare_cached("SELECT target FROM zos_hardlink WHERE ino = ?")
            .and_then(|mut st| st.query_row([ino as i64], |r| r.get(0)).optional())
            .map_err(ctx(&self.path))?;
        Ok(t.and_then(|t| u64::try_from(t).ok()).filter(|&t| t != ino))
    }

    /// How many names the (target) inode has: 1 + the links recorded to it.
    pub fn link_count(&self, target: u64) -> Result<u64> {
        if !self.has_hardlinks {
            return Ok(1);
        }
        let conn = self.conn();
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM zos_hardlink WHERE target = ? AND ino != target")
            .and_then(|mut st| st.query_row([target as i64], |r| r.get(0)))
            .map_err(ctx(&self.path))?;
        Ok(1 + n.max(0) as u64)
    }

    /// Totals for `inspect`.
    pub fn stats(&self) -> Result<Stats> {
        let conn = self.conn();
        let c = ctx(&self.path);
        let q = |sql: &str| -> Result<i64> {
            conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .map(|v| v.unwrap_or(0))
                .map_err(&c)
        };
        Ok(Stats {
            inodes: q("SELECT count(*) FROM inode")? as u64,
            files: q("SELECT count(*) FROM inode WHERE (mode & 61440) = 32768")? as u64,
            dirs: q("SELECT count(*) FROM inode WHERE (mode & 61440) = 16384")? as u64,
            symlinks: q("SELECT count(*) FROM inode WHERE (mode & 61440) = 40960")? as u64,
            file_bytes: q("SELECT sum(size) FROM inode WHERE (mode & 61440) = 32768")?.max(0)
                as u64,
            block_rows: q("SELECT count(*) FROM block")? as u64,
            unique_blocks: q("SELECT count(*) FROM (SELECT DISTINCT id FROM block)")? as u64,
        })
    }
}

/// Totals of an flist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Rows in `inode`.
    pub inodes: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Sum of regular file sizes.
    pub file_bytes: u64,
    /// Rows in `block`.
    pub block_rows: u64,
    /// Distinct block ids (what the store holds).
    pub unique_blocks: u64,
}
