//! Every command through the `redis` crate, against an in-process server.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use redis::Value;
use sha1::{Digest, Sha1};
use zos_zdb::Mode;

fn secure(challenge: &str, pw: &str) -> String {
    hex::encode(Sha1::digest(format!("{challenge}:{pw}").as_bytes()))
}

fn challenge(c: &mut redis::Connection) -> String {
    match q(c, &["AUTH", "SECURE", "CHALLENGE"]).unwrap() {
        Value::SimpleString(s) => s,
        v => panic!("challenge: {v:?}"),
    }
}

#[test]
fn basic_commands() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    assert_eq!(q(&mut c, &["PING"]), Ok(Value::SimpleString("PONG".into())));
    assert_eq!(q(&mut c, &["ECHO", "hi"]), bulk(b"hi"));
    let Ok(Value::Array(t)) = q(&mut c, &["TIME"]) else {
        panic!()
    };
    assert_eq!(t.len(), 2);
    assert!(text(q(&mut c, &["INFO"])).contains("server_name: 0-db (zdb)"));
    assert_eq!(q(&mut c, &["SET", "k", "v1"]), bulk(b"k"));
    assert_eq!(
        q(&mut c, &["SETX", "k", "v1"]),
        nil(),
        "unchanged value replies nil"
    );
    assert_eq!(q(&mut c, &["set", "k", "v2"]), bulk(b"k"));
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(b"v2"));
    assert_eq!(q(&mut c, &["GET", "missing"]), nil());
    assert_eq!(q(&mut c, &["EXISTS", "k"]), int(1));
    assert_eq!(q(&mut c, &["EXISTS", "missing"]), int(0));
    assert_eq!(q(&mut c, &["LENGTH", "k"]), int(2));
    assert_eq!(q(&mut c, &["LENGTH", "missing"]), nil());
    assert_eq!(q(&mut c, &["CHECK", "k"]), int(1));
    let Ok(Value::Int(ts)) = q(&mut c, &["KEYTIME", "k"]) else {
        panic!()
    };
    assert!(ts > 1_600_000_000);
    assert_eq!(
        q(&mut c, &["MGET", "k", "missing"]),
        Ok(Value::Array(vec![
            Value::BulkString(b"v2".to_vec()),
            Value::Nil
        ]))
    );
    assert_eq!(q(&mut c, &["DBSIZE"]), int(1));
    assert_eq!(q(&mut c, &["DEL", "k"]), ok());
    assert_eq!(q(&mut c, &["DEL", "k"]), e("Key not found"));
    assert_eq!(q(&mut c, &["GET", "k"]), nil());
    assert_eq!(q(&mut c, &["DBSIZE"]), int(0));
    assert_eq!(
        q(&mut c, &["SET", "", "v"]),
        e("Invalid argument, key needed")
    );
    let long = "x".repeat(256);
    // Upstream's answer for a key over 255 bytes, on every key command.
    for cmd in [
        &["SET", &long, "v"][..],
        &["GET", &long],
        &["EXISTS", &long],
        &["CHECK", &long],
        &["LENGTH", &long],
        &["KEYTIME", &long],
        &["DEL", &long],
    ] {
        assert_eq!(q(&mut c, cmd), e("Invalid key"), "{}", cmd[0]);
    }
    assert_eq!(
        q(&mut c, &["SET", &long[1..], "v"]),
        bulk(&long.as_bytes()[1..])
    );
    assert_eq!(q(&mut c, &["EXISTS", &long[1..]]), int(1));
    assert_eq!(q(&mut c, &["BOGUS"]), e("Command not supported"));
    assert_eq!(q(&mut c, &["GET"]), e("Unexpected arguments"));
    // Binary keys and values, and a value with CRLF inside.
    assert_eq!(
        qb(&mut c, &[b"SET", b"\x00\xff\r\n", b"a\r\nb\x00"]),
        bulk(b"\x00\xff\r\n")
    );
    assert_eq!(qb(&mut c, &[b"GET", b"\x00\xff\r\n"]), bulk(b"a\r\nb\x00"));
    // STOP is refused without the debug flag.
    assert_eq!(q(&mut c, &["STOP"]), e("Unauthorized"));
    // Pipelining: many requests in one write, replies in order.
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET").arg(format!("p{i}")).arg(format!("v{i}"));
        p.cmd("GET").arg(format!("p{i}"));
    }
    let r: Vec<Value> = p.query(&mut c).unwrap();
    for i in 0..200 {
        assert_eq!(r[2 * i], Value::BulkString(format!("p{i}").into_bytes()));
        assert_eq!(
            r[2 * i + 1],
            Value::BulkString(format!("v{i}").into_bytes())
        );
    }
}

