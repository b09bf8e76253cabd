//! `zos up --nodes N`: a local grid of N nodes, each node's network plane in its own namespace
//! on a local "internet" bridge. Without root it refuses plainly; as root three nodes register,
//! their namespaces exist with their addresses, a node killed with SIGKILL is started again by
//! `zos up`, and a clean stop removes every namespace of the grid.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/up.rs"]
mod up;
use up::*;

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
    let (mut up, printed) = Up::start(3, &[], Duration::from_secs(180));
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
    assert!(
        interrupt(&mut c, Duration::from_secs(60)).is_some(),
        "zos up stopped within 60 s"
    );
    assert!(
        grid_namespaces().is_empty(),
        "left: {:?}",
        grid_namespaces()
    );
}
