//! VMs on `zos up --nodes 2` (root, QEMU; TCG here), through the real binary and the CLI only:
//! `zos up` offers the cached test guest (cloud-container kernel linked into each node, its
//! root an flist on the grid's hub); `zos deploy examples/vm.yaml` is ok; `zos vm logs` shows
//! the guest's init running the entrypoint with the workload's env, the zmount as a block
//! device, and `--follow` streams it; the file the guest wrote into its volume is on the
//! host's subvolume; cancel stops QEMU. Then examples/network.yaml over both nodes and one VM
//! per node: each pings the other over the WireGuard mesh (taps in each node's namespace)
//! and over Mycelium (the network with `mycelium: true`: an instance per network resource,
//! linked through the nodes' host instances; each VM's `network.mycelium` address is its
//! result's `mycelium_ip`).
//! Three guest boots in all (2 shared cores).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "common/up.rs"]
mod up;
#[path = "common/vm_guest.rs"]
mod vm_guest;
#[path = "common/vm_up.rs"]
mod vm_up;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use up::{Up, grid_namespaces, zos};
use vm_up::{VmGrid, guests, ok, wait_log};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A directory named `name` under `dir` (depth-limited).
fn find_dir(dir: &Path, name: &str, depth: u8) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if !e.file_type().ok()?.is_dir() {
            continue;
        }
        if e.file_name() == name {
            return Some(p);
        }
        if depth > 0 {
            if let Some(f) = find_dir(&p, name, depth - 1) {
                return Some(f);
            }
        }
    }
    None
}

fn cancel(up: &Up, contract: u64) {
    ok(&up.client(&["cancel", &contract.to_string()]), "zos cancel");
}

/// A zmachine workload `name` (YAML, under `workloads:`) in the twin's network `net`.
fn vm_entry(name: &str, flist: &str, ip: &str, memory: u64, entrypoint: &str) -> String {
    format!(
        "  {name}:\n    raw:\n      type: zmachine\n      data:\n        flist: {flist}\n        \
         network:\n          planetary: false\n          interfaces:\n            - network: net\n              \
         ip: {ip}\n        size: 0\n        compute_capacity:\n          cpu: 1\n          memory: {memory}\n        \
         mounts: []\n        entrypoint: \"{entrypoint}\"\n        env: {{}}\n"
    )
}

/// A VM on `node` with a Mycelium address from `seed`, pinging `peer` and `peer6` (its
/// Mycelium address) and saying so on its console.
fn pinger_spec(
    flist: &str,
    name: &str,
    node: u32,
    ip: &str,
    peer: &str,
    seed: &str,
    peer6: &str,
) -> String {
    let entry = format!(
        "/bin/sh -c 'while :; do ping -c 1 -W 1 {peer} >/dev/null && echo PING-OK {peer}; \
         ping -c 1 -W 1 {peer6} >/dev/null && echo PING6-OK {peer6}; sleep 1; done'"
    );
    let vm = vm_entry(name, flist, ip, 256 << 20, &entry).replace(
        "          planetary: false\n",
        &format!(
            "          planetary: false\n          mycelium:\n            Network: net\n            \
             hex_seed: \"{seed}\"\n"
        ),
    );
    format!("name: {name}\nnode: {node}\nworkloads:\n{vm}")
}

/// `(10.20.X, <mycelium /64>::1)` of every network resource of the grid with a Mycelium
/// instance: both addresses sit on its bridge leg.
fn mycelium_gateways() -> Vec<(String, std::net::Ipv6Addr)> {
    let mut out = Vec::new();
    for ns in grid_namespaces().into_iter().filter(|n| n.contains("-n-")) {
        let o = Command::new("ip")
            .args(["-n", &ns, "-o", "addr", "show"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let word_after = |kind: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace().skip_while(|w| *w != kind);
                    w.nth(1).map(str::to_string)
                })
                .collect()
        };
        let base = word_after("inet")
            .into_iter()
            .find_map(|c| c.strip_suffix(".1/24").map(str::to_string));
        let gw = word_after("inet6").into_iter().find_map(|c| {
            let a: std::net::Ipv6Addr = c.strip_suffix("/64")?.parse().ok()?;
            (a.octets()[0] & 0xfe == 0x04).then_some(a)
        });
        if let (Some(b), Some(g)) = (base, gw) {
            out.push((b, g));
        }
    }
    out
}

