//! Root test on namespaces and nftables: a node's public side and an `ip` workload, with a
//! veth + namespace standing in for the VM's end of the public tap (the VM test in
//! crates/zos/tests/public_ip_e2e.rs boots a real guest on it).
//!
//! An "internet" namespace (bridge `br0` holding the farm's gateway 203.0.113.1/24 and
//! 2001:db8:1::1/64) is joined by a veth to the node's plane (its public NIC `pub0`). The public
//! config makes `br-pub` and the public namespace at 203.0.113.2; the `ip` workload gets the
//! contract's first reserved IP with the farm's gateway and the SLAAC address of its tap's MAC,
//! and is reachable from the internet on both. Spoofed frames from the tap (another IPv4
//! source, another IPv6 source, another MAC) never reach the internet's bridge (tcpdump there);
//! provision again converges; deprovision removes the tap and its nftables chains; the public
//! namespace follows the config (removed with it).
//!
//! Skips loudly without root, `ip`, `nft`, `tcpdump` or `ping`. Namespaces are `pip<pid>-…`,
//! removed by a guard also on panic; stale ones of dead runs are removed at start.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Guard, must, netns_list, sh, skip_reason};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use zos_network::NetConfig;
use zos_network::public::{self, ContractIps, Public, ReservedIp};
use zos_primitive::{NodeSecret, PrimitiveRegistry, WorkloadCtx};
use zos_types::{Deployment, ResultState, Workload, WorkloadType};

const FAMILY: &str = "pip";

/// The ledger's reservations for the test's contract.
struct Reserved(Vec<ReservedIp>);

#[async_trait]
impl ContractIps for Reserved {
    async fn reserved(&self, contract_id: u64) -> Result<Vec<ReservedIp>, String> {
        if contract_id == 42 {
            Ok(self.0.clone())
        } else {
            Err(format!("contract {contract_id} does not exist"))
        }
    }
}

fn ping(ns: &str, args: &[&str], within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let mut a = vec!["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1"];
        a.extend_from_slice(args);
        if sh(&a).status.success() {
            return true;
        }
    }
    false
}

fn deployment(workloads: Vec<Workload>) -> Arc<Deployment> {
    Arc::new(Deployment {
        twin_id: 7,
        contract_id: 42,
        workloads,
        ..Deployment::default()
    })
}

/// `wl` as stored after a successful provision with result `r`.
fn first_ok(wl: &Workload, r: &Value) -> Workload {
    let mut w = wl.clone();
    w.result.state = ResultState::Ok;
    w.result.data = r.clone();
    w
}

fn ip_wl(name: &str, data: Value) -> Workload {
    Workload {
        name: name.into(),
        workload_type: WorkloadType::Ip,
        data,
        ..Workload::default()
    }
}

