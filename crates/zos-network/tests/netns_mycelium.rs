//! Root test on namespaces: the Mycelium instance of a network resource. Two "nodes" (each its
//! own namespace, joined by veths to an "internet" bridge namespace) run a host Mycelium
//! instance (as `zos node run --mycelium` does; A peers with B) and a network resource with a
//! `mycelium.hex_key` (one key per node, as a client makes them). A namespace on each NR's
//! bridge stands in for a VM's private NIC: it takes the VM address `<NR /64> ‖ ff0f ‖ seed`
//! and routes `400::/7` via `<NR /64>::1`, as the zmachine primitive configures a guest. The
//! two "VMs" ping each other over their overlay addresses: VM → NR → its instance → host A →
//! host B → B's NR instance → B's bridge → VM. Then: provisioning again keeps the instance, a
//! restarted node (process state gone) starts it again from the workload, a `network-light`
//! resource (no WireGuard) on A gets its own instance and its VM reaches B's, an update
//! without the key stops A's instance and removes the gateway, and deprovision removes
//! everything.
//!
//! Skips (loudly) without root, /dev/net/tun, `ip`, `nft` or `ping`. Every namespace is named
//! `mycnr<pid>-…` and removed by a guard, also on panic; stale ones of dead runs are removed
//! at start.
#![allow(clippy::unwrap_used, clippy::needless_range_loop, missing_docs)]

mod common;
use common::{Guard, ctx, eth0_up, internet, join_internet, must, netns_list, sh, skip_reason};

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use zos_mycelium::netns::NsNode;
use zos_mycelium::node::{Config, Endpoint};
use zos_mycelium::{SecretKey, crypto};
use zos_network::mycelium::{MyceliumPlan, TUN};
use zos_network::resource::NetworksLight;
use zos_network::wg::generate_private_key;
use zos_network::{NetConfig, Networks, NrNames};
use zos_primitive::Primitive;
use zos_types::{Workload, WorkloadType};

const FAMILY: &str = "mycnr";

fn network_wl(key: &str, subnet: &str, port: u16, myc: Option<&[u8; 32]>) -> Workload {
    let mut data = json!({"ip_range": "10.1.0.0/16", "subnet": subnet,
        "wireguard_private_key": key, "wireguard_listen_port": port, "peers": []});
    if let Some(k) = myc {
        data["mycelium"] = json!({"hex_key": k.iter().map(|b| format!("{b:02x}")).collect::<String>(), "peers": []});
    }
    Workload {
        name: "net".into(),
        workload_type: WorkloadType::Network,
        data,
        ..Workload::default()
    }
}

fn ping6(from_ns: &str, to: Ipv6Addr, within: Duration) -> bool {
    let end = Instant::now() + within;
    let to = to.to_string();
    while Instant::now() < end {
        if sh(&[
            "ip", "netns", "exec", from_ns, "ping", "-6", "-c", "1", "-W", "1", &to,
        ])
        .status
        .success()
        {
            return true;
        }
    }
    false
}

