//! MIRROR/MASTER: a mirror receives every write of its master in order and catches up after
//! a crash (in-process servers; the kill -9 of a real process is in
//! `crates/zos/tests/zdb_compat.rs`).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::Value;
use zos_zdb::{Replication, ServerConfig};

fn mirror_config(dir: &std::path::Path, master: std::net::SocketAddr) -> ServerConfig {
    let mut cfg = config(dir);
    cfg.replicate_from = Some(Replication {
        master,
        password: Some("root".into()),
    });
    cfg
}

/// Every namespace's (settings, entries) as the dump prints them, minus file sizes (the
/// mirror rotates its files on its own).
fn state(dir: &std::path::Path) -> String {
    let mut out = Vec::new();
    zos_zdb::tools::dump(&dir.join("data"), &dir.join("index"), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("file "))
        .map(|l| {
            // Drop locations ([file:off], data@, parent): they depend on rotation.
            match l.find("] key") {
                Some(i) => {
                    let rest = &l[i + 2..];
                    rest.split(" data@").next().unwrap().to_string()
                }
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn dbsize(c: &mut redis::Connection, ns: &str) -> i64 {
    assert_eq!(q(c, &["SELECT", ns]), ok());
    match q(c, &["DBSIZE"]) {
        Ok(Value::Int(n)) => n,
        other => panic!("{other:?}"),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_mirror_follows_its_master_and_catches_up_after_a_crash() {
    let mdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let master = TestServer::start(config(mdir.path()));
    let mut a = master.admin();
    assert_eq!(q(&mut a, &["NSNEW", "s"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "s", "mode", "seq"]), ok());
    assert_eq!(q(&mut a, &["NSNEW", "p"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "p", "password", "pw"]), ok());
    for i in 0..300 {
        q(&mut a, &["SET", &format!("k{i}"), &format!("v{i}")]).unwrap();
    }
    let mirror = TestServer::start(mirror_config(rdir.path(), master.addr));
    // Writes after the mirror attached, in three namespaces, with updates and deletes.
    for i in 0..300 {
        q(&mut a, &["SET", &format!("k{i}"), &format!("w{i}")]).unwrap();
    }
    for i in 0..50 {
        assert_eq!(q(&mut a, &["DEL", &format!("k{}", i * 3)]), ok());
    }
    assert_eq!(q(&mut a, &["SELECT", "s"]), ok());
    for i in 0..40 {
        q(&mut a, &["SET", "", &format!("seq{i}")]).unwrap();
    }
    let id3 = 3u64.to_le_bytes();
    assert_eq!(
        qb(&mut a, &[b"SET", &id3, b"updated"]),
        Ok(Value::BulkString(id3.to_vec()))
    );
    assert_eq!(q(&mut a, &["SELECT", "p", "pw"]), ok());
    q(&mut a, &["SET", "secret", "x"]).unwrap();

    let mut r = mirror.admin();
    wait_for("the mirror", || {
        dbsize(&mut r, "default") == 250 && dbsize(&mut r, "s") == 40 && {
            q(&mut r, &["SELECT", "p", "pw"]) == ok() && q(&mut r, &["DBSIZE"]) == int(1)
        }
    });
    assert_eq!(q(&mut r, &["SELECT", "default"]), ok());
    assert_eq!(q(&mut r, &["GET", "k1"]), bulk(b"w1"));
    assert_eq!(q(&mut r, &["GET", "k3"]), nil());
    assert_eq!(
        q(&mut r, &["SET", "x", "y"]),
        e("Read-only mirror: writes go to its master")
    );
    assert_eq!(q(&mut r, &["SELECT", "s"]), ok());
    assert_eq!(qb(&mut r, &[b"GET", &id3]), bulk(b"updated"));
    // The mirror's seq ids continue exactly as the master's.
    assert!(text(q(&mut r, &["NSINFO", "s"])).contains("next_internal_id: 41"));
    assert!(text(q(&mut a, &["NSINFO", "s"])).contains("next_internal_id: 41"));

    // Crash the mirror, write more (and wipe, and delete a namespace), restart it.
    drop(r);
    let rcfg = mirror.crash();
    assert_eq!(q(&mut a, &["SELECT", "default"]), ok());
    for i in 0..500 {
        q(&mut a, &["SET", &format!("after{i}"), "z"]).unwrap();
    }
    assert_eq!(q(&mut a, &["SELECT", "p", "pw"]), ok());
    assert_eq!(q(&mut a, &["FLUSH"]), ok());
    q(&mut a, &["SET", "fresh", "1"]).unwrap();
    assert_eq!(q(&mut a, &["SELECT", "default"]), ok());
    assert_eq!(q(&mut a, &["NSNEW", "late"]), ok());
    assert_eq!(q(&mut a, &["NSDEL", "s"]), ok());
    let mirror = TestServer::start(rcfg);
    let mut r = mirror.admin();
    wait_for("the catch-up", || {
        dbsize(&mut r, "default") == 750
            && q(&mut r, &["SELECT", "s"]) == e("Namespace not found")
            && q(&mut r, &["SELECT", "late"]) == ok()
    });
    assert_eq!(q(&mut r, &["SELECT", "p", "pw"]), ok());
    wait_for("the flush", || q(&mut r, &["DBSIZE"]) == int(1));
    assert_eq!(q(&mut r, &["GET", "fresh"]), bulk(b"1"));
    drop((a, r));
    master.stop();
    mirror.stop();
    assert_eq!(state(mdir.path()), state(rdir.path()));
}

#[test]
fn mirror_needs_the_admin_and_master_keeps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mode = Some(zos_zdb::Mode::Seq);
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["MIRROR"]), e("Permission denied"));
    assert_eq!(q(&mut c, &["MASTER"]), e("Permission denied"));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["MASTER"]), ok());
    // A sync source writes the master's ids as they are, timestamps too.
    let id5 = 5u64.to_le_bytes();
    assert_eq!(
        qb(&mut a, &[b"SET", &id5, b"v", b"1234"]),
        Ok(Value::BulkString(id5.to_vec()))
    );
    assert_eq!(qb(&mut a, &[b"KEYTIME", &id5]), int(1234));
    assert_eq!(
        q(&mut c, &["SET", "", "next"]),
        Ok(Value::BulkString(6u64.to_le_bytes().to_vec()))
    );
    assert_eq!(
        qb(&mut c, &[b"SET", &2u64.to_le_bytes(), b"v"]),
        e("Invalid key, only update authorized")
    );
}