#[test]
fn authentication_paths() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    assert_eq!(q(&mut c, &["NSNEW", "a"]), e("Permission denied"));
    assert_eq!(q(&mut c, &["AUTH", "wrong"]), e("Access denied"));
    assert_eq!(q(&mut c, &["NSNEW", "a"]), e("Permission denied"));
    assert_eq!(
        q(&mut c, &["SET", "k", "v", "12345"]),
        e("Permission denied"),
        "timestamp is admin-only"
    );
    // Secure challenge: wrong hash, replayed challenge, right hash.
    let ch = challenge(&mut c);
    assert_eq!(ch.len(), 16);
    assert_eq!(
        q(&mut c, &["AUTH", "SECURE", &secure(&ch, "nope")]),
        e("Access denied")
    );
    assert_eq!(
        q(&mut c, &["AUTH", "SECURE", &secure(&ch, "root")]),
        e("No challenge requested"),
        "single use"
    );
    let ch = challenge(&mut c);
    assert_eq!(q(&mut c, &["AUTH", "SECURE", &secure(&ch, "root")]), ok());
    assert_eq!(q(&mut c, &["NSNEW", "a"]), ok());
    // Plain AUTH on another connection.
    let mut c2 = s.con();
    assert_eq!(q(&mut c2, &["AUTH", "root"]), ok());
    assert_eq!(q(&mut c2, &["SET", "k", "v", "12345"]), bulk(b"k"));
    assert_eq!(q(&mut c2, &["KEYTIME", "k"]), int(12345));
    drop(s);

    // Without --admin every client is admin, as upstream (warned about at start).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.admin_password = None;
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["AUTH", "root"]), e("Authentication disabled"));
    assert_eq!(q(&mut c, &["NSNEW", "a"]), ok());
    assert_eq!(q(&mut c, &["NSSET", "a", "password", "pw"]), ok());
    assert_eq!(q(&mut c, &["SET", "k", "v", "12345"]), bulk(b"k"));
    assert_eq!(q(&mut c, &["KEYTIME", "k"]), int(12345));
    assert_eq!(q(&mut c, &["NSDEL", "a"]), ok());
}

/// The node's own ZeroDB always has an admin password: then no command reserved to the
/// admin runs before AUTH, on TCP or on the unix socket.
#[test]
fn an_admin_password_grants_nothing_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "x"]), ok());
    assert_eq!(q(&mut a, &["SET", "k", "v"]), bulk(b"k"));
    let unix = redis::Client::open(format!("unix://{}", s.socket.display()))
        .unwrap()
        .get_connection()
        .unwrap();
    for mut c in [s.con(), unix] {
        for cmd in [
            &["NSNEW", "y"][..],
            &["NSSET", "x", "public", "0"],
            &["NSDEL", "x"],
            &["NSJUMP"],
            &["INDEX", "DIRTY"],
            &["DATA", "RAW", "0", "29"],
            &["SET", "k", "w", "12345"],
        ] {
            assert_eq!(q(&mut c, cmd), e("Permission denied"), "{cmd:?}");
        }
        assert!(!text(q(&mut c, &["NSINFO", "default"])).contains("data_path"));
    }
    assert_eq!(q(&mut a, &["GET", "k"]), bulk(b"v"));
    assert_eq!(list_len(q(&mut a, &["NSLIST"])), 2);
}

fn list_len(v: Result<Value, String>) -> usize {
    match v {
        Ok(Value::Array(a)) => a.len(),
        other => panic!("expected an array, got {other:?}"),
    }
}