/// A namespace standing in for a VM: a veth on `bridge` (in `node_ns`) with `addr/64` and
/// `400::/7` via `gw`.
fn vm(name: &str, node_ns: &str, bridge: &str, tap: &str, addr: Ipv6Addr, gw: Ipv6Addr) {
    must(&["ip", "netns", "add", name]);
    must(&[
        "ip", "-n", node_ns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns",
        name,
    ]);
    must(&[
        "ip", "-n", node_ns, "link", "set", tap, "master", bridge, "up",
    ]);
    must(&[
        "ip",
        "-n",
        name,
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    must(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    must(&[
        "ip",
        "-n",
        name,
        "-6",
        "route",
        "add",
        "400::/7",
        "via",
        &gw.to_string(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_on_two_nodes_reach_each_other_over_network_mycelium() {
    if let Some(why) = skip_reason(true, &["ip", "nft", "ping"]) {
        eprintln!("SKIP vms_on_two_nodes_reach_each_other_over_network_mycelium: {why}");
        return;
    }
    let guard = Guard::new(FAMILY);
    let prefix = guard.prefix.clone();
    let inet = internet(&prefix);
    let mut nodes = Vec::new();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        let ns = format!("{prefix}{tag}");
        join_internet(&inet, &ns, &format!("p{tag}"));
        let addr = format!("198.18.0.{}", i + 1);
        eth0_up(&ns, &addr);
        nodes.push((ns, addr));
    }
    // The host instances (what `zos node run --mycelium` starts): A dials B.
    let mut hosts = Vec::new();
    for (i, (ns, _)) in nodes.iter().enumerate() {
        let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 9651));
        let peers = if i == 0 {
            vec![Endpoint::tcp(
                format!("{}:9651", nodes[1].1).parse().unwrap(),
            )]
        } else {
            Vec::new()
        };
        let cfg = Config {
            key: SecretKey::generate(),
            peers,
            tcp_listen: any,
            quic_listen: None,
            tun_name: Some("my0".into()),
            timer_divisor: 1,
            discovery: None,
        };
        let ns = ns.clone();
        hosts.push(
            tokio::task::spawn_blocking(move || NsNode::start(cfg, Some(&ns), None))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let nets: Vec<Arc<Networks>> = nodes
        .iter()
        .map(|(ns, _)| {
            Networks::new(NetConfig {
                node_netns: Some(ns.clone()),
                ns_prefix: format!("{ns}-"),
            })
        })
        .collect();
    let keys: [[u8; 32]; 2] = [rand_key(), rand_key()];
    let wls = [
        network_wl(&generate_private_key(), "10.1.1.0/24", 3021, Some(&keys[0])),
        network_wl(&generate_private_key(), "10.1.2.0/24", 3022, Some(&keys[1])),
    ];
    for i in 0..2 {
        nets[i]
            .provision(&ctx(&wls[i], i as u64 + 1), &wls[i])
            .await
            .unwrap();
    }
    let names: Vec<NrNames> = nodes
        .iter()
        .map(|(ns, _)| NrNames::new(7, "net", &format!("{ns}-")))
        .collect();
    let plans: Vec<MyceliumPlan> = keys
        .iter()
        .map(|k| MyceliumPlan::new(k, &[]).unwrap())
        .collect();
    // The instance's TUN and the /64 gateway live in the NR namespace.
    let tun = must(&[
        "ip",
        "-n",
        &names[0].namespace,
        "-6",
        "addr",
        "show",
        "dev",
        TUN,
    ]);
    let own = SecretKey::from_bytes(keys[0]).public_key().address();
    assert!(tun.contains(&format!("{own}/7")), "{tun}");
    let leg = must(&[
        "ip",
        "-n",
        &names[0].namespace,
        "-6",
        "addr",
        "show",
        "dev",
        &names[0].nr_link,
    ]);
    assert!(leg.contains(&format!("{}/64", plans[0].gateway())), "{leg}");

    let seed = [1, 2, 3, 4, 5, 6];
    let mut vms = Vec::new();
    for i in 0..2 {
        let addr = crypto::vm_address(&plans[i].subnet(), seed).unwrap();
        let name = format!("{prefix}vm{i}");
        vm(
            &name,
            &nodes[i].0,
            &names[i].bridge,
            "tvm",
            addr,
            plans[i].gateway(),
        );
        vms.push((name, addr));
    }
    let t0 = Instant::now();
    assert!(
        ping6(&vms[0].0, vms[1].1, Duration::from_secs(30)),
        "VM A reaches VM B over the network's mycelium addresses"
    );
    eprintln!("first ping A→B after {:?}", t0.elapsed());
    assert!(ping6(&vms[1].0, vms[0].1, Duration::from_secs(10)));

    // Idempotent: provisioning again keeps the instance (and the path).
    nets[0].provision(&ctx(&wls[0], 1), &wls[0]).await.unwrap();
    assert!(ping6(&vms[0].0, vms[1].1, Duration::from_secs(5)));

    // Restart of node A's agent: a new primitive (the old one's instance stops with it),
    // provisioned from the stored workload alone.
    let mut nets = nets;
    nets[0] = Networks::new(NetConfig {
        node_netns: Some(nodes[0].0.clone()),
        ns_prefix: format!("{}-", nodes[0].0),
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !sh(&["ip", "-n", &names[0].namespace, "link", "show", TUN])
            .status
            .success(),
        "the instance stopped with its process"
    );
    nets[0].provision(&ctx(&wls[0], 1), &wls[0]).await.unwrap();
    assert!(
        ping6(&vms[0].0, vms[1].1, Duration::from_secs(30)),
        "the overlay path returns after a restart"
    );

    // network-light on A (no WireGuard, mandatory mycelium): its own namespace, bridge and
    // instance; a VM stand-in on its bridge reaches B's VM over Mycelium too.
    let light_key = rand_key();
    let light_wl = Workload {
        name: "light".into(),
        workload_type: WorkloadType::NetworkLight,
        data: json!({"subnet": "10.9.1.0/24",
            "mycelium": {"hex_key": light_key.iter().map(|b| format!("{b:02x}")).collect::<String>(), "peers": []}}),
        ..Workload::default()
    };
    let light = NetworksLight(nets[0].clone());
    light
        .provision(&ctx(&light_wl, 5), &light_wl)
        .await
        .unwrap();
    light
        .provision(&ctx(&light_wl, 5), &light_wl)
        .await
        .unwrap();
    let light_names = NrNames::new(7, "light", &format!("{}-", nodes[0].0));
    let light_plan = MyceliumPlan::new(&light_key, &[]).unwrap();
    must(&["ip", "-n", &light_names.namespace, "link", "show", TUN]);
    let light_vm = format!("{prefix}vml");
    vm(
        &light_vm,
        &nodes[0].0,
        &light_names.bridge,
        "tvml",
        crypto::vm_address(&light_plan.subnet(), seed).unwrap(),
        light_plan.gateway(),
    );
    assert!(
        ping6(&light_vm, vms[1].1, Duration::from_secs(30)),
        "a network-light VM reaches B's VM"
    );
    // The ndmz bridge's MAC (behind the NRs' default gateway) must not follow its ports: it
    // used to change when the light NR's port was the lowest, and A's path stalled until its
    // neighbour entry for the gateway went stale (7–27 s).
    let ndmz = zos_network::ndmz::namespace(&NetConfig {
        node_netns: Some(nodes[0].0.clone()),
        ns_prefix: format!("{}-", nodes[0].0),
    });
    let mac = || {
        must(&[
            "ip",
            "-n",
            &ndmz,
            "-br",
            "link",
            "show",
            "dev",
            zos_network::ndmz::BRIDGE,
        ])
    };
    let mac_before = mac();
    light
        .deprovision(&ctx(&light_wl, 5), &light_wl)
        .await
        .unwrap();
    assert!(!netns_list().contains(&light_names.namespace));
    assert_eq!(mac(), mac_before, "the ndmz bridge kept its MAC");
    // A's network resource is untouched.
    assert!(ping6(&vms[0].0, vms[1].1, Duration::from_secs(5)));

    // An update without the key: the instance stops, the gateway goes.
    let plain = network_wl(
        wls[0].data["wireguard_private_key"].as_str().unwrap(),
        "10.1.1.0/24",
        3021,
        None,
    );
    nets[0].update(&ctx(&plain, 1), &plain).await.unwrap();
    assert!(
        !sh(&["ip", "-n", &names[0].namespace, "link", "show", TUN])
            .status
            .success()
    );
    let leg = must(&[
        "ip",
        "-n",
        &names[0].namespace,
        "-6",
        "addr",
        "show",
        "dev",
        &names[0].nr_link,
    ]);
    assert!(!leg.contains(&plans[0].gateway().to_string()), "{leg}");
    assert!(!ping6(&vms[0].0, vms[1].1, Duration::from_secs(2)));

    // Deprovision: the NR namespace and its instance are gone.
    nets[1]
        .deprovision(&ctx(&wls[1], 2), &wls[1])
        .await
        .unwrap();
    assert!(!netns_list().contains(&names[1].namespace));
    nets[0].deprovision(&ctx(&plain, 1), &plain).await.unwrap();
    drop(hosts);
}

fn rand_key() -> [u8; 32] {
    SecretKey::generate().to_bytes()
}
