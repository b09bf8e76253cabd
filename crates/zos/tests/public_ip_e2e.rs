//! A VM with a public IP on `zos up --nodes 2` (root, QEMU; TCG here), through the real binary
//! and the CLI: `zos up` gives node 1 a public config on the local internet (203.0.113.0/24,
//! gateway 203.0.113.1 on the internet namespace's bridge) and the farm four public IPs;
//! `zos deploy` of a network, an `ip: { v4: true, v6: true }` and a VM naming it reserves one on the
//! ledger with the contract; the VM boots with the public tap as its second NIC and the
//! internet namespace pings it on that address; the VM's own pings out work, its pings from
//! an address it does not own never reach the internet's bridge (tcpdump there); cancel
//! stops QEMU, removes the tap and its nftables chains and gives the IP back to the farm's
//! pool on the ledger. One guest boot.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "common/up.rs"]
mod up;
#[path = "common/vm_guest.rs"]
mod vm_guest;
#[path = "common/vm_up.rs"]
mod vm_up;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use up::{Up, grid_namespaces};
use vm_up::{VmGrid, guests, ok, wait_log};

const T: &str = "a_vm_with_a_public_ip_on_up";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ping_from(ns: &str, to: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if sh(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
            .status
            .success()
        {
            return true;
        }
    }
    false
}

/// The farm's public IPs on the ledger (ip → contract holding it).
fn farm_ips(up: &Up, rt: &tokio::runtime::Runtime) -> Vec<(String, u64)> {
    let cfg = zos_client::Config::load(&up.dir.path().join("config.toml")).unwrap();
    let trust = zos_ledger::Trust::default()
        .with_cert_file(cfg.ledger_cert.as_ref().unwrap())
        .unwrap();
    let ledger = zos_ledger::LedgerClient::with_trust(cfg.ledger.as_ref().unwrap(), trust).unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for id in 1u32..10 {
            if let Some(f) = ledger.farm(id).await.unwrap() {
                out.extend(f.public_ips.into_iter().map(|p| (p.ip, p.contract_id)));
            }
        }
        out
    })
}

