//! Legacy `.flist` (tar.gz + SQLite + capnp): a fixture written here with the capnp crate's
//! builders per the schema, blocks XXTEA+snappy in our ZeroDB under 16-byte keys; open, walk,
//! unpack and compare; XXTEA checked against the `xxtea` crate rfs v1 decrypts with;
//! malformed archives and records are errors, never panics.
#![allow(missing_docs)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use common::*;
use zos_flist::legacy::{
    self, LegacyError, LegacyFlist, LegacyKind, LegacyStore, ROOT_KEY, blake2b_16_hex,
};
use zos_flist::legacy_capnp::{a_c_i, dir, special};

enum Kind<'a> {
    Dir(&'a str),
    File(Vec<(Vec<u8>, Vec<u8>)>),
    Link(&'a str),
    Chardev(&'a str),
}

struct Ent<'a> {
    name: &'a str,
    size: u64,
    acl: &'a str,
    kind: Kind<'a>,
}

fn dir_record(name: &str, parent: &str, acl: &str, ents: &[Ent<'_>]) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut d = msg.init_root::<dir::Builder<'_>>();
    d.set_name(name);
    d.set_location(name);
    d.set_parent(parent);
    d.set_size(4096);
    d.set_aclkey(acl);
    d.set_modification_time(1_600_000_000);
    let mut c = d.init_contents(ents.len() as u32);
    for (i, e) in ents.iter().enumerate() {
        let mut n = c.reborrow().get(i as u32);
        n.set_name(e.name);
        n.set_size(e.size);
        n.set_aclkey(e.acl);
        n.set_modification_time(1_650_000_000 + i as u32);
        let a = n.init_attributes();
        match &e.kind {
            Kind::Dir(key) => a.init_dir().set_key(*key),
            Kind::File(blocks) => {
                let mut f = a.init_file();
                f.set_block_size(128);
                let mut l = f.init_blocks(blocks.len() as u32);
                for (j, (hash, key)) in blocks.iter().enumerate() {
                    let mut b = l.reborrow().get(j as u32);
                    b.set_hash(hash);
                    b.set_key(key);
                }
            }
            Kind::Link(t) => a.init_link().set_target(*t),
            Kind::Chardev(data) => {
                let mut s = a.init_special();
                s.set_type(special::Type::Chardev);
                s.set_data(data.as_bytes());
            }
        }
    }
    capnp::serialize::write_message_to_words(&msg)
}

fn acl_record(mode: u16, uid: i64, gid: i64, uname: &str, gname: &str) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut a = msg.init_root::<a_c_i::Builder<'_>>();
    a.set_mode(mode);
    a.set_uid(uid);
    a.set_gid(gid);
    a.set_uname(uname);
    a.set_gname(gname);
    capnp::serialize::write_message_to_words(&msg)
}

/// (hash, key) rows of a file, or (hash, blob) pairs for the store.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits `data` into 512 KiB legacy blocks; returns the (hash, key) list and the blobs.
fn blocks(data: &[u8]) -> (Pairs, Pairs) {
    let mut rows = Vec::new();
    let mut blobs = Vec::new();
    for c in data.chunks(CHUNK) {
        let b = legacy::encode_block(c).expect("encode");
        rows.push((b.hash.clone(), b.key));
        blobs.push((b.hash, b.blob));
    }
    (rows, blobs)
}

/// The database: `(key, value)` rows and a `backend` tag.
fn write_db(path: &Path, rows: &[(String, Vec<u8>)], backend: Option<&str>) {
    let c = rusqlite::Connection::open(path).expect("db");
    c.execute_batch(
        "CREATE TABLE entries (key VARCHAR(64) PRIMARY KEY, value BLOB);
         CREATE INDEX entries_index ON entries (key);
         CREATE TABLE metadata (key VARCHAR(64) PRIMARY KEY, value TEXT);",
    )
    .expect("schema");
    for (k, v) in rows {
        c.execute("INSERT INTO entries VALUES (?, ?)", rusqlite::params![k, v])
            .expect("row");
    }
    if let Some(b) = backend {
        c.execute("INSERT INTO metadata VALUES ('backend', ?)", [b])
            .expect("tag");
    }
}

fn tar_gz(db: &Path, out: &Path) {
    let f = std::fs::File::create(out).expect("create");
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append_path_with_name(db, "flistdb.sqlite3")
        .expect("append");
    b.into_inner()
        .expect("tar")
        .finish()
        .expect("gz")
        .flush()
        .expect("flush");
}

async fn zdb(tmp: &Path) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let cfg = zos_zdb::ServerConfig {
        data_dir: tmp.join("zdb-data"),
        index_dir: tmp.join("zdb-index"),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        socket: None,
        ..Default::default()
    };
    let server = zos_zdb::Server::bind(cfg).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[test]
fn xxtea_matches_the_crate_rfs_v1_uses() {
    // ASCII keys: the crate takes the key as &str (rfs v1 passes the raw bytes that way).
    let key = "0123456789abcdef";
    for len in [1usize, 3, 4, 5, 8, 13, 100, 4097] {
        let data = bytes(len, len as u64);
        let enc = legacy::xxtea_encrypt(&data, key.as_bytes());
        assert_eq!(xxtea::decrypt(&enc, key), data, "len {len}");
        assert_eq!(legacy::xxtea_decrypt(&enc, key.as_bytes()), Some(data));
    }
    // Malformed input is None, never a panic (the crate asserts and indexes out of bounds).
    for junk in [&b""[..], b"1234", b"123456789", &[0xff; 64]] {
        assert!(legacy::xxtea_decrypt(junk, key.as_bytes()).is_none());
    }
    // A wrong key fails the length check or snappy, not silently.
    let b = legacy::encode_block(b"hello legacy world").expect("encode");
    assert_eq!(
        legacy::decode_block(&b.blob, &b.key).expect("decode"),
        b"hello legacy world"
    );
    assert!(legacy::decode_block(&b.blob, &[7u8; 16]).is_err());
    // V3: the root key is BLAKE2b-16 of the empty path.
    assert_eq!(blake2b_16_hex(b""), ROOT_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_flist_walks_and_unpacks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let (addr, _stop) = zdb(t).await;

    let big = bytes(2 * CHUNK + 100, 9);
    let (hello_rows, hello_blobs) = blocks(b"hello world\n");
    let (big_rows, big_blobs) = blocks(&big);
    let (conf_rows, conf_blobs) = blocks(b"x=1\n");
    // Blocks into the store under their 16-byte hashes.
    let client = redis::Client::open(format!("redis://{addr}")).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    for (h, b) in hello_blobs.iter().chain(&big_blobs).chain(&conf_blobs) {
        let _: redis::Value = redis::cmd("SET")
            .arg(&h[..])
            .arg(&b[..])
            .query_async(&mut c)
            .await
            .expect("set");
    }

    let (etc, sub) = (blake2b_16_hex(b"etc"), blake2b_16_hex(b"etc/sub"));
    let acl_root = blake2b_16_hex(b"acl-root");
    let acl_user = blake2b_16_hex(b"acl-user");
    let acl_byname = blake2b_16_hex(b"acl-byname");
    let acl_private = blake2b_16_hex(b"acl-private");
    let root = dir_record(
        "",
        "",
        &acl_root,
        &[
            Ent {
                name: "hello.txt",
                size: 12,
                acl: &acl_user,
                kind: Kind::File(hello_rows),
            },
            Ent {
                name: "big.bin",
                size: big.len() as u64,
                acl: &acl_root,
                kind: Kind::File(big_rows),
            },
            Ent {
                name: "empty",
                size: 0,
                acl: &acl_user,
                kind: Kind::File(vec![]),
            },
            Ent {
                name: "link",
                size: 9,
                acl: &acl_root,
                kind: Kind::Link("hello.txt"),
            },
            Ent {
                name: "null",
                size: 0,
                acl: &acl_root,
                kind: Kind::Chardev("1,3"),
            },
            Ent {
                name: "etc",
                size: 4096,
                acl: &acl_root,
                kind: Kind::Dir(&etc),
            },
        ],
    );
    let etc_rec = dir_record(
        "etc",
        ROOT_KEY,
        &acl_root,
        &[
            Ent {
                name: "conf",
                size: 4,
                acl: &acl_byname,
                kind: Kind::File(conf_rows),
            },
            Ent {
                name: "sub",
                size: 4096,
                acl: &acl_private,
                kind: Kind::Dir(&sub),
            },
        ],
    );
    let sub_rec = dir_record("sub", &etc, &acl_private, &[]);
    let rows = vec![
        (ROOT_KEY.to_string(), root),
        (etc.clone(), etc_rec),
        (sub.clone(), sub_rec),
        (acl_root, acl_record(0o755, 0, 0, "root", "root")),
        (acl_user, acl_record(0o640, 1000, 1001, "user", "user")),
        // −1: resolved by name on this host (root → 0), unknown names → 1000 (rfs v1).
        (
            acl_byname,
            acl_record(0o600, -1, -1, "root", "no-such-group-zos"),
        ),
        (acl_private, acl_record(0o700, 0, 0, "root", "root")),
    ];
    let db = t.join("flistdb.sqlite3");
    let backend = format!(r#"{{"host": "{}", "port": {}}}"#, addr.ip(), addr.port());
    write_db(&db, &rows, Some(&backend));
    let flist = t.join("img.flist");
    tar_gz(&db, &flist);
    assert!(legacy::is_legacy(&flist));

    let fl = LegacyFlist::open(&flist, &t.join("work")).expect("open");
    let store_url = fl.backend().expect("backend").expect("tag");
    assert_eq!(store_url, format!("zdb://{addr}"));
    let entries = fl.walk().expect("walk");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "",
            "hello.txt",
            "big.bin",
            "empty",
            "link",
            "null",
            "etc",
            "etc/conf",
            "etc/sub"
        ]
    );
    let get = |p: &str| entries.iter().find(|e| e.path == p).expect("entry");
    assert_eq!(
        (
            get("hello.txt").mode,
            get("hello.txt").uid,
            get("hello.txt").gid
        ),
        (0o100640, 1000, 1001)
    );
    assert_eq!((get("etc/conf").uid, get("etc/conf").gid), (0, 1000));
    assert_eq!(get("etc/sub").mode, 0o040700);
    assert_eq!(
        get("null").kind,
        LegacyKind::Special {
            kind: 0o020000,
            rdev: 0x103
        }
    );
    assert_eq!(get("link").kind, LegacyKind::Link("hello.txt".into()));

    let store = LegacyStore::from_url(&store_url).expect("store");
    let out = t.join("out");
    let cache = t.join("cache");
    let report = legacy::unpack(&fl, &store, Some(&cache), &out, is_root())
        .await
        .expect("unpack");
    assert_eq!(report.skipped, 1);
    assert_eq!(
        std::fs::read(out.join("hello.txt")).expect("r"),
        b"hello world\n"
    );
    assert_eq!(std::fs::read(out.join("big.bin")).expect("r"), big);
    assert_eq!(std::fs::read(out.join("empty")).expect("r"), b"");
    assert_eq!(std::fs::read(out.join("etc/conf")).expect("r"), b"x=1\n");
    assert_eq!(
        std::fs::read_link(out.join("link")).expect("readlink"),
        Path::new("hello.txt")
    );
    let m = std::fs::metadata(out.join("hello.txt")).expect("stat");
    assert_eq!((m.mode(), m.mtime()), (0o100640, 1_650_000_000));
    assert_eq!(
        std::fs::metadata(out.join("etc/sub")).expect("stat").mode(),
        0o040700
    );
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
    }
    // Every block is in the legacy cache layout hh/hh/<hex>; a second unpack needs no store.
    let h = hex::encode(&big_blobs[0].0);
    assert!(cache.join(&h[0..2]).join(&h[2..4]).join(&h).is_file());
    let offline = LegacyStore::from_url("redis://127.0.0.1:1").expect("store");
    legacy::unpack(&fl, &offline, Some(&cache), &t.join("out2"), false)
        .await
        .expect("unpack from cache");
    diff_r(&out, &t.join("out2"));
    drop(fl);
    assert_eq!(
        std::fs::read_dir(t.join("work")).expect("ls").count(),
        0,
        "extracted db removed on drop"
    );

    // A block missing from the store, or a wrong key: an error naming the block.
    let mut bad_rows = rows.clone();
    let broken = dir_record(
        "",
        "",
        "",
        &[Ent {
            name: "f",
            size: 4,
            acl: "",
            kind: Kind::File(vec![(vec![0xab; 16], vec![1; 16])]),
        }],
    );
    bad_rows[0].1 = broken;
    let db2 = t.join("broken.sqlite3");
    write_db(&db2, &bad_rows, None);
    let fl2 = LegacyFlist::open(&db2, &t.join("work")).expect("bare db");
    let e = legacy::unpack(&fl2, &store, None, &t.join("out3"), false)
        .await
        .expect_err("missing block");
    assert!(e.to_string().contains(&"ab".repeat(16)), "{e}");
}

