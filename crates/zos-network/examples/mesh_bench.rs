//! Benchmark of the private network path (root): two "nodes" (namespaces joined through veths to
//! an "internet" bridge namespace), TCP throughput (iperf3, 3 × 5 s, the median) and ping
//! latency (200 pings 10 ms apart) over
//! 1. zos's userspace WireGuard: between two network resources (gateway to gateway),
//! 2. the same path without WireGuard: node namespace to node namespace over the bridge,
//! 3. wireguard-go (Debian's) between the two node namespaces.
//!
//! `cargo run --release -p zos-network --example mesh_bench` prints markdown rows for
//! docs/benchmarks.md. Namespaces are `zbn<pid>-…`, removed on exit (also on panic) and stale
//! ones of dead runs removed at start.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Guard, ctx, eth0_up, internet, join_internet, must, sh};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zos_network::resource::wg_ip;
use zos_network::wg::{generate_private_key, public_key_of};
use zos_network::{NetConfig, Networks, NrNames};
use zos_primitive::Primitive;
use zos_types::{Workload, WorkloadType};

const FAMILY: &str = "zbn";

/// The wireguard-go processes, stopped on drop (before the guard removes their namespaces).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn network_wl(key: &str, subnet: &str, peer_key: &str, peer_subnet: &str, ep: &str) -> Workload {
    let sub: std::net::Ipv4Addr = peer_subnet.split('/').next().unwrap().parse().unwrap();
    Workload {
        name: "bench".into(),
        workload_type: WorkloadType::Network,
        data: json!({"ip_range": "10.1.0.0/16", "subnet": subnet,
            "wireguard_private_key": key, "wireguard_listen_port": 3011,
            "peers": [{"subnet": peer_subnet, "wireguard_public_key": public_key_of(peer_key).unwrap(),
                "allowed_ips": [peer_subnet, format!("{}/32", wg_ip(sub))], "endpoint": ep}]}),
        ..Workload::default()
    }
}

