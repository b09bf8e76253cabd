//! Crash test with a real process: a `--sync` server in a child process (this test binary
//! re-executed on [`crash_child_server`]) takes a stream of pipelined writes from several
//! clients and is killed with SIGKILL mid-stream, three times. After each restart every
//! acknowledged write must read back with its value, and no value may be torn.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

/// A key and the value written to it.
type Written = (String, Vec<u8>);

const CHILD_ENV: &str = "ZDB_CRASH_CHILD_DIR";

/// Not a test on its own: the body of the child process. It does nothing unless the crash
/// test started this binary with `ZDB_CRASH_CHILD_DIR` set.
#[test]
fn crash_child_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = common::config(&dir);
        cfg.socket = None;
        cfg.sync = true;
        cfg.datasize = 1 << 20; // rotate often while being killed
        let s = zos_zdb::Server::bind(cfg).await.unwrap();
        let addr = s.local_addr().unwrap();
        std::fs::write(dir.join("addr.tmp"), addr.to_string()).unwrap();
        std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).unwrap();
        s.run(std::future::pending()).await.unwrap();
    });
}

/// Kills the child when dropped, so that a failing assertion leaves no server behind.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path) -> (ChildGuard, String) {
    let _ = std::fs::remove_file(dir.join("addr"));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_server",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = ChildGuard(child);
    let start = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(dir.join("addr")) {
            return (child, a);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "child server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value written for a key: deterministic, so a torn or misplaced value is detectable.
fn value_for(key: &str) -> Vec<u8> {
    let n = key
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 6000;
    let mut v = format!("{key}=").into_bytes();
    v.extend((0..n).map(|i| b'a' + (i % 26) as u8));
    v
}

fn connect(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Version `(round, i)` encoded in a hot key's value.
fn hot_version(v: &[u8]) -> (u32, u32) {
    let s = String::from_utf8_lossy(v);
    let mut parts = s.split('=').nth(1).unwrap().split('-');
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    )
}

fn verify(addr: &str, acked: &HashMap<String, Vec<u8>>) {
    let mut c = connect(addr);
    for (k, v) in acked {
        let got: Vec<u8> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        if k.starts_with("hot") {
            // A write that reached the disk but whose reply was lost in the kill may be newer.
            assert!(
                got.starts_with(format!("{k}=").as_bytes()),
                "torn hot value for {k}"
            );
            assert!(
                hot_version(&got) >= hot_version(v),
                "acknowledged version of {k} lost"
            );
        } else {
            assert_eq!(&got, v, "acknowledged write of {k} lost or wrong");
        }
    }
    // Every value present, acknowledged or not, must be a complete value for its key.
    let mut cursor: Option<Vec<u8>> = None;
    let mut seen = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        if let Some(cur) = &cursor {
            cmd.arg(cur.as_slice());
        }
        let r: Result<Value, _> = cmd.query(&mut c);
        let Ok(Value::Array(parts)) = r else { break };
        let Value::BulkString(cur) = &parts[0] else {
            panic!()
        };
        let Value::Array(items) = &parts[1] else {
            panic!()
        };
        for it in items {
            let Value::Array(f) = it else { panic!() };
            let Value::BulkString(k) = &f[0] else {
                panic!()
            };
            let key = String::from_utf8(k.clone()).unwrap();
            let got: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
            if key.starts_with("hot") {
                assert!(
                    got.starts_with(format!("{key}=").as_bytes()),
                    "torn hot value for {key}"
                );
            } else {
                assert_eq!(got, value_for(&key), "torn value for {key}");
            }
            seen += 1;
        }
        cursor = Some(cur.clone());
    }
    assert!(
        seen >= acked.len(),
        "scan saw {seen} keys, {} acknowledged",
        acked.len()
    );
}

#[test]
fn kill_9_during_sync_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
    for round in 0..3 {
        let (mut child, addr) = spawn(dir.path());
        verify(&addr, &acked);
        let log: Arc<Mutex<Vec<Written>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (addr, log, count) = (addr.clone(), log.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut c = connect(&addr);
                    for i in 0.. {
                        let mut p = redis::pipe();
                        let mut batch = Vec::new();
                        for j in 0..16 {
                            let k = format!("r{round}-t{t}-{i}-{j}");
                            let v = value_for(&k);
                            p.cmd("SET").arg(&k).arg(&v);
                            batch.push((k, v));
                        }
                        // An overwritten key: the last acknowledged version must win.
                        let hot = format!("hot{t}");
                        let hv = [
                            format!("{hot}=").as_bytes(),
                            &value_for(&format!("{round}-{i}-")),
                        ]
                        .concat();
                        p.cmd("SET").arg(&hot).arg(&hv);
                        batch.push((hot, hv));
                        match p.query::<Vec<Value>>(&mut c) {
                            Ok(_) => {
                                count.fetch_add(batch.len(), Ordering::SeqCst);
                                log.lock().unwrap().extend(batch);
                            }
                            Err(_) => return, // killed
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        while count.load(Ordering::SeqCst) < 3000 {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "writes too slow"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill9();
        for w in writers {
            w.join().unwrap();
        }
        for (k, v) in log.lock().unwrap().drain(..) {
            acked.insert(k, v);
        }
        eprintln!("round {round}: {} acknowledged writes so far", acked.len());
    }
    let (_child, addr) = spawn(dir.path());
    verify(&addr, &acked);
}
