//! The `zmachine` and `zmachine-light` primitives (upstream `pkg/primitives/vm`), container
//! mode: the flist unpacked once per flist, a writable overlay per VM, root and volumes
//! shared over virtio-fs (9p when the host has no virtiofsd), zmount disks as virtio-blk (encrypted qcow2 opened by QEMU with the disk's
//! key), cloud-init as a NoCloud `cidata` disk.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use zos_primitive::{
    ApiCommand, Health, Lifecycle, NodeView, Primitive, PrimitiveError, PrimitiveRegistry,
    WorkloadCtx,
};
use zos_storage::Storage;
use zos_types::data::{
    MachineCapacity, MachineInterface, MachineMount, MyceliumIp, WorkloadData, ZMachineResult,
};
use zos_types::{Workload, WorkloadType};

use crate::cloudinit::{CloudConfig, valid_env_name};
use crate::hypervisor::{self, Hypervisor};
use crate::supervisor::{self, ConsoleAt, Launch, Supervisor, SupervisorConfig};

const MIB: u64 = 1 << 20;

/// Where and how VMs run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// State directory: `flists/` (fetched and unpacked flists) and `vms/<wlid>/`.
    pub root: PathBuf,
    /// The cloud-container kernel and initrd: a directory with `vmlinux` and `initrd.img`
    /// (`scripts/build-test-guest.sh` makes one from Debian packages).
    pub cloud_container: Option<PathBuf>,
    /// Process supervision.
    pub supervisor: SupervisorConfig,
    /// Skip the KVM probe and use TCG (tests; hosts known to have no usable KVM).
    pub force_tcg: bool,
    /// `virtiofsd` (QEMU's C daemon's command line) for the root and volume shares; None:
    /// QEMU's built-in 9p. Default: `ZOS_VIRTIOFSD`, else Debian's `/usr/lib/qemu/virtiofsd`
    /// (package `qemu-system-common`) or `/usr/libexec/virtiofsd` when present.
    pub virtiofsd: Option<PathBuf>,
    /// Prefix of the network resources' namespace names (`<prefix>n-<netid>`, see
    /// zos-network's `NetConfig::ns_prefix`): each VM's console is served in its NR's.
    pub nr_ns_prefix: String,
}

/// The virtiofsd this host has (see [`VmConfig::virtiofsd`]).
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ZOS_VIRTIOFSD") {
        // Empty: 9p on purpose.
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl VmConfig {
    /// Defaults under `root`.
    pub fn new(root: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            root: root.into(),
            cloud_container: None,
            supervisor: SupervisorConfig::default(),
            force_tcg: false,
            virtiofsd: find_virtiofsd(),
            nr_ns_prefix: String::new(),
        }
    }
}

/// The VM manager shared by the two primitives, the API commands and the lifecycle.
pub struct Vms {
    cfg: VmConfig,
    sup: Arc<Supervisor>,
    storage: Option<Arc<Storage>>,
    hv: Mutex<Hypervisor>,
    flist_lock: tokio::sync::Mutex<()>,
}

fn invalid(m: impl Into<String>) -> PrimitiveError {
    PrimitiveError::InvalidData(m.into())
}

/// The file in a VM's directory holding [`fixed_part`] of the spec it was provisioned with.
const FIXED: &str = "fixed";

/// What an update cannot change: the image (the writable root is an overlay over it) and the
/// network identity (tap, address). A VM with another of these is a new VM.
fn fixed_part(spec: &Spec) -> String {
    let mut s = format!(
        "flist={}\nnetwork={}\nip={}\n",
        spec.flist, spec.iface.network, spec.iface.ip
    );
    // Only when set, so that VMs recorded before public IPs keep their record.
    if !spec.public_ip.is_empty() {
        s += &format!("public_ip={}\n", spec.public_ip);
    }
    if let Some(m) = &spec.mycelium {
        s += &format!("mycelium={}:{}\n", m.network, hex::encode(&m.hex_seed.0));
    }
    s
}

/// The fields both machine types share.
struct Spec {
    flist: String,
    cap: MachineCapacity,
    mounts: Vec<MachineMount>,
    entrypoint: String,
    env: BTreeMap<String, String>,
    iface: MachineInterface,
    /// The `ip`/`ipv4` workload whose public tap is the VM's second NIC (zmachine only).
    public_ip: String,
    /// `network.mycelium`: an address in the network's Mycelium /64.
    mycelium: Option<MyceliumIp>,
    /// Upstream's RootSize: `size`, at least MinRootSize for the CPU and memory.
    root_size: u64,
}

fn spec_of(wl: &Workload) -> Result<Spec, PrimitiveError> {
    let data = wl.typed_data().map_err(|e| invalid(e.to_string()))?;
    let (public_ip, mycelium) = match &data {
        WorkloadData::Zmachine(z) => (z.network.public_ip.clone(), z.network.mycelium.clone()),
        WorkloadData::ZmachineLight(z) => (String::new(), z.network.mycelium.clone()),
        _ => (String::new(), None),
    };
    let (root_size, (flist, cap, mounts, entrypoint, env, ifaces)) = match data {
        WorkloadData::Zmachine(z) => (
            z.root_size(),
            (
                z.flist,
                z.compute_capacity,
                z.mounts,
                z.entrypoint,
                z.env,
                z.network.interfaces,
            ),
        ),
        WorkloadData::ZmachineLight(z) => (
            z.root_size(),
            (
                z.flist,
                z.compute_capacity,
                z.mounts,
                z.entrypoint,
                z.env,
                z.network.interfaces,
            ),
        ),
        other => return Err(invalid(format!("not a zmachine: {other:?}"))),
    };
    // Upstream Valid(), repeated here because a stored workload is re-provisioned as is.
    if cap.cpu == 0 {
        return Err(invalid("cpu capacity can't be 0"));
    }
    if cap.memory < 250 * MIB {
        return Err(invalid("mru can't be less than 250MB"));
    }
    let [iface] = <[MachineInterface; 1]>::try_from(ifaces).map_err(|v| {
        invalid(format!(
            "only one network private network is supported (got {})",
            v.len()
        ))
    })?;
    for k in env.keys() {
        if !valid_env_name(k) {
            return Err(invalid(format!(
                "env name {k:?} is not a shell variable name"
            )));
        }
    }
    Ok(Spec {
        flist,
        cap,
        mounts,
        entrypoint,
        env,
        iface,
        public_ip,
        mycelium,
        root_size,
    })
}

