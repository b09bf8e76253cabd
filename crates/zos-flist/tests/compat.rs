//! Compatibility with upstream's format, checked without our reader: an `.fl` written by our
//! packer is decoded here with plain SQL and the spec's block rules (BLAKE2b-256, AES-256-GCM
//! with nonce = key[0..12], snappy raw), and the spec's V2 file is read by our reader.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _};
use blake2::Digest as _;
use common::*;
use rusqlite::Connection;
use zos_flist::pack::{PackOptions, pack};
use zos_flist::{BlockCache, Flist, Router};

/// ino, parent, name, size, mode, uid, gid, mtime.
type InodeRow = (i64, i64, String, i64, i64, i64, i64, i64);

fn b2(data: &[u8]) -> Vec<u8> {
    blake2::Blake2b::<blake2::digest::consts::U32>::digest(data).to_vec()
}

/// Upstream's read path, step by step (spec §4, §5, §6).
fn decode_block(stores: &[(u8, u8, PathBuf)], id: &[u8], key: &[u8]) -> Vec<u8> {
    assert_eq!((id.len(), key.len()), (32, 32));
    let hexid = hex::encode(id);
    let (_, _, root) = stores
        .iter()
        .find(|(s, e, _)| *s <= id[0] && id[0] <= *e)
        .expect("a route covers the id");
    let enc = std::fs::read(root.join(&hexid[..2]).join(&hexid))
        .expect("block file at <root>/<hex[0..2]>/<hex>");
    assert_eq!(b2(&enc), id, "id = BLAKE2b-256(stored bytes)");
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key).expect("key");
    let compressed = cipher
        .decrypt(aes_gcm::Nonce::from_slice(&key[..12]), enc.as_slice())
        .expect("AES-GCM");
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .expect("snappy raw");
    assert_eq!(b2(&plain), key, "key = BLAKE2b-256(plaintext)");
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_fl_decodes_by_the_spec_rules() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    build_tree(&src, 3 * CHUNK + 12345);
    let fl = tmp.path().join("x.fl");
    let s0 = tmp.path().join("s0");
    let s1 = tmp.path().join("s1");
    let specs = [
        format!("00-7f=dir://{}", s0.display()),
        format!("80-ff=dir://{}", s1.display()),
    ];
    let router = Router::from_specs(&specs).expect("router");
    pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");

    let db = Connection::open(&fl).expect("sqlite opens the .fl directly");
    // Schema: the five tables, the indices upstream queries by.
    for t in ["inode", "extra", "block", "tag", "route"] {
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?",
                [t],
                |r| r.get(0),
            )
            .expect("q");
        assert_eq!(n, 1, "table {t}");
    }
    for i in ["parents", "block_ino"] {
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='index' AND name=?",
                [i],
                |r| r.get(0),
            )
            .expect("q");
        assert_eq!(n, 1, "index {i}");
    }
    let journal: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("q");
    assert_eq!(journal, "delete");
    // Routes as pack writes them.
    let routes: Vec<(i64, i64, String)> = db
        .prepare("SELECT start, end, url FROM route")
        .expect("q")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("q")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        routes,
        vec![
            (0, 0x7f, format!("dir://{}", s0.display())),
            (0x80, 0xff, format!("dir://{}", s1.display()))
        ]
    );
    let stores: Vec<(u8, u8, PathBuf)> = routes
        .iter()
        .map(|(s, e, u)| {
            (
                *s as u8,
                *e as u8,
                PathBuf::from(u.strip_prefix("dir://").expect("dir")),
            )
        })
        .collect();
    // Root: ino 1, parent 0, name "/".
    let root: (i64, i64, String) = db
        .query_row(
            "SELECT ino, parent, name FROM inode WHERE parent = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("root");
    assert_eq!(root, (1, 0, "/".to_string()));
    // Column storage classes.
    let bad: i64 = db
        .query_row(
            "SELECT count(*) FROM block WHERE typeof(id) != 'blob' OR length(id) != 32 OR typeof(key) != 'blob' OR length(key) != 32",
            [],
            |r| r.get(0),
        )
        .expect("q");
    assert_eq!(bad, 0);
    let bad: i64 = db
        .query_row(
            "SELECT count(*) FROM extra WHERE typeof(data) != 'blob'",
            [],
            |r| r.get(0),
        )
        .expect("q");
    assert_eq!(bad, 0);

    // Walk every inode from the root by parent links and rebuild paths.
    let mut rows = db
        .prepare("SELECT ino, parent, name, size, mode, uid, gid, mtime FROM inode")
        .expect("q");
    let inodes: Vec<InodeRow> = rows
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .expect("q")
        .collect::<Result<_, _>>()
        .expect("rows");
    let by_ino: HashMap<i64, _> = inodes.iter().map(|i| (i.0, i.clone())).collect();
    let path_of = |mut ino: i64| -> PathBuf {
        let mut parts = Vec::new();
        while ino != 1 {
            let i = &by_ino[&ino];
            parts.push(i.2.clone());
            ino = i.1;
        }
        parts.iter().rev().collect()
    };
    let mut checked_files = 0;
    for (ino, _, _, size, mode, uid, gid, mtime) in &inodes {
        if *ino == 1 {
            continue;
        }
        let rel = path_of(*ino);
        let on_disk = src.join(&rel);
        let m = std::fs::symlink_metadata(&on_disk)
            .unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(*mode as u32, m.mode(), "{}", rel.display());
        assert_eq!(
            (*uid as u32, *gid as u32),
            (m.uid(), m.gid()),
            "{}",
            rel.display()
        );
        assert_eq!(*mtime, m.mtime(), "{}", rel.display());
        match (*mode as u32) & 0o170000 {
            0o100000 => {
                assert_eq!(*size as u64, m.size());
                let mut st = db
                    .prepare("SELECT id, key FROM block WHERE ino = ?")
                    .expect("q");
                let blocks: Vec<(Vec<u8>, Vec<u8>)> = st
                    .query_map([ino], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("q")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                let want = std::fs::read(&on_disk).expect("read");
                if want.is_empty() {
                    assert!(blocks.is_empty(), "empty files have no block rows");
                }
                let mut got = Vec::new();
                for (n, (id, key)) in blocks.iter().enumerate() {
                    let p = decode_block(&stores, id, key);
                    if n + 1 < blocks.len() {
                        assert_eq!(p.len(), CHUNK, "every chunk but the last is 512 KiB");
                    }
                    got.extend_from_slice(&p);
                }
                assert_eq!(got, want, "{}", rel.display());
                checked_files += 1;
            }
            0o120000 => {
                let data: Vec<u8> = db
                    .query_row("SELECT data FROM extra WHERE ino = ?", [ino], |r| r.get(0))
                    .expect("target");
                use std::os::unix::ffi::OsStrExt as _;
                assert_eq!(
                    data,
                    std::fs::read_link(&on_disk)
                        .expect("readlink")
                        .as_os_str()
                        .as_bytes()
                );
            }
            0o040000 => {
                let n: i64 = db
                    .query_row("SELECT count(*) FROM block WHERE ino = ?", [ino], |r| {
                        r.get(0)
                    })
                    .expect("q");
                assert_eq!(n, 0);
            }
            other => panic!("unexpected type {other:o}"),
        }
    }
    assert!(checked_files >= 10, "{checked_files}");
}

/// Spec §12 V2, built with plain SQL exactly as listed, read by our reader through a dir
/// store holding the V1 block.
#[tokio::test]
async fn vector_v2_is_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fl = tmp.path().join("v2.fl");
    let db = Connection::open(&fl).expect("create");
    db.execute_batch(
        "CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255), size INTEGER,
           uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, mtime INTEGER);
         CREATE INDEX parents ON inode (parent);
         CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
         CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
         CREATE INDEX block_ino ON block (ino);
         CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
         CREATE TABLE route (start integer, end integer, url VARCHAR(2048));
         INSERT INTO inode VALUES (1, 0, '/', 4096, 0, 0, 16877, 0, 1700000000, 1700000000);
         INSERT INTO inode VALUES (2, 1, 'hello.txt', 12, 1000, 1000, 33188, 0, 1700000000, 1700000000);
         INSERT INTO inode VALUES (3, 1, 'link', 9, 0, 0, 41471, 0, 1700000000, 1700000000);
         INSERT INTO extra VALUES (3, X'68656c6c6f2e747874');
         INSERT INTO block VALUES (2, X'd139c46e6cc65acfa2eef1d0cd7abf014667fdc9a5ca75d9184671f97301a0db',
                                      X'c71b05fd1d1c7bf7e928ff18e58db5193e9316416cc26ba9cc9094da80d7011e');
         INSERT INTO route VALUES (0, 255, 'zdb://hub.grid.tf:9900/myns');",
    )
    .expect("v2");
    drop(db);
    // The V1 block, in a local dir store standing in for the zdb route.
    let store = tmp.path().join("store");
    std::fs::create_dir_all(store.join("d1")).expect("mkdir");
    std::fs::write(
        store.join("d1/d139c46e6cc65acfa2eef1d0cd7abf014667fdc9a5ca75d9184671f97301a0db"),
        hex::decode("e565e4a3ac6198a15bf18a61f66ca364542240205ab53f72e221a7bc1837").expect("hex"),
    )
    .expect("write");
    let reader = zos_flist::Reader::open(&fl).expect("open");
    let routes = reader.routes().expect("routes");
    assert_eq!(routes[0].url, "zdb://hub.grid.tf:9900/myns");
    assert!(
        Flist::open(&fl).is_ok(),
        "zdb route is accepted (connects lazily)"
    );
    let router = Router::from_specs(&[format!("dir://{}", store.display())]).expect("router");
    let flist = Flist::open_with(&fl, router).expect("open");
    let hello = flist
        .reader
        .lookup(1, "hello.txt")
        .expect("q")
        .expect("found");
    assert_eq!((hello.ino, hello.size, hello.mode), (2, 12, 0o100644));
    let link = flist.reader.lookup(1, "link").expect("q").expect("found");
    assert_eq!(link.data.as_deref(), Some(&b"hello.txt"[..]));
    let blocks = flist.reader.blocks(2).expect("blocks");
    let cache = BlockCache::new(tmp.path().join("cache"));
    let data =
        zos_flist::cache::read_file_range(&cache, &flist.router, &blocks, hello.size, 0, 4096)
            .await
            .expect("read");
    assert_eq!(data, b"hello world\n");
    // Cache layout <cache>/d1/39/<hex>, plaintext content.
    let cached = tmp
        .path()
        .join("cache/d1/39/d139c46e6cc65acfa2eef1d0cd7abf014667fdc9a5ca75d9184671f97301a0db");
    assert_eq!(std::fs::read(cached).expect("cached"), b"hello world\n");
}

#[test]
fn not_an_flist_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let junk = tmp.path().join("junk.fl");
    std::fs::write(&junk, b"this is not sqlite at all, just bytes").expect("write");
    assert!(zos_flist::Reader::open(&junk).is_err());
    let empty_db = tmp.path().join("empty.fl");
    Connection::open(&empty_db)
        .expect("db")
        .execute_batch("CREATE TABLE t (x)")
        .expect("t");
    let e = zos_flist::Reader::open(&empty_db).expect_err("no tables");
    assert!(e.to_string().contains("not an .fl"), "{e}");
    assert!(zos_flist::Reader::open(Path::new("/nonexistent/x.fl")).is_err());
}