#[test]
fn namespaces_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "ns1"]), ok());
    assert_eq!(
        q(&mut a, &["NSNEW", "ns1"]),
        e("This namespace is not available")
    );
    assert_eq!(q(&mut a, &["NSNEW", "../x"]), e("This name is not allowed"));
    assert_eq!(
        q(&mut a, &["NSNEW", &"n".repeat(129)]),
        e("Namespace too long")
    );
    assert_eq!(
        q(&mut a, &["NSLIST"]),
        Ok(Value::Array(vec![
            Value::BulkString(b"default".to_vec()),
            Value::BulkString(b"ns1".to_vec())
        ]))
    );
    let info = text(q(&mut a, &["NSINFO", "ns1"]));
    for want in [
        "name: ns1",
        "entries: 0",
        "public: no",
        "password: no",
        "data_limits_bytes: 0",
        "mode: userkey",
    ] {
        assert!(info.contains(want), "{want} in {info}");
    }
    assert_eq!(q(&mut a, &["NSINFO", "nope"]), e("Namespace not found"));
    assert_eq!(
        q(&mut a, &["NSSET", "default", "password", "x"]),
        e("Cannot update default namespace")
    );
    assert_eq!(
        q(&mut a, &["NSSET", "nope", "public", "1"]),
        e("Namespace not found")
    );
    assert_eq!(
        q(&mut a, &["NSSET", "ns1", "bogus", "1"]),
        e("Invalid property")
    );

    // Open namespace: anyone reads and writes.
    let mut u = s.con();
    assert_eq!(
        q(&mut u, &["NSSET", "ns1", "public", "0"]),
        e("Permission denied")
    );
    assert_eq!(q(&mut u, &["SELECT", "nope"]), e("Namespace not found"));
    assert_eq!(q(&mut u, &["SELECT", "ns1"]), ok());
    assert_eq!(q(&mut u, &["SET", "k", "v"]), bulk(b"k"));

    // Password + public: read-only without password.
    assert_eq!(q(&mut a, &["NSSET", "ns1", "password", "secret"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "ns1", "public", "1"]), ok());
    let mut r = s.con();
    assert_eq!(q(&mut r, &["SELECT", "ns1"]), ok());
    assert_eq!(q(&mut r, &["GET", "k"]), bulk(b"v"));
    assert_eq!(
        q(&mut r, &["SET", "k", "w"]),
        e("Namespace is in read-only mode")
    );
    assert_eq!(
        q(&mut r, &["DEL", "k"]),
        e("Namespace is in read-only mode")
    );
    assert_eq!(q(&mut r, &["SELECT", "ns1", "bad"]), e("Access denied"));
    assert_eq!(q(&mut r, &["SELECT", "ns1", "secret"]), ok());
    assert_eq!(q(&mut r, &["SET", "k", "w"]), bulk(b"k"));

    // Password + private: SELECT needs it; SECURE select works.
    assert_eq!(q(&mut a, &["NSSET", "ns1", "public", "0"]), ok());
    let mut p = s.con();
    assert_eq!(
        q(&mut p, &["SELECT", "ns1"]),
        e("Namespace protected and private")
    );
    let ch = challenge(&mut p);
    assert_eq!(
        q(&mut p, &["SELECT", "ns1", "SECURE", &secure(&ch, "wrong")]),
        e("Access denied")
    );
    let ch = challenge(&mut p);
    assert_eq!(
        q(&mut p, &["SELECT", "ns1", "SECURE", &secure(&ch, "secret")]),
        ok()
    );
    assert_eq!(q(&mut p, &["GET", "k"]), bulk(b"w"));
    let info = text(q(&mut a, &["NSINFO", "ns1"]));
    assert!(
        info.contains("password: yes") && info.contains("password_raw: secret"),
        "{info}"
    );
    let info = text(q(&mut p, &["NSINFO", "ns1"]));
    assert!(
        !info.contains("password_raw"),
        "only admin sees the password"
    );

    // Clearing the password reopens it.
    assert_eq!(q(&mut a, &["NSSET", "ns1", "password", "*"]), ok());
    let mut o = s.con();
    assert_eq!(q(&mut o, &["SELECT", "ns1"]), ok());
    assert_eq!(q(&mut o, &["SET", "k2", "v"]), bulk(b"k2"));

    // Settings persist over a restart.
    assert_eq!(q(&mut a, &["NSSET", "ns1", "password", "pw2"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "ns1", "maxsize", "1000"]), ok());
    drop((a, u, r, p, o));
    let s = s.restart();
    let mut a = s.admin();
    let info = text(q(&mut a, &["NSINFO", "ns1"]));
    assert!(
        info.contains("password: yes")
            && info.contains("data_limits_bytes: 1000")
            && info.contains("entries: 2"),
        "{info}"
    );

    // NSDEL: not default, not current; other clients on it are disconnected.
    let mut victim = s.con();
    assert_eq!(q(&mut victim, &["SELECT", "ns1", "pw2"]), ok());
    assert_eq!(
        q(&mut a, &["NSDEL", "default"]),
        e("Cannot remove default namespace")
    );
    assert_eq!(q(&mut a, &["SELECT", "ns1", "pw2"]), ok());
    assert_eq!(
        q(&mut a, &["NSDEL", "ns1"]),
        e("Cannot remove namespace you're currently using.")
    );
    assert_eq!(q(&mut a, &["SELECT", "default"]), ok());
    assert_eq!(q(&mut a, &["NSDEL", "ns1"]), ok());
    assert_eq!(
        q(&mut a, &["NSDEL", "ns1"]),
        e("This namespace doesn't exists")
    );
    assert_eq!(
        q(&mut victim, &["GET", "k"]),
        e("Your active namespace is not available anymore (probably removed).")
    );
    assert!(q(&mut victim, &["PING"]).is_err(), "connection closed");
    assert!(!dir.path().join("data/ns1").exists() && !dir.path().join("index/ns1").exists());
    // A new namespace with the same name starts empty.
    assert_eq!(q(&mut a, &["NSNEW", "ns1"]), ok());
    assert!(text(q(&mut a, &["NSINFO", "ns1"])).contains("entries: 0"));
}

