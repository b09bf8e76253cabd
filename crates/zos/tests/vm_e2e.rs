#![allow(clippy::unwrap_used, missing_docs)]
//! A zmachine deployed through the node's engine on a loop-device pool, booting the Debian
//! test guest under QEMU (TCG here): its console shows the entrypoint running with the
//! workload's env, a file it writes into its volume is on the host, its zmount is a block
//! device; pause/resume over QMP; kill -9 of QEMU restarts it; an agent restart re-attaches
//! the running QEMU; the 5th crash in 2 minutes fails it with the reason; bad input gets
//! clear errors; cancelling the contract removes the VM.
//!
//! One guest boot shared by every check (2 shared cores): TCG boots take 5-30 s.

#[path = "../../zos-storage/tests/common/mod.rs"]
mod common;
#[path = "common/vm_guest.rs"]
mod vm_guest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, capable};
use serde_json::{Value, json};
use zos_node::chain::fake::FakeChain;
use zos_node::chain::{ContractInfo, ContractStatus};
use zos_node::engine::{Engine, EngineConfig, HostCapacity};
use zos_node::metrics::Metrics;
use zos_node::store::Store;
use zos_node::{NodeSecret, PrimitiveRegistry};
use zos_storage::{InProcessZdb, PoolKind, Storage, StorageConfig};
use zos_types::crypto::{KeyPair, KeyType};
use zos_types::{
    Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload, WorkloadType,
};

const MIB: u64 = 1 << 20;
const NODE: u32 = 7;
const TWIN: u32 = 3;
const SEED: [u8; 32] = [9; 32];

struct Node {
    storage: Arc<Storage>,
    vms: Arc<zos_vm::Vms>,
    registry: PrimitiveRegistry,
    engine: Engine,
}

async fn start_node(env: &Env, chain: Arc<FakeChain>, guest: &Path) -> Node {
    let mgr = Storage::start_pools(&env.pool_config()).await.unwrap();
    let storage = Arc::new(Storage::new(
        mgr,
        SEED,
        StorageConfig::new(env.pool_config()),
    ));
    let mut reg = PrimitiveRegistry::new();
    zos_storage::register_with(&mut reg, storage.clone(), Arc::new(InProcessZdb));
    // The real network primitive: the VM's tap joins its resource's bridge.
    // Its namespaces (NRs, ndmz) carry this test's prefix so that the guard removes exactly
    // them; bridges and taps stay in this namespace, where QEMU opens them.
    let net = zos_network::NetConfig {
        node_netns: None,
        ns_prefix: ns_prefix(),
    };
    zos_network::register_networks(&mut reg, net);
    let mut cfg = zos_vm::VmConfig::new(env.dir.join("vm"));
    cfg.cloud_container = Some(guest.to_path_buf());
    cfg.supervisor.shutdown_grace = Duration::from_secs(1);
    cfg.nr_ns_prefix = ns_prefix();
    let vms = zos_vm::Vms::new(cfg, Some(storage.clone()));
    zos_vm::register(&mut reg, vms.clone());
    reg.start().await.unwrap();
    let store = Store::open(&storage.cache_dir().unwrap().join("engine.redb")).unwrap();
    let engine = Engine::new(
        store,
        chain,
        reg.clone(),
        NodeSecret::new(SEED),
        EngineConfig {
            host: HostCapacity {
                memory: 16 << 30,
                cores: 2,
            },
        },
        Arc::new(Metrics::default()),
    )
    .unwrap();
    engine.set_node_id(NODE);
    Node {
        storage,
        vms,
        registry: reg,
        engine,
    }
}

fn wl(name: &str, t: WorkloadType, data: Value) -> Workload {
    Workload {
        name: name.into(),
        workload_type: t,
        data,
        ..Workload::default()
    }
}

fn network() -> Workload {
    wl(
        "vmnet",
        WorkloadType::Network,
        json!({"ip_range": "10.20.0.0/16", "subnet": "10.20.2.0/24",
               "wireguard_private_key": "GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=",
               "wireguard_listen_port": 3011, "peers": []}),
    )
}

fn machine(flist: &str, ip: &str, memory: u64, mounts: Value, entrypoint: &str) -> Workload {
    wl(
        "vm",
        WorkloadType::Zmachine,
        json!({"flist": flist,
               "network": {"interfaces": [{"network": "vmnet", "ip": ip}], "planetary": false},
               "compute_capacity": {"cpu": 1, "memory": memory},
               "mounts": mounts, "entrypoint": entrypoint,
               "env": {"HELLO": "world from zos", "SSH_KEY": "ssh-ed25519 AAAA test@zos"}}),
    )
}

