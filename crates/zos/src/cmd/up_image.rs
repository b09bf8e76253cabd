//! `zos up --image DIR`: the dev grid's node(s) as the bootable image (`zos image build -o DIR`)
//! in QEMU instead of host processes. The guests sit on a bridge in the host's namespace
//! (`zimgbr<n>`, 10.77.<n>.0/24, the host at .1, node i at .(10+i), one tap `zimg<n>t<i>`
//! each), so the address a workload result names is reachable from the host as it is: `zos
//! deploy` and a redis client work as with a host node. The ledger and relay listen on the
//! bridge's address with certificates for it, pinned in the image through a site overlay.
//! Stopping powers the guests off (QMP `system_powerdown`, killed after a timeout) and removes
//! the taps and the bridge.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zos_ledger::LedgerClient;

/// Boot to registered under TCG with two blank disks to format: 40-70 s measured on the 2-core
/// CI host (docs/image.md); generous, as several guests share the cores.
const REGISTER_WITHIN: Duration = Duration::from_secs(420);
/// How long a guest gets to power off after the power button (its node stops its workloads
/// and unmounts its pools: PID 1 waits up to 60 s for the node).
const POWEROFF_WITHIN: Duration = Duration::from_secs(90);
/// The boot medium's size (FAT `ZOSBOOT`: the key root lives there).
const BOOT_MEDIUM: u64 = 32 << 20;

/// The bridge, its taps and the subnet, removed on drop (also when `zos up` fails midway).
pub struct ImageNet {
    /// Third octet of 10.77.<n>.0/24.
    pub n: u8,
    /// The bridge's name.
    pub bridge: String,
    /// One tap per node, node 1 first.
    pub taps: Vec<String>,
    /// Where `zos up` stores the net's owner (a stale bridge of a killed run is removed).
    state: PathBuf,
}

impl ImageNet {
    /// The host's address on the bridge: where the ledger and relay listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, 1)
    }

    /// Node `i`'s (1-based) static address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, u8::try_from(10 + i).unwrap_or(254))
    }

    fn teardown(&mut self) {
        for t in self.taps.drain(..) {
            let _ = ip(&["link", "del", &t]);
        }
        if !self.bridge.is_empty() {
            let _ = ip(&["link", "del", &self.bridge]);
            self.bridge.clear();
            let _ = std::fs::remove_file(&self.state);
        }
    }
}

impl Drop for ImageNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The IPv4 routes of this namespace (destination, mask) from `/proc/net/route`.
fn routes(text: &str) -> Vec<(u32, u32)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Destination and mask are the kernel's u32 in host (little-endian) byte order.
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.swap_bytes();
            Some((dest, mask))
        })
        .collect()
}

/// Whether 10.77.`n`.0/24 overlaps no route but a default one.
fn subnet_free(n: u8, routes: &[(u32, u32)]) -> bool {
    let net = u32::from(Ipv4Addr::new(10, 77, n, 0));
    let mask = 0xffff_ff00u32;
    !routes
        .iter()
        .filter(|(_, m)| *m != 0)
        .any(|(d, m)| (net & m) == (d & m) || (d & mask) == net)
}