#[test]
fn worm_lock_freeze_maxsize_flush() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "w"]), ok());
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "w"]), ok());
    assert_eq!(q(&mut c, &["SET", "k", "v"]), bulk(b"k"));

    assert_eq!(q(&mut a, &["NSSET", "w", "worm", "1"]), ok());
    assert_eq!(
        q(&mut c, &["SET", "k", "v2"]),
        e("Namespace is in WORM mode, overwrite denied")
    );
    assert_eq!(
        q(&mut c, &["DEL", "k"]),
        e("Namespace is in WORM mode, delete denied")
    );
    assert_eq!(
        q(&mut c, &["SET", "new", "v"]),
        bulk(b"new"),
        "new keys are allowed"
    );
    assert!(text(q(&mut a, &["NSINFO", "w"])).contains("worm: yes"));
    assert_eq!(q(&mut a, &["NSSET", "w", "worm", "0"]), ok());

    assert_eq!(q(&mut a, &["NSSET", "w", "lock", "1"]), ok());
    assert_eq!(
        q(&mut c, &["SET", "k", "v3"]),
        e("Namespace is temporarily locked")
    );
    assert_eq!(
        q(&mut c, &["DEL", "k"]),
        e("Namespace is temporarily locked")
    );
    assert_eq!(
        q(&mut c, &["GET", "k"]),
        bulk(b"v"),
        "reads allowed while locked"
    );
    assert_eq!(q(&mut a, &["NSSET", "w", "lock", "0"]), ok());

    assert_eq!(q(&mut a, &["NSSET", "w", "freeze", "1"]), ok());
    assert_eq!(
        q(&mut c, &["GET", "k"]),
        e("Namespace is temporarily frozen")
    );
    assert_eq!(
        q(&mut c, &["SET", "k", "v3"]),
        e("Namespace is temporarily frozen")
    );
    assert_eq!(q(&mut c, &["SCAN"]), e("Namespace is temporarily frozen"));
    assert_eq!(q(&mut a, &["NSSET", "w", "freeze", "0"]), ok());
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(b"v"));

    // lock/freeze on default are allowed (and only those).
    assert_eq!(q(&mut a, &["NSSET", "default", "lock", "1"]), ok());
    assert_eq!(
        q(&mut a, &["SET", "x", "y"]),
        e("Namespace is temporarily locked")
    );
    assert_eq!(q(&mut a, &["NSSET", "default", "lock", "0"]), ok());

    // maxsize counts live payload bytes; overwrite with a smaller value is allowed.
    assert_eq!(q(&mut a, &["NSNEW", "m"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "m", "maxsize", "10"]), ok());
    let mut m = s.con();
    assert_eq!(q(&mut m, &["SELECT", "m"]), ok());
    assert_eq!(q(&mut m, &["SET", "a", "12345678"]), bulk(b"a"));
    assert_eq!(
        q(&mut m, &["SET", "b", "123"]),
        e("No space left on this namespace")
    );
    assert_eq!(q(&mut m, &["SET", "a", "1234"]), bulk(b"a"));
    assert_eq!(q(&mut m, &["SET", "b", "123"]), bulk(b"b"));
    assert_eq!(q(&mut m, &["DEL", "a"]), ok());
    assert_eq!(q(&mut m, &["SET", "c", "1234567"]), bulk(b"c"));
    assert!(text(q(&mut a, &["NSINFO", "m"])).contains("data_size_bytes: 10"));

    // FLUSH: only private password-protected namespaces.
    assert_eq!(q(&mut m, &["FLUSH"]), e("Flushing public namespace denied"));
    assert_eq!(q(&mut a, &["NSSET", "m", "password", "pw"]), ok());
    assert_eq!(q(&mut m, &["FLUSH"]), ok());
    assert_eq!(q(&mut m, &["DBSIZE"]), int(0));
    assert_eq!(q(&mut m, &["GET", "b"]), nil());
    assert_eq!(q(&mut m, &["SCAN"]), e("No more data"));
    assert_eq!(q(&mut m, &["SET", "after", "flush"]), bulk(b"after"));
    drop((a, c, m));
    let s = s.restart();
    let mut m = s.con();
    assert_eq!(q(&mut m, &["SELECT", "m", "pw"]), ok());
    assert_eq!(q(&mut m, &["DBSIZE"]), int(1));
    assert_eq!(q(&mut m, &["GET", "after"]), bulk(b"flush"));
}