/// The VM's Mycelium address and gateway for `network.mycelium` (upstream: the network's
/// /64 prefix ‖ `ff0f` ‖ seed, gateway `<prefix>::1`). The /64 is derived from the network
/// workload's `mycelium.hex_key`; the network resource puts the gateway on its bridge, so the
/// address rides the VM's private NIC, which must therefore be on that network.
fn resolve_mycelium(
    ctx: &WorkloadCtx,
    spec: &Spec,
) -> Result<Option<(Ipv6Addr, Ipv6Addr)>, PrimitiveError> {
    let Some(m) = &spec.mycelium else {
        return Ok(None);
    };
    if m.network != spec.iface.network {
        return Err(invalid(format!(
            "mycelium network {:?} must be the VM's private network {:?} (its NIC carries the mycelium /64)",
            m.network, spec.iface.network
        )));
    }
    let net = ctx.shared(&m.network).ok_or_else(|| {
        invalid(format!(
            "mycelium network {:?} does not exist (in this deployment or the twin's networks)",
            m.network
        ))
    })?;
    let key = match net.data()? {
        WorkloadData::Network(n) => n.mycelium.map(|k| k.hex_key.0),
        WorkloadData::NetworkLight(n) => Some(n.mycelium.hex_key.0),
        _ => {
            return Err(invalid(format!(
                "workload {:?} is not a network",
                m.network
            )));
        }
    }
    .ok_or_else(|| {
        invalid(format!(
            "network {:?} has no mycelium key (mycelium.hex_key)",
            m.network
        ))
    })?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| invalid("the network's mycelium key is not 32 bytes"))?;
    let seed: [u8; 6] = m
        .hex_seed
        .0
        .as_slice()
        .try_into()
        .map_err(|_| invalid("invalid mycelium seed length expected 6 bytes"))?;
    let subnet = zos_mycelium::SecretKey::from_bytes(key)
        .public_key()
        .subnet();
    let addr = zos_mycelium::crypto::vm_address(&subnet, seed)
        .ok_or_else(|| invalid("mycelium seed must not be all zeros or all ff"))?;
    Ok(Some((addr, zos_mycelium::crypto::gateway(&subnet))))
}

/// The public NIC of a VM whose `network.public_ip` names an `ip`/`ipv4` workload: that
/// workload's tap (made by zos-network's `ip` primitive, upstream names) and its addresses.
struct PublicNic {
    tap: String,
    mac: String,
    /// `a.b.c.d/n`, when the workload has an IPv4.
    ipv4: Option<String>,
    /// The farm's IPv4 gateway.
    gw4: Option<String>,
    /// `addr/64`, when the workload has an IPv6.
    ipv6: Option<String>,
}

fn public_nic(ctx: &WorkloadCtx, name: &str) -> Result<Option<PublicNic>, PrimitiveError> {
    if name.is_empty() {
        return Ok(None);
    }
    let sib = ctx.sibling(name).ok_or_else(|| {
        invalid(format!(
            "public_ip {name:?}: no such workload in the deployment"
        ))
    })?;
    if !matches!(sib.workload_type(), WorkloadType::Ip | WorkloadType::Ipv4) {
        return Err(invalid(format!(
            "public_ip {name:?} is a {}, not an ip workload",
            sib.workload_type()
        )));
    }
    let r: zos_types::data::PublicIpResult = sib.result()?;
    let tap = zos_types::ids::unique(&sib.workload_id(), "pub");
    let mac = zos_types::ids::format_mac(&zos_types::ids::hardware_addr(tap.as_bytes()));
    // Unset fields print as Go's `<nil>`: read them as options.
    let net = |n: &zos_types::gofmt::IpNet| n.get().map(|(a, len)| format!("{a}/{len}"));
    Ok(Some(PublicNic {
        tap,
        mac,
        ipv4: net(&r.ip),
        gw4: r.gateway.0.map(|g| g.to_string()),
        ipv6: net(&r.ip6),
    }))
}

/// The private network's range (`10.20.0.0/16`), routed through the private NIC when the
/// default route is the public one.
fn network_range(ctx: &WorkloadCtx, network: &str) -> Option<String> {
    let range = match ctx.shared(network)?.data().ok()? {
        WorkloadData::Network(n) => n.ip_range,
        WorkloadData::NetworkLight(n) => n.ip_range,
        _ => return None,
    };
    let (a, len) = range.get()?;
    let IpAddr::V4(a) = a else { return None };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask)))
}

/// The volume holding a container-mode VM's writable root (RootSize quota). Workload ids
/// start with the twin's number, so this name cannot be a user's volume.
fn root_volume(wlid: &str) -> String {
    format!("vmroot-{wlid}")
}

/// The VM's private address, checked against its network workload: `(ip, prefix, gateway)`.
fn resolve_network(
    ctx: &WorkloadCtx,
    iface: &MachineInterface,
) -> Result<(Ipv4Addr, u8, Ipv4Addr), PrimitiveError> {
    let name = &iface.network;
    let net = ctx.shared(name).ok_or_else(|| {
        invalid(format!(
            "network {name:?} does not exist (in this deployment or the twin's networks)"
        ))
    })?;
    let subnet = match net.data()? {
        WorkloadData::Network(n) => n.subnet,
        WorkloadData::NetworkLight(n) => n.subnet,
        _ => return Err(invalid(format!("workload {name:?} is not a network"))),
    };
    let (Some((IpAddr::V4(base), prefix)), Some(IpAddr::V4(ip))) = (subnet.get(), iface.ip.0)
    else {
        return Err(invalid(format!(
            "network {name:?}: an IPv4 subnet and address are required"
        )));
    };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let net_addr = u32::from(base) & mask;
    let host = u32::from(ip);
    if host & mask != net_addr {
        return Err(invalid(format!(
            "ip {ip} is not in the network subnet {}/{prefix}",
            Ipv4Addr::from(net_addr)
        )));
    }
    let gw = Ipv4Addr::from(net_addr | 1);
    if ip == gw {
        return Err(invalid(format!(
            "ip {ip} is the network gateway (.1) and cannot be used"
        )));
    }
    if host == net_addr || host == net_addr | !mask {
        return Err(invalid(format!(
            "ip {ip} is the network or broadcast address"
        )));
    }
    Ok((ip, prefix, gw))
}

fn mountpoint_ok(p: &str) -> bool {
    p.starts_with('/')
        && p.len() < 256
        && !p
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'')
}

fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

