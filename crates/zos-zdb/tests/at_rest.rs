//! Encryption at rest under a server key (`ServerConfig::at_rest_key`, what a node derives from
//! its key root): values never reach the files in clear, the files are useless without the key,
//! plaintext written before stays readable, and a ciphertext moved into another record's place
//! (rolling a key back to an older value) is refused. Clients see plain 0-db behaviour.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::*;
use zos_zdb::crypto::AtRestKey;

const MARK_OLD: &[u8] = b"AT-REST-MARKER-version-one-0001";
const MARK_NEW: &[u8] = b"AT-REST-MARKER-version-two-0002";

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

fn keyed(dir: &Path, key: Option<[u8; 32]>) -> zos_zdb::ServerConfig {
    let mut cfg = config(dir);
    cfg.at_rest_key = key.map(AtRestKey);
    cfg
}

fn create_ns(s: &TestServer) -> redis::Connection {
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "vault"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "vault", "password", "pw"]), ok());
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "vault", "pw"]), ok());
    c
}

fn select(s: &TestServer) -> redis::Connection {
    let mut c = s.con();
    assert_eq!(q(&mut c, &["SELECT", "vault", "pw"]), ok());
    c
}

#[test]
fn values_are_sealed_at_rest_and_unreadable_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(keyed(dir.path(), Some([0x11; 32])));
    let mut c = create_ns(&s);
    assert_eq!(qb(&mut c, &[b"SET", b"k", MARK_OLD]), bulk(b"k"));
    assert_eq!(qb(&mut c, &[b"SET", b"k", MARK_NEW]), bulk(b"k"));
    assert_eq!(q(&mut c, &["GET", "k"]), bulk(MARK_NEW));
    // Same wire behaviour as a plain server: length, NSINFO's encrypted line (a user key).
    assert_eq!(q(&mut c, &["LENGTH", "k"]), int(MARK_NEW.len() as i64));
    let info = match q(&mut s.admin(), &["NSINFO", "vault"]).unwrap() {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(info.contains("encrypted: no"), "{info}");
    drop(c);
    let cfg = s.stop();
    for m in [MARK_OLD, MARK_NEW] {
        assert_eq!(files_containing(dir.path(), m), Vec::<String>::new());
    }

    // Same key after a restart: readable, history included.
    let s = TestServer::start(cfg.clone());
    assert_eq!(q(&mut select(&s), &["GET", "k"]), bulk(MARK_NEW));
    s.stop();
    // Without the key, or with another one: never the value.
    let s = TestServer::start(keyed(dir.path(), None));
    let e = q(&mut select(&s), &["GET", "k"]).unwrap_err();
    assert!(e.contains("encrypted at rest"), "{e}");
    s.stop();
    let s = TestServer::start(keyed(dir.path(), Some([0x22; 32])));
    let got = q(&mut select(&s), &["GET", "k"]);
    assert!(got.is_err(), "another key read {got:?}");
    s.stop();
}

#[test]
fn plaintext_written_before_stays_readable_and_new_values_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(keyed(dir.path(), None));
    let mut c = create_ns(&s);
    assert_eq!(qb(&mut c, &[b"SET", b"old", MARK_OLD]), bulk(b"old"));
    drop(c);
    s.stop();
    assert_eq!(files_containing(dir.path(), MARK_OLD).len(), 1);

    let s = TestServer::start(keyed(dir.path(), Some([0x11; 32])));
    let mut c = select(&s);
    assert_eq!(q(&mut c, &["GET", "old"]), bulk(MARK_OLD));
    assert_eq!(qb(&mut c, &[b"SET", b"new", MARK_NEW]), bulk(b"new"));
    assert_eq!(q(&mut c, &["GET", "new"]), bulk(MARK_NEW));
    // Rewriting the old value seals it too (the old version stays until compaction).
    assert_eq!(qb(&mut c, &[b"SET", b"old", MARK_NEW]), bulk(b"old"));
    assert_eq!(q(&mut c, &["GET", "old"]), bulk(MARK_NEW));
    drop(c);
    s.stop();
    assert_eq!(files_containing(dir.path(), MARK_NEW), Vec::<String>::new());
}

/// The entries of a data file: (offset, header+key length, stored length).
fn entries(d: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 20 <= d.len() {
        let key_len = d[pos + 5] as usize;
        let stored = u32::from_le_bytes(d[pos + 8..pos + 12].try_into().unwrap()) as usize;
        out.push((pos, 20 + key_len, stored));
        pos += 20 + key_len + stored;
    }
    out
}

