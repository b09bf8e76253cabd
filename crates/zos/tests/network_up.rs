//! `zos up --nodes N`: a local grid of N nodes, each node's network plane in its own namespace
//! on a local "internet" bridge. Without root it refuses plainly; as root three nodes register,
//! their namespaces exist with their addresses, a node killed with SIGKILL is started again by
//! `zos up`, and a clean stop removes every namespace of the grid.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn zos() -> &'static str {
    env!("CARGO_BIN_EXE_zos")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

fn grid_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("zup"))
                .collect()
        })
        .unwrap_or_default()
}

/// The `zos node run` child of `parent` serving `namespace`.
fn node_child(parent: u32, namespace: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // ppid is the 4th field, after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let want = format!("--net-namespace={namespace}");
        if ppid == Some(parent) && cmd.split(|b| *b == 0).any(|a| a == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

struct Up {
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in grid_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

#[test]
fn several_nodes_need_root() {
    let dir = tempfile::tempdir().unwrap();
    let setpriv = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            zos(),
            "up",
            "--nodes",
            "2",
        ])
        .arg("--data")
        .arg(dir.path())
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .output();
    let out = match setpriv {
        Ok(o) if is_root() => o,
        _ => {
            eprintln!("SKIP several_nodes_need_root: needs root to drop to nobody with setpriv");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && !err.contains("need root") {
        eprintln!("SKIP several_nodes_need_root: nobody cannot run the test binary: {err}");
        return;
    }
    assert!(!out.status.success());
    assert!(
        err.contains("zos up --nodes 2: private networks need root"),
        "{err}"
    );
}

#[test]
fn three_nodes_on_a_local_internet() {
    if !is_root() || zos_network::network_support().is_err() {
        eprintln!("SKIP three_nodes_on_a_local_internet: needs root, /dev/net/tun and ip");
        return;
    }
    if !grid_namespaces().is_empty() {
        eprintln!("SKIP three_nodes_on_a_local_internet: another local grid's namespaces exist");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(zos())
        .args([
            "up",
            "--nodes",
            "3",
            "--ssd",
            "1GiB",
            "--hdd",
            "1GiB",
            "--metrics-port",
            "0",
        ])
        .args(["--ledger-port", &free_port().to_string()])
        .args(["--relay-port", &free_port().to_string()])
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut up = Up {
        child: Some(child),
        _dir: dir,
    };
    let stdout = up.child.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("grid is up") => break,
            Ok(line) => lines.push(line),
            Err(_) => panic!("zos up --nodes 3 did not come up within 180 s: {lines:?}"),
        }
    }
    let mut printed = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        printed.push(l);
    }
    let text = printed.join("\n");
    let ids = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("nodes    ["))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("no node list: {text}"));
    assert_eq!(ids.split(',').count(), 3, "three nodes registered: {text}");
    // Each plane is printed with its node's real ledger id: together, the registered ids.
    let mut plane_ids: Vec<String> = Vec::new();
    for i in 1..=3 {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("namespace zup-node{i} at 198.18.0.{i}")))
            .unwrap_or_else(|| panic!("no plane {i}: {text}"));
        let id = line
            .trim()
            .strip_prefix("node ")
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("no ledger id for plane {i}: {line}"));
        plane_ids.push(id.to_string());
    }
    let mut listed: Vec<String> = ids.split(',').map(|s| s.trim().to_string()).collect();
    listed.sort();
    plane_ids.sort();
    assert_eq!(plane_ids, listed, "{text}");
    let names = grid_namespaces();
    for n in ["zup-inet", "zup-node1", "zup-node2", "zup-node3"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    // The nodes reach each other on the local internet.
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            "zup-node1",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "198.18.0.3",
        ])
        .output()
        .unwrap();
    assert!(ping.status.success(), "node 1 reaches node 3's address");

    // kill -9 node 2: zos up starts it again.
    let parent = up.child.as_ref().unwrap().id();
    let before = node_child(parent, "zup-node2").expect("node 2 runs as a child of zos up");
    Command::new("kill")
        .args(["-KILL", &before.to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut after = None;
    while Instant::now() < end {
        after = node_child(parent, "zup-node2").filter(|p| *p != before);
        if after.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(after.is_some(), "node 2 was started again after SIGKILL");

    // A clean stop removes the grid's namespaces.
    let mut c = up.child.take().unwrap();
    Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && c.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.try_wait().unwrap().is_some(),
        "zos up stopped within 60 s"
    );
    assert!(
        grid_namespaces().is_empty(),
        "left: {:?}",
        grid_namespaces()
    );
}