fn full_vm(up: &Up, guest: &Path, hub: &str) {
    let src = guest.join("fullvm");
    if !src.join("image.raw").is_file() {
        eprintln!(
            "SKIP: full VM part: {}",
            std::fs::read_to_string(src.join("SKIPPED")).unwrap_or_default()
        );
        return;
    }
    // Published on the grid's hub as a user would (the hub's own block store).
    let hub_dir = up.data().join("hub");
    let fl = hub_dir.join("flists/0/fullvm.fl");
    let store = format!("dir://{}", hub_dir.join("blocks").display());
    ok(
        &up.client(&[
            "flist",
            "pack",
            src.to_str().unwrap(),
            "-o",
            fl.to_str().unwrap(),
            "-s",
            &store,
        ]),
        "zos flist pack",
    );
    let ex = std::fs::read_to_string(example("vm.yaml")).unwrap();
    // The example's network workload: from `  net:` to the next workload, `  data:`.
    let net = &ex[ex.find("\n  net:\n").unwrap() + 1..ex.find("\n  data:\n").unwrap() + 1];
    let entry = "/bin/sh -c 'echo \\\"full $NAME\\\"; for b in /sys/block/vd*; do echo \\\"block device serial=$(cat $b/serial)\\\"; done; while :; do sleep 60; done'";
    let spec = format!(
        "name: full\nworkloads:\n{net}  disk:\n    zmount:\n      size: 100MiB\n  extra:\n    zmount:\n      \
         size: 50MiB\n  vm:\n    raw:\n      type: zmachine\n      data:\n        \
         flist: http://127.0.0.1:{hub}/flists/0/fullvm.fl\n        network:\n          planetary: false\n          \
         interfaces:\n            - network: net\n              ip: 10.20.2.5\n        size: 0\n        \
         compute_capacity:\n          cpu: 1\n          memory: 268435456\n        mounts:\n          \
         - name: disk\n            mountpoint: /\n          - name: extra\n            mountpoint: /extra\n        \
         entrypoint: \"{entry}\"\n        env:\n          NAME: zos\n"
    );
    let path = up.dir.path().join("full.yaml");
    std::fs::write(&path, spec).unwrap();
    let t0 = Instant::now();
    let out = ok(
        &up.client(&["deploy", path.to_str().unwrap(), "--json", "--wait", "240"]),
        "deploy a full VM",
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap();
    let log = wait_log(up, contract, "vm", "full zos", Duration::from_secs(180));
    eprintln!(
        "full VM: entrypoint ran {:?} after deploy (SeaBIOS, syslinux, TCG)",
        t0.elapsed()
    );
    assert!(
        log.contains("SYSLINUX"),
        "booted by firmware from the disk: {log}"
    );
    assert!(log.contains("ZOS-INIT: full vm"), "{log}");
    assert!(
        log.contains("ZOS-INIT: eth0 10.20.2.5/24 via 10.20.2.1"),
        "address from cloud-init: {log}"
    );
    for want in ["serial=disk", "serial=extra", "serial=cidata"] {
        assert!(
            log.contains(&format!("block device {want}")),
            "{want}: {log}"
        );
    }
    cancel(up, contract);
    let end = Instant::now() + Duration::from_secs(60);
    while !guests(up).is_empty() {
        assert!(Instant::now() < end, "QEMU still runs after cancel");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn vms_on_up_with_two_nodes() {
    const T: &str = "vms_on_up_with_two_nodes";
    let Some(VmGrid {
        rt: _rt,
        guest,
        hub,
        up,
        printed,
    }) = vm_up::start(T, &["nsenter"], &[])
    else {
        return;
    };
    let text = printed.join("\n");
    let flist = format!("http://127.0.0.1:{hub}/flists/0/test-guest.fl");
    assert!(
        text.contains(&format!("vm guest {flist}")),
        "zos up offers the guest: {text}"
    );
    let ids: Vec<u32> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("nodes    ["))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("no node list: {text}"))
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{text}");

    // 1. The first VM: examples/vm.yaml as a user runs it (the hub on this test's port).
    let ex = std::fs::read_to_string(example("vm.yaml")).unwrap();
    assert!(ex.contains("http://127.0.0.1:7900/flists/0/test-guest.fl"));
    let spec = up.dir.path().join("vm.yaml");
    std::fs::write(
        &spec,
        ex.replace("127.0.0.1:7900", &format!("127.0.0.1:{hub}")),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = ok(
        &up.client(&["deploy", spec.to_str().unwrap(), "--json", "--wait", "240"]),
        "zos deploy examples/vm.yaml",
    );
    let deployed = t0.elapsed();
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap();
    for w in d["workloads"].as_array().unwrap() {
        assert_eq!(w["result"]["state"], "ok", "{w}");
    }
    let log = wait_log(
        &up,
        contract,
        "vm",
        "wrote /data/hello.txt",
        Duration::from_secs(180),
    );
    eprintln!(
        "{T}: deploy ok after {deployed:?}, entrypoint done after {:?} (TCG)",
        t0.elapsed()
    );
    assert!(log.contains("ZOS-INIT: started"), "{log}");
    // Root and volume over virtio-fs when the host has a virtiofsd, else 9p.
    let fs = match zos_vm::primitive::find_virtiofsd() {
        Some(_) => "virtiofs",
        None => "9p",
    };
    assert!(
        log.contains(&format!("ZOS-INIT: root mounted ({fs})")),
        "{log}"
    );
    assert!(log.contains("ZOS-INIT: mounted data at /data"), "{log}");
    assert!(log.contains("ZOS-ENTRYPOINT: "), "{log}");
    assert!(
        log.contains("hello zos from vm"),
        "entrypoint with env: {log}"
    );
    // The zmount `disk` (100 MiB = 204800 sectors) is a block device with its name as serial.
    assert!(
        log.lines()
            .any(|l| l.contains("block device /dev/vd") && l.contains("serial=disk sectors=204800")),
        "{log}"
    );
    // The file the guest wrote is on the host's volume (subvolume or directory).
    let vol = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "data")
        .unwrap();
    let wlid = vol["result"]["data"]["id"].as_str().unwrap();
    let dir = find_dir(&up.data(), wlid, 8)
        .unwrap_or_else(|| panic!("volume {wlid} not under {}", up.data().display()));
    assert_eq!(
        std::fs::read_to_string(dir.join("hello.txt")).unwrap(),
        "written by vm for zos\n"
    );
    // --follow streams (the log so far at once); other names are refused.
    let mut follow = Command::new(zos())
        .args(["vm", "logs", &contract.to_string(), "vm", "--follow"])
        .env("ZOS_CONFIG", up.dir.path().join("config.toml"))
        .env("XDG_CONFIG_HOME", up.dir.path().join("xdg"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let mut streamed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut streamed)
        .unwrap();
    assert!(streamed.contains("hello zos from vm"), "{streamed}");
    let o = up.client(&["vm", "logs", &contract.to_string(), "nosuch"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no vm \"nosuch\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Cancel: QEMU stops.
    assert_eq!(guests(&up).len(), 1);
    cancel(&up, contract);
    let end = Instant::now() + Duration::from_secs(60);
    while !guests(&up).is_empty() {
        assert!(Instant::now() < end, "QEMU still runs after cancel");
        std::thread::sleep(Duration::from_millis(300));
    }

    // 2. A full VM: an flist with /image.raw (the guest's FAT disk with syslinux), written to
    //    the first zmount and booted by firmware; a second zmount is another virtio disk.
    full_vm(&up, &guest, &hub);

    // 3. A network over both nodes (the example, with Mycelium) and a VM on each: they ping
    //    each other over the mesh and over Mycelium.
    let net = std::fs::read_to_string(example("network.yaml")).unwrap();
    let net = net.replace(
        "      ip_range: 10.20.0.0/16\n",
        "      ip_range: 10.20.0.0/16\n      mycelium: true\n",
    );
    assert!(net.contains("mycelium: true"), "{net}");
    let net_spec = up.dir.path().join("network.yaml");
    std::fs::write(&net_spec, net).unwrap();
    ok(
        &up.client(&["deploy", net_spec.to_str().unwrap(), "--wait", "120"]),
        "zos deploy examples/network.yaml with mycelium",
    );
    let list: Vec<Value> =
        serde_json::from_str(&ok(&up.client(&["deployments", "--json"]), "deployments")).unwrap();
    let mut subnets = Vec::new();
    for d in &list {
        for w in d["workloads"].as_array().unwrap() {
            if w["type"] == "network" && w["name"] == "net" {
                let subnet = w["data"]["subnet"].as_str().unwrap();
                let base = subnet.rsplit_once(".0/").unwrap().0;
                // The key is redacted in the listing: only its presence shows.
                assert_eq!(w["data"]["mycelium"]["hex_key"], "<redacted>", "{w}");
                subnets.push((d["node_id"].as_u64().unwrap() as u32, base.to_string()));
            }
        }
    }
    subnets.sort();
    assert_eq!(subnets.len(), 2, "a network resource per node: {subnets:?}");
    let ip = |i: usize| format!("{}.5", subnets[i].1);
    // Each VM's Mycelium address: its node's network /64 ‖ ff0f ‖ seed, the /64 read from
    // the gateway each network resource put on its bridge leg (next to `<subnet>.1`).
    let gateways = mycelium_gateways();
    let seeds = ["0a0b0c0d0e01", "0a0b0c0d0e02"];
    let myc = |i: usize| {
        let gw = gateways
            .iter()
            .find(|(base, _)| *base == subnets[i].1)
            .unwrap_or_else(|| panic!("no mycelium gateway for {}: {gateways:?}", subnets[i].1))
            .1;
        let mut a = gw.octets();
        a[8] = 0xff;
        a[9] = 0x0f;
        hex::decode_to_slice(seeds[i], &mut a[10..]).unwrap();
        std::net::Ipv6Addr::from(a).to_string()
    };

    // 4. Bad input, one deployment: each workload's error says what is wrong. (`node:` skips
    //    the client's own capacity check, so the node's refusal is what we see.)
    let sub = &subnets[0].1;
    let bad = format!(
        "name: bad\nnode: {}\nworkloads:\n{}{}{}{}",
        subnets[0].0,
        vm_entry("big", &flist, &format!("{sub}.6"), 1 << 40, "true"),
        vm_entry(
            "nofl",
            &flist.replace("test-guest", "nope"),
            &format!("{sub}.7"),
            256 << 20,
            "true"
        ),
        vm_entry("gw", &flist, &format!("{sub}.1"), 256 << 20, "true"),
        vm_entry("out", &flist, "10.99.0.5", 256 << 20, "true"),
    );
    let spec = up.dir.path().join("bad.yaml");
    std::fs::write(&spec, bad).unwrap();
    let o = up.client(&["deploy", spec.to_str().unwrap(), "--wait", "120"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    for (name, want) in [
        ("big", "memory"),
        ("nofl", "404"),
        ("gw", "network gateway (.1)"),
        ("out", "not in the network subnet"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("workload \"{name}\"")))
            .unwrap_or_else(|| panic!("no error for {name}: {err}"));
        assert!(line.contains(want), "{name}: {line}");
    }
    assert!(guests(&up).is_empty(), "no guest started for bad input");
    let mut contracts = Vec::new();
    for (i, name) in ["vma", "vmb"].into_iter().enumerate() {
        let spec = up.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &spec,
            pinger_spec(
                &flist,
                name,
                subnets[i].0,
                &ip(i),
                &ip(1 - i),
                seeds[i],
                &myc(1 - i),
            ),
        )
        .unwrap();
        let out = ok(
            &up.client(&["deploy", spec.to_str().unwrap(), "--json", "--wait", "240"]),
            name,
        );
        let d: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(d["node_id"], subnets[i].0, "{d}");
        assert_eq!(
            d["workloads"][0]["result"]["data"]["mycelium_ip"],
            myc(i).as_str(),
            "{d}"
        );
        contracts.push(d["contract_id"].as_u64().unwrap());
    }
    for (i, name) in ["vma", "vmb"].into_iter().enumerate() {
        wait_log(
            &up,
            contracts[i],
            name,
            &format!("PING-OK {}", ip(1 - i)),
            Duration::from_secs(180),
        );
    }
    eprintln!("{T}: VMs on nodes {ids:?} ping each other over WireGuard");
    for (i, name) in ["vma", "vmb"].into_iter().enumerate() {
        wait_log(
            &up,
            contracts[i],
            name,
            &format!("PING6-OK {}", myc(1 - i)),
            Duration::from_secs(120),
        );
    }
    eprintln!("{T}: and over Mycelium ({} <-> {})", myc(0), myc(1));
    for c in contracts {
        cancel(&up, c);
    }
    let end = Instant::now() + Duration::from_secs(60);
    while !guests(&up).is_empty() {
        assert!(Instant::now() < end, "QEMU still runs after cancel");
        std::thread::sleep(Duration::from_millis(300));
    }
}
