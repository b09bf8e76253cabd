//! Offline `check`/`repair`/`dump`, `--strict-index`, `RELOAD`, and hooks seeing upstream's
//! events in order.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use zos_zdb::tools;

/// A stopped server's directory with k0..k199 in `default` and 50 keys in `other`.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    for i in 0..200 {
        q(&mut a, &["SET", &format!("k{i}"), &format!("value-{i}")]).unwrap();
    }
    assert_eq!(q(&mut a, &["NSNEW", "other"]), ok());
    assert_eq!(q(&mut a, &["SELECT", "other"]), ok());
    for i in 0..50 {
        q(&mut a, &["SET", &format!("o{i}"), "x"]).unwrap();
    }
    drop(a);
    s.stop();
    dir
}

fn roots(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("data"), dir.join("index"))
}

#[test]
fn a_clean_directory_checks_clean() {
    let dir = populated();
    let (d, i) = roots(dir.path());
    let r = tools::check(&d, &i).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.namespaces, 2);
    assert_eq!(r.data_entries, 250);
    assert_eq!(r.index_entries, 250);
    let mut out = Vec::new();
    assert_eq!(tools::dump(&d, &i, &mut out).unwrap(), 250);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("namespace other: mode user"), "{text}");
    assert!(text.contains("key \"k199\" length 9"), "{text}");
}

#[test]
fn check_finds_a_corrupted_index_and_repair_rebuilds_it() {
    let dir = populated();
    let (d, i) = roots(dir.path());
    let ipath = i.join("default/i0");
    // Flip a byte inside the 10th entry's data offset field: its CRC no longer matches.
    let f = OpenOptions::new().write(true).open(&ipath).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(&[0xff, 0xff], len / 2).unwrap();
    drop(f);
    let r = tools::check(&d, &i).unwrap();
    assert!(!r.is_clean(), "{r:?}");
    assert!(r.errors.iter().any(|e| e.contains("i0")), "{:?}", r.errors);

    // A server started with --strict-index refuses; the default rebuilds (and loses nothing).
    let mut cfg = config(dir.path());
    cfg.strict_index = true;
    let err = std::panic::catch_unwind(|| TestServer::start(cfg.clone()));
    assert!(err.is_err(), "--strict-index must refuse a damaged index");

    let rep = tools::repair(&d, &i).unwrap();
    assert!(rep.after.is_clean(), "{:?}", rep.after);
    assert_eq!(rep.live_entries, 250);
    assert!(rep.truncated.is_empty());
    assert_eq!(rep.after.index_entries, 250);
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(q(&mut c, &["GET", "k123"]), bulk(b"value-123"));
    assert_eq!(q(&mut c, &["DBSIZE"]), int(200));
}

#[test]
fn repair_cuts_a_torn_data_tail_and_says_what_was_lost() {
    let dir = populated();
    let (d, i) = roots(dir.path());
    let dpath = d.join("default/d0");
    let full = std::fs::metadata(&dpath).unwrap().len();
    // Damage the last entry's payload and append half an entry.
    let f = OpenOptions::new().write(true).open(&dpath).unwrap();
    f.write_all_at(b"#", full - 2).unwrap();
    drop(f);
    OpenOptions::new()
        .append(true)
        .open(&dpath)
        .unwrap()
        .write_all(&[7u8; 13])
        .unwrap();
    let r = tools::check(&d, &i).unwrap();
    assert!(!r.is_clean());
    assert!(r.bad_data_bytes >= 13, "{r:?}");
    let rep = tools::repair(&d, &i).unwrap();
    assert_eq!(rep.truncated.len(), 1, "{rep:?}");
    let (path, new_len, cut) = &rep.truncated[0];
    assert!(path.ends_with("d0"));
    assert!(*cut > 13 && *new_len < full, "{rep:?}");
    assert!(rep.after.is_clean(), "{:?}", rep.after);
    assert_eq!(rep.live_entries, 249, "k199 was lost, the rest kept");
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    assert_eq!(q(&mut c, &["GET", "k198"]), bulk(b"value-198"));
    assert_eq!(q(&mut c, &["GET", "k199"]), nil());
}

