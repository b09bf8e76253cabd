//! Root test on namespaces: two "nodes" (each its own network namespace, joined through veths
//! to an "internet" bridge namespace) each run a network resource of the same network; the
//! gateways ping each other over our userspace WireGuard, and a capture on the bridge holds
//! only WireGuard UDP. Then: idempotent provision, key rotation by update, a restarted node
//! (process state lost) converging from the workload alone, bad input leaving nothing behind,
//! and deprovision removing everything.
//!
//! Skips (loudly) without root, /dev/net/tun, `ip` or `tcpdump`. Every namespace it makes is
//! named `zosnt<pid>-…` and removed by a guard, also on panic; stale ones of dead runs are
//! removed at start.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Guard, ctx, eth0_up, internet, join_internet, must, netns_list, sh, skip_reason};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zos_network::resource::wg_ip;
use zos_network::wg::{generate_private_key, public_key_of};
use zos_network::{NetConfig, Networks, NrNames};
use zos_primitive::Primitive;
use zos_types::{Workload, WorkloadType};

const FAMILY: &str = "zosnt";

struct Node {
    ns: String,
    addr: String,
    net: Arc<Networks>,
    prefix: String,
}

fn network_wl(name: &str, key: &str, subnet: &str, port: u16, peers: Value) -> Workload {
    Workload {
        name: name.into(),
        workload_type: WorkloadType::Network,
        data: json!({"ip_range": "10.1.0.0/16", "subnet": subnet,
            "wireguard_private_key": key, "wireguard_listen_port": port, "peers": peers}),
        ..Workload::default()
    }
}

fn ping(from_ns: &str, to: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if sh(&[
            "ip", "netns", "exec", from_ns, "ping", "-c", "1", "-W", "1", to,
        ])
        .status
        .success()
        {
            return true;
        }
    }
    false
}

fn peer(subnet: &str, key_b64_private: &str, endpoint: &str) -> Value {
    let sub: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    json!({"subnet": subnet, "wireguard_public_key": public_key_of(key_b64_private).unwrap(),
        "allowed_ips": [subnet, format!("{}/32", wg_ip(sub))], "endpoint": endpoint})
}