#[test]
fn protect_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.protect = true;
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(
        q(&mut c, &["SET", "k", "v"]),
        e("Namespace is in read-only mode")
    );
    assert_eq!(q(&mut c, &["GET", "k"]), nil());
    assert_eq!(
        q(&mut c, &["SELECT", "default", "wrong"]),
        e("Access denied")
    );
    assert_eq!(q(&mut c, &["SELECT", "default", "root"]), ok());
    assert_eq!(q(&mut c, &["SET", "k", "v"]), bulk(b"k"));
    let mut r = s.con();
    assert_eq!(q(&mut r, &["GET", "k"]), bulk(b"v"));
    let ch = challenge(&mut r);
    assert_eq!(
        q(
            &mut r,
            &["SELECT", "default", "SECURE", &secure(&ch, "root")]
        ),
        ok()
    );
    assert_eq!(q(&mut r, &["SET", "k", "w"]), bulk(b"k"));
}

fn id(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

#[test]
fn seq_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mode = Some(Mode::Seq);
    let s = TestServer::start(cfg);
    let mut c = s.admin();
    for n in 0..5u64 {
        assert_eq!(
            q(&mut c, &["SET", "", &format!("v{n}")]),
            Ok(Value::BulkString(id(n)))
        );
    }
    assert_eq!(qb(&mut c, &[b"GET", &id(3)]), bulk(b"v3"));
    assert_eq!(
        qb(&mut c, &[b"SET", &id(3), b"new"]),
        Ok(Value::BulkString(id(3))),
        "update"
    );
    assert_eq!(qb(&mut c, &[b"GET", &id(3)]), bulk(b"new"));
    assert_eq!(
        qb(&mut c, &[b"SET", &id(9), b"x"]),
        e("Invalid key, only update authorized")
    );
    assert_eq!(q(&mut c, &["SET", "abc", "x"]), e("Invalid key"));
    assert_eq!(qb(&mut c, &[b"GET", &id(9)]), nil());
    assert_eq!(qb(&mut c, &[b"DEL", &id(1)]), ok());
    assert_eq!(qb(&mut c, &[b"GET", &id(1)]), nil());
    assert_eq!(q(&mut c, &["DBSIZE"]), int(4));
    assert_eq!(
        q(&mut c, &["KSCAN", "x"]),
        e("Index running mode doesn't support this feature")
    );
    assert_eq!(q(&mut c, &["NSNEW", "s2"]), ok());
    assert_eq!(
        q(&mut c, &["NSSET", "s2", "mode", "user"]),
        e("This server instance is configured to use a single runtime mode")
    );
    assert!(text(q(&mut c, &["NSINFO", "s2"])).contains("mode: sequential"));
    drop(c);
    let s = s.restart();
    let mut c = s.con();
    // The update of id 3 consumed id 5 (upstream: ids are index positions).
    assert_eq!(
        q(&mut c, &["SET", "", "after"]),
        Ok(Value::BulkString(id(6))),
        "ids continue after restart"
    );
    assert_eq!(qb(&mut c, &[b"GET", &id(3)]), bulk(b"new"));
    assert_eq!(qb(&mut c, &[b"GET", &id(1)]), nil());
    assert_eq!(qb(&mut c, &[b"GET", &id(5)]), nil());
    let info = text(q(&mut c, &["NSINFO", "default"]));
    assert!(info.contains("next_internal_id: 7"), "{info}");
}

/// The sequence: an update takes an id, a delete does not, and the result is the
/// same after a restart.
#[test]
fn seq_ids_follow_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mode = Some(Mode::Seq);
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SET", "", "a"]), Ok(Value::BulkString(id(0))));
    assert_eq!(
        qb(&mut c, &[b"SET", &id(0), b"b"]),
        Ok(Value::BulkString(id(0)))
    );
    assert_eq!(qb(&mut c, &[b"DEL", &id(0)]), ok());
    assert_eq!(q(&mut c, &["SET", "", "c"]), Ok(Value::BulkString(id(2))));
    assert_eq!(qb(&mut c, &[b"GET", &id(1)]), nil());
    assert_eq!(qb(&mut c, &[b"GET", &id(0)]), nil());
    assert_eq!(qb(&mut c, &[b"GET", &id(2)]), bulk(b"c"));
    assert_eq!(
        qb(&mut c, &[b"SET", &id(1), b"x"]),
        e("Invalid key, only update authorized")
    );
    drop(c);
    let s = s.restart();
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SET", "", "d"]), Ok(Value::BulkString(id(3))));
    assert_eq!(qb(&mut c, &[b"GET", &id(2)]), bulk(b"c"));
}