#[test]
fn reload_reads_the_namespace_again_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "r"]), ok());
    assert_eq!(q(&mut a, &["SELECT", "r"]), ok());
    for i in 0..20 {
        q(&mut a, &["SET", &format!("k{i}"), "v"]).unwrap();
    }
    assert_eq!(q(&mut a, &["RELOAD", "r"]), ok());
    assert_eq!(q(&mut a, &["DBSIZE"]), int(20), "still in the namespace");
    assert_eq!(q(&mut a, &["GET", "k7"]), bulk(b"v"));
    // A descriptor edited on disk is picked up by RELOAD.
    let ixdir = dir.path().join("index/r");
    let mut desc = zos_zdb::descriptor::Descriptor::load(&ixdir)
        .unwrap()
        .unwrap();
    assert_eq!(desc.maxsize, 0);
    desc.maxsize = 5;
    desc.save(&ixdir).unwrap();
    assert_eq!(q(&mut a, &["RELOAD", "r"]), ok());
    assert!(text_of(q(&mut a, &["NSINFO", "r"])).contains("data_limits_bytes: 5"));
    assert_eq!(
        q(&mut a, &["SET", "big", "123456"]),
        e("No space left on this namespace")
    );
    assert_eq!(q(&mut a, &["RELOAD", "nope"]), e("Namespace not found"));
    let mut u = s.con();
    assert_eq!(q(&mut u, &["RELOAD", "r"]), e("Permission denied"));
}

fn text_of(v: Result<redis::Value, String>) -> String {
    text(v)
}

/// A hook script that appends its arguments to a log: the events come in upstream's order.
#[test]
fn hook_sees_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(dir.path());
    cfg.hook = Some(script.clone());
    cfg.datasize = 64 << 10;
    let s = TestServer::start(cfg.clone());
    let inst = s.addr.to_string();
    let mut a = s.admin();
    assert_eq!(q(&mut a, &["NSNEW", "h"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "h", "public", "0"]), ok());
    assert_eq!(q(&mut a, &["SELECT", "h"]), ok());
    // 20 values of 4 KiB pass the 64 KiB data file size once.
    let v = "x".repeat(4096);
    for i in 0..20 {
        q(&mut a, &["SET", &format!("k{i}"), &v]).unwrap();
    }
    assert_eq!(q(&mut a, &["RELOAD", "h"]), ok());
    assert_eq!(q(&mut a, &["SELECT", "default"]), ok());
    assert_eq!(q(&mut a, &["NSDEL", "h"]), ok());
    let runs = match q(&mut a, &["HOOKS"]) {
        Ok(redis::Value::Array(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(runs.len() >= 2, "{runs:?}");
    drop(a);
    s.stop();

    let (ix, dx) = (dir.path().join("index"), dir.path().join("data"));
    let want = [
        format!("namespaces-init {inst} {} {}", ix.display(), dx.display()),
        format!("ready {inst}"),
        format!("namespace-created {inst} h"),
        format!("namespace-updated {inst} h"),
        format!(
            "jump-index {inst} {} {}",
            ix.join("h/i0").display(),
            ix.join("h/i1").display()
        ),
        format!(
            "jump-data {inst} {} {}",
            dx.join("h/d0").display(),
            dx.join("h/d1").display()
        ),
        format!("namespace-reloaded {inst} h"),
        format!("namespace-closing {inst} h"),
        format!("namespace-deleted {inst} h"),
        format!("close {inst}"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        if got.lines().count() >= want.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());

    // A failing `ready` hook aborts the start, as upstream.
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = ready ] && exit 1\nexit 0\n").unwrap();
    let started = std::panic::catch_unwind(|| TestServer::start(cfg));
    assert!(started.is_err());
}
