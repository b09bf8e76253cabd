//! Connection limits, timeouts, the unfinished-request budget, password throttling,
//! NSLIST/NSINFO visibility, HELLO and --synctime, against a real server on loopback.
//! Numbers and reasons: docs/zdb.md ("Connection limits", "Authentication throttling").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use redis::Value;
use zos_zdb::{Limits, ServerConfig};

fn with_limits(dir: &std::path::Path, limits: Limits) -> ServerConfig {
    ServerConfig {
        limits,
        ..config(dir)
    }
}

fn raw(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn req(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Reads until `want` bytes arrived or the peer closed.
fn read_some(c: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Reads everything until the server closes (or 10 s).
fn read_to_close(c: &mut TcpStream) -> Vec<u8> {
    read_some(c, usize::MAX)
}

fn info(s: &TestServer) -> HashMap<String, String> {
    let mut c = s.con();
    text(q(&mut c, &["INFO"]))
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stat(s: &TestServer, name: &str) -> u64 {
    info(s)
        .get(name)
        .unwrap_or_else(|| panic!("INFO has no {name}"))
        .parse()
        .unwrap()
}

fn list(v: Result<Value, String>) -> Vec<String> {
    match v {
        Ok(Value::Array(items)) => items.into_iter().map(|i| text(Ok(i))).collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

#[test]
fn max_clients_refuses_politely_and_admits_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(with_limits(
        dir.path(),
        Limits {
            max_clients: 3,
            ..Limits::default()
        },
    ));
    let mut held: Vec<redis::Connection> = (0..3).map(|_| s.con()).collect();
    for c in &mut held {
        assert_eq!(q(c, &["PING"]), Ok(Value::SimpleString("PONG".into())));
    }
    let mut extra = raw(s.addr);
    let got = read_to_close(&mut extra);
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    // The unix socket counts too.
    let mut ux = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    ux.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    ux.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    drop(held.pop());
    // The slot is freed when the server notices the close: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        let mut c = raw(s.addr);
        c.write_all(&req(&[b"PING"])).unwrap();
        let got = read_some(&mut c, 7);
        if got == b"+PONG\r\n" {
            break c;
        }
        assert!(Instant::now() < deadline, "never admitted again: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    c.write_all(&req(&[b"INFO"])).unwrap();
    let text = String::from_utf8_lossy(&read_some(&mut c, 1500)).into_owned();
    assert!(text.contains("maxclients: 3"), "{text}");
    // The TCP and unix refusals, plus any retry above that came too early.
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rejected_connections_maxclients: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 2, "{text}");
}

#[test]
fn idle_clients_are_closed_and_active_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(with_limits(
        dir.path(),
        Limits {
            idle_timeout: Some(Duration::from_secs(1)),
            request_timeout: Some(Duration::from_secs(30)),
            ..Limits::default()
        },
    ));
    let mut idle = raw(s.addr);
    let mut busy = raw(s.addr);
    let t = Instant::now();
    // The busy client sends a command every 300 ms for 2.5 s: never idle for 1 s.
    while t.elapsed() < Duration::from_millis(2500) {
        busy.write_all(&req(&[b"PING"])).unwrap();
        assert_eq!(read_some(&mut busy, 7), b"+PONG\r\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The idle one was closed without a word, as Redis does, after 1-2 s.
    let got = read_to_close(&mut idle);
    assert!(got.is_empty(), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(stat(&s, "timeouts_idle") >= 1);
    assert_eq!(stat(&s, "idle_timeout_secs"), 1);
}

#[test]
fn slow_requests_are_cut_off_and_steady_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(with_limits(
        dir.path(),
        Limits {
            idle_timeout: Some(Duration::from_secs(60)),
            request_timeout: Some(Duration::from_secs(1)),
            ..Limits::default()
        },
    ));
    // Slowloris: a request started and never finished, one byte every 200 ms.
    let mut slow = raw(s.addr);
    slow.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\n")
        .unwrap();
    let t = Instant::now();
    let mut cut_after = None;
    while t.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        if slow.write_all(b"x").is_err() {
            cut_after = Some(t.elapsed());
            break;
        }
        slow.set_nonblocking(true).unwrap();
        let mut b = [0u8; 128];
        let r = slow.read(&mut b);
        slow.set_nonblocking(false).unwrap();
        if let Ok(n) = r {
            let said = String::from_utf8_lossy(&b[..n]).into_owned();
            assert!(
                n == 0 || said.contains("request not completed in time"),
                "{said}"
            );
            cut_after = Some(t.elapsed());
            break;
        }
    }
    let cut = cut_after.expect("the slow request was never cut off");
    assert!(cut >= Duration::from_millis(800), "cut too early: {cut:?}");
    // A steady client whose requests each finish within the deadline keeps going: one SET
    // in two halves 400 ms apart, five times.
    let mut steady = raw(s.addr);
    for i in 0..5 {
        let r = req(&[b"SET", format!("k{i}").as_bytes(), b"value"]);
        let (a, b) = r.split_at(r.len() / 2);
        steady.write_all(a).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        steady.write_all(b).unwrap();
        assert_eq!(
            read_some(&mut steady, 8),
            format!("$2\r\nk{i}\r\n").as_bytes()
        );
    }
    assert!(stat(&s, "timeouts_request") >= 1);
}

/// Sends `n` pipelined commands and reads replies for `window`: how many came back, and
/// whether the server closed the connection.
fn replies_within(c: &mut TcpStream, commands: &[u8], window: Duration) -> (usize, bool, String) {
    c.write_all(commands).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 4096];
    while t.elapsed() < window {
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    (text.matches("\r\n").count(), closed, text)
}

fn connect_from(src: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::new(src, 0)).ok()?;
        sock.connect(to).await.ok()
    })?;
    let s = s.into_std().ok()?;
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    Some(s)
}

#[test]
fn password_guessing_is_slowed_cut_off_and_banned() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(250);
    let s = TestServer::start(with_limits(
        dir.path(),
        Limits {
            auth_free_failures: 3,
            auth_delay: delay,
            auth_close_after: 10,
            auth_ip_delay_after: 10,
            auth_ip_ban_after: 15,
            auth_ban: Duration::from_secs(3),
            ..Limits::default()
        },
    ));
    {
        let mut a = s.admin();
        assert_eq!(q(&mut a, &["NSNEW", "vault"]), ok());
        assert_eq!(q(&mut a, &["NSSET", "vault", "password", "secret"]), ok());
        assert_eq!(q(&mut a, &["NSSET", "vault", "public", "0"]), ok());
    }
    // One connection pipelines 50 wrong AUTHs. Before throttling it managed 200,000 in
    // 0.05 s; now 3 are answered at once, then at most one per `delay`, and the 10th
    // failure closes the connection.
    let mut guess = raw(s.addr);
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(req(&[b"AUTH", format!("guess{i}").as_bytes()]));
    }
    let t = Instant::now();
    let (n, closed, said) = replies_within(&mut guess, &burst, Duration::from_millis(1000));
    // In 1 s: 3 free + at most 1 s / 250 ms delayed ones (+1 for timer slack).
    assert!(n <= 3 + 5, "{n} replies in 1 s: {said}");
    assert!(n >= 3, "{said}");
    assert!(!closed);
    let (m, closed, said) = replies_within(&mut guess, b"", Duration::from_secs(5));
    assert!(closed, "not closed after 10 failures: {said}");
    assert_eq!(n + m, 10, "{said}");
    assert!(
        said.ends_with("-ERR too many authentication failures\r\n"),
        "{said}"
    );
    // 7 delayed failures took at least 7 delays.
    assert!(t.elapsed() >= delay * 6, "{:?}", t.elapsed());

    // The same source (127.0.0.1) on a new connection, guessing namespace passwords: the
    // source is past its 10 free failures, so each is delayed; at 15 it is banned.
    let mut sel = raw(s.addr);
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(req(&[b"SELECT", b"vault", format!("pw{i}").as_bytes()]));
    }
    let (n, closed, said) = replies_within(&mut sel, &burst, Duration::from_secs(5));
    assert!(closed, "{said}");
    assert_eq!(n, 5, "{said}");
    assert!(
        said.ends_with("-ERR too many authentication failures\r\n"),
        "{said}"
    );
    // Banned: a new connection from 127.0.0.1 is told so at once, even with the right
    // password.
    let mut banned = raw(s.addr);
    let _ = banned.write_all(&req(&[b"AUTH", b"root"]));
    let got = String::from_utf8_lossy(&read_to_close(&mut banned)).into_owned();
    assert_eq!(
        got,
        "-ERR too many authentication failures, try again later\r\n"
    );

    // Another client is not affected: a unix socket client (throttled per connection only)
    // and, where the loopback /8 is usable, a TCP client from 127.0.0.2.
    let mut ux = redis::Client::open(format!("redis+unix://{}", s.socket.display()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(q(&mut ux, &["AUTH", "root"]), ok());
    assert_eq!(q(&mut ux, &["SELECT", "vault", "secret"]), ok());
    let info_text = text(q(&mut ux, &["INFO"]));
    assert!(info_text.contains("auth_bans: 1"), "{info_text}");
    assert!(info_text.contains("auth_banned_sources: 1"), "{info_text}");
    assert!(info_text.contains("auth_failures: 15"), "{info_text}");
    match connect_from("127.0.0.2".parse().unwrap(), s.addr) {
        Some(mut other) => {
            other.write_all(&req(&[b"AUTH", b"root"])).unwrap();
            assert_eq!(read_some(&mut other, 5), b"+OK\r\n");
            other
                .write_all(&req(&[b"SELECT", b"vault", b"secret"]))
                .unwrap();
            assert_eq!(read_some(&mut other, 5), b"+OK\r\n");
        }
        None => eprintln!("SKIP: cannot bind 127.0.0.2 here; checked the unix socket only"),
    }
    // The ban ends: 127.0.0.1 with the right password gets in again.
    std::thread::sleep(Duration::from_millis(3200));
    let mut back = raw(s.addr);
    back.write_all(&req(&[b"AUTH", b"root"])).unwrap();
    assert_eq!(read_some(&mut back, 5), b"+OK\r\n");
}

#[test]
fn namespace_listing_shows_only_what_the_caller_may_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut a = s.admin();
    for ns in ["open", "shared", "vault"] {
        assert_eq!(q(&mut a, &["NSNEW", ns]), ok());
    }
    assert_eq!(q(&mut a, &["NSSET", "shared", "password", "pw1"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "shared", "public", "1"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "vault", "password", "pw2"]), ok());
    assert_eq!(q(&mut a, &["NSSET", "vault", "public", "0"]), ok());
    assert_eq!(
        list(q(&mut a, &["NSLIST"])),
        ["default", "open", "shared", "vault"]
    );
    assert!(text(q(&mut a, &["NSINFO", "vault"])).contains("password_raw: pw2"));

    let mut u = s.con();
    assert_eq!(list(q(&mut u, &["NSLIST"])), ["default", "open", "shared"]);
    assert_eq!(q(&mut u, &["NSINFO", "vault"]), e("Permission denied"));
    assert_eq!(q(&mut u, &["NSINFO", "nope"]), e("Namespace not found"));
    let shared_info = text(q(&mut u, &["NSINFO", "shared"]));
    assert!(shared_info.contains("name: shared") && !shared_info.contains("password_raw"));
    // Selected with its password: now visible to this connection, not to others.
    assert_eq!(q(&mut u, &["SELECT", "vault", "pw2"]), ok());
    assert!(text(q(&mut u, &["NSINFO", "vault"])).contains("name: vault"));
    assert_eq!(q(&mut u, &["SELECT", "default"]), ok());
    assert_eq!(
        list(q(&mut u, &["NSLIST"])),
        ["default", "open", "shared", "vault"]
    );
    let mut other = s.con();
    assert_eq!(
        list(q(&mut other, &["NSLIST"])),
        ["default", "open", "shared"]
    );

    // Without --admin every client is admin (upstream's rule, docs/zdb.md): it sees all.
    drop((a, u, other));
    let mut cfg = s.stop();
    cfg.admin_password = None;
    let s = TestServer::start(cfg);
    let mut c = s.con();
    assert_eq!(
        list(q(&mut c, &["NSLIST"])),
        ["default", "open", "shared", "vault"]
    );
    assert!(text(q(&mut c, &["NSINFO", "vault"])).contains("password_raw: pw2"));
}