#[test]
fn mixed_mode_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "sq"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "sq", "mode", "seq"]), ok());
    assert_eq!(
        q(&mut a, &["NSSET", "sq", "mode", "bogus"]),
        e("Unsupported mode")
    );
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "sq"]), ok());
    assert_eq!(
        q(&mut c, &["SET", "", "first"]),
        Ok(Value::BulkString(id(0)))
    );
    assert_eq!(
        q(&mut a, &["NSSET", "sq", "mode", "user"]),
        e("Cannot change mode on a non-empty namespace")
    );
    assert_eq!(
        q(&mut a, &["SET", "userkey", "v"]),
        bulk(b"userkey"),
        "default stays user mode"
    );
    drop((a, c));
    let s = s.restart();
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "sq"]), ok());
    assert_eq!(
        q(&mut c, &["SET", "", "second"]),
        Ok(Value::BulkString(id(1)))
    );
    assert!(text(q(&mut c, &["NSINFO", "sq"])).contains("mode: sequential"));
}

fn scan_keys(v: &Value) -> (Vec<u8>, Vec<Vec<u8>>) {
    let Value::Array(parts) = v else {
        panic!("{v:?}")
    };
    let Value::BulkString(cursor) = &parts[0] else {
        panic!()
    };
    let Value::Array(items) = &parts[1] else {
        panic!()
    };
    let keys = items
        .iter()
        .map(|i| {
            let Value::Array(f) = i else { panic!() };
            assert!(matches!(f[1], Value::Int(_)) && matches!(f[2], Value::Int(_)));
            let Value::BulkString(k) = &f[0] else {
                panic!()
            };
            k.clone()
        })
        .collect();
    (cursor.clone(), keys)
}

