//! Two nodes in one process, each inside its own network namespace ([`NsNode`], how a node
//! runs its host and network-resource instances): their TUNs and sockets live in their
//! namespaces (none in ours), they link over a veth and ping each other's overlay address.
//! Needs root, /dev/net/tun and ping; SKIPs loudly otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zos_mycelium::SecretKey;
use zos_mycelium::netns::NsNode;
use zos_mycelium::node::{Config, Endpoint};

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            sh(&["ip", "netns", "del", n]);
        }
    }
}

#[test]
fn nodes_run_inside_their_namespaces() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !std::path::Path::new("/dev/net/tun").exists() || !sh(&["ping", "-V"]) {
        eprintln!("SKIP nodes_run_inside_their_namespaces: needs root, /dev/net/tun and ping");
        return;
    }
    let p = format!("mycn{}", std::process::id() % 100_000);
    let ns = Namespaces(vec![format!("{p}-a"), format!("{p}-b")]);
    for n in &ns.0 {
        sh(&["ip", "netns", "del", n]);
        assert!(sh(&["ip", "netns", "add", n]));
        assert!(sh(&["ip", "-n", n, "link", "set", "lo", "up"]));
    }
    let (va, vb) = (format!("{p}a"), format!("{p}b"));
    assert!(sh(&[
        "ip", "link", "add", &va, "netns", &ns.0[0], "type", "veth", "peer", "name", &vb, "netns",
        &ns.0[1]
    ]));
    for (n, v, a) in [
        (&ns.0[0], &va, "10.79.1.1/24"),
        (&ns.0[1], &vb, "10.79.1.2/24"),
    ] {
        assert!(sh(&["ip", "-n", n, "addr", "add", a, "dev", v]));
        assert!(sh(&["ip", "-n", n, "link", "set", v, "up"]));
    }
    let tun = p.clone();
    let cfg = |seed: u8, peers: Vec<Endpoint>| Config {
        key: SecretKey::from_bytes([seed; 32]),
        peers,
        tcp_listen: "[::]:9651".parse().expect("addr"),
        quic_listen: None,
        tun_name: Some(tun.clone()),
        timer_divisor: 1,
        discovery: None,
    };
    let b = NsNode::start(cfg(0xb0, vec![]), Some(&ns.0[1]), None).expect("B starts");
    let a = NsNode::start(cfg(0xa0, vec![]), Some(&ns.0[0]), None).expect("A starts");
    // Added after the start: dialed from A's namespace, not ours.
    assert!(a.add_peer(Endpoint::tcp("10.79.1.2:9651".parse().expect("addr"))));
    // The TUNs are in the namespaces, not here.
    assert!(sh(&["ip", "-n", &ns.0[0], "link", "show", &p]));
    assert!(sh(&["ip", "-n", &ns.0[1], "link", "show", &p]));
    assert!(!sh(&["ip", "link", "show", &p]));
    let dst = SecretKey::from_bytes([0xb0; 32])
        .public_key()
        .address()
        .to_string();
    let t0 = Instant::now();
    while !sh(&[
        "ip", "netns", "exec", &ns.0[0], "ping", "-c", "1", "-W", "1", &dst,
    ]) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "A does not reach B from its namespace"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(a.node().inner().router().peers().len(), 1);
    a.stop();
    drop(b);
    // Stopped: the TUN went with the node.
    assert!(!sh(&["ip", "-n", &ns.0[0], "link", "show", &p]));
}
