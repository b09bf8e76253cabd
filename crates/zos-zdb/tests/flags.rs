//! Upstream's server flags beyond the basics: --secure, --maxsize, --rotate, --dualnet.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sha1::Digest as _;

#[test]
fn secure_refuses_clear_text_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.secure = true;
    let s = TestServer::start(cfg);
    let mut c = s.con();
    let refused = e("Plain-text password refused (--secure): use the SECURE challenge");
    assert_eq!(q(&mut c, &["AUTH", "root"]), refused);
    assert_eq!(q(&mut c, &["SELECT", "default", "root"]), refused);
    let ch = match q(&mut c, &["AUTH", "SECURE", "CHALLENGE"]) {
        Ok(redis::Value::SimpleString(s)) => s,
        other => panic!("{other:?}"),
    };
    let h = hex::encode(sha1::Sha1::digest(format!("{ch}:root").as_bytes()));
    assert_eq!(q(&mut c, &["AUTH", "SECURE", &h]), ok());
    assert_eq!(q(&mut c, &["NSNEW", "x"]), ok());
}

#[test]
fn maxsize_limits_the_default_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.default_maxsize = Some(10);
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SET", "a", "12345"]), bulk(b"a"));
    assert_eq!(
        q(&mut c, &["SET", "b", "123456"]),
        e("No space left on this namespace")
    );
    assert!(text(q(&mut s.admin(), &["NSINFO", "default"])).contains("data_limits_bytes: 10"));
}

#[test]
fn rotate_starts_new_files_on_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rotate = 1;
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SET", "a", "1"]), bulk(b"a"));
    let d1 = dir.path().join("data/default/d1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d1.exists() {
        assert!(Instant::now() < deadline, "no rotation");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing written since: no further rotation.
    std::thread::sleep(Duration::from_millis(2200));
    assert!(!dir.path().join("data/default/d2").exists());
    assert_eq!(q(&mut c, &["GET", "a"]), bulk(b"1"));
}

#[test]
fn dualnet_serves_both_families() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no IPv6 loopback on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.dualnet = true;
    let s = TestServer::start(cfg);
    let port = s.addr.port();
    for url in [
        format!("redis://127.0.0.1:{port}/"),
        format!("redis://[::1]:{port}/"),
    ] {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        assert_eq!(
            q(&mut c, &["PING"]),
            Ok(redis::Value::SimpleString("PONG".into())),
            "{url}"
        );
    }
}
