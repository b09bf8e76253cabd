//! A private network over the three nodes of `zos up --nodes 3` (root): `zos deploy
//! examples/network.yaml` makes a network resource on every node, and from each one the other
//! nodes' gateways answer ping over WireGuard; the inter-node traffic on the local internet is
//! WireGuard only; a key rotated by `zos deploy --rotate-key` still connects; a node killed with
//! SIGKILL is restarted by `zos up` and the mesh comes back with no action. `zos network access`
//! gives a WireGuard config that wireguard-go (Debian's) brings up in a "user" namespace on the
//! local internet: it reaches every node's gateway (the access node's directly, the others
//! routed through it), also after the spec is deployed again. One grid for the whole test
//! (CPU). Skips loudly without root, TUN, `ip`, `ping`, `tcpdump`, `wireguard-go` or `wg`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/up.rs"]
mod up;

use up::{Up, grid_namespaces, has, is_root, local_grid_running, node_child};

/// wireguard-go's control socket for the user's device.
const SOCK: &str = "/var/run/wireguard/zupwg.sock";

/// wireguard-go of the user namespace, stopped on drop.
struct UserTunnel(Child);

impl Drop for UserTunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(SOCK);
    }
}

fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The user's machine: namespace `zupuser` on the local internet at 198.18.0.200, the access
/// config applied to a wireguard-go device `zupwg`.
fn user_tunnel(config: &str, dir: &Path) -> UserTunnel {
    run(&["ip", "netns", "add", "zupuser"]);
    run(&[
        "ip", "-n", "zup-inet", "link", "add", "pu", "type", "veth", "peer", "name", "eth0",
        "netns", "zupuser",
    ]);
    run(&[
        "ip", "-n", "zup-inet", "link", "set", "pu", "master", "br0", "up",
    ]);
    run(&[
        "ip",
        "-n",
        "zupuser",
        "addr",
        "add",
        "198.18.0.200/24",
        "dev",
        "eth0",
    ]);
    run(&["ip", "-n", "zupuser", "link", "set", "eth0", "up"]);
    run(&["ip", "-n", "zupuser", "link", "set", "lo", "up"]);
    // A socket left by an earlier run would make `wg` talk to nobody.
    let _ = std::fs::remove_file(SOCK);
    let child = Command::new("ip")
        .args(["netns", "exec", "zupuser", "wireguard-go", "zupwg"])
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = UserTunnel(child);
    let end = Instant::now() + Duration::from_secs(10);
    while !Path::new(SOCK).exists() {
        assert!(Instant::now() < end, "wireguard-go did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `wg setconf` takes the config without wg-quick's Address line.
    let address = config
        .lines()
        .find_map(|l| l.strip_prefix("Address = "))
        .expect("Address in the access config")
        .to_string();
    let stripped: String = config
        .lines()
        .filter(|l| !l.starts_with("Address"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.join("user-wg.conf");
    std::fs::write(&file, stripped).unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        "zupuser",
        "wg",
        "setconf",
        "zupwg",
        file.to_str().unwrap(),
    ]);
    run(&[
        "ip", "-n", "zupuser", "addr", "add", &address, "dev", "zupwg",
    ]);
    run(&["ip", "-n", "zupuser", "link", "set", "zupwg", "up"]);
    for net in ["10.20.0.0/16", "100.64.0.0/16"] {
        run(&["ip", "-n", "zupuser", "route", "add", net, "dev", "zupwg"]);
    }
    guard
}

/// The user's tunnel reaches every node's gateway.
fn user_pings_all(what: &str, within: Duration) {
    let end = Instant::now() + within;
    for (ns, gw) in resources() {
        while !ping("zupuser", &gw) {
            assert!(
                Instant::now() < end,
                "{what}: the user's tunnel does not reach {ns}'s gateway {gw}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/network.yaml")
}

/// Node I's network resource namespace and its gateway (`<subnet>.1`).
fn resources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 1..=3 {
        let prefix = format!("zup{i}-n-");
        let Some(ns) = grid_namespaces()
            .into_iter()
            .find(|n| n.starts_with(&prefix))
        else {
            continue;
        };
        let netid = &ns[prefix.len()..];
        let link = format!("n-{netid}");
        let o = Command::new("ip")
            .args(["-n", &ns, "-4", "-o", "addr", "show", "dev", &link])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        if let Some(gw) = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
        {
            out.push((ns.clone(), gw.to_string()));
        }
    }
    out
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every resource pings every other's gateway within `within` (handshakes take a moment).
fn all_pairs_ping(what: &str, within: Duration) {
    pairs_ping(what, within, 3);
}

fn pairs_ping(what: &str, within: Duration, count: usize) {
    let nrs = resources();
    assert_eq!(
        nrs.len(),
        count,
        "{what}: a network resource per node: {nrs:?}"
    );
    let end = Instant::now() + within;
    for (a, _) in &nrs {
        for (b, gw) in &nrs {
            if a == b {
                continue;
            }
            while !ping(a, gw) {
                assert!(
                    Instant::now() < end,
                    "{what}: {a} does not reach {b}'s gateway {gw} over WireGuard"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The peers' public keys every node holds, from `zos deployments --json`.
fn peer_keys(up: &Up) -> BTreeSet<String> {
    let o = up.client(&["deployments", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut keys = BTreeSet::new();
    for d in v.as_array().cloned().unwrap_or_default() {
        for w in d["workloads"].as_array().cloned().unwrap_or_default() {
            for p in w["data"]["peers"].as_array().cloned().unwrap_or_default() {
                if let Some(k) = p["wireguard_public_key"].as_str() {
                    keys.insert(k.to_string());
                }
            }
        }
    }
    keys
}

#[test]
fn a_private_network_over_three_nodes() {
    if !is_root()
        || zos_network::network_support().is_err()
        || !["ping", "tcpdump", "wireguard-go", "wg"]
            .iter()
            .all(|t| has(t))
    {
        eprintln!(
            "SKIP a_private_network_over_three_nodes: needs root, /dev/net/tun, ip, ping, tcpdump, wireguard-go and wg"
        );
        return;
    }
    if !grid_namespaces().is_empty() {
        if local_grid_running() {
            eprintln!("SKIP a_private_network_over_three_nodes: another local grid is running");
            return;
        }
        // Left by a run that died: nobody uses them.
        for ns in grid_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    let (up, printed) = Up::start(3, &[], Duration::from_secs(180));
    let text = printed.join("\n");
    let ids: Vec<u32> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("nodes    ["))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("no node list: {text}"))
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{text}");

    // Deploy the network over every node.
    let ex = example();
    let o = up.client(&["deploy", ex.to_str().unwrap(), "--wait", "120"]);
    assert!(
        o.status.success(),
        "zos deploy examples/network.yaml: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    all_pairs_ping("after deploy", Duration::from_secs(60));

    // The farmer (the user, on zos up) sees node 1's WireGuard peers and their handshakes.
    let o = up.client(&["node", "diag", &ids[0].to_string(), "wg", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let peers: Vec<&serde_json::Value> = wg["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["peers"].as_array().into_iter().flatten())
        .collect();
    assert!(
        peers.len() >= 2
            && peers
                .iter()
                .any(|p| p["handshake_age_secs"].as_u64().is_some_and(|a| a < 120)),
        "node 1's peers with recent handshakes: {wg}"
    );
    // ... with traffic, allowed IPs, and none stale; `net` carries the same view.
    assert!(
        peers
            .iter()
            .all(|p| p["stale"] == false
                && p["allowed_ips"].as_array().is_some_and(|a| !a.is_empty()))
            && peers
                .iter()
                .any(|p| p["rx_bytes"].as_u64().unwrap_or(0) > 0),
        "{wg}"
    );
    let o = up.client(&["node", "diag", &ids[0].to_string(), "net", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let net: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        net["wireguard"]["networks"].as_array().map(Vec::len),
        wg["networks"].as_array().map(Vec::len),
        "{net}"
    );

    // On the local internet the traffic between nodes is WireGuard only: a capture while
    // pinging holds UDP to/from the nodes' WireGuard ports and no inner (10.20/16) packet.
    let pcap = up.dir.path().join("inet.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", "zup-inet", "tcpdump", "-i", "br0", "-n", "-U", "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    all_pairs_ping("while capturing", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let _ = dump.kill();
    let _ = dump.wait();
    let read = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap)
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&read.stdout);
    assert!(
        seen.lines().any(|l| l.contains("UDP")),
        "WireGuard UDP on the bridge: {seen}"
    );
    for l in seen.lines() {
        assert!(
            !l.contains(" 10.20.") && !l.contains("ICMP echo"),
            "cleartext inner packet on the local internet: {l}"
        );
    }

    // The user's machine joins through `zos network access`.
    let conf = up.dir.path().join("access.conf");
    let o = up.client(&["network", "access", "net", "-o", conf.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "zos network access: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let config = std::fs::read_to_string(&conf).unwrap();
    assert!(config.contains("Endpoint = 198.18.0."), "{config}");
    let _tunnel = user_tunnel(&config, up.dir.path());
    user_pings_all("access", Duration::from_secs(60));

    // Rotate one node's key: every node is updated and the mesh still connects.
    let before = peer_keys(&up);
    let rotate = ids[1].to_string();
    let o = up.client(&[
        "deploy",
        ex.to_str().unwrap(),
        "--wait",
        "120",
        "--rotate-key",
        &rotate,
    ]);
    assert!(
        o.status.success(),
        "rotate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let after = peer_keys(&up);
    // Three nodes and the user's machine.
    assert_eq!(before.len(), 4);
    assert_eq!(after.len(), 4);
    assert_eq!(
        before.intersection(&after).count(),
        3,
        "exactly one node's public key changed: {before:?} → {after:?}"
    );
    all_pairs_ping("after a key rotation", Duration::from_secs(60));
    user_pings_all("access after deploying again", Duration::from_secs(60));

    // kill -9 node 2: zos up restarts it, it re-creates its resource, the mesh comes back.
    let parent = up.child.as_ref().unwrap().id();
    let victim = node_child(parent, "zup-node2").expect("node 2 runs as a child of zos up");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while node_child(parent, "zup-node2").is_none_or(|p| p == victim) {
        assert!(Instant::now() < end, "node 2 was not restarted");
        std::thread::sleep(Duration::from_millis(200));
    }
    all_pairs_ping("after node 2 was killed", Duration::from_secs(120));

    // The third node leaves (same name, two nodes): its contract is canceled and its resource
    // removed, the others keep their mesh; deployed over all nodes again, it comes back.
    let two = up.dir.path().join("two.yaml");
    let text = std::fs::read_to_string(&ex)
        .unwrap()
        .replace("nodes: all", &format!("nodes: [{}, {}]", ids[0], ids[1]));
    assert!(
        text.contains("nodes: ["),
        "the example deploys on `nodes: all`"
    );
    std::fs::write(&two, text).unwrap();
    let o = up.client(&["deploy", two.to_str().unwrap(), "--wait", "120"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let end = Instant::now() + Duration::from_secs(60);
    // (Node ids follow registration order, not namespace numbers: count the resources.)
    while resources().len() != 2 {
        assert!(
            Instant::now() < end,
            "the third node's network resource was not removed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    pairs_ping("after a node left", Duration::from_secs(60), 2);
    let o = up.client(&["deploy", ex.to_str().unwrap(), "--wait", "120"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    all_pairs_ping("after the node joined again", Duration::from_secs(60));
}