fn full_scan(c: &mut redis::Connection, cmd: &str) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let r = match &cursor {
            None => qb(c, &[cmd.as_bytes()]),
            Some(cur) => qb(c, &[cmd.as_bytes(), cur]),
        };
        match r {
            Ok(v) => {
                let (cur, keys) = scan_keys(&v);
                all.extend(keys);
                cursor = Some(cur);
            }
            Err(e) if e == "No more data" => return all,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn scan_history_keycur_kscan() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.datasize = 64 * 1024; // several files for 300 entries of 1 KiB
    let s = TestServer::start(cfg);
    let mut c = s.admin();
    assert_eq!(q(&mut c, &["SCAN"]), e("No more data"));
    let big = "x".repeat(1000);
    for i in 0..300 {
        assert_eq!(
            q(
                &mut c,
                &["SET", &format!("key{i:03}"), &format!("{big}{i}")]
            ),
            Ok(Value::BulkString(format!("key{i:03}").into_bytes()))
        );
    }
    // Overwrite and delete some: scan returns each live key once, at its last write.
    assert_eq!(q(&mut c, &["SET", "key005", "v2"]), bulk(b"key005"));
    assert_eq!(q(&mut c, &["SET", "key005", "v3"]), bulk(b"key005"));
    assert_eq!(q(&mut c, &["DEL", "key010"]), ok());
    let fwd = full_scan(&mut c, "SCAN");
    let mut want: Vec<Vec<u8>> = (0..300)
        .filter(|&i| i != 5 && i != 10)
        .map(|i| format!("key{i:03}").into_bytes())
        .collect();
    want.push(b"key005".to_vec());
    assert_eq!(fwd, want);
    let mut back = full_scan(&mut c, "RSCAN");
    back.reverse();
    assert_eq!(back, want);
    assert_eq!(full_scan(&mut c, "SCANX"), want);

    // KEYCUR: scanning from a key's cursor continues after it.
    let cur = bytes(q(&mut c, &["KEYCUR", "key100"]));
    assert_eq!(cur.len(), 8);
    let (_, keys) = scan_keys(&qb(&mut c, &[b"SCAN", &cur]).unwrap());
    assert_eq!(keys[0], b"key101");
    assert_eq!(q(&mut c, &["KEYCUR", "nope"]), e("Key not found"));
    assert_eq!(q(&mut c, &["SCAN", "garbage"]), e("Invalid key format"));
    assert_eq!(
        qb(&mut c, &[b"SCAN", &[9u8, 0, 0, 0, 77, 0, 0, 0]]),
        e("Invalid key format")
    );

    // HISTORY walks back the versions.
    let Ok(Value::Array(h)) = q(&mut c, &["HISTORY", "key005"]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"v3".to_vec()));
    let Value::BulkString(ts) = &h[1] else {
        panic!()
    };
    assert!(std::str::from_utf8(ts).unwrap().parse::<u64>().unwrap() > 1_600_000_000);
    let Value::BulkString(p1) = &h[0] else {
        panic!()
    };
    let Ok(Value::Array(h)) = qb(&mut c, &[b"HISTORY", b"key005", p1]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"v2".to_vec()));
    let Value::BulkString(p2) = &h[0] else {
        panic!()
    };
    let Ok(Value::Array(h)) = qb(&mut c, &[b"HISTORY", b"key005", p2]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(format!("{big}5").into_bytes()));
    assert_eq!(h[0], Value::Nil, "end of the chain");
    assert_eq!(
        qb(&mut c, &[b"HISTORY", b"key006", p1]),
        e("Invalid arguments (invalid key)")
    );
    assert_eq!(
        qb(&mut c, &[b"HISTORY", b"key005", &[0u8; 8]]),
        e("No more history")
    );
    assert_eq!(q(&mut c, &["HISTORY", "key010"]), e("Key not found"));

    // KSCAN: prefix match.
    let Ok(Value::Array(k)) = q(&mut c, &["KSCAN", "key29"]) else {
        panic!()
    };
    let Value::Array(keys) = &k[1] else { panic!() };
    assert_eq!(keys.len(), 10);
    assert_eq!(q(&mut c, &["KSCAN", "zzz"]), e("No keys match"));

    // Rotation happened; INDEX DIRTY lists the files; DATA RAW reads an entry; NSJUMP.
    let Ok(Value::Array(dirty)) = q(&mut c, &["INDEX", "DIRTY"]) else {
        panic!()
    };
    assert!(dirty.len() >= 4, "{dirty:?}");
    let Ok(Value::Array(_)) = q(&mut c, &["INDEX", "DIRTY", "RESET"]) else {
        panic!()
    };
    assert_eq!(q(&mut c, &["INDEX", "DIRTY"]), Ok(Value::Array(vec![])));
    let Ok(Value::Array(raw)) = q(&mut c, &["DATA", "RAW", "0", "24"]) else {
        panic!()
    };
    assert_eq!(raw[0], Value::BulkString(b"key000".to_vec()));
    assert_eq!(raw[4], Value::BulkString(format!("{big}0").into_bytes()));
    assert_eq!(
        q(&mut c, &["DATA", "RAW", "0", "25"]),
        e("Invalid offset or fileid")
    );
    let info = text(q(&mut c, &["NSINFO", "default"]));
    let cur_id: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("data_current_id: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(cur_id >= 4);
    assert_eq!(q(&mut c, &["NSJUMP"]), ok());
    assert_eq!(q(&mut c, &["SET", "afterjump", "v"]), bulk(b"afterjump"));
    let info = text(q(&mut c, &["NSINFO", "default"]));
    assert!(
        info.contains(&format!("data_current_id: {}", cur_id + 1)),
        "{info}"
    );
    assert_eq!(
        q(&mut c, &["INDEX", "DIRTY"]),
        Ok(Value::Array(vec![Value::Int(i64::from(cur_id + 1))]))
    );
    let files = std::fs::read_dir(dir.path().join("data/default"))
        .unwrap()
        .count();
    assert!(files >= 5, "{files} data files");

    // Everything survives a restart, history included.
    drop(c);
    let s = s.restart();
    let mut c = s.con();
    want.push(b"afterjump".to_vec());
    assert_eq!(full_scan(&mut c, "SCAN"), want);
    assert_eq!(
        q(&mut c, &["GET", "key299"]),
        bulk(format!("{big}299").as_bytes())
    );
    let Ok(Value::Array(h)) = qb(&mut c, &[b"HISTORY", b"key005", p1]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"v2".to_vec()));
    assert_eq!(q(&mut c, &["CHECK", "key150"]), int(1));
}

