//! Scaffolding shared by the root tests on namespaces (and the `mesh_bench` example, which
//! includes it with `#[path]`): commands, and the namespaces of one run, named
//! `<family><pid>-…` and removed by a [`Guard`], also on panic.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a different part

use std::process::{Child, Command, Output};
use std::sync::Arc;

use zos_primitive::{NodeSecret, WorkloadCtx};
use zos_types::{Deployment, Workload};

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run")
}

/// Runs `args`, asserts it succeeded and returns its stdout.
pub fn must(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn netns_list() -> Vec<String> {
    let o = sh(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Removes namespaces of `family` whose run (pid in the name) is gone, or all of `mine`.
pub fn cleanup(family: &str, mine: Option<&str>) {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(family) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() {
            continue;
        }
        let dead = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if mine.is_some_and(|m| ns.starts_with(m)) || dead {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

/// This run's namespaces (`prefix` = `<family><pid>-`): on drop the capture is stopped and
/// every namespace of the run removed (the nft tables and links in them go with them).
pub struct Guard {
    pub family: &'static str,
    pub prefix: String,
    pub capture: Option<Child>,
}

impl Guard {
    /// Removes the namespaces dead runs of `family` left, then guards this run's.
    pub fn new(family: &'static str) -> Self {
        cleanup(family, None);
        Guard {
            family,
            prefix: format!("{family}{}-", std::process::id()),
            capture: None,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.capture.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        cleanup(self.family, Some(&self.prefix));
    }
}

/// Why the test cannot run here: not root, no /dev/net/tun (when `tun`), or one of `tools`
/// missing.
pub fn skip_reason(tun: bool, tools: &[&str]) -> Option<String> {
    if !sh(&["id", "-u"]).stdout.starts_with(b"0") {
        return Some("not root".into());
    }
    if tun && !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for tool in tools {
        if !sh(&["sh", "-c", &format!("command -v {tool}")])
            .status
            .success()
        {
            return Some(format!("{tool} missing"));
        }
    }
    None
}

/// A bridge namespace `<prefix>inet` with `br0` up: the "internet" the node namespaces join.
pub fn internet(prefix: &str) -> String {
    let inet = format!("{prefix}inet");
    must(&["ip", "netns", "add", &inet]);
    must(&["ip", "-n", &inet, "link", "add", "br0", "type", "bridge"]);
    must(&["ip", "-n", &inet, "link", "set", "br0", "up"]);
    inet
}

/// A node namespace `ns` joined to the internet `inet`'s bridge by a veth: `port` on the
/// bridge, `eth0` in `ns` (still down: [`eth0_up`] addresses it).
pub fn join_internet(inet: &str, ns: &str, port: &str) {
    must(&["ip", "netns", "add", ns]);
    must(&[
        "ip", "-n", inet, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    must(&["ip", "-n", inet, "link", "set", port, "master", "br0", "up"]);
}

/// `addr`/24 on `ns`'s `eth0`, and its `eth0` and `lo` up.
pub fn eth0_up(ns: &str, addr: &str) {
    must(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ]);
    must(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/// The context of `wl` as the only workload of contract `contract` (twin 7, node 1).
pub fn ctx(wl: &Workload, contract: u64) -> WorkloadCtx {
    let d = Deployment {
        twin_id: 7,
        contract_id: contract,
        workloads: vec![wl.clone()],
        ..Deployment::default()
    };
    WorkloadCtx::new(1, Arc::new(d), &wl.name, NodeSecret::new([3; 32]))
}
