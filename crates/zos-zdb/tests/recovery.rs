//! Recovery of damaged files: torn data and index tails, missing index, garbage, bit rot.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use common::*;
use redis::Value;

fn value(i: usize) -> String {
    format!("value-{i}-{}", "z".repeat(i * 7 % 300))
}

/// A server with keys k0..k99 written, stopped cleanly; returns its directory.
fn populated() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    for i in 0..100 {
        q(&mut c, &["SET", &format!("k{i}"), &value(i)]).unwrap();
    }
    q(&mut c, &["SET", "k5", "second-version"]).unwrap();
    drop(c);
    s.stop();
    let d = dir.path().join("data/default/d0");
    let i = dir.path().join("index/default/i0");
    (dir, d, i)
}

fn check_all(s: &TestServer, upto: usize) {
    let mut c = s.con();
    for i in 0..upto {
        let want = if i == 5 {
            "second-version".to_string()
        } else {
            value(i)
        };
        assert_eq!(
            q(&mut c, &["GET", &format!("k{i}")]),
            bulk(want.as_bytes()),
            "k{i}"
        );
    }
    let Ok(Value::Array(h)) = q(&mut c, &["HISTORY", "k5"]) else {
        panic!()
    };
    let Value::BulkString(p) = &h[0] else {
        panic!("k5 has a parent")
    };
    let Ok(Value::Array(h)) = qb(&mut c, &[b"HISTORY", b"k5", p]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(value(5).into_bytes()));
}

fn append(path: &PathBuf, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn torn_data_tail_is_truncated() {
    let (dir, d, _) = populated();
    let good = fs::metadata(&d).unwrap().len();
    // Half of an entry: a header announcing more bytes than follow.
    let mut torn = vec![0u8; 20];
    torn[5] = 3;
    torn[8..12].copy_from_slice(&1000u32.to_le_bytes());
    torn.extend_from_slice(b"k10partial");
    append(&d, &torn);
    let s = TestServer::start(config(dir.path()));
    assert_eq!(fs::metadata(&d).unwrap().len(), good);
    check_all(&s, 100);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SET", "after", "x"]), bulk(b"after"));
    drop(c);
    let s = s.restart();
    check_all(&s, 100);
    assert_eq!(q(&mut s.con(), &["GET", "after"]), bulk(b"x"));
}

#[test]
fn torn_or_missing_index_is_rebuilt_from_data() {
    // Torn index tail: the lost entries come back from the data file.
    let (dir, _, i) = populated();
    let good = fs::metadata(&i).unwrap().len();
    let f = OpenOptions::new().write(true).open(&i).unwrap();
    f.set_len(good - 100).unwrap();
    drop(f);
    let s = TestServer::start(config(dir.path()));
    assert_eq!(fs::metadata(&i).unwrap().len(), good);
    check_all(&s, 100);
    assert_eq!(q(&mut s.con(), &["DBSIZE"]), int(100));
    drop(s);

    // Garbage after the last index entry.
    append(
        &i,
        b"\x01garbage garbage garbage garbage garbage garbage garbage",
    );
    let s = TestServer::start(config(dir.path()));
    assert_eq!(fs::metadata(&i).unwrap().len(), good);
    check_all(&s, 100);
    drop(s);

    // No index at all.
    fs::remove_file(&i).unwrap();
    let s = TestServer::start(config(dir.path()));
    check_all(&s, 100);
    assert_eq!(fs::metadata(&i).unwrap().len(), good);
}

#[test]
fn index_ahead_of_data_is_rebuilt() {
    // The data file lost its last entry (power loss before an unacknowledged write reached
    // the disk) while the index has it: the index is rebuilt and the key is simply absent.
    let (dir, d, _) = populated();
    let len = fs::metadata(&d).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&d)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    // The last write was the k5 overwrite: k5 is back to its first version.
    assert_eq!(q(&mut c, &["GET", "k5"]), bulk(value(5).as_bytes()));
    for i in 0..100 {
        assert_eq!(
            q(&mut c, &["GET", &format!("k{i}")]),
            bulk(value(i).as_bytes())
        );
    }
}

#[test]
fn bit_rot_is_detected_not_returned() {
    let (dir, d, _) = populated();
    let mut b = fs::read(&d).unwrap();
    // Flip a byte inside k0's payload (first entry: 24-byte header, 20-byte entry header, key).
    b[24 + 20 + 2 + 3] ^= 0x55;
    fs::write(&d, &b).unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    assert_eq!(q(&mut c, &["GET", "k0"]), e("Internal Error"));
    assert_eq!(q(&mut c, &["CHECK", "k0"]), int(0));
    assert_eq!(q(&mut c, &["CHECK", "k1"]), int(1));
    assert_eq!(q(&mut c, &["GET", "k1"]), bulk(value(1).as_bytes()));
}

/// The read cache answers GET, but CHECK always reads the disk: rot under a cached value is
/// still reported.
#[test]
fn check_reads_the_disk_even_when_the_value_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    q(&mut c, &["SET", "k0", &value(0)]).unwrap();
    assert_eq!(q(&mut c, &["GET", "k0"]), bulk(value(0).as_bytes()));
    let info = info_field(&mut c, "cache_hits");
    assert!(info >= 1, "the GET after SET is a cache hit");
    let d = dir.path().join("data/default/d0");
    let mut b = fs::read(&d).unwrap();
    b[24 + 20 + 2 + 3] ^= 0x55;
    fs::write(&d, &b).unwrap();
    assert_eq!(q(&mut c, &["GET", "k0"]), bulk(value(0).as_bytes()));
    assert_eq!(q(&mut c, &["CHECK", "k0"]), int(0));
}

fn info_field(c: &mut redis::Connection, name: &str) -> u64 {
    let Ok(Value::BulkString(text)) = q(c, &["INFO"]) else {
        panic!("INFO")
    };
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{name} in INFO:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn missing_data_file_is_an_error_not_an_empty_namespace() {
    let (dir, d, _) = populated();
    fs::remove_file(&d).unwrap();
    let err = zos_zdb::engine::Engine::open(zos_zdb::engine::EngineConfig {
        data_dir: dir.path().join("data"),
        index_dir: dir.path().join("index"),
        mode: None,
        sync: false,
        datasize: zos_zdb::DEFAULT_DATASIZE,
        cache_bytes: 0,
        strict_index: false,
        at_rest_key: None,
    })
    .err()
    .expect("opening must fail");
    assert!(err.to_string().contains("data file missing"), "{err}");
}