#[test]
fn wait_command() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut w = s.con();
    assert_eq!(q(&mut w, &["WAIT", "SET", "150"]), e("Timeout"));
    assert_eq!(q(&mut w, &["WAIT", "NOPE"]), e("Unknown command to watch"));
    assert_eq!(q(&mut w, &["WAIT", "SET", "10"]), e("Invalid timeout"));
    let addr = s.addr;
    // The writer keeps writing until the waiter has seen it: no timing assumption.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            q(&mut c, &["SET", "k", &i.to_string()]).unwrap();
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    assert_eq!(
        q(&mut w, &["WAIT", "SET", "60000"]),
        Ok(Value::SimpleString("SET".into()))
    );
    assert_eq!(
        q(&mut w, &["WAIT", "*", "60000"]),
        Ok(Value::SimpleString("SET".into()))
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
}

#[test]
fn stop_in_debug_mode_and_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.debug = true;
    let mut s = TestServer::start(cfg);
    let mut u = redis::Client::open(format!("redis+unix://{}", s.socket.display()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(q(&mut u, &["SET", "k", "v"]), bulk(b"k"));
    assert_eq!(q(&mut u, &["GET", "k"]), bulk(b"v"));
    let mut c = s.con();
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(b"v"));
    assert_eq!(q(&mut c, &["STOP"]), ok());
    assert!(s.wait_ended(), "server stopped after STOP");
    assert!(!s.socket.exists(), "socket file removed");
}

#[test]
fn encryption_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    let secret = hex::encode([7u8; 32]);
    assert_eq!(q(&mut a, &["NSNEW", "enc"]), ok());
    assert_eq!(
        q(&mut a, &["NSSET", "enc", "encryption-key", "abcd"]),
        e("Invalid value (16 to 64 bytes, hex encoded)")
    );
    assert_eq!(
        q(&mut a, &["NSSET", "default", "encryption-key", &secret]),
        e("Cannot update default namespace")
    );
    assert_eq!(
        q(&mut a, &["NSSET", "enc", "encryption-key", &secret]),
        ok()
    );
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "enc"]), ok());
    assert_eq!(q(&mut c, &["SET", "k", "PLAINTEXT-MARKER-1"]), bulk(b"k"));
    assert_eq!(q(&mut c, &["SET", "k", "PLAINTEXT-MARKER-2"]), bulk(b"k"));
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(b"PLAINTEXT-MARKER-2"));
    assert_eq!(q(&mut c, &["LENGTH", "k"]), int(18));
    assert_eq!(q(&mut c, &["CHECK", "k"]), int(1));
    let Ok(Value::Array(h)) = q(&mut c, &["HISTORY", "k"]) else {
        panic!()
    };
    let Value::BulkString(p) = &h[0] else {
        panic!()
    };
    let Ok(Value::Array(h)) = qb(&mut c, &[b"HISTORY", b"k", p]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"PLAINTEXT-MARKER-1".to_vec()));
    // Encryption cannot be turned on for a namespace that has data.
    assert_eq!(q(&mut a, &["NSNEW", "plain"]), ok());
    assert_eq!(q(&mut a, &["SELECT", "plain"]), ok());
    assert_eq!(q(&mut a, &["SET", "x", "y"]), bulk(b"x"));
    assert_eq!(
        q(&mut a, &["NSSET", "plain", "encryption-key", &secret]),
        e("Encryption can only be enabled on an empty namespace")
    );
    drop((a, c));
    let s = s.restart();
    // Nothing readable on disk.
    for f in std::fs::read_dir(dir.path().join("data/enc")).unwrap() {
        let b = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !b.windows(16).any(|w| w == b"PLAINTEXT-MARKER"),
            "plaintext found on disk"
        );
    }
    let desc = std::fs::read_to_string(dir.path().join("index/enc/zdb-namespace")).unwrap();
    assert!(!desc.contains(&secret));
    // After a restart the namespace is sealed until the key is given again.
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "enc"]), ok());
    assert_eq!(
        q(&mut c, &["GET", "k"]),
        e("Namespace is sealed, give its encryption key")
    );
    assert_eq!(
        q(&mut c, &["SET", "k2", "v"]),
        e("Namespace is sealed, give its encryption key")
    );
    assert_eq!(
        q(&mut c, &["EXISTS", "k"]),
        int(1),
        "keys and metadata stay in clear"
    );
    let mut a = s.admin();
    assert!(text(q(&mut a, &["NSINFO", "enc"])).contains("sealed: yes"));
    assert_eq!(
        q(
            &mut a,
            &["NSSET", "enc", "encryption-key", &hex::encode([8u8; 32])]
        ),
        e("Invalid encryption key")
    );
    assert_eq!(
        q(&mut a, &["NSSET", "enc", "encryption-key", &secret]),
        ok()
    );
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(b"PLAINTEXT-MARKER-2"));
    assert_eq!(q(&mut c, &["SET", "k2", "v"]), bulk(b"k2"));
}