#[test]
fn hello_2_is_answered_and_hello_3_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    for args in [&["HELLO"][..], &["HELLO", "2"]] {
        let Ok(Value::Array(items)) = q(&mut c, args) else {
            panic!("HELLO is not an array")
        };
        assert_eq!(items.len(), 14);
        let keys: Vec<String> = items
            .iter()
            .step_by(2)
            .map(|k| text(Ok(k.clone())))
            .collect();
        assert_eq!(
            keys,
            [
                "server", "version", "proto", "id", "mode", "role", "modules"
            ]
        );
        assert_eq!(items[5], Value::Int(2));
        assert!(matches!(items[7], Value::Int(id) if id > 0));
        assert_eq!(items[13], Value::Array(vec![]));
    }
    assert_eq!(
        q(&mut c, &["HELLO", "3"]),
        e("NOPROTO sorry, this protocol version is not supported")
    );
    assert_eq!(
        q(&mut c, &["HELLO", "x"]),
        e("ERR Protocol version is not an integer or out of range")
    );
    // The connection still works after the refusal (clients fall back to RESP2 on it).
    assert_eq!(q(&mut c, &["SET", "k", "v"]), bulk(b"k"));
    assert_eq!(q(&mut c, &["NSNEW", "x"]), e("Permission denied"));
    assert_eq!(
        q(&mut c, &["HELLO", "2", "AUTH", "default", "wrong"]),
        e("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert!(
        q(
            &mut c,
            &["HELLO", "2", "AUTH", "default", "root", "SETNAME", "me"]
        )
        .is_ok()
    );
    assert_eq!(q(&mut c, &["NSNEW", "x"]), ok());
}