#[test]
fn a_vm_with_a_public_ip_on_up() {
    let Some(VmGrid {
        rt,
        hub,
        up,
        printed,
        ..
    }) = vm_up::start(T, &["nft", "tcpdump", "ping", "curl"], &[])
    else {
        return;
    };
    let text = printed.join("\n");
    let public = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("public   node "))
        .unwrap_or_else(|| panic!("no public node line: {text}"));
    let node: u32 = public.split(':').next().unwrap().parse().unwrap();
    assert!(public.contains("zup1-public at 203.0.113.2/24"), "{public}");
    // The public namespace appears when the node has applied its config from the ledger.
    assert!(
        ping_from("zup-inet", "203.0.113.2", Duration::from_secs(30)),
        "the public namespace answers on node {node}'s public IPv4"
    );
    let ips = farm_ips(&up, &rt);
    assert_eq!(ips.len(), 4, "{ips:?}");
    assert!(ips.iter().all(|(_, c)| *c == 0), "{ips:?}");

    // examples/public-ip.yaml (a network, a public IP and a VM using both; `node: any` must
    // pick the public node), its VM also pinging the gateway from its own address
    // (PUB-PING-OK) and from one it does not own (which must never leave the tap).
    let example =
        std::fs::read_to_string(vm_guest::workspace().join("examples/public-ip.yaml")).unwrap();
    let serve = "mkdir -p /www && echo \\\"hello from $(hostname) on a public IP\\\" > /www/index.html && httpd -p 80 -h /www && echo serving;";
    assert!(
        example.contains(serve),
        "the example serves a page: {example}"
    );
    let entry = "ip addr add 203.0.113.99/24 dev eth1; while :; do \
        ping -c 1 -W 1 -I 203.0.113.10 203.0.113.1 >/dev/null && echo PUB-PING-OK; \
        ping -c 1 -W 1 -I 203.0.113.99 203.0.113.1 >/dev/null && echo SPOOF-PING-OK; sleep 1; done";
    let spec = example
        .replace("127.0.0.1:7900", &format!("127.0.0.1:{hub}"))
        .replace(
            "echo serving; while :; do sleep 60; done",
            &format!("echo serving; {entry}"),
        );
    assert!(spec.contains("SPOOF-PING-OK"), "{spec}");
    let path = up.dir.path().join("pub.yaml");
    std::fs::write(&path, spec).unwrap();
    let t0 = Instant::now();
    let out = ok(
        &up.client(&["deploy", path.to_str().unwrap(), "--json", "--wait", "240"]),
        "zos deploy pub.yaml",
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap();
    let w = |name: &str| {
        d["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(d["node_id"], node, "node: any picks the public node");
    for name in ["net", "pubip", "vm"] {
        assert_eq!(w(name)["result"]["state"], "ok", "{}", w(name));
    }
    let r = &w("pubip")["result"]["data"];
    assert_eq!(r["ip"], "203.0.113.10/24", "{r}");
    assert_eq!(r["gateway"], "203.0.113.1", "{r}");
    // v6: the SLAAC address of the public tap's MAC in node 1's public /64.
    let (tap, mac) = zos_network::public::tap_of(&format!("{}-{contract}-pubip", d["twin_id"]));
    let ip6 = zos_network::public::slaac("2001:db8:1::".parse().unwrap(), mac).to_string();
    assert_eq!(r["ip6"], format!("{ip6}/64"), "{r}");
    let ips = farm_ips(&up, &rt);
    assert!(
        ips.contains(&("203.0.113.10/24".into(), contract)),
        "the ledger holds the IP for contract {contract}: {ips:?}"
    );
    // The human view shows the address too.
    let listed = ok(&up.client(&["deployments"]), "zos deployments");
    assert!(listed.contains("203.0.113.10/24"), "{listed}");

    let log = wait_log(&up, contract, "vm", "PUB-PING-OK", Duration::from_secs(240));
    eprintln!(
        "{T}: the VM pings out on its public IP after {:?}",
        t0.elapsed()
    );
    assert!(
        log.contains("ZOS-INIT: eth1 203.0.113.10/24 via 203.0.113.1 (public)"),
        "{log}"
    );
    assert!(log.contains("ZOS-INIT: eth0 10.40.2.5/24"), "{log}");
    assert!(
        log.contains(&format!("ZOS-INIT: eth1 {ip6}/64 (public)")),
        "{log}"
    );
    assert!(
        ping_from("zup-inet", "203.0.113.10", Duration::from_secs(20)),
        "the internet reaches the VM on its public IP"
    );
    assert!(
        ping_from("zup-inet", &ip6, Duration::from_secs(20)),
        "the internet reaches the VM on its public IPv6 (on the segment's /64)"
    );
    // The page the example serves, over TCP from the internet.
    let page = sh(&[
        "ip",
        "netns",
        "exec",
        "zup-inet",
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://203.0.113.10/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).trim(),
        "hello from vm on a public IP",
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    // Five seconds of the VM's pings on the internet's bridge: its own address only.
    let mut cap = Command::new("ip")
        .args([
            "netns", "exec", "zup-inet", "tcpdump", "-i", "br0", "-n", "-l", "-U", "icmp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let _ = cap.kill();
    let seen = String::from_utf8_lossy(&cap.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.contains("203.0.113.10 > 203.0.113.1"), "{seen}");
    assert!(
        !seen.contains("203.0.113.99"),
        "a spoofed source left the VM: {seen}"
    );
    let log = ok(
        &up.client(&["vm", "logs", &contract.to_string(), "vm"]),
        "vm logs",
    );
    // Whole lines: the console also echoes the entrypoint's text.
    assert!(log.lines().any(|l| l.trim() == "PUB-PING-OK"), "{log}");
    assert!(!log.lines().any(|l| l.trim() == "SPOOF-PING-OK"), "{log}");
    assert!(
        !log.contains("RTNETLINK"),
        "the guest's network setup failed: {log}"
    );

    // Cancel: QEMU stops, the tap and its chains go, the IP is the farm's again.
    assert!(
        sh(&["ip", "-n", "zup-node1", "link", "show", &tap])
            .status
            .success()
    );
    ok(&up.client(&["cancel", &contract.to_string()]), "zos cancel");
    let end = Instant::now() + Duration::from_secs(60);
    while !guests(&up).is_empty()
        || sh(&["ip", "-n", "zup-node1", "link", "show", &tap])
            .status
            .success()
    {
        assert!(
            Instant::now() < end,
            "QEMU or the tap {tap} still there after cancel"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        "zup-node1",
        "nft",
        "list",
        "table",
        "bridge",
        "zos-pub",
    ]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&tap),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
    let ips = farm_ips(&up, &rt);
    assert!(
        ips.iter().all(|(_, c)| *c == 0),
        "canceling the contract gives its IP back: {ips:?}"
    );
    assert!(!ping_from(
        "zup-inet",
        "203.0.113.10",
        Duration::from_secs(2)
    ));
    drop(up);
    assert!(grid_namespaces().is_empty());
}