#[test]
fn malformed_legacy_flists_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let work = t.join("work");
    // Not a tar; a tar without the db; a db that is not a legacy flist (an `.fl`-like one).
    std::fs::write(t.join("junk"), b"not an archive at all, just text").expect("w");
    assert!(LegacyFlist::open(&t.join("junk"), &work).is_err());
    let empty = t.join("empty.tar");
    tar::Builder::new(std::fs::File::create(&empty).expect("c"))
        .finish()
        .expect("tar");
    assert!(matches!(
        LegacyFlist::open(&empty, &work),
        Err(LegacyError::Format(_))
    ));
    let other = t.join("other.sqlite3");
    rusqlite::Connection::open(&other)
        .expect("db")
        .execute_batch("CREATE TABLE inode (ino INTEGER)")
        .expect("schema");
    assert!(!legacy::is_legacy(&other));
    assert!(LegacyFlist::open(&other, &work).is_err());

    let walk = |rows: Vec<(String, Vec<u8>)>| {
        let db = t.join(format!("db-{}.sqlite3", rand_name()));
        write_db(&db, &rows, None);
        LegacyFlist::open(&db, &work).expect("open").walk()
    };
    // Root missing; garbage capnp; a truncated record; a cycle; a bad name.
    assert!(walk(vec![]).is_err());
    assert!(
        walk(vec![(
            ROOT_KEY.into(),
            b"\xff\xff\xff\xff garbage".to_vec()
        )])
        .is_err()
    );
    let good = dir_record("", "", "", &[]);
    assert!(walk(vec![(ROOT_KEY.into(), good[..good.len() / 2].to_vec())]).is_err());
    let cyc = dir_record(
        "",
        "",
        "",
        &[Ent {
            name: "loop",
            size: 0,
            acl: "",
            kind: Kind::Dir(ROOT_KEY),
        }],
    );
    let e = walk(vec![(ROOT_KEY.into(), cyc)]).expect_err("cycle");
    assert!(e.to_string().contains("used twice"), "{e}");
    let dotdot = dir_record(
        "",
        "",
        "",
        &[Ent {
            name: "..",
            size: 0,
            acl: "",
            kind: Kind::Link("/etc/shadow"),
        }],
    );
    assert!(walk(vec![(ROOT_KEY.into(), dotdot)]).is_err());
    // Random bytes as records never panic.
    for seed in 0..200u64 {
        let junk = bytes((seed as usize * 7) % 300 + 1, seed);
        let _ = walk(vec![(ROOT_KEY.into(), junk)]);
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