/// redis-py (>= 5; 8 sends `HELLO 3` first) connects, falls back to RESP2 and works.
#[test]
fn python_redis_client_connects() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("SKIP: python3 with the redis package is missing (pip install redis)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let script = format!(
        r#"
import redis
print("redis-py", redis.__version__)
for kw in ({{}}, {{"password": "root"}}, {{"protocol": 2}}):
    r = redis.Redis(host="127.0.0.1", port={port}, **kw)
    assert r.ping()
    r.set("py", "value")  # 0-db answers SET with the key, not OK
    assert r.get("py") == b"value", r.get("py")
    r.close()
r = redis.Redis(host="127.0.0.1", port={port}, password="root")
assert r.execute_command("NSNEW", "frompy") in (b"OK", True, "OK")
print("ok")
"#,
        port = s.addr.port()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    eprintln!("{}", stdout.lines().next().unwrap_or(""));
}

#[test]
fn synctime_runs_the_periodic_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(ServerConfig {
        synctime: 1,
        ..config(dir.path())
    });
    let mut c = s.con();
    assert_eq!(stat(&s, "synctime_secs"), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while stat(&s, "periodic_fsyncs") < 2 {
        // Rounds skip namespaces not written since the previous one: keep writing.
        assert_eq!(
            q(&mut c, &["SET", &format!("k{i}"), "v"]),
            bulk(format!("k{i}").as_bytes())
        );
        i += 1;
        assert!(Instant::now() < deadline, "no periodic fsync in 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // With --sync every write is fsynced: the periodic task is off.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = TestServer::start(ServerConfig {
        synctime: 1,
        sync: true,
        ..config(dir2.path())
    });
    assert_eq!(stat(&s2, "synctime_secs"), 0);
}