async fn deploy(
    engine: &Engine,
    chain: &FakeChain,
    user: &KeyPair,
    contract: u64,
    workloads: Vec<Workload>,
) -> Result<(), String> {
    let mut d = Deployment {
        twin_id: TWIN,
        contract_id: contract,
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: TWIN,
                required: false,
                weight: 1,
            }],
            weight_required: 1,
            ..Default::default()
        },
        workloads,
        ..Deployment::default()
    };
    d.sign(TWIN, user).unwrap();
    chain.put_contract(ContractInfo {
        id: contract,
        twin_id: TWIN,
        node_id: Some(NODE),
        deployment_hash: d.challenge_hash_hex().unwrap(),
        status: ContractStatus::Created,
    });
    engine.deploy(TWIN, d).await.map_err(|e| e.to_string())?;
    engine.drain().await;
    Ok(())
}

/// Signs and applies version `version` of contract `contract` (an update).
async fn update(
    engine: &Engine,
    chain: &FakeChain,
    user: &KeyPair,
    contract: u64,
    version: u32,
    workloads: Vec<Workload>,
) -> Result<(), String> {
    let mut d = engine.get(TWIN, contract).map_err(|e| e.to_string())?;
    d.version = version;
    d.workloads = workloads;
    d.sign(TWIN, user).unwrap();
    chain.put_contract(ContractInfo {
        id: contract,
        twin_id: TWIN,
        node_id: Some(NODE),
        deployment_hash: d.challenge_hash_hex().unwrap(),
        status: ContractStatus::Created,
    });
    engine.update(TWIN, d).await.map_err(|e| e.to_string())?;
    engine.drain().await;
    Ok(())
}

fn result_of(engine: &Engine, contract: u64, name: &str) -> (ResultState, String, Value) {
    let d = engine.get(TWIN, contract).unwrap();
    let w = d.workloads.into_iter().find(|w| w.name == name).unwrap();
    (w.result.state, w.result.error, w.result.data)
}

fn console(dir: &Path) -> String {
    String::from_utf8_lossy(&zos_vm::console::tail(dir, 1 << 20).unwrap()).into_owned()
}