/// Median iperf3 throughput (Gbit/s) from `client_ns` to `server` in `server_ns`.
fn iperf(server_ns: &str, client_ns: &str, server: &str) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut srv = Command::new("ip")
            .args([
                "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let out = must(&[
            "ip", "netns", "exec", client_ns, "iperf3", "-c", server, "-t", "5", "-J",
        ]);
        let _ = srv.wait();
        let v: Value = serde_json::from_str(&out).unwrap();
        runs.push(
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e9,
        );
    }
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// Average and p-max RTT (ms) of 200 pings 10 ms apart.
fn latency(ns: &str, to: &str) -> (f64, f64) {
    let out = must(&[
        "ip", "netns", "exec", ns, "ping", "-q", "-c", "200", "-i", "0.01", to,
    ]);
    // rtt min/avg/max/mdev = 0.041/0.063/0.211/0.018 ms
    let nums: Vec<f64> = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| {
            v.trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (nums[1], nums[2])
}

fn wait_ping(ns: &str, to: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while !sh(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
        .status
        .success()
    {
        assert!(Instant::now() < end, "{ns} does not reach {to}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if zos_network::network_support().is_err() {
        eprintln!("SKIP mesh_bench: needs root, /dev/net/tun and ip");
        return;
    }
    let guard = Guard::new(FAMILY);
    let prefix = guard.prefix.clone();
    let mut children = Children(Vec::new());
    let inet = internet(&prefix);
    let mut nodes = Vec::new();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        let ns = format!("{prefix}{tag}");
        let addr = format!("198.18.9.{}", i + 1);
        join_internet(&inet, &ns, &format!("p{tag}"));
        eth0_up(&ns, &addr);
        nodes.push((ns, addr));
    }
    // 1. zos: a network resource on each node.
    let (ka, kb) = (generate_private_key(), generate_private_key());
    let wa = network_wl(&ka, "10.1.1.0/24", &kb, "10.1.2.0/24", "198.18.9.2:3011");
    let wb = network_wl(&kb, "10.1.2.0/24", &ka, "10.1.1.0/24", "198.18.9.1:3011");
    let mut nets = Vec::new();
    for (i, wl) in [&wa, &wb].into_iter().enumerate() {
        let nr_prefix = format!("{prefix}{i}");
        let net = Networks::new(NetConfig {
            node_netns: Some(nodes[i].0.clone()),
            ns_prefix: nr_prefix.clone(),
        });
        net.provision(&ctx(wl, 1), wl).await.unwrap();
        nets.push((net, NrNames::new(7, "bench", &nr_prefix).namespace));
    }
    let (nra, nrb) = (nets[0].1.clone(), nets[1].1.clone());
    wait_ping(&nra, "10.1.2.1");
    let zos = tokio::task::spawn_blocking(move || {
        (iperf(&nrb, &nra, "10.1.2.1"), latency(&nra, "10.1.2.1"))
    })
    .await
    .unwrap();

    // 2. The same path without WireGuard.
    let (a, b) = (nodes[0].0.clone(), nodes[1].0.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let plain = tokio::task::spawn_blocking(move || {
        (iperf(&b2, &a2, "198.18.9.2"), latency(&a2, "198.18.9.2"))
    })
    .await
    .unwrap();

    // 3. wireguard-go between the node namespaces.
    let has_wggo = sh(&["sh", "-c", "command -v wireguard-go && command -v wg"])
        .status
        .success();
    let wggo = if has_wggo {
        let keys: Vec<String> = (0..2)
            .map(|_| must(&["wg", "genkey"]).trim().to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for (i, ns) in [&a, &b].into_iter().enumerate() {
            let dev = format!("zbnwg{i}");
            let sock = format!("/var/run/wireguard/{dev}.sock");
            let _ = std::fs::remove_file(&sock);
            children.0.push(
                Command::new("ip")
                    .args(["netns", "exec", ns, "wireguard-go", &dev])
                    .env("WG_PROCESS_FOREGROUND", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let end = Instant::now() + Duration::from_secs(10);
            while !std::path::Path::new(&sock).exists() {
                assert!(Instant::now() < end, "wireguard-go did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            let other = 1 - i;
            let conf = dir.path().join(format!("{dev}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "[Interface]\nPrivateKey = {}\nListenPort = 51820\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.9.0.{}/32\nEndpoint = 198.18.9.{}:51820\n",
                    keys[i],
                    public_key_of(&keys[other]).unwrap(),
                    other + 1,
                    other + 1
                ),
            )
            .unwrap();
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "wg",
                "setconf",
                &dev,
                conf.to_str().unwrap(),
            ]);
            must(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.9.0.{}/24", i + 1),
                "dev",
                &dev,
            ]);
            must(&["ip", "-n", ns, "link", "set", &dev, "mtu", "1420", "up"]);
        }
        wait_ping(&a, "10.9.0.2");
        let (a3, b3) = (a.clone(), b.clone());
        Some(
            tokio::task::spawn_blocking(move || {
                (iperf(&b3, &a3, "10.9.0.2"), latency(&a3, "10.9.0.2"))
            })
            .await
            .unwrap(),
        )
    } else {
        eprintln!("wireguard-go or wg missing: apt-get install wireguard-go wireguard-tools");
        None
    };

    println!("| path | TCP throughput (Gbit/s, median of 3 × 5 s) | ping avg / max (ms) |");
    println!("|---|---|---|");
    let row = |name: &str, (gbps, (avg, max)): (f64, (f64, f64))| {
        println!("| {name} | {gbps:.2} | {avg:.3} / {max:.3} |");
    };
    row("zos NR → NR (userspace WireGuard, boringtun)", zos);
    row("same path without WireGuard (veth + bridge)", plain);
    if let Some(w) = wggo {
        row("wireguard-go (Debian) between the node namespaces", w);
    }
    for (net, _) in &nets {
        net.deprovision(&ctx(&wa, 1), &wa).await.unwrap();
    }
    drop(children);
    drop(guard);
}
