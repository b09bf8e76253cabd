//! `zos zdb serve` as a drop-in 0-db: the server started with the command lines upstream's
//! own CI uses (tests/run.sh), driven through the redis crate; replication between two real
//! processes with a kill -9 of the mirror; `zos zdb check|repair`, `--dump`, `--background`.
//! Loopback and temporary directories only; every child is killed on drop.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};
use redis::Value;

fn zos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zos"))
}

/// A running `zos zdb serve`, on TCP (`addr`) or a unix socket.
struct Zdb {
    proc: Proc,
    addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
}

impl Zdb {
    /// Starts `zos zdb serve <args>` and waits until it serves.
    fn start(args: &[&str]) -> Zdb {
        let mut child = zos()
            .args(["zdb", "serve"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = args
            .iter()
            .position(|a| *a == "--socket")
            .map(|i| PathBuf::from(args[i + 1]));
        let tcp = args.contains(&"--listen");
        let mut addr = None;
        if tcp {
            let out = child.stdout.take().unwrap();
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).unwrap();
            addr = Some(
                line.trim()
                    .strip_prefix("listening ")
                    .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                    .parse()
                    .unwrap(),
            );
        }
        let z = Zdb {
            proc: Proc(child),
            addr,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while z.try_con().is_none() {
            assert!(Instant::now() < deadline, "zdb did not start: {args:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        z
    }

    fn url(&self) -> String {
        match (&self.addr, &self.socket) {
            (Some(a), _) => format!("redis://{a}/"),
            (None, Some(p)) => format!("unix://{}", p.display()),
            (None, None) => unreachable!(),
        }
    }

    fn try_con(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    fn con(&self) -> redis::Connection {
        self.try_con().expect("connect")
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// SIGTERM (a clean stop) and wait for the exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.proc.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "zdb did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: nothing is flushed or synced.
    fn kill9(mut self) {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
    }
}

/// Runs a command; the server's error text as `Err`.
fn q(c: &mut redis::Connection, args: &[&[u8]]) -> Result<Value, String> {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<Value>(c)
        .map_err(|e| match (e.code(), e.detail()) {
            (Some(code), Some(d)) if d != "Unknown extension error encountered" => {
                format!("{code} {d}")
            }
            (Some(code), _) => code.to_string(),
            _ => e.to_string(),
        })
}

fn qs(c: &mut redis::Connection, args: &[&str]) -> Result<Value, String> {
    q(c, &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
}

fn ok() -> Result<Value, String> {
    Ok(Value::Okay)
}

fn bulk(b: &[u8]) -> Result<Value, String> {
    Ok(Value::BulkString(b.to_vec()))
}

fn err(s: &str) -> Result<Value, String> {
    Err(s.to_string())
}

fn text(v: Result<Value, String>) -> String {
    match v {
        Ok(Value::BulkString(b)) => String::from_utf8(b).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn int(v: Result<Value, String>) -> i64 {
    match v {
        Ok(Value::Int(n)) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn id(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// Raw bytes in, everything the server answers until it closes (or 2 s).
fn raw_exchange(mut s: impl Read + Write, data: &[u8]) -> Vec<u8> {
    let _ = s.write_all(data);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Namespaces: create, password, public/private, limits, delete, reload — as an admin `a`
/// and a plain client `u`.
fn namespaces(a: &mut redis::Connection, u: &mut redis::Connection) {
    assert_eq!(qs(a, &["NSNEW", "ci1"]), ok());
    assert_eq!(
        qs(a, &["NSNEW", "ci1"]),
        err("This namespace is not available")
    );
    assert_eq!(
        qs(a, &["NSNEW", &"n".repeat(129)]),
        err("Namespace too long")
    );
    assert_eq!(qs(a, &["NSSET", "ci1", "password", "secret"]), ok());
    assert_eq!(qs(a, &["NSSET", "ci1", "public", "0"]), ok());
    assert_eq!(
        qs(u, &["SELECT", "ci1"]),
        err("Namespace protected and private")
    );
    assert_eq!(qs(u, &["SELECT", "ci1", "wrong"]), err("Access denied"));
    assert_eq!(qs(u, &["SELECT", "ci1", "secret"]), ok());
    assert_eq!(qs(u, &["SET", "k", "v"]), bulk(b"k"));
    assert_eq!(qs(a, &["NSSET", "ci1", "public", "1"]), ok());
    let mut anon = qs(a, &["SELECT", "ci1"]);
    assert_eq!(anon, ok(), "public: readable without the password");
    assert_eq!(qs(a, &["GET", "k"]), bulk(b"v"));
    anon = qs(a, &["SET", "k2", "v"]);
    assert_eq!(anon, err("Namespace is in read-only mode"));
    assert_eq!(qs(a, &["SELECT", "default"]), ok());
    // Limits.
    assert_eq!(qs(a, &["NSSET", "ci1", "maxsize", "10"]), ok());
    assert_eq!(
        qs(u, &["SET", "big", "0123456789"]),
        err("No space left on this namespace")
    );
    assert_eq!(qs(a, &["NSSET", "ci1", "maxsize", "0"]), ok());
    assert_eq!(qs(a, &["NSSET", "ci1", "worm", "1"]), ok());
    assert_eq!(
        qs(u, &["SET", "k", "other"]),
        err("Namespace is in WORM mode, overwrite denied")
    );
    assert_eq!(qs(a, &["NSSET", "ci1", "worm", "0"]), ok());
    assert_eq!(qs(a, &["NSSET", "ci1", "lock", "1"]), ok());
    assert_eq!(
        qs(u, &["SET", "k", "x"]),
        err("Namespace is temporarily locked")
    );
    assert_eq!(qs(a, &["NSSET", "ci1", "lock", "0"]), ok());
    assert_eq!(
        qs(a, &["NSSET", "default", "public", "0"]),
        err("Cannot update default namespace")
    );
    let info = text(qs(a, &["NSINFO", "ci1"]));
    assert!(
        info.contains("name: ci1") && info.contains("entries: 1"),
        "{info}"
    );
    // Reload keeps the data and the connection in it.
    assert_eq!(qs(a, &["RELOAD", "ci1"]), ok());
    assert_eq!(qs(u, &["GET", "k"]), bulk(b"v"));
    assert_eq!(qs(a, &["RELOAD", "nope"]), err("Namespace not found"));
    // Delete: not default, not the current one; its clients are told.
    assert_eq!(
        qs(a, &["NSDEL", "default"]),
        err("Cannot remove default namespace")
    );
    assert_eq!(qs(a, &["NSDEL", "ci1"]), ok());
    assert_eq!(
        qs(u, &["GET", "k"]),
        err("Your active namespace is not available anymore (probably removed).")
    );
    assert_eq!(
        qs(a, &["NSDEL", "ci1"]),
        err("This namespace doesn't exists")
    );
}

/// Payloads from 512 B to 8 MiB round-trip, the one past 8 MiB is refused.
fn payloads(c: &mut redis::Connection) {
    let mut size = 512;
    while size <= 8 << 20 {
        let v: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let key = format!("p{size}");
        assert_eq!(q(c, &[b"SET", key.as_bytes(), &v]), bulk(key.as_bytes()));
        assert_eq!(q(c, &[b"GET", key.as_bytes()]), Ok(Value::BulkString(v)));
        assert_eq!(int(qs(c, &["LENGTH", &key])), size as i64);
        assert_eq!(int(qs(c, &["CHECK", &key])), 1);
        size *= 2;
    }
}

/// History, scan, long keys, DEL with a timestamp.
fn history_scan_keys(c: &mut redis::Connection) {
    for v in ["h1", "h2", "h3"] {
        qs(c, &["SET", "hist", v]).unwrap();
    }
    let Ok(Value::Array(h)) = qs(c, &["HISTORY", "hist"]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"h3".to_vec()));
    let Value::BulkString(parent) = h[0].clone() else {
        panic!("{h:?}")
    };
    let Ok(Value::Array(h)) = q(c, &[b"HISTORY", b"hist", &parent]) else {
        panic!()
    };
    assert_eq!(h[2], Value::BulkString(b"h2".to_vec()));
    // Scan walks every live key once.
    let mut seen = 0;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let r = match &cursor {
            None => qs(c, &["SCAN"]),
            Some(k) => q(c, &[b"SCAN", k]),
        };
        match r {
            Ok(Value::Array(parts)) => {
                let Value::BulkString(next) = &parts[0] else {
                    panic!()
                };
                let Value::Array(items) = &parts[1] else {
                    panic!()
                };
                seen += items.len();
                cursor = Some(next.clone());
            }
            Err(e) => {
                assert_eq!(e, "No more data");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen as i64, int(qs(c, &["DBSIZE"])));
    // Keys: 255 bytes are fine, 256 are `-Invalid key` on every key command.
    let k255 = "k".repeat(255);
    let k256 = "k".repeat(256);
    assert_eq!(qs(c, &["SET", &k255, "v"]), bulk(k255.as_bytes()));
    for cmd in ["GET", "EXISTS", "CHECK", "LENGTH", "KEYTIME", "DEL"] {
        assert_eq!(qs(c, &[cmd, &k256]), err("Invalid key"), "{cmd}");
    }
    assert_eq!(qs(c, &["SET", &k256, "v"]), err("Invalid key"));
    assert_eq!(
        qs(c, &["DEL", &k255, "1234"]),
        ok(),
        "admin: DEL with a timestamp"
    );
}

/// Raw protocol edge cases; each ends the connection with an error.
fn protocol_edges(open: &dyn Fn() -> Box<dyn ReadWrite>) {
    let cases: &[(&[u8], &str)] = &[
        (b"*1025\r\n", "-Too many arguments"),
        (b"PING\r\n", "-Protocol error: expected array"),
        (b"*1\r\n:1\r\n", "-Protocol error: expected bulk string"),
        (b"*1\r\n$-5\r\n", "-Protocol error: invalid length"),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n",
            "-Payload too large",
        ),
        (b"*1\r\n$4\r\nPINGxx", "-Protocol error: missing CRLF"),
    ];
    for (data, want) in cases {
        let got = raw_exchange(open(), data);
        assert!(
            String::from_utf8_lossy(&got).starts_with(want),
            "{:?}: got {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&got)
        );
    }
    // A pipeline of mixed commands in one write: replies in order.
    let got = raw_exchange(
        open(),
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$4\r\nnope\r\n*1\r\n$5\r\nBOGUS\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n*1\r\n$4\r\nQUIT\r\n",
    );
    assert!(
        got.starts_with(b"+PONG\r\n$-1\r\n-Command not supported\r\n$2\r\nhi\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn timed(s: std::os::unix::net::UnixStream) -> Box<dyn ReadWrite> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Box::new(s)
}

fn timed_tcp(s: std::net::TcpStream) -> Box<dyn ReadWrite> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Box::new(s)
}

/// run.sh's first configuration: mixed mode on a unix socket with a hook and a 128 MiB
/// datasize; no --admin, so every client is admin (upstream's rule).
#[test]
fn upstream_ci_socket_hook_datasize() {
    let dir = TempDir::new();
    let sock = dir.0.join("zdb.sock");
    let log = dir.0.join("hook.log");
    let hook = dir.0.join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (data, index) = (dir.0.join("data"), dir.0.join("index"));
    let z = Zdb::start(&[
        "--data",
        data.to_str().unwrap(),
        "--index",
        index.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--hook",
        hook.to_str().unwrap(),
        "--datasize",
        "134217728",
    ]);
    let mut a = z.con();
    let mut u = z.con();
    namespaces(&mut a, &mut u);
    payloads(&mut a);
    history_scan_keys(&mut a);
    // Mixed mode: a namespace switches to seq while empty.
    assert_eq!(qs(&mut a, &["NSNEW", "sq"]), ok());
    assert_eq!(qs(&mut a, &["NSSET", "sq", "mode", "seq"]), ok());
    assert_eq!(qs(&mut a, &["SELECT", "sq"]), ok());
    assert_eq!(qs(&mut a, &["SET", "", "x"]), Ok(Value::BulkString(id(0))));
    assert_eq!(
        qs(&mut a, &["NSSET", "sq", "mode", "user"]),
        err("Cannot change mode on a non-empty namespace")
    );
    let s = sock.clone();
    protocol_edges(&move || timed(std::os::unix::net::UnixStream::connect(&s).unwrap()));
    let Ok(Value::Array(runs)) = qs(&mut a, &["HOOKS"]) else {
        panic!()
    };
    assert!(runs.len() >= 4, "{runs:?}");
    drop((a, u));
    z.stop();
    let calls = std::fs::read_to_string(&log).unwrap();
    let events: Vec<&str> = calls
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(&events[..2], ["namespaces-init", "ready"], "{calls}");
    assert!(
        calls.contains(&format!("namespace-created unix:{} ci1", sock.display())),
        "{calls}"
    );
    assert!(calls.contains("namespace-reloaded") && calls.contains("namespace-deleted"));
    assert_eq!(events.last(), Some(&"close"), "{calls}");
    // The stopped server's files check clean, and --dump lists them.
    let out = zos()
        .args([
            "zdb",
            "check",
            "--data",
            data.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = zos()
        .args([
            "zdb",
            "serve",
            "--dump",
            "--data",
            data.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dump.contains("namespace sq: mode seq"),
        "{dump}"
    );
    assert!(dump.contains("key \"hist\" length 2"), "{dump}");
}

/// `--admin protect --synctime 10 --mode user`.
#[test]
fn upstream_ci_admin_protect_user_mode() {
    let dir = TempDir::new();
    let sock = dir.0.join("zdb.sock");
    let z = Zdb::start(&[
        "--data",
        dir.0.join("data").to_str().unwrap(),
        "--index",
        dir.0.join("index").to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--admin",
        "protect",
        "--synctime",
        "10",
        "--mode",
        "user",
    ]);
    let mut u = z.con();
    assert_eq!(qs(&mut u, &["NSNEW", "x"]), err("Permission denied"));
    assert_eq!(qs(&mut u, &["AUTH", "root"]), err("Access denied"));
    let mut a = z.con();
    assert_eq!(qs(&mut a, &["AUTH", "protect"]), ok());
    namespaces(&mut a, &mut u);
    assert_eq!(qs(&mut a, &["NSNEW", "m"]), ok());
    assert_eq!(
        qs(&mut a, &["NSSET", "m", "mode", "seq"]),
        err("This server instance is configured to use a single runtime mode")
    );
    let mut u = z.con();
    assert_eq!(qs(&mut u, &["SET", "k", "v"]), bulk(b"k"));
    assert!(text(qs(&mut a, &["INFO"])).contains("mode: userkey"));
    payloads(&mut a);
}

/// `--admin root --logfile … --sync` over TCP (the secure-auth and low-level tests' server).
#[test]
fn upstream_ci_tcp_admin_root_logfile_sync() {
    let dir = TempDir::new();
    let logfile = dir.0.join("zdb.log");
    let z = Zdb::start(&[
        "--data",
        dir.0.join("data").to_str().unwrap(),
        "--index",
        dir.0.join("index").to_str().unwrap(),
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--admin",
        "root",
        "--logfile",
        logfile.to_str().unwrap(),
        "--sync",
    ]);
    let mut u = z.con();
    let mut a = z.con();
    // Secure challenge, as upstream's tests do it.
    let Ok(Value::SimpleString(ch)) = qs(&mut a, &["AUTH", "SECURE", "CHALLENGE"]) else {
        panic!()
    };
    let hash = {
        use sha1::Digest as _;
        hex::encode(sha1::Sha1::digest(format!("{ch}:root").as_bytes()))
    };
    assert_eq!(qs(&mut a, &["AUTH", "SECURE", &hash]), ok());
    namespaces(&mut a, &mut u);
    payloads(&mut a);
    history_scan_keys(&mut a);
    let addr = z.addr.unwrap();
    protocol_edges(&move || timed_tcp(std::net::TcpStream::connect(addr).unwrap()));
    assert!(text(qs(&mut a, &["INFO"])).contains("sync: yes"));
    drop((a, u));
    z.stop();
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        log.contains("zdb listening") && log.contains("zdb shutting down"),
        "{log}"
    );
}

/// `--mode seq`: upstream's ids.
#[test]
fn upstream_ci_seq_mode() {
    let dir = TempDir::new();
    let sock = dir.0.join("zdb.sock");
    let z = Zdb::start(&[
        "--data",
        dir.0.join("data").to_str().unwrap(),
        "--index",
        dir.0.join("index").to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--mode",
        "seq",
    ]);
    let mut c = z.con();
    assert_eq!(qs(&mut c, &["SET", "", "a"]), Ok(Value::BulkString(id(0))));
    assert_eq!(
        q(&mut c, &[b"SET", &id(0), b"b"]),
        Ok(Value::BulkString(id(0)))
    );
    assert_eq!(q(&mut c, &[b"DEL", &id(0)]), ok());
    assert_eq!(qs(&mut c, &["SET", "", "c"]), Ok(Value::BulkString(id(2))));
    assert_eq!(q(&mut c, &[b"GET", &id(1)]), Ok(Value::Nil));
    assert_eq!(
        q(&mut c, &[b"SET", &id(7), b"x"]),
        err("Invalid key, only update authorized")
    );
    assert_eq!(qs(&mut c, &["SET", "short", "x"]), err("Invalid key"));
    assert_eq!(
        qs(&mut c, &["KSCAN", "x"]),
        err("Index running mode doesn't support this feature")
    );
    assert!(text(qs(&mut c, &["INFO"])).contains("mode: sequential"));
    let v = vec![9u8; 8 << 20];
    assert_eq!(q(&mut c, &[b"SET", b"", &v]), Ok(Value::BulkString(id(3))));
    assert_eq!(q(&mut c, &[b"GET", &id(3)]), Ok(Value::BulkString(v)));
}

/// `--background` returns once the server serves, with its pid on stdout and in the pid file.
#[test]
fn background_detaches_and_writes_a_pid() {
    let dir = TempDir::new();
    let sock = dir.0.join("zdb.sock");
    let pidfile = dir.0.join("zdb.pid");
    let out = zos()
        .args(["zdb", "serve", "--background", "--socket"])
        .arg(&sock)
        .args(["--data"])
        .arg(dir.0.join("data"))
        .args(["--index"])
        .arg(dir.0.join("index"))
        .args(["--pidfile"])
        .arg(&pidfile)
        .args(["--logfile"])
        .arg(dir.0.join("log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pid {pid}")));
    let mut c = redis::Client::open(format!("unix://{}", sock.display()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        qs(&mut c, &["PING"]),
        Ok(Value::SimpleString("PONG".into()))
    );
    drop(c);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "background server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // An unknown flag is a clear usage error.
    let out = zos()
        .args(["zdb", "serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--no-such-flag'"));
}

/// Every entry's key, flags, length, time and CRC per namespace, without file positions.
fn dump(dir: &Path) -> String {
    let mut out = Vec::new();
    zos_zdb::tools::dump(&dir.join("data"), &dir.join("index"), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("file "))
        .map(|l| match l.find("] key") {
            Some(i) => l[i + 2..].split(" data@").next().unwrap().to_string(),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A master and a mirror (two `zos` processes); 100,000 writes; the mirror is killed with
/// SIGKILL halfway and restarted; it catches up and holds exactly the master's data.
#[test]
fn mirror_killed_halfway_catches_up_with_100k_writes() {
    let mdir = TempDir::new();
    let rdir = TempDir::new();
    let args = |d: &Path| {
        vec![
            "--data".to_string(),
            d.join("data").display().to_string(),
            "--index".into(),
            d.join("index").display().to_string(),
            "--listen".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--admin".into(),
            "root".into(),
        ]
    };
    let margs = args(&mdir.0);
    let master = Zdb::start(&margs.iter().map(String::as_str).collect::<Vec<_>>());
    let maddr = master.addr.unwrap().to_string();
    let mut rargs = args(&rdir.0);
    rargs.extend([
        "--replicate-from".into(),
        maddr.clone(),
        "--master-admin".into(),
        "root".into(),
    ]);
    let rargs: Vec<&str> = rargs.iter().map(String::as_str).collect();
    let mirror = Zdb::start(&rargs);

    let mut m = master.con();
    assert_eq!(qs(&mut m, &["AUTH", "root"]), ok());
    const N: usize = 100_000;
    const BATCH: usize = 1000;
    let write = |m: &mut redis::Connection, from: usize, to: usize| {
        for start in (from..to).step_by(BATCH) {
            let mut p = redis::pipe();
            for i in start..(start + BATCH).min(to) {
                if i % 10 == 9 {
                    // An overwrite of an earlier key, and every 100th write a delete.
                    p.cmd("SET")
                        .arg(format!("k{}", i / 2))
                        .arg(format!("again-{i}"));
                } else if i % 100 == 55 {
                    p.cmd("DEL").arg(format!("k{}", i - 5));
                } else {
                    p.cmd("SET")
                        .arg(format!("k{i}"))
                        .arg(format!("value-{i}-{}", "x".repeat(i % 64)));
                }
            }
            let _: Vec<Value> = p.query(m).unwrap();
        }
    };
    write(&mut m, 0, N / 2);
    let mut r = mirror.con();
    let before_kill = int(qs(&mut r, &["DBSIZE"]));
    drop(r);
    mirror.kill9();
    write(&mut m, N / 2, N);
    let master_size = int(qs(&mut m, &["DBSIZE"]));
    assert!(master_size > 80_000, "{master_size}");
    let mirror = Zdb::start(&rargs);
    let mut r = mirror.con();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The last write was `SET k49999 again-99999`.
    while int(qs(&mut r, &["DBSIZE"])) != master_size
        || qs(&mut r, &["GET", "k49999"]) != bulk(b"again-99999")
    {
        assert!(Instant::now() < deadline, "mirror did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        qs(&mut r, &["GET", "k99998"]),
        qs(&mut m, &["GET", "k99998"])
    );
    assert_eq!(
        qs(&mut r, &["SET", "k1", "x"]),
        err("Read-only mirror: writes go to its master")
    );
    eprintln!("mirror held {before_kill} keys when killed, master {master_size} at the end");
    drop((m, r));
    mirror.stop();
    master.stop();
    let (a, b) = (dump(&mdir.0), dump(&rdir.0));
    assert_eq!(a.lines().count(), b.lines().count());
    assert!(a == b, "mirror differs from master");
}