/// Reads a pcap (Ethernet) and returns (ipv4 packets, of which WireGuard UDP, others' summary).
fn classify(pcap: &[u8], ports: &[u16]) -> (usize, usize, Vec<String>) {
    let (mut v4, mut wgc, mut other) = (0, 0, Vec::new());
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let p = &pcap[off + 16..(off + 16 + caplen).min(pcap.len())];
        off += 16 + caplen;
        if p.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([p[12], p[13]]);
        match ethertype {
            0x0806 => continue, // ARP between the node namespaces
            0x86dd => {
                // IPv6 is disabled on the internet links; anything here is a leak.
                other.push("ipv6".into());
                continue;
            }
            0x0800 => {}
            t => {
                other.push(format!("ethertype {t:#x}"));
                continue;
            }
        }
        v4 += 1;
        let ip = &p[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let proto = ip[9];
        // No inner (private network) address may appear in a header on the wire.
        for a in [&ip[12..16], &ip[16..20]] {
            if a[..2] == [10, 1] || a[..2] == [100, 64] {
                other.push(format!("cleartext private address {a:?}"));
            }
        }
        if proto == 2 {
            // IGMP membership reports of the node links themselves (link-local control).
            continue;
        }
        if proto == 17 && ip.len() >= ihl + 12 {
            let udp = &ip[ihl..];
            let sport = u16::from_be_bytes([udp[0], udp[1]]);
            let dport = u16::from_be_bytes([udp[2], udp[3]]);
            let msg = u32::from_le_bytes(udp[8..12].try_into().unwrap());
            if ports.contains(&sport) && ports.contains(&dport) && (1..=4).contains(&msg) {
                wgc += 1;
                continue;
            }
            other.push(format!("udp {sport}->{dport} type {msg}"));
        } else {
            other.push(format!("ip proto {proto}"));
        }
    }
    (v4, wgc, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_mesh_over_userspace_wireguard() {
    if let Some(why) = skip_reason(true, &["ip", "tcpdump", "ping"]) {
        eprintln!("SKIP two_nodes_mesh_over_userspace_wireguard: {why}");
        return;
    }
    let mut guard = Guard::new(FAMILY);
    let prefix = guard.prefix.clone();
    // The internet: a bridge namespace with one veth per node namespace.
    let inet = internet(&prefix);
    let mut nodes = Vec::new();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        let ns = format!("{prefix}{tag}");
        join_internet(&inet, &ns, &format!("p{tag}"));
        for n in [&inet, &ns] {
            must(&[
                "ip",
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]);
        }
        let addr = format!("198.18.0.{}", i + 1);
        eth0_up(&ns, &addr);
        let nprefix = format!("{ns}-");
        let net = Networks::new(NetConfig {
            node_netns: Some(ns.clone()),
            ns_prefix: nprefix.clone(),
        });
        nodes.push(Node {
            ns,
            addr,
            net,
            prefix: nprefix,
        });
    }
    let pcap = std::env::temp_dir().join(format!("{prefix}wire.pcap"));
    guard.capture = Some(
        Command::new("ip")
            .args([
                "netns", "exec", &inet, "tcpdump", "-i", "br0", "-U", "-n", "-w",
            ])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (ka, kb) = (generate_private_key(), generate_private_key());
    let ea = format!("{}:3011", nodes[0].addr);
    let eb = format!("{}:3012", nodes[1].addr);
    let wa = network_wl(
        "net",
        &ka,
        "10.1.1.0/24",
        3011,
        json!([peer("10.1.2.0/24", &kb, &eb)]),
    );
    let wb = network_wl(
        "net",
        &kb,
        "10.1.2.0/24",
        3012,
        json!([peer("10.1.1.0/24", &ka, &ea)]),
    );
    nodes[0].net.provision(&ctx(&wa, 1), &wa).await.unwrap();
    nodes[1].net.provision(&ctx(&wb, 2), &wb).await.unwrap();
    let names_a = NrNames::new(7, "net", &nodes[0].prefix);
    let names_b = NrNames::new(7, "net", &nodes[1].prefix);
    assert!(netns_list().contains(&names_a.namespace));
    // The bridge and the veth live in the node's namespace, the WireGuard link in the NR.
    must(&["ip", "-n", &nodes[0].ns, "link", "show", &names_a.bridge]);
    must(&[
        "ip",
        "-n",
        &names_a.namespace,
        "link",
        "show",
        &names_a.wireguard,
    ]);
    assert!(
        ping(&names_a.namespace, "10.1.2.1", Duration::from_secs(10)),
        "A's gateway reaches B's gateway"
    );
    assert!(ping(&names_b.namespace, "10.1.1.1", Duration::from_secs(5)));
    assert!(ping(
        &names_b.namespace,
        "100.64.1.1",
        Duration::from_secs(5)
    ));
    // A bigger payload (fragmented on the inner MTU) crosses too.
    must(&[
        "ip",
        "netns",
        "exec",
        &names_a.namespace,
        "ping",
        "-c",
        "2",
        "-s",
        "3000",
        "10.1.2.1",
    ]);

    // Diagnostics: A's peer B with its allowed IPs, traffic and a fresh handshake; not stale
    // at the self-check's limit, stale (and named) at a zero limit.
    let wg = nodes[0].net.wg_status().await;
    let pb = &wg["networks"][0]["peers"][0];
    assert!(
        pb["allowed_ips"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "10.1.2.0/24")),
        "{wg}"
    );
    assert!(pb["rx_bytes"].as_u64().unwrap_or(0) > 0, "{wg}");
    assert!(pb["tx_bytes"].as_u64().unwrap_or(0) > 0, "{wg}");
    assert!(
        pb["handshake"]
            .as_str()
            .is_some_and(|h| h.ends_with(" s ago")),
        "{wg}"
    );
    assert_eq!(pb["stale"], json!(false), "{wg}");
    assert!(
        nodes[0]
            .net
            .stale_peers(zos_network::resource::STALE_HANDSHAKE)
            .await
            .is_empty()
    );
    let stale = nodes[0].net.stale_peers(Duration::ZERO).await;
    assert!(
        stale.len() == 1 && stale[0].contains(pb["public_key"].as_str().unwrap_or("?")),
        "{stale:?}"
    );

    // Network consumption: the NR's counters (WireGuard + public links) grow with traffic
    // (10 × 1000-byte pings cross w- both ways: more than 20 kB).
    let before = nodes[0]
        .net
        .consumption(&ctx(&wa, 1), &wa)
        .await
        .unwrap()
        .expect("a counter for a running NR");
    must(&[
        "ip",
        "netns",
        "exec",
        &names_a.namespace,
        "ping",
        "-c",
        "10",
        "-i",
        "0.05",
        "-s",
        "1000",
        "10.1.2.1",
    ]);
    let after = nodes[0]
        .net
        .consumption(&ctx(&wa, 1), &wa)
        .await
        .unwrap()
        .unwrap();
    assert!(after >= before + 20_000, "traffic {before} → {after}");

    // Idempotent: provisioning again changes nothing and keeps the tunnel.
    nodes[0].net.provision(&ctx(&wa, 1), &wa).await.unwrap();
    assert!(ping(&names_a.namespace, "10.1.2.1", Duration::from_secs(5)));

    // Key rotation on B by update; A learns B's new key by update.
    let kb2 = generate_private_key();
    let wb2 = network_wl(
        "net",
        &kb2,
        "10.1.2.0/24",
        3012,
        json!([peer("10.1.1.0/24", &ka, &ea)]),
    );
    let wa2 = network_wl(
        "net",
        &ka,
        "10.1.1.0/24",
        3011,
        json!([peer("10.1.2.0/24", &kb2, &eb)]),
    );
    nodes[1].net.update(&ctx(&wb2, 2), &wb2).await.unwrap();
    nodes[0].net.update(&ctx(&wa2, 1), &wa2).await.unwrap();
    assert!(
        ping(&names_a.namespace, "10.1.2.1", Duration::from_secs(15)),
        "connects after B's key rotation"
    );

    // Restart of node A: a new primitive (the process state is gone, the TUN with it),
    // provisioned from the stored workload alone.
    let fresh = Networks::new(NetConfig {
        node_netns: Some(nodes[0].ns.clone()),
        ns_prefix: nodes[0].prefix.clone(),
    });
    nodes[0].net = fresh;
    assert!(!ping(
        &names_a.namespace,
        "10.1.2.1",
        Duration::from_secs(1)
    ));
    nodes[0].net.provision(&ctx(&wa2, 1), &wa2).await.unwrap();
    assert!(
        ping(&names_a.namespace, "10.1.2.1", Duration::from_secs(30)),
        "mesh returns after a restart"
    );

    // Bad input: a second network on A wanting A's port, and broken ones: clear errors, and no
    // namespace of theirs left behind.
    let kc = generate_private_key();
    let clash = network_wl("other", &kc, "10.1.1.0/24", 3011, json!([]));
    let e = nodes[0]
        .net
        .provision(&ctx(&clash, 3), &clash)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("3011 is already used"), "{e}");
    let other = NrNames::new(7, "other", &nodes[0].prefix);
    assert!(!netns_list().contains(&other.namespace));
    // A port held by something else in the node's namespace.
    let _holder = {
        let ns = nodes[0].ns.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::UdpSocket::bind("0.0.0.0:4000").unwrap()
        })
        .join()
        .unwrap()
    };
    let busy = network_wl("other", &kc, "10.1.5.0/24", 4000, json!([]));
    let e = nodes[0]
        .net
        .provision(&ctx(&busy, 3), &busy)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wireguard listen port 4000"), "{e}");
    assert!(
        !netns_list().contains(&other.namespace),
        "nothing half-created"
    );
    let bad = network_wl("other", "not-a-key", "10.1.5.0/24", 4001, json!([]));
    let e = nodes[0]
        .net
        .provision(&ctx(&bad, 3), &bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wireguard_private_key"), "{e}");
    assert!(!netns_list().contains(&other.namespace));

    // The wire: only WireGuard between the node namespaces.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(mut c) = guard.capture.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let bytes = std::fs::read(&pcap).unwrap();
    let _ = std::fs::remove_file(&pcap);
    let (v4, wgc, other) = classify(&bytes, &[3011, 3012]);
    assert!(wgc >= 10, "WireGuard packets captured: {wgc} of {v4}");
    assert!(
        other.is_empty(),
        "non-WireGuard traffic on the internet bridge: {other:?}"
    );

    // Out of the node through the ndmz: A's NR reaches B's node address, which has no route
    // to 100.127/16 or 100.126/30, so the reply proves both masquerades; a capture in B's
    // namespace sees A's node address as the source.
    let ndmz_a = format!("{}ndmz", nodes[0].prefix);
    assert!(netns_list().contains(&ndmz_a));
    let public = sh(&[
        "ip",
        "-n",
        &names_a.namespace,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "public",
    ]);
    assert!(
        String::from_utf8_lossy(&public.stdout).contains("inet 100.127.0.2/16"),
        "{}",
        String::from_utf8_lossy(&public.stdout)
    );
    let seen = std::env::temp_dir().join(format!("{prefix}ndmz.txt"));
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &nodes[1].ns,
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-l",
            "icmp",
        ])
        .stdout(std::fs::File::create(&seen).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reached = ping(&names_a.namespace, &nodes[1].addr, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = dump.kill();
    let _ = dump.wait();
    let text = std::fs::read_to_string(&seen).unwrap_or_default();
    let _ = std::fs::remove_file(&seen);
    assert!(reached, "A's NR reaches B's node address through the ndmz");
    assert!(
        text.contains(&format!(
            "{} > {}: ICMP echo request",
            nodes[0].addr, nodes[1].addr
        )),
        "masqueraded to A's node address: {text}"
    );
    assert!(
        !text.contains("100.127.") && !text.contains("100.126."),
        "{text}"
    );
    // Provision again converges the ndmz (nft tables replaced, not duplicated).
    nodes[0].net.provision(&ctx(&wa2, 1), &wa2).await.unwrap();
    let rules = sh(&["ip", "netns", "exec", &ndmz_a, "nft", "list", "ruleset"]);
    assert_eq!(
        String::from_utf8_lossy(&rules.stdout)
            .matches("masquerade")
            .count(),
        1
    );

    // A public config change applies in place: the node's NAT uses the public IPv4 (its
    // plane's address), the NR keeps its links, WireGuard still carries the mesh and the
    // outside is still reached. An address the node does not hold is refused and the NAT
    // stays masquerading.
    let node_rules = || {
        String::from_utf8_lossy(
            &sh(&[
                "ip",
                "netns",
                "exec",
                &nodes[0].ns,
                "nft",
                "list",
                "table",
                "ip",
                "zos-ndmz",
            ])
            .stdout,
        )
        .to_string()
    };
    nodes[0]
        .net
        .set_public_config(Some(&json!({"ipv4": format!("{}/24", nodes[0].addr)})))
        .await
        .unwrap();
    assert!(
        node_rules().contains(&format!("snat to {}", nodes[0].addr)),
        "{}",
        node_rules()
    );
    assert!(ping(&names_a.namespace, "10.1.2.1", Duration::from_secs(5)));
    assert!(ping(
        &names_a.namespace,
        &nodes[1].addr,
        Duration::from_secs(5)
    ));
    let e = nodes[0]
        .net
        .set_public_config(Some(&json!({"ipv4": "203.0.113.9/24"})))
        .await
        .unwrap_err();
    assert!(
        e.contains("not an address of the node's network plane"),
        "{e}"
    );
    assert!(node_rules().contains("masquerade"), "{}", node_rules());
    assert!(ping(
        &names_a.namespace,
        &nodes[1].addr,
        Duration::from_secs(5)
    ));

    // Deprovision removes everything.
    nodes[0].net.deprovision(&ctx(&wa2, 1), &wa2).await.unwrap();
    nodes[1].net.deprovision(&ctx(&wb2, 2), &wb2).await.unwrap();
    let left = netns_list();
    assert!(!left.contains(&names_a.namespace) && !left.contains(&names_b.namespace));
    // The last resource gone, the node's ndmz, uplink and NAT table go too.
    assert!(
        !left.contains(&ndmz_a),
        "ndmz left after the last network: {left:?}"
    );
    assert!(
        !sh(&["ip", "-n", &nodes[0].ns, "link", "show", "ndmz-up"])
            .status
            .success()
    );
    let tables = sh(&["ip", "netns", "exec", &nodes[0].ns, "nft", "list", "tables"]);
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("zos-ndmz"),
        "the node's NAT table is left"
    );
    assert!(
        !sh(&["ip", "-n", &nodes[0].ns, "link", "show", &names_a.bridge])
            .status
            .success()
    );
    assert!(
        !sh(&[
            "ip",
            "-n",
            &nodes[0].ns,
            "link",
            "show",
            "v-".to_string().as_str()
        ])
        .status
        .success()
    );
    drop(guard);
}