/// Checks what `zos up --image` needs, picks a free subnet and makes the bridge and `nodes`
/// taps. `data` is the grid's state directory.
pub fn prepare(image: &Path, nodes: usize, ledgers: u8, data: &Path) -> anyhow::Result<ImageNet> {
    if !is_root() {
        bail!(
            "zos up --image needs root: it makes a bridge and a tap per node in this host's \
             namespace so the guests' addresses are reachable from here (run it with sudo)"
        );
    }
    if ledgers > 1 {
        bail!("zos up --image runs one ledger (--ledgers {ledgers} is for host nodes)");
    }
    if !image.join("initramfs.cpio").is_file()
        || !(image.join("vmlinux").is_file() || image.join("vmlinuz").is_file())
    {
        bail!(
            "{}: not an image (want vmlinux or vmlinuz and initramfs.cpio: `zos image build -o DIR`)",
            image.display()
        );
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mkfs.vfat", "dosfstools"),
        ("ip", "iproute2"),
    ] {
        if !on_path(tool) {
            bail!("zos up --image needs `{tool}` (apt-get install {pkg})");
        }
    }
    let dir = data.join("image");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let state = dir.join("net");
    let previous = std::fs::read_to_string(&state).ok().and_then(|s| {
        let mut w = s.split_whitespace();
        Some((
            w.next()?.parse::<u8>().ok()?,
            w.next()?.parse::<u32>().ok()?,
        ))
    });
    if let Some((_, pid)) = previous {
        // Its command line, not only its pid: a killed owner may linger as a zombie (empty
        // command line) and pids are reused.
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let owner_alive = cmd.split(|b| *b == 0).any(|a| a == b"--image");
        if pid != std::process::id() && owner_alive {
            bail!(
                "another `zos up --image` (pid {pid}) runs this grid ({})",
                data.display()
            );
        }
    }
    // What a killed `zos up` of this grid left: its guests, then its bridge and taps.
    kill_stale_guests(&dir);
    if let Some((n, _)) = previous {
        for i in 1..=32 {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("zimg{n}t{i}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("zimgbr{n}")])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let routes = routes(&table);
    // The grid's previous subnet first: its URLs and certificates stay the same.
    let subnet_file = dir.join("subnet");
    let preferred = std::fs::read_to_string(&subnet_file)
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let mut order: Vec<u8> = preferred.into_iter().collect();
    order.extend((0..=255u8).filter(|n| Some(*n) != preferred));
    let mut last_err = None;
    for n in order {
        if !subnet_free(n, &routes) {
            continue;
        }
        let bridge = format!("zimgbr{n}");
        let mac = zos_network::ip::bridge_mac();
        if let Err(e) = ip(&["link", "add", &bridge, "address", &mac, "type", "bridge"]) {
            // Taken by another `zos up --image` starting at the same time: the next one.
            last_err = Some(e);
            continue;
        }
        let mut net = ImageNet {
            n,
            bridge: bridge.clone(),
            taps: Vec::new(),
            state: state.clone(),
        };
        std::fs::write(&state, format!("{n} {}\n", std::process::id()))
            .with_context(|| format!("writing {}", state.display()))?;
        std::fs::write(&subnet_file, format!("{n}\n"))
            .with_context(|| format!("writing {}", subnet_file.display()))?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=nodes {
            let tap = format!("zimg{n}t{i}");
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            net.taps.push(tap.clone());
            ip(&["link", "set", &tap, "master", &bridge])?;
            ip(&["link", "set", &tap, "up"])?;
        }
        return Ok(net);
    }
    match last_err {
        Some(e) => Err(e.context("no free 10.77.<n>.0/24 subnet for the image bridge")),
        None => bail!("no free 10.77.<n>.0/24 subnet for the image bridge (all are routed)"),
    }
}

/// QEMUs of this grid left by a `zos up` that was killed (they hold the disks and the taps):
/// killed, found by their pid files and checked by their command line naming the node's dir.
fn kill_stale_guests(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let ndir = e.path();
        let Some(pid) = std::fs::read_to_string(ndir.join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = ndir.as_os_str().as_encoded_bytes();
        if needle.is_empty() || !cmd.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        eprintln!(
            "zos up: killing QEMU {pid} left by a previous `zos up` ({})",
            ndir.display()
        );
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the grid hands its image nodes.
pub struct Grid {
    /// The ledger URL (on the bridge's address).
    pub ledger_url: String,
    /// The ledger's certificate (pinned in the image).
    pub ledger_cert: PathBuf,
    /// The producer key (hex) the node pins.
    pub producer: String,
    /// The relay URL (on the bridge's address).
    pub relay_url: String,
    /// The relay's certificate (pinned in the image).
    pub relay_cert: PathBuf,
    /// What twins name as their relay.
    pub relay_domain: String,
    /// The farm the nodes join.
    pub farm: u32,
    /// The user's twin (admin of the nodes).
    pub twin: u32,
    /// Client key and config paths (printed).
    pub key_path: PathBuf,
    /// The client config written.
    pub config_path: PathBuf,
}

/// Boots the image nodes, waits for them to register, prints the grid, runs until Ctrl-C or
/// SIGTERM, then powers the guests off and removes the network (the caller stops the ledger
/// and relay after that).
pub async fn run(
    image: &Path,
    mut net: ImageNet,
    data: &Path,
    grid: Grid,
    ledger: &LedgerClient,
    (ssd, hdd, mem_mib): (&str, &str, u32),
) -> anyhow::Result<()> {
    let result = boot_and_serve(image, &net, data, &grid, ledger, ssd, hdd, mem_mib).await;
    net.teardown();
    result
}

/// One image node: its QEMU and where it keeps things.
struct Guest {
    index: usize,
    child: Option<tokio::process::Child>,
    qmp: PathBuf,
    console: PathBuf,
    addr: Ipv4Addr,
    node_id: Option<u32>,
}

#[allow(clippy::too_many_arguments)]
async fn boot_and_serve(
    image: &Path,
    net: &ImageNet,
    data: &Path,
    grid: &Grid,
    ledger: &LedgerClient,
    ssd: &str,
    hdd: &str,
    mem_mib: u32,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(super::shutdown_signal());
    let dir = data.join("image");
    // The initrd: the image and the site overlay (the grid's pinned certificates).
    let mut initrd = std::fs::read(image.join("initramfs.cpio"))
        .with_context(|| format!("reading {}", image.join("initramfs.cpio").display()))?;
    let files = vec![
        (
            "/etc/zos/ledger-cert.pem".to_string(),
            std::fs::read(&grid.ledger_cert)?,
        ),
        (
            "/etc/zos/relay-cert.pem".to_string(),
            std::fs::read(&grid.relay_cert)?,
        ),
    ];
    initrd.extend(zos_image::build::overlay(&files)?);
    let initrd_path = dir.join("boot.cpio");
    std::fs::write(&initrd_path, initrd)
        .with_context(|| format!("writing {}", initrd_path.display()))?;
    let kernel = if image.join("vmlinux").is_file() {
        image.join("vmlinux")
    } else {
        image.join("vmlinuz")
    };
    let (accel, why) = accel(&kernel).await;
    println!(
        "zos up: image nodes run under {} ({why})",
        accel.to_uppercase()
    );
    let ssd_size = zos_storage::pool::parse_size(ssd).context("--ssd: not a size")?;
    let hdd_size = zos_storage::pool::parse_size(hdd).context("--hdd: not a size")?;

    let mut guests = Vec::new();
    for (k, tap) in net.taps.iter().enumerate() {
        let i = k + 1;
        let ndir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&ndir).with_context(|| format!("creating {}", ndir.display()))?;
        disks(&ndir, ssd_size, hdd_size)?;
        let addr = net.node_ip(i);
        let cmdline = format!(
            "console=ttyS0 panic=-1 quiet farmer_id={farm} runmode=dev ledger={ledger} \
             ledger_producer={producer} relay={relay} relay_domain={domain} admin_twin={twin} \
             zos.ip={addr}/24 zos.gw={gw}",
            farm = grid.farm,
            ledger = grid.ledger_url,
            producer = grid.producer,
            relay = grid.relay_url,
            domain = grid.relay_domain,
            twin = grid.twin,
            gw = net.host_ip(),
        );
        let qmp = ndir.join("qmp.sock");
        let console = ndir.join("console.log");
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&console);
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-cpu", cpu, "-smp", "2", "-M", "pc"])
            .arg("-m")
            .arg(mem_mib.to_string())
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-name")
            .arg(format!("zos-image-node{i}"))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-pidfile")
            .arg(ndir.join("qemu.pid"))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd_path)
            .arg("-append")
            .arg(&cmdline)
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:77:{:02x}:{:02x}",
                net.n, i
            ))
            // An SSD (rotation rate 1) and an HDD on virtio-scsi, as a real node's disks.
            .args(["-device", "virtio-scsi-pci,id=scsi"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=ssd,format=raw",
                ndir.join("ssd.img").display()
            ))
            .args([
                "-device",
                &format!("scsi-hd,drive=ssd,rotation_rate=1,serial=zimg{i}ssd"),
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=hdd,format=raw",
                ndir.join("hdd.img").display()
            ))
            .args(["-device", &format!("scsi-hd,drive=hdd,serial=zimg{i}hdd")])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw",
                ndir.join("boot.img").display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(ndir.join("qemu.log"))?)
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting qemu-system-x86_64")?;
        println!(
            "zos up: node {i} boots at {addr} (tap {tap} on {}); console {}",
            net.bridge,
            console.display()
        );
        guests.push(Guest {
            index: i,
            child: Some(child),
            qmp,
            console,
            addr,
            node_id: None,
        });
    }

    let served = serve(&mut guests, net, grid, ledger, &mut shutdown).await;
    eprintln!("stopping…");
    power_off(&mut guests).await;
    served
}