/// Waits (generously: TCG under load) until the console holds `n` copies of `needle`.
async fn wait_console(dir: &Path, needle: &str, n: usize, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let c = console(dir);
        if c.matches(needle).count() >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "console never showed {n}× {needle:?} within {within:?}:\n{c}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// This test's prefix for the namespaces the network primitive makes.
fn ns_prefix() -> String {
    format!("zvm{}-", std::process::id())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Kills the QEMUs of this test (again, while a supervisor may still restart them), removes
/// its taps, network resources and NAT namespace (with the host's NAT table and uplink the
/// network primitive adds, and the host's `ip_forward` as it found it) and unmounts its
/// overlays, also when the test fails.
struct VmGuard {
    dir: PathBuf,
    ip_forward: Option<String>,
}

impl VmGuard {
    fn new(dir: PathBuf) -> Self {
        VmGuard {
            dir,
            ip_forward: std::fs::read_to_string(IP_FORWARD).ok(),
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let needle = self.dir.to_string_lossy().into_owned();
        for _ in 0..10 {
            let mut found = false;
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                        found = true;
                        let _ = std::process::Command::new("kill")
                            .args(["-9", &pid.to_string()])
                            .status();
                    }
                }
            }
            if !found {
                break;
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        let ip = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        for vm in ["3-1-vm", "3-1-vm2"] {
            ip(&["link", "del", &zos_types::ids::unique(vm, "vmnet")]);
        }
        for net in ["vmnet", "vmnet10", "vmnet11", "vmnet12", "vmnet13"] {
            let id = zos_types::ids::network_id(TWIN, net);
            ip(&["link", "del", &format!("b-{id}")]);
            ip(&["link", "del", &format!("v-{id}")]);
            ip(&["netns", "del", &format!("{}n-{id}", ns_prefix())]);
        }
        // Deleting the ndmz takes `npub4` and with it its peer `ndmz-up` here.
        ip(&["netns", "del", &format!("{}ndmz", ns_prefix())]);
        ip(&["link", "del", "ndmz-up"]);
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", "zos-ndmz"])
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(v) = &self.ip_forward {
            let _ = std::fs::write(IP_FORWARD, v);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&needle) {
                let _ = std::process::Command::new("umount")
                    .args(["-l", m])
                    .status();
            }
        }
    }
}

fn kill9(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The pid of the VM once it differs from `old` (a restart happened).
async fn new_pid(vms: &zos_vm::Vms, wlid: &str, old: u32) -> u32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = vms.supervisor().pid(wlid) {
            if p != old {
                return p;
            }
        }
        assert!(Instant::now() < end, "vm was not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ENTRYPOINT: &str = "/bin/sh -c 'echo ENV-HELLO=$HELLO; echo guest-wrote > /data/from-guest; \
(until ping -c1 -W1 10.20.2.6 >/dev/null 2>&1; do sleep 1; done; echo PING-VM2-OK) & \
for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = disk ] && [ -b /dev/${d##*/} ] && echo ZMOUNT-BLOCK-OK-${d##*/}; done; \
i=0; while :; do i=$((i+1)); echo TICK-$i; sleep 1; done'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmachine_boots_survives_crashes_and_agent_restart() {
    let name = "zmachine_boots_survives_crashes_and_agent_restart";
    if !capable(name) {
        return;
    }
    let Some(guest) = vm_guest::guest(name).await else {
        return;
    };
    let flist = format!("file://{}", guest.join("test.fl").display());
    let env = Env::new("vm", &[("ssd", 1400, PoolKind::Ssd)]).await;
    let _guard = VmGuard::new(env.dir.join("vm"));
    let chain = Arc::new(FakeChain::default());
    let user = KeyPair::from_seed(KeyType::Ed25519, [3u8; 32]);
    chain.put_key(TWIN, user.public());
    let node = start_node(&env, chain.clone(), &guest).await;

    // The accelerator is probed and reported.
    let api = zos_node::api::Api::new(
        node.engine.clone(),
        Arc::new(zos_node::api::NodeState::default()),
    );
    let hv = api
        .dispatch(TWIN, "zos.vm.hypervisor", Value::Null)
        .await
        .unwrap();
    assert_eq!(hv["hypervisor"], "qemu");
    assert!(hv["accel"] == "tcg" || hv["accel"] == "kvm", "{hv}");
    eprintln!("hypervisor: {hv}");

    let started = Instant::now();
    deploy(
        &node.engine,
        &chain,
        &user,
        1,
        vec![
            network(),
            wl("data", WorkloadType::Volume, json!({"size": 50 * MIB})),
            wl("disk", WorkloadType::Zmount, json!({"size": 100 * MIB})),
            machine(
                &flist,
                "10.20.2.5",
                256 * MIB,
                json!([{"name": "disk", "mountpoint": "/disk"}, {"name": "data", "mountpoint": "/data"}]),
                ENTRYPOINT,
            ),
            {
                let mut m = machine(&flist, "10.20.2.6", 256 * MIB, json!([]), "/bin/sleep 100000");
                m.name = "vm2".into();
                m
            },
        ],
    )
    .await
    .unwrap();
    let (state, err, data) = result_of(&node.engine, 1, "vm");
    assert_eq!(state, ResultState::Ok, "{err}");
    assert_eq!(data["id"], "3-1-vm");
    assert_eq!(data["ip"], "10.20.2.5");
    assert_eq!(data["console_url"], "10.20.2.1:20005");
    let wlid = "3-1-vm";
    let dir: PathBuf = node.vms.vm_dir(wlid);

    // The guest's init runs the entrypoint with the workload's env.
    wait_console(&dir, "TICK-1", 1, Duration::from_secs(180)).await;
    eprintln!("deploy -> entrypoint running: {:?}", started.elapsed());
    let c = console(&dir);
    assert!(c.contains("ZOS-INIT: started"), "{c}");
    assert!(c.contains("ENV-HELLO=world from zos"), "{c}");
    assert!(c.contains("ZOS-INIT: mounted data at /data"), "{c}");
    assert!(
        c.contains("ZMOUNT-BLOCK-OK-vd"),
        "zmount is a block device: {c}"
    );
    // Two VMs on one private network reach each other (taps on the resource's bridge).
    wait_console(&dir, "PING-VM2-OK", 1, Duration::from_secs(180)).await;
    eprintln!("deploy -> vm pings vm2: {:?}", started.elapsed());
    assert_eq!(result_of(&node.engine, 1, "vm2").0, ResultState::Ok);
    // The file the guest wrote into its volume is on the host's subvolume.
    let vol = node.storage.volume_get("3-1-data").await.unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(vol.path.join("from-guest")).unwrap(),
        "guest-wrote\n"
    );
    // The writable root lives on a volume of RootSize (MinRootSize for 1 CPU, 256 MiB).
    let rootvol = node
        .storage
        .volume_get("vmroot-3-1-vm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rootvol.size, 500 * MIB);
    assert!(rootvol.path.join("upper").is_dir(), "{rootvol:?}");

    // Update: vm2 gets 2 CPUs and 320 MiB, applied by restarting its guest.
    let vm2_pid = node.vms.supervisor().pid("3-1-vm2").unwrap();
    let mut up = node.engine.get(TWIN, 1).unwrap().workloads;
    for w in &mut up {
        w.result = Default::default();
    }
    let vm2 = up.iter_mut().find(|w| w.name == "vm2").unwrap();
    vm2.data["compute_capacity"] = json!({"cpu": 2, "memory": 320 * MIB});
    vm2.version = 1;
    update(&node.engine, &chain, &user, 1, 1, up).await.unwrap();
    let (state, err, _) = result_of(&node.engine, 1, "vm2");
    assert_eq!(state, ResultState::Ok, "{err}");
    let vm2_new = node.vms.supervisor().pid("3-1-vm2").unwrap();
    assert_ne!(vm2_new, vm2_pid, "the guest was restarted");
    let args: Vec<String> = std::fs::read(format!("/proc/{vm2_new}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args.windows(2).any(|w| w == ["-m", "320"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["-smp", "2"]), "{args:?}");
    assert_eq!(result_of(&node.engine, 1, "vm").0, ResultState::Ok);

    // The owner reads the console through the API; another twin cannot.
    let logs = api
        .dispatch(TWIN, "zos.vm.logs", json!({"contract_id": 1, "name": "vm"}))
        .await
        .unwrap();
    assert!(logs["log"].as_str().unwrap().contains("ENV-HELLO"));
    assert!(
        api.dispatch(4, "zos.vm.logs", json!({"contract_id": 1, "name": "vm"}))
            .await
            .is_err()
    );
    // The console is served at console_url inside the private network (the NR's namespace):
    // HTTP gets the log's tail, a raw TCP client the live serial line.
    let nr = format!(
        "{}n-{}",
        ns_prefix(),
        zos_types::ids::network_id(TWIN, "vmnet")
    );
    let page = std::process::Command::new("ip")
        .args(["netns", "exec", &nr, "curl", "-sS", "--max-time", "10"])
        .arg("http://10.20.2.1:20005/")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("ENV-HELLO=world from zos"), "{page}");
    let last_tick = |c: &str| {
        c.rsplit("TICK-")
            .next()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let seen = last_tick(&console(&dir));
    let raw = std::process::Command::new("ip")
        .args(["netns", "exec", &nr, "bash", "-c"])
        .arg("exec 3<>/dev/tcp/10.20.2.1/20005; timeout 4 cat <&3")
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    // The backlog, then ticks printed after the client connected (one a second).
    assert!(raw.contains("TICK-"), "raw console: {raw}");
    assert!(
        last_tick(&raw) > seen,
        "no live output after TICK-{seen}: {raw}"
    );
    let pid = node.vms.supervisor().pid(wlid).unwrap();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    eprintln!("qemu rss: {} MiB (guest memory 256 MiB)", rss_kib / 1024);

    // Pause: the guest stops executing (no ticks); resume: it continues.
    let sup = node.vms.supervisor().clone();
    sup.pause(&dir).await.unwrap();
    assert_eq!(sup.status(&dir).await.unwrap(), "paused");
    let before = console(&dir).matches("TICK-").count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        console(&dir).matches("TICK-").count(),
        before,
        "paused guest ran"
    );
    sup.resume(&dir).await.unwrap();
    assert_eq!(sup.status(&dir).await.unwrap(), "running");
    wait_console(&dir, "TICK-", before + 2, Duration::from_secs(60)).await;

    // kill -9 of QEMU: the node restarts it and the guest boots again.
    kill9(pid);
    let pid2 = new_pid(&node.vms, wlid, pid).await;
    wait_console(&dir, "ZOS-ENTRYPOINT:", 2, Duration::from_secs(180)).await;
    assert_eq!(sup.restarts(wlid), 1);

    // Agent restart: the agent stops (guests keep running), a new one re-attaches.
    let Node {
        storage,
        vms,
        registry,
        engine,
    } = node;
    drop((engine, vms, sup, api));
    registry.shutdown().await; // vm lifecycle: detach, leave QEMU running
    drop(storage);
    assert!(alive(pid2), "qemu died with the agent");
    let node = start_node(&env, chain.clone(), &guest).await;
    node.engine.reconcile_all().unwrap();
    node.engine.drain().await;
    assert_eq!(result_of(&node.engine, 1, "vm").0, ResultState::Ok);
    assert_eq!(
        node.vms.supervisor().pid(wlid),
        Some(pid2),
        "re-attached, not restarted"
    );
    let ticks = console(&dir).matches("TICK-").count();
    wait_console(&dir, "TICK-", ticks + 2, Duration::from_secs(60)).await;

    // Five crashes within 2 minutes (the new agent counts its own, as upstream's monitor
    // does; the first kills the re-attached QEMU, watched through /proc): 4 restarts, then
    // the VM is failed.
    let mut p = pid2;
    for _ in 0..4 {
        kill9(p);
        p = new_pid(&node.vms, wlid, p).await;
    }
    kill9(p);
    let end = Instant::now() + Duration::from_secs(30);
    while node.vms.supervisor().failure(wlid).is_none() {
        assert!(Instant::now() < end, "no failure after the 5th crash");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next reconciliation records the failure as the workload's error result.
    node.engine.reconcile_all().unwrap();
    node.engine.drain().await;
    let (state, err, _) = result_of(&node.engine, 1, "vm");
    assert_eq!(state, ResultState::Error);
    assert!(err.contains("crashed 5 times within 120s"), "{err}");

    // Bad input: each a clear error.
    let cases: Vec<(Workload, &str)> = vec![
        (
            machine(&flist, "10.20.2.6", 100 * MIB, json!([]), "/bin/true"),
            "250",
        ),
        (
            machine(&flist, "10.20.3.6", 256 * MIB, json!([]), "/bin/true"),
            "not in the network subnet",
        ),
        (
            machine(&flist, "10.20.2.1", 256 * MIB, json!([]), "/bin/true"),
            "gateway",
        ),
        (
            machine(
                "file:///nonexistent/x.fl",
                "10.20.2.6",
                256 * MIB,
                json!([]),
                "/bin/true",
            ),
            "does not exist",
        ),
    ];
    for (i, (m, want)) in cases.into_iter().enumerate() {
        let contract = 10 + i as u64;
        // Its own network (a network name is unique per twin).
        let (mut m, mut net) = (m, network());
        net.name = format!("vmnet{contract}");
        net.data["wireguard_listen_port"] = json!(3011 + contract);
        net.data["subnet"] = json!(format!("10.{contract}.2.0/24"));
        net.data["ip_range"] = json!(format!("10.{contract}.0.0/16"));
        m.data["network"]["interfaces"][0]["network"] = json!(net.name);
        // The same host part in this network's subnet.
        let ip = m.data["network"]["interfaces"][0]["ip"]
            .as_str()
            .unwrap()
            .to_string();
        m.data["network"]["interfaces"][0]["ip"] =
            json!(ip.replacen("10.20.", &format!("10.{contract}."), 1));
        let msg = match deploy(&node.engine, &chain, &user, contract, vec![net, m]).await {
            Err(e) => e,
            Ok(()) => {
                let (state, err, _) = result_of(&node.engine, contract, "vm");
                assert_eq!(state, ResultState::Error, "case {i}");
                err
            }
        };
        assert!(msg.contains(want), "case {i}: {msg:?} lacks {want:?}");
    }
    let mut lonely = machine(&flist, "10.20.2.6", 256 * MIB, json!([]), "/bin/true");
    lonely.data["network"]["interfaces"][0]["network"] = json!("nope");
    let msg = match deploy(&node.engine, &chain, &user, 20, vec![lonely]).await {
        Err(e) => e,
        Ok(()) => result_of(&node.engine, 20, "vm").1,
    };
    assert!(msg.contains("nope"), "missing network: {msg}");

    // Cancelling the contracts stops QEMU and removes the VM directory, overlay and taps.
    let tap = zos_types::ids::unique("3-1-vm2", "vmnet");
    assert!(Path::new("/sys/class/net").join(&tap).exists());
    for c in [1, 10, 11, 12, 13, 20] {
        chain.set_status(c, ContractStatus::Deleted);
    }
    node.engine.sync().await.unwrap();
    node.engine.drain().await;
    assert!(!dir.exists(), "vm dir left behind");
    assert!(
        node.storage
            .volume_get("vmroot-3-1-vm")
            .await
            .unwrap()
            .is_none(),
        "root volume left behind"
    );
    assert!(!node.vms.vm_dir("3-1-vm2").exists(), "vm2 dir left behind");
    assert!(
        !Path::new("/sys/class/net").join(&tap).exists(),
        "tap left behind"
    );
    let Node {
        storage,
        vms,
        registry,
        engine,
    } = node;
    drop((engine, vms));
    registry.shutdown().await;
    drop(storage);
}