/// Puts the first version's payload (and value CRC) into the second version's record, with a
/// valid entry CRC, and drops the index so it is rebuilt from the data file: what someone with
/// write access to the disk would do to roll a key back to an older value.
fn splice_old_into_new(dir: &Path) {
    let dpath = dir.join("data/vault/d0");
    let mut d = std::fs::read(&dpath).unwrap();
    let e = entries(&d);
    assert_eq!(e.len(), 2, "two versions of one key");
    let ((o1, h1, n1), (o2, h2, n2)) = (e[0], e[1]);
    assert_eq!(n1, n2, "same stored length");
    let old_payload = d[o1 + h1..o1 + h1 + n1].to_vec();
    let old_crc = d[o1 + 16..o1 + 20].to_vec();
    d[o2 + h2..o2 + h2 + n2].copy_from_slice(&old_payload);
    d[o2 + 16..o2 + 20].copy_from_slice(&old_crc);
    let crc = crc32fast_hash(&d[o2 + 4..o2 + h2 + n2]);
    d[o2..o2 + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&dpath, d).unwrap();
    std::fs::remove_file(dir.join("index/vault/i0")).unwrap();
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    // CRC-32 (IEEE), as the data files use; bitwise so the test needs no extra crate.
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn an_older_value_spliced_into_the_newest_record_is_refused() {
    for key in [None, Some([0x33; 32])] {
        let dir = tempfile::tempdir().unwrap();
        let s = TestServer::start(keyed(dir.path(), key));
        let mut c = create_ns(&s);
        assert_eq!(qb(&mut c, &[b"SET", b"k", MARK_OLD]), bulk(b"k"));
        assert_eq!(qb(&mut c, &[b"SET", b"k", MARK_NEW]), bulk(b"k"));
        drop(c);
        let cfg = s.stop();
        splice_old_into_new(dir.path());
        let s = TestServer::start(cfg);
        let got = q(&mut select(&s), &["GET", "k"]);
        match key {
            // Control: without encryption at rest the rollback goes unnoticed.
            None => assert_eq!(got, bulk(MARK_OLD)),
            Some(_) => assert!(got.is_err(), "rolled back to {got:?}"),
        }
        s.stop();
    }
}

/// A mirror of a master sealing at rest gets the values (the feed opens the master's seal, the
/// mirror seals under its own key), and keeps them sealed; a crashed and restarted mirror
/// resumes (entry signatures ignore the encrypted bit).
#[test]
fn a_mirror_seals_under_its_own_key() {
    let (mdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = TestServer::start(keyed(mdir.path(), Some([0x44; 32])));
    let mut c = create_ns(&master);
    assert_eq!(qb(&mut c, &[b"SET", b"k", MARK_OLD]), bulk(b"k"));
    let mut rcfg = keyed(rdir.path(), Some([0x55; 32]));
    rcfg.replicate_from = Some(zos_zdb::Replication {
        master: master.addr,
        password: Some("root".into()),
    });
    let mirror = TestServer::start(rcfg);
    assert_eq!(qb(&mut c, &[b"SET", b"j", MARK_NEW]), bulk(b"j"));
    let read = |m: &TestServer, k: &str| {
        let mut r = m.con();
        if q(&mut r, &["SELECT", "vault", "pw"]) != ok() {
            return None;
        }
        q(&mut r, &["GET", k]).ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read(&mirror, "j") != Some(redis::Value::BulkString(MARK_NEW.to_vec())) {
        assert!(
            std::time::Instant::now() < deadline,
            "mirror did not follow"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        read(&mirror, "k"),
        Some(redis::Value::BulkString(MARK_OLD.to_vec()))
    );
    let rcfg = mirror.crash();
    assert_eq!(qb(&mut c, &[b"SET", b"after", b"crash"]), bulk(b"after"));
    let mirror = TestServer::start(rcfg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read(&mirror, "after") != Some(redis::Value::BulkString(b"crash".to_vec())) {
        assert!(
            std::time::Instant::now() < deadline,
            "mirror did not resume"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        read(&mirror, "k"),
        Some(redis::Value::BulkString(MARK_OLD.to_vec()))
    );
    drop(c);
    master.stop();
    mirror.stop();
    for d in [mdir.path(), rdir.path()] {
        for m in [MARK_OLD, MARK_NEW] {
            assert_eq!(files_containing(d, m), Vec::<String>::new());
        }
    }
}