fn vm_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// Makes sure this process may open `need` descriptors; raises the soft limit with
/// `prlimit` if the hard limit allows. Returns how many it may open.
fn fd_room(need: u64) -> u64 {
    let soft = zos_zdb::server::open_file_limit().unwrap_or(1024);
    if soft >= need {
        return soft;
    }
    let _ = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={need}:"),
        ])
        .status();
    zos_zdb::server::open_file_limit().unwrap_or(soft)
}

/// The soak test of issue 13: 1000 idle connections, 300 slowloris ones and 50 partial
/// 7 MiB SETs against one server, while a well-behaved client keeps writing and reading.
/// Bounds (docs/zdb.md): every command of the good client answered within 1 s; unfinished
/// request bytes held by the server never above the 64 MiB budget; this process's RSS
/// grows by less than 256 MiB (without the budget, the partial SETs alone would pin
/// 350 MiB); every acknowledged value reads back; the slowloris clients are cut off after
/// the request deadline; everything charged is given back when they are gone.
#[test]
fn soak_idle_slowloris_and_partial_large_sets() {
    const SLOW: usize = 300;
    const LARGE: usize = 50;
    const LARGE_SENT: usize = 7 << 20;
    const BUDGET: usize = 64 << 20;
    let mut idle_n: usize = 1000;
    // Both ends of every connection live in this process.
    let need = 2 * (idle_n + SLOW + LARGE) as u64 + 400;
    let room = fd_room(need);
    if room < need {
        let fit = (room.saturating_sub(400) / 2) as usize;
        idle_n = fit.saturating_sub(SLOW + LARGE);
        if idle_n < 200 {
            eprintln!("SKIP: open-file limit {room} is too low for the soak test (need {need})");
            return;
        }
        eprintln!("NOTE: open-file limit {room}: soak test with {idle_n} idle connections");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(with_limits(
        dir.path(),
        Limits {
            max_clients: 5000,
            idle_timeout: Some(Duration::from_secs(300)),
            request_timeout: Some(Duration::from_secs(4)),
            max_pending_bytes: BUDGET,
            ..Limits::default()
        },
    ));
    let mut good = s.con();
    assert_eq!(q(&mut good, &["SET", "warm", "up"]), bulk(b"warm"));
    let rss_before = vm_rss_kib();

    let idle: Vec<TcpStream> = (0..idle_n).map(|_| raw(s.addr)).collect();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut c = raw(s.addr);
            let head = format!("*3\r\n$3\r\nSET\r\n$6\r\nslow{:02}\r\n$100000\r\n", i % 100);
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    // The partial large SETs, sent from a thread (a refused one's write fails: fine).
    let addr = s.addr;
    let large = std::thread::spawn(move || {
        let body = vec![b'L'; LARGE_SENT];
        let mut held = Vec::new();
        for i in 0..LARGE {
            let mut c = raw(addr);
            let head = format!("*3\r\n$3\r\nSET\r\n$5\r\nbig{i:02}\r\n$8000000\r\n");
            if c.write_all(head.as_bytes()).is_ok() && c.write_all(&body).is_ok() {
                held.push(c);
            }
        }
        held
    });

    // The good client: SET then GET, measuring each command, for 6 s, while the slowloris
    // clients trickle a byte each every 500 ms.
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    let mut acked = Vec::new();
    let mut peak_pending = 0u64;
    let mut peak_rss = 0u64;
    let mut next_trickle = Instant::now();
    let mut i = 0u64;
    while t.elapsed() < Duration::from_secs(6) {
        let key = format!("good{i}");
        let value = format!("value-{i}-{}", "x".repeat((i % 64) as usize));
        let c0 = Instant::now();
        assert_eq!(q(&mut good, &["SET", &key, &value]), bulk(key.as_bytes()));
        worst = worst.max(c0.elapsed());
        acked.push((key.clone(), value.clone()));
        let c0 = Instant::now();
        assert_eq!(q(&mut good, &["GET", &key]), bulk(value.as_bytes()));
        worst = worst.max(c0.elapsed());
        if i % 20 == 0 {
            let c0 = Instant::now();
            let p: u64 = text(q(&mut good, &["INFO"]))
                .lines()
                .find_map(|l| l.strip_prefix("pending_bytes: "))
                .unwrap()
                .parse()
                .unwrap();
            worst = worst.max(c0.elapsed());
            peak_pending = peak_pending.max(p);
            peak_rss = peak_rss.max(vm_rss_kib().unwrap_or(0));
        }
        if Instant::now() >= next_trickle {
            for c in &mut slow {
                let _ = c.write_all(b"s");
            }
            next_trickle = Instant::now() + Duration::from_millis(500);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let large_held = large.join().unwrap();
    let inf = info(&s);
    let n = |k: &str| inf[k].parse::<u64>().unwrap();
    eprintln!(
        "soak: {i} SET+GET pairs, worst command {worst:?}, clients {}, peak pending {} MiB, \
         pending refused {}, request timeouts {}, RSS {:?} KiB -> peak {} KiB, large SETs sent in full {}",
        n("clients_connected"),
        peak_pending >> 20,
        n("pending_refused"),
        n("timeouts_request"),
        rss_before,
        peak_rss,
        large_held.len(),
    );
    assert!(worst < Duration::from_secs(1), "a command took {worst:?}");
    assert!(peak_pending <= BUDGET as u64);
    assert!(n("pending_bytes") <= BUDGET as u64);
    // 50 × 7 MiB do not fit 64 MiB: most partial SETs were told and closed.
    assert!(n("pending_refused") >= (LARGE as u64) / 2, "{inf:?}");
    // Slowloris clients were cut off by the 4 s request deadline.
    assert!(n("timeouts_request") >= SLOW as u64 / 2, "{inf:?}");
    assert!(
        n("clients_connected") >= idle_n as u64,
        "idle clients were dropped"
    );
    if let Some(a) = rss_before {
        let b = peak_rss;
        assert!(
            b.saturating_sub(a) < 256 * 1024,
            "RSS grew by {} MiB",
            (b - a) / 1024
        );
    }
    for (k, v) in &acked {
        assert_eq!(q(&mut good, &["GET", k]), bulk(v.as_bytes()));
    }
    drop((idle, slow, large_held));
    // Everything charged is given back once the clients are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&s, "pending_bytes") != 0 || stat(&s, "clients_connected") > 2 {
        assert!(Instant::now() < deadline, "{:?}", info(&s));
        std::thread::sleep(Duration::from_millis(100));
    }
    // And nothing acknowledged is lost across a restart.
    drop(good);
    let s = s.restart();
    let mut c = s.con();
    for (k, v) in &acked {
        assert_eq!(q(&mut c, &["GET", k]), bulk(v.as_bytes()));
    }
}