async fn run(cmd: &str, args: &[&str]) -> Result<(), PrimitiveError> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .map_err(|e| PrimitiveError::Failed(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PrimitiveError::Failed(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes tap `tap` a port of `bridge` (idempotent). The bridge is the network resource's,
/// made by the network primitive in this namespace: without it the network is not ready.
/// `ns` is the node's network namespace (None: the agent's).
async fn ensure_tap(
    ns: Option<&str>,
    tap: &str,
    bridge: &str,
    network: &str,
) -> Result<(), PrimitiveError> {
    if !link_exists(ns, bridge).await {
        return Err(PrimitiveError::Failed(format!(
            "network {network:?} is not ready on this node (no bridge {bridge})"
        )));
    }
    if !link_exists(ns, tap).await {
        run(
            "ip",
            &ip_args(ns, &["tuntap", "add", "dev", tap, "mode", "tap"]),
        )
        .await?;
    }
    run("ip", &ip_args(ns, &["link", "set", tap, "master", bridge])).await?;
    run("ip", &ip_args(ns, &["link", "set", tap, "up"])).await
}

/// `ip` arguments, in namespace `ns` when given.
fn ip_args<'a>(ns: Option<&'a str>, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        v.extend(["-n", ns]);
    }
    v.extend_from_slice(args);
    v
}

async fn link_exists(ns: Option<&str>, link: &str) -> bool {
    match ns {
        None => Path::new("/sys/class/net").join(link).exists(),
        Some(_) => run("ip", &ip_args(ns, &["link", "show", "dev", link]))
            .await
            .is_ok(),
    }
}

impl Vms {
    /// A manager; `storage` gives access to zmount disks and volumes (none: VMs without mounts).
    pub fn new(cfg: VmConfig, storage: Option<Arc<Storage>>) -> Arc<Vms> {
        Arc::new(Vms {
            sup: Supervisor::new(cfg.supervisor.clone()),
            cfg,
            storage,
            hv: Mutex::new(Hypervisor::tcg("not probed yet")),
            flist_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The supervisor (tests and the API look at pids and crash counts).
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.sup
    }

    /// The directory of VM `wlid`.
    pub fn vm_dir(&self, wlid: &str) -> PathBuf {
        self.cfg.root.join("vms").join(wlid)
    }

    /// The accelerator in use.
    pub fn hypervisor(&self) -> Hypervisor {
        self.hv.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Probes the accelerator (the lifecycle does this at start).
    pub async fn probe(&self) -> Hypervisor {
        let hv = if self.cfg.force_tcg {
            Hypervisor::tcg("configured")
        } else {
            hypervisor::probe(
                &self.cfg.supervisor.qemu,
                self.cfg.cloud_container.as_deref(),
                std::time::Duration::from_secs(20),
            )
            .await
        };
        tracing::info!(accel = %hv.accel, reason = %hv.reason, "vm hypervisor");
        *self.hv.lock().unwrap_or_else(|e| e.into_inner()) = hv.clone();
        hv
    }

    /// The local `.fl` for `url`: `file://` and absolute paths are node-local flists (the test
    /// guest `zos up` installs); `http(s)://` is resolved into `flists/` (verified, cached).
    async fn flist_file(&self, url: &str) -> Result<PathBuf, PrimitiveError> {
        if url.is_empty() {
            return Err(invalid("flist is required"));
        }
        let base = url.split_once('#').map_or(url, |(b, _)| b);
        let local = base
            .strip_prefix("file://")
            .or(base.starts_with('/').then_some(base));
        if let Some(p) = local {
            if !Path::new(p).is_file() {
                return Err(PrimitiveError::Failed(format!(
                    "flist {url} does not exist"
                )));
            }
        } else if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(invalid(format!(
                "flist {url:?}: expected an http(s):// or file:// URL"
            )));
        }
        // zos-flist's resolver: flists cached by md5 under flists/fl (blocks under
        // flists/blocks, the cache `unpacked` uses), verified against a hash in the URL
        // fragment (#md5=… / #sha256=…) or else the server's `<url>.md5`; a mismatch fails.
        let cache = zos_flist::resolve::FlistCache::new(self.cfg.root.join("flists"));
        let r = cache.resolve(url, None).await.map_err(|e| {
            let msg = e.to_string();
            PrimitiveError::Failed(if msg.contains(base) {
                msg
            } else {
                format!("flist {url}: {msg}")
            })
        })?;
        Ok(r.path)
    }

    /// The flist unpacked (once per flist content) under `flists/<md5>/root`.
    async fn unpacked(&self, fl: &Path) -> Result<PathBuf, PrimitiveError> {
        let bytes = std::fs::read(fl)
            .map_err(|e| PrimitiveError::Failed(format!("{}: {e}", fl.display())))?;
        let id = hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes));
        let base = self.cfg.root.join("flists").join(&id);
        let root = base.join("root");
        let _g = self.flist_lock.lock().await;
        if root.is_dir() {
            return Ok(root);
        }
        let fail = |e: String| PrimitiveError::Failed(format!("flist {}: {e}", fl.display()));
        let flist = zos_flist::Flist::open(fl).map_err(|e| fail(e.to_string()))?;
        let cache = zos_flist::BlockCache::new(self.cfg.root.join("flists/blocks"));
        let tmp = base.join("root.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        // The unpack future is not provably Send (higher-ranked closures in its streams), so
        // it runs on a runtime of its own on a blocking thread.
        let (t, f) = (tmp.clone(), flist.clone());
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(zos_flist::unpack::unpack(
                &f.reader,
                &cache,
                &f.router,
                &t,
                &zos_flist::unpack::UnpackOptions {
                    preserve_ownership: true,
                    ..Default::default()
                },
            ))
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(fail)?;
        std::fs::rename(&tmp, &root).map_err(|e| fail(e.to_string()))?;
        Ok(root)
    }

    /// Writes a full VM's image onto its first mount, which must be a zmount, once per flist
    /// (`image.written` in the VM directory holds the flist's md5): the guest owns the disk
    /// after that, across restarts.
    async fn write_image(
        &self,
        fl: &Path,
        image: &Path,
        spec: &Spec,
        disks: &[(String, zos_storage::DiskInfo, Option<String>)],
        dir: &Path,
    ) -> Result<(), PrimitiveError> {
        let first = spec.mounts.first().map(|m| m.name.as_str());
        let Some((name, disk, key)) = disks.first().filter(|d| Some(d.0.as_str()) == first) else {
            return Err(invalid(
                "a full VM (flist with /image.raw) needs a zmount as its first mount: the image is written to it",
            ));
        };
        let fail =
            |e: String| PrimitiveError::Failed(format!("writing the image to {name:?}: {e}"));
        let id = hex::encode(<md5::Md5 as md5::Digest>::digest(
            std::fs::read(fl).map_err(|e| fail(e.to_string()))?,
        ));
        let marker = dir.join("image.written");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(id.as_str()) {
            return Ok(());
        }
        let len = std::fs::metadata(image)
            .map_err(|e| fail(e.to_string()))?
            .len();
        if len > disk.size {
            return Err(invalid(format!(
                "the image is {len} bytes, larger than disk {name:?} ({} bytes)",
                disk.size
            )));
        }
        let mut cmd = tokio::process::Command::new("qemu-img");
        cmd.args(["convert", "-n", "-q", "-f", "raw"]).arg(image);
        if key.is_some() {
            // The key reaches qemu-img on stdin, never the command line.
            cmd.args(["--object", "secret,id=sec0,file=/dev/stdin"]);
        }
        cmd.args(["--target-image-opts", &disk.qemu_image_opts("sec0")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(format!("qemu-img: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            if let Some(k) = key {
                stdin
                    .write_all(k.as_bytes())
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!(
                "qemu-img convert: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::write(&marker, id).map_err(|e| fail(e.to_string()))?;
        tracing::info!(disk = %name, bytes = len, "full VM image written");
        Ok(())
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let spec = spec_of(wl)?;
        let (ip, prefix, gw) = resolve_network(ctx, &spec.iface)?;
        let mycelium = resolve_mycelium(ctx, &spec)?;
        let public = public_nic(ctx, &spec.public_ip)?;
        let wlid = ctx.workload_id.clone();
        let dir = self.vm_dir(&wlid);
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| PrimitiveError::Failed(format!("{what}: {e}"))
        };
        // Mounts first: a missing disk or volume is the user's error, before any work.
        let mut disks = Vec::new();
        let mut shares = Vec::new();
        for m in &spec.mounts {
            let sib = ctx.sibling(&m.name).ok_or_else(|| {
                invalid(format!(
                    "mount {:?}: no such workload in the deployment",
                    m.name
                ))
            })?;
            let storage = self.storage.as_ref().ok_or_else(|| {
                PrimitiveError::Failed(
                    "this node has no storage pools: mounts are not available".into(),
                )
            })?;
            let id = sib.workload_id();
            match sib.workload_type() {
                WorkloadType::Zmount => {
                    sib.result::<Value>()?;
                    let d = storage
                        .disk_get(&id)
                        .map_err(PrimitiveError::failed)?
                        .ok_or_else(|| {
                            PrimitiveError::Failed(format!("disk {:?} does not exist", m.name))
                        })?;
                    let key = if d.encrypted {
                        Some(
                            storage
                                .disk_key(&id)
                                .map_err(PrimitiveError::failed)?
                                .passphrase(),
                        )
                    } else {
                        None
                    };
                    disks.push((m.name.clone(), d, key));
                }
                WorkloadType::Volume => {
                    if !mountpoint_ok(&m.mountpoint) {
                        return Err(invalid(format!(
                            "mount {:?}: mountpoint {:?} must be an absolute path without spaces or quotes",
                            m.name, m.mountpoint
                        )));
                    }
                    sib.result::<Value>()?;
                    let v = storage
                        .volume_get(&id)
                        .await
                        .map_err(PrimitiveError::failed)?
                        .ok_or_else(|| {
                            PrimitiveError::Failed(format!("volume {:?} does not exist", m.name))
                        })?;
                    shares.push((m.name.clone(), v.path, m.mountpoint.clone()));
                }
                other => {
                    return Err(invalid(format!(
                        "mount {:?}: a {other} cannot be mounted",
                        m.name
                    )));
                }
            }
        }
        let fl = self.flist_file(&spec.flist).await?;
        let lower = self.unpacked(&fl).await?;
        std::fs::create_dir_all(&dir).map_err(io("vm directory"))?;
        std::fs::write(dir.join(FIXED), fixed_part(&spec)).map_err(io("vm identity"))?;
        // Full VM (flist with /image.raw): the image on the first disk, booted by firmware.
        // Container mode: a kernel and the flist as a writable overlay root.
        let image = lower.join("image.raw");
        let full_vm = image.is_file();
        let boot = if full_vm {
            self.write_image(&fl, &image, &spec, &disks, &dir).await?;
            None
        } else {
            let (kernel, initrd) = if lower.join("boot/vmlinuz").is_file()
                && lower.join("boot/initrd.img").is_file()
            {
                (lower.join("boot/vmlinuz"), lower.join("boot/initrd.img"))
            } else {
                let cc = self.cfg.cloud_container.as_ref().filter(|cc| cc.join("vmlinux").is_file() && cc.join("initrd.img").is_file()).ok_or_else(|| PrimitiveError::Failed("no cloud-container kernel (vmlinux + initrd.img) on this node and the flist has no /boot/vmlinuz + /boot/initrd.img".into()))?;
                (cc.join("vmlinux"), cc.join("initrd.img"))
            };
            // Writable root: an overlay of the unpacked flist, kept across restarts, removed on
            // delete, on a volume of RootSize so that a guest cannot fill the pool (an update
            // that grows RootSize raises the quota; it is never lowered). A VM made before
            // keeps its root under its directory; without pools there is no quota.
            let legacy = dir.join("rootfs/upper").is_dir();
            let rootfs = match (&self.storage, legacy) {
                (Some(storage), false) => {
                    storage
                        .volume_create(&root_volume(&wlid), spec.root_size)
                        .await
                        .map_err(|e| PrimitiveError::Failed(format!("root volume: {e}")))?
                        .path
                }
                _ => dir.join("rootfs"),
            };
            let (upper, work, root) = (rootfs.join("upper"), rootfs.join("work"), dir.join("root"));
            for d in [&upper, &work, &root] {
                std::fs::create_dir_all(d).map_err(io("vm directory"))?;
            }
            if !is_mounted(&root) {
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                run(
                    "mount",
                    &[
                        "-t",
                        "overlay",
                        "overlay",
                        "-o",
                        &opts,
                        &root.to_string_lossy(),
                    ],
                )
                .await?;
            }
            Some((kernel, initrd, root))
        };
        // One tap on the network resource's bridge, named and addressed as upstream.
        let tap = zos_types::ids::unique(&wlid, &spec.iface.network);
        let bridge = format!(
            "b-{}",
            zos_types::ids::network_id(ctx.twin, &spec.iface.network)
        );
        let ns = self.cfg.supervisor.net_namespace.as_deref();
        ensure_tap(ns, &tap, &bridge, &spec.iface.network).await?;
        let mac = zos_types::ids::hardware_addr(tap.as_bytes());
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        // With a public IP the default route is the public NIC's (upstream): the private NIC
        // keeps routes to its network and the WireGuard range.
        let mut private_routes = vec![("100.64.0.0/16".to_string(), gw.to_string())];
        if public.is_some() {
            if let Some(range) = network_range(ctx, &spec.iface.network) {
                private_routes.insert(0, (range, gw.to_string()));
            }
        }
        let mut eth0_routes = private_routes.clone();
        if let Some((_, mgw)) = mycelium {
            eth0_routes.push(("400::/7".into(), mgw.to_string()));
        }
        let mut interfaces = vec![crate::cloudinit::Interface {
            name: "eth0".into(),
            mac: mac.clone(),
            address: format!("{ip}/{prefix}"),
            address6: mycelium.map(|(a, _)| format!("{a}/64")).unwrap_or_default(),
            gateway: if public.is_some() {
                String::new()
            } else {
                gw.to_string()
            },
            routes: eth0_routes,
        }];
        if let Some(p) = &public {
            // The tap is the ip workload's (installed before VMs): it must exist here.
            if !link_exists(ns, &p.tap).await {
                return Err(PrimitiveError::Failed(format!(
                    "public_ip {:?}: its tap {} does not exist",
                    spec.public_ip, p.tap
                )));
            }
            interfaces.push(crate::cloudinit::Interface {
                name: "eth1".into(),
                mac: p.mac.clone(),
                address: p.ipv4.clone().unwrap_or_default(),
                gateway: p.gw4.clone().unwrap_or_default(),
                address6: p.ipv6.clone().unwrap_or_default(),
                ..Default::default()
            });
        }
        let ci = CloudConfig {
            instance_id: wlid.clone(),
            hostname: wl.name.clone(),
            interfaces,
            ssh_keys: CloudConfig::keys_from_env(&spec.env),
            mounts: shares
                .iter()
                .map(|(t, _, p)| (t.clone(), p.clone()))
                .collect(),
            entrypoint: spec.entrypoint.clone(),
            env: spec.env.clone(),
        };
        ci.write_image(&dir.join("cidata.img"))
            .map_err(io("cloud-init image"))?;

        let hv = self.hypervisor();
        let d = |p: &Path| p.to_string_lossy().replace(',', ",,");
        let vfsd = self.cfg.virtiofsd.clone();
        let mut append = format!(
            "console=ttyS0 panic=-1 quiet rw zos.ip={ip}/{prefix} zos.gw={gw} zos.fs={}",
            if vfsd.is_some() { "virtiofs" } else { "9p" }
        );
        for (tag, _, path) in &shares {
            append += &format!(" zos.mount={tag}:{path}");
        }
        // The Mycelium address on the private NIC and 400::/7 via the network resource.
        if let Some((a, g)) = mycelium {
            append += &format!(" zos.myc={a}/64 zos.mycgw={g}");
        }
        // The public NIC for the test guest's init (cloud-init guests read network-config).
        if let Some(p) = &public {
            append += &format!(" zos.pubmac={}", p.mac);
            if let (Some(a), Some(g)) = (&p.ipv4, &p.gw4) {
                append += &format!(" zos.pub={a} zos.pubgw={g}");
            }
            if let Some(a) = &p.ipv6 {
                append += &format!(" zos.pub6={a}");
            }
            let routes: Vec<&str> = private_routes.iter().map(|(to, _)| to.as_str()).collect();
            append += &format!(" zos.routes={}", routes.join(","));
        }
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("guest={wlid}"),
            "-accel".into(),
            hv.accel.clone(),
            "-cpu".into(),
            if hv.accel == "kvm" {
                "host".into()
            } else {
                "max".into()
            },
            "-M".into(),
            "pc".into(),
            "-m".into(),
            (spec.cap.memory / MIB).to_string(),
            "-smp".into(),
            spec.cap.cpu.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            // No vhost-net on these hosts; the userspace virtio-net backend is enough.
            "-netdev".into(),
            format!("tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={mac}"),
            "-chardev".into(),
            format!(
                "socket,id=con0,path={},server=on,wait=on",
                d(&supervisor::console_sock(&dir))
            ),
            "-serial".into(),
            "chardev:con0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", d(&supervisor::qmp_path(&dir))),
        ];
        // The public NIC second, so that the private one stays the guest's eth0.
        if let Some(p) = &public {
            args.extend([
                "-netdev".into(),
                format!(
                    "tap,id=net1,ifname={},script=no,downscript=no,vhost=off",
                    p.tap
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=net1,mac={}", p.mac),
            ]);
        }
        let mut all_shares = Vec::new();
        if let Some((kernel, initrd, root)) = &boot {
            args.extend([
                "-kernel".into(),
                kernel.to_string_lossy().into(),
                "-initrd".into(),
                initrd.to_string_lossy().into(),
                "-append".into(),
                append,
            ]);
            all_shares.push(("vroot".to_string(), root.clone()));
        }
        // Root and volumes: virtio-fs (one virtiofsd per share; guest RAM must be shared
        // memory for vhost-user) or QEMU's 9p.
        all_shares.extend(shares.iter().map(|(t, p, _)| (t.clone(), p.clone())));
        let mut helpers = Vec::new();
        match &vfsd {
            Some(program) => {
                args.push("-object".into());
                args.push(format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    spec.cap.memory / MIB
                ));
                args.push("-numa".into());
                args.push("node,memdev=mem".into());
                for (i, (tag, path)) in all_shares.iter().enumerate() {
                    let sock = dir.join(format!("vfs{i}.sock"));
                    helpers.push(supervisor::Helper {
                        program: program.clone(),
                        args: vec![
                            "-f".into(),
                            format!("--socket-path={}", sock.display()),
                            "-o".into(),
                            format!("source={}", path.display()),
                            "-o".into(),
                            "cache=auto".into(),
                            // chroot: works in containers too (no namespaces needed).
                            "-o".into(),
                            "sandbox=chroot".into(),
                        ],
                        socket: sock.clone(),
                    });
                    args.push("-chardev".into());
                    args.push(format!("socket,id=vfs{i},path={}", d(&sock)));
                    args.push("-device".into());
                    args.push(format!("vhost-user-fs-pci,chardev=vfs{i},tag={tag}"));
                }
            }
            None => {
                for (i, (tag, path)) in all_shares.iter().enumerate() {
                    args.push("-virtfs".into());
                    args.push(format!(
                        "local,path={},mount_tag={tag},security_model=none,id=fs{i}",
                        d(path)
                    ));
                }
            }
        }
        let mut secrets = Vec::new();
        for (i, (name, disk, key)) in disks.iter().enumerate() {
            if let Some(k) = key {
                let fifo = dir.join(format!("key{i}.fifo"));
                args.push("-object".into());
                args.push(format!("secret,id=sec{i},format=raw,file={}", d(&fifo)));
                secrets.push((fifo, k.clone()));
            }
            args.push("-drive".into());
            args.push(format!(
                "if=none,id=disk{i},{}",
                disk.qemu_image_opts(&format!("sec{i}"))
            ));
            let serial: String = name.chars().take(20).collect();
            args.push("-device".into());
            // A full VM boots from its first disk (SeaBIOS).
            let boot = if full_vm && i == 0 {
                ",bootindex=0"
            } else {
                ""
            };
            args.push(format!(
                "virtio-blk-pci,drive=disk{i},serial={serial}{boot}"
            ));
        }
        args.push("-drive".into());
        args.push(format!(
            "if=none,id=cidata,format=raw,read-only=on,file={}",
            d(&dir.join("cidata.img"))
        ));
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=cidata,serial=cidata".into());

        // Upstream's console address: the NR gateway, port 20000 + the VM's last octet.
        let console_at = ConsoleAt {
            netns: Some(format!(
                "{}n-{}",
                self.cfg.nr_ns_prefix,
                zos_types::ids::network_id(ctx.twin, &spec.iface.network)
            )),
            addr: std::net::SocketAddr::from((gw, 20000 + u16::from(ip.octets()[3]))),
        };
        self.sup
            .ensure(
                &wlid,
                &dir,
                Launch {
                    args,
                    secrets,
                    helpers,
                    console: Some(console_at.clone()),
                },
            )
            .await
            .map_err(|e| PrimitiveError::Failed(e.to_string()))?;
        let result = ZMachineResult {
            id: wlid,
            ip: ip.to_string(),
            mycelium_ip: mycelium.map(|(a, _)| a.to_string()).unwrap_or_default(),
            console_url: console_at.addr.to_string(),
            ..Default::default()
        };
        serde_json::to_value(result).map_err(PrimitiveError::failed)
    }

    /// CPU, memory, mounts, entrypoint and env: applied by restarting the guest with the new
    /// spec (disks keep their data; they only grow, through their own workloads).
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let spec = spec_of(wl)?;
        let dir = self.vm_dir(&ctx.workload_id);
        // A VM provisioned before the file existed has no record: nothing to compare.
        if let Ok(old) = std::fs::read_to_string(dir.join(FIXED)) {
            if old != fixed_part(&spec) {
                return Err(invalid(
                    "a VM's flist, network and IP cannot be changed by an update: deploy a new VM",
                ));
            }
        }
        self.sup
            .stop(&ctx.workload_id, &dir)
            .await
            .map_err(PrimitiveError::failed)?;
        self.provision(ctx, wl).await
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let dir = self.vm_dir(&ctx.workload_id);
        self.sup
            .stop(&ctx.workload_id, &dir)
            .await
            .map_err(PrimitiveError::failed)?;
        if let Ok(spec) = spec_of(wl) {
            let tap = zos_types::ids::unique(&ctx.workload_id, &spec.iface.network);
            let ns = self.cfg.supervisor.net_namespace.as_deref();
            if link_exists(ns, &tap).await {
                run("ip", &ip_args(ns, &["link", "del", &tap])).await?;
            }
        }
        let root = dir.join("root");
        if is_mounted(&root) {
            run("umount", &[&root.to_string_lossy()]).await?;
        }
        if let Some(storage) = &self.storage {
            storage
                .volume_delete(&root_volume(&ctx.workload_id))
                .await
                .map_err(|e| PrimitiveError::Failed(format!("root volume: {e}")))?;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PrimitiveError::Failed(format!("{}: {e}", dir.display()))),
        }
    }
}

/// One of the two machine types.
pub struct ZMachinePrimitive {
    vms: Arc<Vms>,
    t: WorkloadType,
}

#[async_trait]
impl Primitive for ZMachinePrimitive {
    fn workload_type(&self) -> WorkloadType {
        self.t.clone()
    }
    fn supports_update(&self) -> bool {
        true
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.vms.provision(ctx, wl).await
    }
    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.vms.update(ctx, wl).await
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        self.vms.deprovision(ctx, wl).await
    }
    async fn pause(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.vms
            .sup
            .pause(&self.vms.vm_dir(&ctx.workload_id))
            .await
            .map_err(PrimitiveError::failed)
    }
    async fn resume(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.vms
            .sup
            .resume(&self.vms.vm_dir(&ctx.workload_id))
            .await
            .map_err(PrimitiveError::failed)
    }
}

#[async_trait]
impl Lifecycle for Vms {
    fn name(&self) -> &str {
        "vm"
    }
    async fn start(&self) -> Result<(), String> {
        std::fs::create_dir_all(self.cfg.root.join("vms"))
            .map_err(|e| format!("{}: {e}", self.cfg.root.display()))?;
        self.probe().await;
        Ok(())
    }
    async fn health(&self) -> Health {
        let hv = self.hypervisor();
        Health {
            ok: true,
            message: format!("qemu/{} ({})", hv.accel, hv.reason),
        }
    }
    /// Guests keep running: the next agent re-attaches to them.
    async fn shutdown(&self) {
        self.sup.detach_all();
    }
}

struct HypervisorCommand(Arc<Vms>);

#[async_trait]
impl ApiCommand for HypervisorCommand {
    async fn call(&self, _n: &dyn NodeView, _t: u32, _p: Value) -> Result<Value, String> {
        serde_json::to_value(self.0.hypervisor()).map_err(|e| e.to_string())
    }
}

/// `zos.vm.logs {contract_id, name, bytes?}`: the tail of the caller's VM console.
struct LogsCommand(Arc<Vms>);

#[async_trait]
impl ApiCommand for LogsCommand {
    async fn call(&self, node: &dyn NodeView, twin: u32, p: Value) -> Result<Value, String> {
        let contract = p
            .get("contract_id")
            .and_then(Value::as_u64)
            .ok_or("contract_id (number) is required")?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("name (string) is required")?;
        let bytes = p
            .get("bytes")
            .and_then(Value::as_u64)
            .unwrap_or(64 << 10)
            .min(8 << 20) as usize;
        let found = node.deployments(Some(twin))?.into_iter().any(|d| {
            d.contract_id == contract
                && d.workloads.iter().any(|w| {
                    w.name == name
                        && matches!(
                            w.workload_type,
                            WorkloadType::Zmachine | WorkloadType::ZmachineLight
                        )
                })
        });
        if !found {
            return Err(format!("no vm {name:?} in your contract {contract}"));
        }
        let dir = self.0.vm_dir(&zos_types::workload_id(twin, contract, name));
        let log = crate::console::tail(&dir, bytes).map_err(|e| e.to_string())?;
        Ok(json!({ "log": String::from_utf8_lossy(&log) }))
    }
}

/// Registers `zmachine`, `zmachine-light`, `zos.vm.hypervisor` (upstream's `zos.system.hypervisor` stays the host's own hypervisor), `zos.vm.logs` and the
/// `vm` lifecycle (accelerator probe at start; guests left running at shutdown).
pub fn register(registry: &mut PrimitiveRegistry, vms: Arc<Vms>) {
    for t in [WorkloadType::Zmachine, WorkloadType::ZmachineLight] {
        registry.register(Arc::new(ZMachinePrimitive {
            vms: vms.clone(),
            t,
        }));
    }
    registry.add_lifecycle(vms.clone());
    registry.add_command(
        "zos.vm.hypervisor",
        Arc::new(HypervisorCommand(vms.clone())),
    );
    registry.add_command("zos.vm.logs", Arc::new(LogsCommand(vms)));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use zos_primitive::NodeSecret;
    use zos_types::Deployment;

    fn wl(name: &str, t: WorkloadType, data: Value) -> Workload {
        Workload {
            name: name.into(),
            workload_type: t,
            data,
            ..Workload::default()
        }
    }

    fn vm(cpu: u64, memory: u64, network: &str, ip: &str) -> Workload {
        wl(
            "vm",
            WorkloadType::Zmachine,
            json!({"flist": "file:///nowhere.fl",
                   "network": {"interfaces": [{"network": network, "ip": ip}], "planetary": false},
                   "compute_capacity": {"cpu": cpu, "memory": memory},
                   "mounts": [], "entrypoint": "/bin/sh", "env": {}}),
        )
    }

    fn ctx_with(machine: Workload) -> (WorkloadCtx, Workload) {
        let net = wl(
            "net",
            WorkloadType::Network,
            json!({"ip_range": "10.20.0.0/16", "subnet": "10.20.2.0/24",
                   "wireguard_private_key": "GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=",
                   "wireguard_listen_port": 3011, "peers": []}),
        );
        let d = Deployment {
            twin_id: 7,
            contract_id: 9,
            workloads: vec![net, machine.clone()],
            ..Deployment::default()
        };
        let ctx = WorkloadCtx::new(1, Arc::new(d), "vm", NodeSecret::new([1; 32]));
        (ctx, machine)
    }

    /// The checked result of a machine: spec, then its network.
    fn check(machine: Workload) -> Result<(Ipv4Addr, u8, Ipv4Addr), String> {
        let (ctx, wl) = ctx_with(machine);
        let spec = spec_of(&wl).map_err(|e| e.to_string())?;
        resolve_network(&ctx, &spec.iface).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_machine_gets_its_address_and_gateway() {
        let got = check(vm(1, 256 * MIB, "net", "10.20.2.5")).unwrap();
        assert_eq!(
            got,
            (Ipv4Addr::new(10, 20, 2, 5), 24, Ipv4Addr::new(10, 20, 2, 1))
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases = [
            (vm(1, 249 * MIB, "net", "10.20.2.5"), "less than 250MB"),
            (
                vm(0, 256 * MIB, "net", "10.20.2.5"),
                "cpu capacity can't be 0",
            ),
            (
                vm(1, 256 * MIB, "net", "10.20.3.5"),
                "not in the network subnet 10.20.2.0/24",
            ),
            (vm(1, 256 * MIB, "net", "10.20.2.1"), "network gateway (.1)"),
            (vm(1, 256 * MIB, "net", "10.20.2.255"), "broadcast"),
            (
                vm(1, 256 * MIB, "nonet", "10.20.2.5"),
                "network \"nonet\" does not exist",
            ),
        ];
        for (machine, want) in cases {
            let e = check(machine).expect_err(want);
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        // 250 MiB exactly is the minimum upstream accepts.
        check(vm(1, 250 * MIB, "net", "10.20.2.5")).unwrap();
        // Env names become shell exports in the guest: only shell variable names.
        let mut m = vm(1, 256 * MIB, "net", "10.20.2.5");
        m.data["env"] = json!({"A B": "x"});
        assert!(check(m).unwrap_err().contains("not a shell variable name"));
        // No interface, or two: upstream supports exactly one private network.
        let mut m = vm(1, 256 * MIB, "net", "10.20.2.5");
        m.data["network"]["interfaces"] = json!([]);
        assert!(check(m).unwrap_err().contains("only one network"));
    }

    #[test]
    fn a_mycelium_address_comes_from_the_networks_key_and_the_seed() {
        // The reference vector: network key a0..bf, seed 010203040506.
        let key: String = (0xa0u8..=0xbf).map(|b| format!("{b:02x}")).collect();
        let with_net = |m: Workload, myc: Option<&str>| {
            let (ctx, _) = ctx_with(m.clone());
            let mut d = (*ctx.deployment).clone();
            if let Some(k) = myc {
                d.workloads[0].data["mycelium"] = json!({"hex_key": k, "peers": []});
            }
            (
                WorkloadCtx::new(1, Arc::new(d), "vm", NodeSecret::new([1; 32])),
                spec_of(&m).unwrap(),
            )
        };
        let mut m = vm(1, 256 * MIB, "net", "10.20.2.5");
        m.data["network"]["mycelium"] = json!({"Network": "net", "hex_seed": "010203040506"});
        let (ctx, spec) = with_net(m.clone(), Some(&key));
        let (a, g) = resolve_mycelium(&ctx, &spec).unwrap().unwrap();
        assert_eq!(a.to_string(), "593:f932:c049:6b1:ff0f:102:304:506");
        assert_eq!(g.to_string(), "593:f932:c049:6b1::1");
        assert!(fixed_part(&spec).ends_with("mycelium=net:010203040506\n"));
        // Without network.mycelium: none, and the VM's record is unchanged.
        let plain = vm(1, 256 * MIB, "net", "10.20.2.5");
        let (c, s) = with_net(plain, Some(&key));
        assert!(resolve_mycelium(&c, &s).unwrap().is_none());
        assert!(!fixed_part(&s).contains("mycelium"));
        // A network without a key, a reserved seed, another network: clear errors.
        let (c, s) = with_net(m.clone(), None);
        let e = resolve_mycelium(&c, &s).unwrap_err().to_string();
        assert!(e.contains("has no mycelium key"), "{e}");
        let mut zero = m.clone();
        zero.data["network"]["mycelium"]["hex_seed"] = json!("000000000000");
        let (c, s) = with_net(zero, Some(&key));
        let e = resolve_mycelium(&c, &s).unwrap_err().to_string();
        assert!(e.contains("all zeros"), "{e}");
        let mut other = m;
        other.data["network"]["mycelium"]["Network"] = json!("other");
        let (c, s) = with_net(other, Some(&key));
        let e = resolve_mycelium(&c, &s).unwrap_err().to_string();
        assert!(e.contains("must be the VM's private network"), "{e}");
    }

    #[test]
    fn a_public_ip_is_the_named_ip_workloads_tap_and_result() {
        let mut m = vm(1, 256 * MIB, "net", "10.20.2.5");
        m.data["network"]["public_ip"] = json!("pub");
        let (ctx, _) = ctx_with(m.clone());
        let e = public_nic(&ctx, "pub").err().unwrap().to_string();
        assert!(e.contains("no such workload"), "{e}");
        assert!(public_nic(&ctx, "").unwrap().is_none());
        assert_eq!(network_range(&ctx, "net").as_deref(), Some("10.20.0.0/16"));
        let with = |ip: Workload| {
            let mut d = (*ctx.deployment).clone();
            d.workloads.push(ip);
            WorkloadCtx::new(1, Arc::new(d), "vm", NodeSecret::new([1; 32]))
        };
        let c = with(wl("pub", WorkloadType::Volume, json!({"size": 1})));
        let e = public_nic(&c, "pub").err().unwrap().to_string();
        assert!(e.contains("not an ip workload"), "{e}");
        let mut ip = wl("pub", WorkloadType::Ip, json!({"v4": true}));
        let e = public_nic(&with(ip.clone()), "pub")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not deployed"), "{e}");
        ip.result.state = zos_types::ResultState::Ok;
        ip.result.data = json!({"ip": "203.0.113.10/24", "ip6": "", "gateway": "203.0.113.1"});
        let p = public_nic(&with(ip), "pub").unwrap().unwrap();
        // Upstream names: Unique("pub") of the ip workload's id, its MAC.
        assert_eq!(p.tap, zos_types::ids::unique("7-9-pub", "pub"));
        assert_eq!(
            p.mac,
            zos_types::ids::format_mac(&zos_types::ids::hardware_addr(p.tap.as_bytes()))
        );
        assert_eq!(p.ipv4.as_deref(), Some("203.0.113.10/24"));
        assert_eq!(p.gw4.as_deref(), Some("203.0.113.1"));
        assert_eq!(p.ipv6, None, "an unset IPv6 is none, not Go's <nil>");
        // The public IP is part of the VM's fixed identity; VMs without one keep their record.
        assert!(fixed_part(&spec_of(&m).unwrap()).ends_with("public_ip=pub\n"));
        let plain = fixed_part(&spec_of(&vm(1, 256 * MIB, "net", "10.20.2.5")).unwrap());
        assert!(!plain.contains("public_ip"));
    }

    #[tokio::test]
    async fn an_update_cannot_change_the_image_network_or_address() {
        let d = tempfile::tempdir().unwrap();
        let vms = Vms::new(VmConfig::new(d.path()), None);
        let (ctx, old) = ctx_with(vm(1, 256 * MIB, "net", "10.20.2.5"));
        let dir = vms.vm_dir(&ctx.workload_id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FIXED), fixed_part(&spec_of(&old).unwrap())).unwrap();
        let mut other_image = vm(2, 512 * MIB, "net", "10.20.2.5");
        other_image.data["flist"] = json!("file:///elsewhere.fl");
        for new in [other_image, vm(1, 256 * MIB, "net", "10.20.2.6")] {
            let e = vms.update(&ctx, &new).await.unwrap_err();
            assert!(e.to_string().contains("cannot be changed"), "{e}");
        }
        // CPU and memory may change: the refusal is not what stops this one (its flist is
        // missing here, which provisioning reports).
        let e = vms
            .update(&ctx, &vm(2, 512 * MIB, "net", "10.20.2.5"))
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("cannot be changed"), "{e}");
    }

    #[tokio::test]
    async fn full_vm_images_need_a_first_zmount_large_enough() {
        let d = tempfile::tempdir().unwrap();
        let vms = Vms::new(VmConfig::new(d.path()), None);
        let (fl, image) = (d.path().join("x.fl"), d.path().join("image.raw"));
        std::fs::write(&fl, b"flist").unwrap();
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let disk = |size| zos_storage::DiskInfo {
            id: "1-1-disk".into(),
            pool: "ssd".into(),
            path: d.path().join("disk.img"),
            size,
            encrypted: false,
        };
        let mut m = vm(1, 256 * MIB, "net", "10.20.2.5");
        m.data["mounts"] = json!([{"name": "data", "mountpoint": "/data"},
                                  {"name": "disk", "mountpoint": "/disk"}]);
        let spec = spec_of(&m).unwrap();
        // The first mount is a volume: refused before anything is written.
        let disks = vec![("disk".to_string(), disk(1 << 20), None)];
        let e = vms
            .write_image(&fl, &image, &spec, &disks, d.path())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("needs a zmount as its first mount"),
            "{e}"
        );
        // The disk first, but smaller than the image.
        m.data["mounts"] = json!([{"name": "disk", "mountpoint": "/"}]);
        let spec = spec_of(&m).unwrap();
        let disks = vec![("disk".to_string(), disk(1024), None)];
        let e = vms
            .write_image(&fl, &image, &spec, &disks, d.path())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than disk \"disk\""), "{e}");
        assert!(!d.path().join("image.written").exists());
        // A raw disk large enough: written (when qemu-img is here), then not again.
        if zos_storage::exec::have("qemu-img") {
            std::fs::write(d.path().join("disk.img"), vec![1u8; 8192]).unwrap();
            let disks = vec![("disk".to_string(), disk(8192), None)];
            vms.write_image(&fl, &image, &spec, &disks, d.path())
                .await
                .unwrap();
            let on_disk = std::fs::read(d.path().join("disk.img")).unwrap();
            assert_eq!(&on_disk[..4096], &[0u8; 4096][..]);
            assert_eq!(&on_disk[4096..], &[1u8; 4096][..]);
            std::fs::write(d.path().join("disk.img"), vec![2u8; 8192]).unwrap();
            vms.write_image(&fl, &image, &spec, &disks, d.path())
                .await
                .unwrap();
            assert_eq!(
                std::fs::read(d.path().join("disk.img")).unwrap(),
                vec![2u8; 8192]
            );
        } else {
            eprintln!("SKIP: full_vm image write part: qemu-img missing");
        }
    }

    #[tokio::test]
    async fn missing_flists_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let vms = Vms::new(VmConfig::new(d.path()), None);
        let e = vms.flist_file("file:///nowhere/x.fl").await.unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = vms.flist_file("").await.unwrap_err();
        assert!(e.to_string().contains("flist is required"), "{e}");
        let e = vms.flist_file("ftp://hub/x.fl").await.unwrap_err();
        assert!(e.to_string().contains("expected an http(s)://"), "{e}");
        // A hub that does not have it: the HTTP status is in the error.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hub = zos_flist::hub::Hub::new(d.path().join("hub"), Default::default());
        let server = tokio::spawn(zos_flist::hub::serve(l, hub, std::future::pending()));
        let e = vms
            .flist_file(&format!("http://127.0.0.1:{port}/flists/0/missing.fl"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        server.abort();
    }
}
