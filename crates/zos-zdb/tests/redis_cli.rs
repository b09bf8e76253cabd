//! The same surface through Debian's `redis-cli` (package redis-tools): one-shot commands,
//! interactive sessions for authentication and namespace state, both modes, and
//! `redis-cli --pipe` (which needs ECHO). Skips loudly when redis-cli is not installed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;
use sha1::{Digest, Sha1};
use zos_zdb::Mode;

fn have_cli() -> bool {
    let ok = Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: redis-cli not installed (apt-get install -y redis-tools)");
    }
    ok
}

/// One-shot `redis-cli -p PORT args…`; returns stdout without the final newline.
fn cli(s: &TestServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(s.addr.port().to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Errors are followed by an empty line; nil is an empty line.
    String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string()
}

/// An interactive redis-cli: one connection, commands written line by line.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn new(s: &TestServer) -> Session {
        let mut child = Command::new("redis-cli")
            .arg("-p")
            .arg(s.addr.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command line followed by a PING, and returns the output lines before the
    /// PONG (an error's trailing empty line removed).
    fn run(&mut self, line: &str) -> Vec<String> {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}\nPING").unwrap();
        stdin.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            assert!(
                self.stdout.read_line(&mut l).unwrap() > 0,
                "redis-cli exited"
            );
            let l = l.trim_end_matches('\n').to_string();
            if l == "PONG" {
                break;
            }
            lines.push(l);
        }
        if lines.len() == 2 && lines[1].is_empty() {
            lines.pop();
        }
        lines
    }

    /// Sends a last command and reads everything until redis-cli exits (for a connection
    /// the server closes after replying).
    fn last(mut self, line: &str) -> String {
        let mut stdin = self.stdin.take().unwrap();
        writeln!(stdin, "{line}").unwrap();
        drop(stdin); // EOF: redis-cli exits after this command
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut out).unwrap();
        out.trim_end_matches('\n').to_string()
    }

    fn one(&mut self, line: &str) -> String {
        self.run(line).join("\n")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha(challenge: &str, pw: &str) -> String {
    hex::encode(Sha1::digest(format!("{challenge}:{pw}").as_bytes()))
}

#[test]
fn every_command_through_redis_cli() {
    if !have_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.datasize = 64 * 1024;
    let s = TestServer::start(cfg);
    assert_eq!(cli(&s, &["PING"]), "PONG");
    assert_eq!(cli(&s, &["ECHO", "hello"]), "hello");
    assert_eq!(cli(&s, &["TIME"]).lines().count(), 2);
    assert!(cli(&s, &["INFO"]).contains("server_name: 0-db (zdb)"));
    assert_eq!(cli(&s, &["SET", "k", "v1"]), "k");
    assert_eq!(cli(&s, &["SET", "k", "v1"]), "", "unchanged: nil");
    assert_eq!(cli(&s, &["SETX", "k", "v2"]), "k");
    assert_eq!(cli(&s, &["GET", "k"]), "v2");
    assert_eq!(cli(&s, &["GET", "nope"]), "");
    assert_eq!(cli(&s, &["EXISTS", "k"]), "1");
    assert_eq!(cli(&s, &["LENGTH", "k"]), "2");
    assert_eq!(cli(&s, &["CHECK", "k"]), "1");
    assert!(cli(&s, &["KEYTIME", "k"]).parse::<u64>().unwrap() > 1_600_000_000);
    assert_eq!(cli(&s, &["SET", "k2", "x"]), "k2");
    assert_eq!(cli(&s, &["MGET", "k", "nope", "k2"]), "v2\n\nx");
    assert_eq!(cli(&s, &["DBSIZE"]), "2");
    assert_eq!(cli(&s, &["KSCAN", "k"]).lines().skip(1).count(), 2);
    let scan = cli(&s, &["SCAN"]);
    assert!(
        scan.contains("\nk\n2\n") && scan.contains("\nk2\n1\n"),
        "{scan:?}"
    );
    assert!(cli(&s, &["RSCAN"]).contains("\nk2\n1\n"));
    let hist = cli(&s, &["HISTORY", "k"]);
    assert!(hist.ends_with("\nv2"), "{hist:?}");
    assert_eq!(cli(&s, &["KEYCUR", "k"]).len(), 8);
    assert_eq!(cli(&s, &["DEL", "k2"]), "OK");
    assert_eq!(cli(&s, &["DEL", "k2"]), "Key not found");
    assert_eq!(cli(&s, &["NSLIST"]), "default");
    assert!(cli(&s, &["NSINFO", "default"]).contains("entries: 1"));
    assert_eq!(cli(&s, &["NSNEW", "a"]), "Permission denied");
    assert_eq!(cli(&s, &["WAIT", "SET", "100"]), "Timeout");
    assert_eq!(cli(&s, &["STOP"]), "Unauthorized");
    assert_eq!(cli(&s, &["FLUSH"]), "Flushing public namespace denied");
    assert_eq!(cli(&s, &["BOGUS"]), "Command not supported");

    // Admin session: namespace life cycle and every NSSET property.
    let mut a = Session::new(&s);
    assert_eq!(a.one("AUTH wrong"), "Access denied");
    assert_eq!(a.one("AUTH root"), "OK");
    assert_eq!(a.one("NSNEW a"), "OK");
    for (prop, val) in [
        ("maxsize", "10"),
        ("public", "0"),
        ("password", "pw"),
        ("worm", "0"),
        ("lock", "0"),
        ("freeze", "0"),
        ("mode", "user"),
    ] {
        assert_eq!(a.one(&format!("NSSET a {prop} {val}")), "OK", "{prop}");
    }
    assert_eq!(a.run("NSLIST"), ["a", "default"]);
    let info = a.one("NSINFO a");
    assert!(
        info.contains("password: yes") && info.contains("data_limits_bytes: 10"),
        "{info}"
    );
    assert_eq!(a.one("NSJUMP"), "OK");
    assert_eq!(a.one("INDEX DIRTY RESET"), "0\n1");
    assert_eq!(a.one("INDEX DIRTY"), "");
    assert_eq!(a.one("SET ts v 1234"), "ts");
    assert_eq!(a.one("KEYTIME ts"), "1234");
    assert_eq!(a.run("DATA RAW 1 24")[0], "ts");
    drop(a);

    // User sessions: private namespace, plain and secure SELECT, permissions.
    let mut u = Session::new(&s);
    assert_eq!(u.one("SELECT a"), "Namespace protected and private");
    assert_eq!(u.one("SELECT a bad"), "Access denied");
    let ch = u.one("AUTH SECURE CHALLENGE");
    assert_eq!(ch.len(), 16);
    assert_eq!(u.one(&format!("SELECT a SECURE {}", sha(&ch, "pw"))), "OK");
    assert_eq!(u.one("SET x 12345678"), "x");
    assert_eq!(u.one("SET y 12345"), "No space left on this namespace");
    assert_eq!(u.one("NSSET a maxsize 0"), "Permission denied");
    let mut a = Session::new(&s);
    let ch = a.one("AUTH SECURE CHALLENGE");
    assert_eq!(a.one(&format!("AUTH SECURE {}", sha(&ch, "root"))), "OK");
    assert_eq!(a.one("NSSET a worm 1"), "OK");
    assert_eq!(
        u.one("SET x other"),
        "Namespace is in WORM mode, overwrite denied"
    );
    assert_eq!(a.one("NSSET a worm 0"), "OK");
    assert_eq!(a.one("NSSET a lock 1"), "OK");
    assert_eq!(u.one("DEL x"), "Namespace is temporarily locked");
    assert_eq!(a.one("NSSET a lock 0"), "OK");
    assert_eq!(a.one("NSSET a freeze 1"), "OK");
    assert_eq!(u.one("GET x"), "Namespace is temporarily frozen");
    assert_eq!(a.one("NSSET a freeze 0"), "OK");
    assert_eq!(a.one("NSSET a public 1"), "OK");
    let mut r = Session::new(&s);
    assert_eq!(r.one("SELECT a"), "OK");
    assert_eq!(r.one("GET x"), "12345678");
    assert_eq!(r.one("SET x y"), "Namespace is in read-only mode");
    assert_eq!(a.one("NSSET a public 0"), "OK");
    assert_eq!(u.one("FLUSH"), "OK");
    assert_eq!(u.one("DBSIZE"), "0");
    assert_eq!(u.one("SELECT default"), "OK");
    assert_eq!(a.one("NSDEL a"), "OK");
    assert!(
        r.last("GET x")
            .starts_with("Your active namespace is not available anymore (probably removed).")
    );
    assert_eq!(a.one("NSNEW s"), "OK");
    assert_eq!(a.one("NSSET s mode seq"), "OK");
    assert_eq!(u.one("SELECT s"), "OK");
    assert_eq!(u.one("SET \"\" first").as_bytes(), [0u8; 8]);
    assert_eq!(
        u.one("GET \"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\""),
        "first"
    );

    // redis-cli --pipe: mass insertion, finished by an ECHO round trip.
    let mut data = Vec::new();
    for i in 0..10_000 {
        let (k, v) = (format!("bulk{i}"), format!("value{i}"));
        data.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
            .as_bytes(),
        );
    }
    let mut p = Command::new("redis-cli")
        .args(["-p", &s.addr.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&data).unwrap();
    let out = p.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("errors: 0, replies: 10000"), "{out}");
    assert_eq!(cli(&s, &["GET", "bulk9999"]), "value9999");
}

#[test]
fn seq_server_through_redis_cli() {
    if !have_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.mode = Some(Mode::Seq);
    cfg.protect = true;
    let s = TestServer::start(cfg);
    assert_eq!(cli(&s, &["SET", "", "x"]), "Namespace is in read-only mode");
    let mut c = Session::new(&s);
    assert_eq!(c.one("SELECT default root"), "OK");
    for n in 0u8..3 {
        let id = c.one(&format!("SET \"\" v{n}"));
        assert_eq!(id.as_bytes(), [n, 0, 0, 0, 0, 0, 0, 0]);
    }
    assert_eq!(
        c.one("GET \"\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00\""),
        "v2"
    );
    assert_eq!(
        c.one("SET \"\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00\" new")
            .as_bytes(),
        [2, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        c.one("SET \"\\x09\\x00\\x00\\x00\\x00\\x00\\x00\\x00\" new"),
        "Invalid key, only update authorized"
    );
    // Upstream: the update of id 2 took an id of its own (3), so the next new id is 4.
    assert!(c.one("NSINFO default").contains("next_internal_id: 4"));
    assert!(cli(&s, &["NSINFO", "default"]).contains("mode: sequential"));
    assert_eq!(cli(&s, &["DBSIZE"]), "3");
}