/// What the capture on the internet's bridge saw while `f` ran.
fn captured(inet: &str, guard: &mut Guard, f: impl FnOnce()) -> String {
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            inet,
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "-e",
            "-l",
            "-U",
            "icmp or icmp6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    f();
    std::thread::sleep(Duration::from_millis(800));
    let _ = c.kill();
    let out = c.wait_with_output().unwrap();
    guard.capture = None;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_ip_is_reachable_and_cannot_be_spoofed() {
    if let Some(why) = skip_reason(false, &["ip", "nft", "tcpdump", "ping"]) {
        eprintln!("SKIP: public_ip needs root, ip, nft, tcpdump, ping: {why}");
        return;
    }
    let mut guard = Guard::new(FAMILY);
    let prefix = guard.prefix.clone();
    let (inet, node, vm) = (
        format!("{prefix}inet"),
        format!("{prefix}node"),
        format!("{prefix}vm"),
    );
    for ns in [&inet, &node, &vm] {
        must(&["ip", "netns", "add", ns]);
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The internet: a bridge with the farm's gateway addresses, and the node's public NIC.
    must(&["ip", "-n", &inet, "link", "add", "br0", "type", "bridge"]);
    must(&[
        "ip",
        "-n",
        &inet,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "br0",
    ]);
    must(&[
        "ip",
        "-n",
        &inet,
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "br0",
        "nodad",
    ]);
    must(&["ip", "-n", &inet, "link", "set", "br0", "up"]);
    must(&[
        "ip", "-n", &inet, "link", "add", "pn", "type", "veth", "peer", "name", "pub0", "netns",
        &node,
    ]);
    must(&[
        "ip", "-n", &inet, "link", "set", "pn", "master", "br0", "up",
    ]);

    let cfg = NetConfig {
        node_netns: Some(node.clone()),
        ns_prefix: prefix.clone(),
    };
    let reserved = Reserved(vec![
        ReservedIp {
            ip: "203.0.113.10/24".into(),
            gateway: "203.0.113.1".into(),
        },
        ReservedIp {
            ip: "203.0.113.11/24".into(),
            gateway: "203.0.113.1".into(),
        },
    ]);
    let public = Public::new(cfg.clone(), Some("pub0".into()), Arc::new(reserved));
    let mut registry = PrimitiveRegistry::new();
    public::register_public_ips(&mut registry, public.clone());
    let prim = registry.get(&WorkloadType::Ip).unwrap().clone();

    // Before a public config: refused clearly, nothing made.
    let wl = ip_wl("pubip", json!({"v4": true, "v6": true}));
    let d = deployment(vec![wl.clone()]);
    let ctx = WorkloadCtx::new(1, d.clone(), "pubip", NodeSecret::new([3; 32]));
    let e = prim.provision(&ctx, &wl).await.unwrap_err().to_string();
    assert!(e.contains("no public config"), "{e}");

    let config = json!({"type": "macvlan", "ipv4": "203.0.113.2/24", "gw4": "203.0.113.1",
        "ipv6": "2001:db8:1::2/64", "gw6": "2001:db8:1::1", "domain": ""});
    registry.public_config_changed(Some(&config)).await;
    let pubns = public::namespace(&cfg);
    assert!(
        ping(&inet, &["203.0.113.2"], Duration::from_secs(5)),
        "the public namespace answers on the node's public IPv4"
    );
    assert!(ping(
        &pubns,
        &["-6", "2001:db8:1::1"],
        Duration::from_secs(5)
    ));

    // The VM's end of the tap: a veth named as the tap, its peer in the "vm" namespace with
    // the workload's MAC.
    let (tap, mac) = public::tap_of(&ctx.workload_id);
    let mac_s = zos_types::ids::format_mac(&mac);
    must(&[
        "ip", "-n", &node, "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns",
        &vm,
    ]);
    must(&["ip", "-n", &vm, "link", "set", "eth0", "address", &mac_s]);

    let r = prim.provision(&ctx, &wl).await.unwrap();
    let v6 = public::slaac("2001:db8:1::".parse().unwrap(), mac).to_string();
    assert_eq!(r["ip"], "203.0.113.10/24");
    assert_eq!(r["gateway"], "203.0.113.1");
    assert_eq!(r["ip6"], format!("{v6}/64"));
    // Idempotent: the same result, one chain per hook.
    assert_eq!(prim.provision(&ctx, &wl).await.unwrap(), r);
    let rules = must(&[
        "ip", "netns", "exec", &node, "nft", "list", "table", "bridge", "zos-pub",
    ]);
    assert_eq!(rules.matches("chain r-").count(), 2, "{rules}");
    assert_eq!(
        rules.matches("ip saddr != 203.0.113.10 drop").count(),
        2,
        "{rules}"
    );

    must(&[
        "ip",
        "-n",
        &vm,
        "addr",
        "add",
        "203.0.113.10/24",
        "dev",
        "eth0",
    ]);
    must(&[
        "ip",
        "-n",
        &vm,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    must(&["ip", "-n", &vm, "link", "set", "eth0", "up"]);
    must(&[
        "ip",
        "-n",
        &vm,
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
    ]);
    assert!(
        ping(&inet, &["203.0.113.10"], Duration::from_secs(10)),
        "the internet reaches the workload's public IPv4"
    );
    assert!(
        ping(&inet, &["-6", &v6], Duration::from_secs(10)),
        "the internet reaches the workload's public IPv6"
    );

    // Spoofing: the VM adds addresses it does not own and sends from them (the gateway's MAC
    // is known, so no ARP is needed and the IP packets themselves are what is dropped).
    let br0_mac = must(&[
        "ip",
        "netns",
        "exec",
        &inet,
        "cat",
        "/sys/class/net/br0/address",
    ]);
    must(&[
        "ip",
        "-n",
        &vm,
        "neigh",
        "replace",
        "203.0.113.1",
        "lladdr",
        br0_mac.trim(),
        "dev",
        "eth0",
    ]);
    must(&[
        "ip",
        "-n",
        &vm,
        "addr",
        "add",
        "203.0.113.99/24",
        "dev",
        "eth0",
    ]);
    must(&[
        "ip",
        "-n",
        &vm,
        "addr",
        "add",
        "2001:db8:1::99/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let seen = captured(&inet, &mut guard, || {
        // Own addresses (the capture works) …
        assert!(ping(
            &vm,
            &["-I", "203.0.113.10", "203.0.113.1"],
            Duration::from_secs(3)
        ));
        // … and spoofed ones: no answer, nothing on the internet.
        assert!(!ping(
            &vm,
            &["-I", "203.0.113.99", "203.0.113.1"],
            Duration::from_secs(2)
        ));
        assert!(!ping(
            &vm,
            &["-6", "-I", "2001:db8:1::99", "2001:db8:1::1"],
            Duration::from_secs(2)
        ));
    });
    assert!(seen.contains("203.0.113.10 > 203.0.113.1"), "{seen}");
    assert!(
        !seen.contains("203.0.113.99"),
        "spoofed IPv4 left the tap: {seen}"
    );
    assert!(
        !seen.contains("2001:db8:1::99"),
        "spoofed IPv6 left the tap: {seen}"
    );
    // Another MAC with the right IPv4: dropped too.
    must(&[
        "ip",
        "-n",
        &vm,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:99",
    ]);
    let seen = captured(&inet, &mut guard, || {
        assert!(!ping(
            &vm,
            &["-I", "203.0.113.10", "203.0.113.1"],
            Duration::from_secs(2)
        ));
    });
    assert!(
        !seen.contains("02:00:00:00:00:99"),
        "spoofed MAC left the tap: {seen}"
    );
    must(&["ip", "-n", &vm, "link", "set", "eth0", "address", &mac_s]);
    assert!(ping(&inet, &["203.0.113.10"], Duration::from_secs(10)));

    // A second v4 workload takes the second IP; a third is more than the contract reserved.
    let mut first = wl.clone();
    first.result.state = ResultState::Ok;
    first.result.data = r.clone();
    let second = ip_wl("second", json!({"v4": true}));
    let d2 = deployment(vec![first.clone(), second.clone()]);
    let c2 = WorkloadCtx::new(1, d2, "second", NodeSecret::new([3; 32]));
    let r2 = prim.provision(&c2, &second).await.unwrap();
    assert_eq!(r2["ip"], "203.0.113.11/24");
    assert_eq!(r2["ip6"], "");
    let third = ip_wl("third", json!({"v4": true}));
    let d3 = deployment(vec![first, second.clone(), third.clone()]);
    let c3 = WorkloadCtx::new(1, d3, "third", NodeSecret::new([3; 32]));
    let e = prim.provision(&c3, &third).await.unwrap_err().to_string();
    assert!(e.contains("its contract reserved 2"), "{e}");
    prim.deprovision(&c2, &second).await.unwrap();
    // The deprecated `ipv4` (no data) is a v4 workload: it takes the free second IP.
    let legacy = Workload {
        name: "legacy".into(),
        workload_type: WorkloadType::Ipv4,
        data: json!({}),
        ..Workload::default()
    };
    let d4 = deployment(vec![first_ok(&wl, &r), legacy.clone()]);
    let c4 = WorkloadCtx::new(1, d4, "legacy", NodeSecret::new([3; 32]));
    let v4prim = registry.get(&WorkloadType::Ipv4).unwrap().clone();
    let r4 = v4prim.provision(&c4, &legacy).await.unwrap();
    assert_eq!(r4["ip"], "203.0.113.11/24");
    v4prim.deprovision(&c4, &legacy).await.unwrap();

    // A restarted node (a fresh public side, nothing in memory) converges from its public
    // config and the workload alone: same result, the stand-in still reachable, one chain
    // per hook.
    let restarted = Public::new(
        cfg.clone(),
        Some("pub0".into()),
        Arc::new(Reserved(vec![ReservedIp {
            ip: "203.0.113.10/24".into(),
            gateway: "203.0.113.1".into(),
        }])),
    );
    let mut registry2 = PrimitiveRegistry::new();
    public::register_public_ips(&mut registry2, restarted);
    registry2.public_config_changed(Some(&config)).await;
    let prim2 = registry2.get(&WorkloadType::Ip).unwrap().clone();
    let d5 = deployment(vec![first_ok(&wl, &r)]);
    let c5 = WorkloadCtx::new(1, d5, "pubip", NodeSecret::new([3; 32]));
    assert_eq!(prim2.provision(&c5, &wl).await.unwrap(), r);
    let rules = must(&[
        "ip", "netns", "exec", &node, "nft", "list", "table", "bridge", "zos-pub",
    ]);
    assert_eq!(rules.matches("chain r-").count(), 2, "{rules}");
    assert!(ping(&inet, &["203.0.113.10"], Duration::from_secs(10)));

    // Deprovision: the tap and its chains are gone (the VM's end goes with its veth).
    prim.deprovision(&ctx, &wl).await.unwrap();
    assert!(
        !sh(&["ip", "-n", &node, "link", "show", &tap])
            .status
            .success()
    );
    let rules = must(&[
        "ip", "netns", "exec", &node, "nft", "list", "table", "bridge", "zos-pub",
    ]);
    assert!(!rules.contains("chain r-"), "{rules}");
    prim.deprovision(&ctx, &wl).await.unwrap();

    // The public namespace follows the config.
    registry.public_config_changed(None).await;
    assert!(!netns_list().contains(&pubns));
    drop(guard);
    assert!(netns_list().iter().all(|n| !n.starts_with(&prefix)));
}