/// Waits for registration, prints the grid, then waits for the stop signal.
async fn serve(
    guests: &mut [Guest],
    net: &ImageNet,
    grid: &Grid,
    ledger: &LedgerClient,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        for g in guests.iter_mut() {
            if let Some(c) = g.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    g.child = None;
                    bail!(
                        "node {}'s QEMU exited ({st}) before it registered; console {}",
                        g.index,
                        g.console.display()
                    );
                }
            }
            if g.node_id.is_none() {
                g.node_id = registered(&g.console);
            }
        }
        if guests.iter().all(|g| g.node_id.is_some()) {
            break;
        }
        if start.elapsed() > REGISTER_WITHIN {
            let late: Vec<String> = guests
                .iter()
                .filter(|g| g.node_id.is_none())
                .map(|g| g.console.display().to_string())
                .collect();
            bail!(
                "not registered within {} s; consoles: {}",
                REGISTER_WITHIN.as_secs(),
                late.join(", ")
            );
        }
        tokio::select! {
            () = shutdown.as_mut() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    // What the console said, checked against the ledger.
    for g in guests.iter() {
        let id = g.node_id.unwrap_or_default();
        match ledger.node(id).await? {
            Some(n) if n.farm_id == grid.farm => {}
            _ => bail!(
                "node {} says it registered as node {id}, which the ledger does not have in farm {}",
                g.index,
                grid.farm
            ),
        }
    }
    println!(
        "zos grid is up ({} image node{}, {:.0} s to registered)",
        guests.len(),
        if guests.len() == 1 { "" } else { "s" },
        start.elapsed().as_secs_f64()
    );
    println!("  ledger   {}", grid.ledger_url);
    println!("  relay    {}", grid.relay_url);
    for g in guests.iter() {
        println!(
            "  node     {} in farm {} at {} (image node {}, console {})",
            g.node_id.unwrap_or_default(),
            grid.farm,
            g.addr,
            g.index,
            g.console.display()
        );
    }
    println!(
        "  network  bridge {} {}/24 (taps {})",
        net.bridge,
        net.host_ip(),
        net.taps.join(", ")
    );
    println!(
        "  you      twin {}, key {}",
        grid.twin,
        grid.key_path.display()
    );
    println!("  config   {}", grid.config_path.display());
    println!();
    println!("next, in another terminal:");
    println!("  zos deploy examples/zdb.yaml     # redis-cli -h <IPs> -p <Port> from its result");
    println!("  zos deployments");
    println!("Ctrl-C powers the nodes off and stops the grid; `zos up --image` again resumes it.");
    loop {
        for g in guests.iter_mut() {
            if let Some(c) = g.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    g.child = None;
                    eprintln!(
                        "zos up: node {}'s QEMU exited ({st}); console {}",
                        g.index,
                        g.console.display()
                    );
                }
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The node id in the console's "node registered" line (the node's log, ANSI colours and all).
fn registered(console: &Path) -> Option<u32> {
    let text = std::fs::read(console).ok()?;
    let text = strip_ansi(&String::from_utf8_lossy(&text));
    let line = text.lines().find(|l| l.contains("node registered"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .and_then(|v| v.parse().ok())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Two blank disks and the FAT boot medium, made once (they hold the node's identity and data).
fn disks(dir: &Path, ssd: u64, hdd: u64) -> anyhow::Result<()> {
    for (name, size) in [("ssd.img", ssd), ("hdd.img", hdd)] {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(size))
                .with_context(|| format!("creating {}", p.display()))?;
        }
    }
    let boot = dir.join("boot.img");
    if !boot.exists() {
        let tmp = dir.join("boot.img.tmp");
        std::fs::File::create(&tmp)
            .and_then(|f| f.set_len(BOOT_MEDIUM))
            .with_context(|| format!("creating {}", tmp.display()))?;
        let out = Command::new("mkfs.vfat")
            .args(["-n", "ZOSBOOT"])
            .arg(&tmp)
            .output()
            .context("running mkfs.vfat")?;
        if !out.status.success() {
            bail!("mkfs.vfat: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::fs::rename(&tmp, &boot)?;
    }
    Ok(())
}

/// KVM when an ordinary guest boots under it (the image's kernel, no root: it must reach its
/// "Kernel panic" within seconds), TCG otherwise. `/dev/kvm` alone is not enough: a PVM-only
/// KVM accepts `-accel kvm` and fails on an ordinary guest.
async fn accel(kernel: &Path) -> (&'static str, String) {
    if !Path::new("/dev/kvm").exists() {
        return ("tcg", "no /dev/kvm".into());
    }
    let run = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-M", "pc"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-net", "none", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Err(_) => (
            "tcg",
            "a probe guest did not finish under KVM in 20 s".into(),
        ),
        Ok(Err(e)) => ("tcg", format!("KVM probe: {e}")),
        Ok(Ok(o)) if String::from_utf8_lossy(&o.stdout).contains("Kernel panic") => {
            ("kvm", "a probe guest booted under KVM".into())
        }
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let first = err.lines().next().unwrap_or("no output").to_string();
            ("tcg", format!("KVM does not boot a guest here: {first}"))
        }
    }
}

/// The power button for every guest (QMP `system_powerdown`), then up to [`POWEROFF_WITHIN`]
/// for them to power off; the ones still running are killed.
async fn power_off(guests: &mut [Guest]) {
    for g in guests.iter() {
        if g.child.is_some() {
            let qmp = g.qmp.clone();
            let r = tokio::task::spawn_blocking(move || qmp_command(&qmp, "system_powerdown"))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            if let Err(e) = r {
                eprintln!("zos up: node {}: power button: {e:#}", g.index);
            }
        }
    }
    let deadline = Instant::now() + POWEROFF_WITHIN;
    for g in guests.iter_mut() {
        let Some(mut c) = g.child.take() else {
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.wait()).await {
            Ok(_) => eprintln!("zos up: node {} powered off", g.index),
            Err(_) => {
                eprintln!(
                    "zos up: node {} did not power off within {} s: killed (console {})",
                    g.index,
                    POWEROFF_WITHIN.as_secs(),
                    g.console.display()
                );
                let _ = c.kill().await;
            }
        }
    }
}

/// One QMP command on `sock` (after the capabilities handshake).
fn qmp_command(sock: &Path, command: &str) -> anyhow::Result<()> {
    let s = UnixStream::connect(sock).with_context(|| format!("QMP {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?; // the greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}")?;
        // Events may come before the answer.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("QMP closed");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v.get("return").is_some() {
                break;
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_that_overlap_a_route_are_taken() {
        // A default route, 10.77.0.0/24 on a bridge, 10.0.0.0/8 via a VPN (little-endian hex).
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n\
                     zimgbr0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        let r = routes(table);
        assert_eq!(r.len(), 2);
        assert!(!subnet_free(0, &r));
        assert!(subnet_free(1, &r));
        let vpn = "h\neth0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\n";
        assert!(!subnet_free(5, &routes(vpn)));
        // A /32 inside the subnet takes it too.
        let host = "h\neth0\t05054D0A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\n";
        assert!(!subnet_free(5, &routes(host)));
        assert!(subnet_free(6, &routes(host)));
        // Garbage never panics.
        assert!(routes("x\n\u{0}\u{1} zz\n").is_empty());
    }

    #[test]
    fn the_registered_line_names_the_node() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("c.log");
        std::fs::write(
            &p,
            "ZOS-INIT: up\n\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m zos_node::node: node registered \u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3mtwin\u{1b}[0m\u{1b}[2m=\u{1b}[0m9\n",
        )
        .expect("write");
        assert_eq!(registered(&p), Some(7));
        std::fs::write(&p, "node registered node=x\n").expect("write");
        assert_eq!(registered(&p), None);
    }
}
