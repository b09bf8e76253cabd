//! The bootable image under QEMU (TCG): `zos image build`, no shell in it, then a boot with two
//! blank disks (an SSD and an HDD on virtio-scsi) and a FAT boot medium against a `zos up`
//! grid on this host (QEMU user networking: the guest reaches the host's loopback at 10.0.2.2;
//! the zdb port is forwarded to the same port on 127.0.0.1). It registers, a zdb deployment
//! lands on it and a redis client reaches the namespace; after a power-button shutdown and a
//! second boot the node has the same id and the data is still there.
//!
//! Runs once in CI (about 3 min under TCG). Needs root, qemu-system-x86_64, mkfs.vfat, redis-cli,
//! apt-get (the Debian kernel package) and loop devices for the host grid; says SKIP otherwise.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "common/up.rs"]
mod up;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use up::{Up, can_run_pools, has, zos};

/// Boot to registered under TCG, with the first boot formatting two disks (measured about
/// 40-70 s on the 2-core CI host; docs/benchmarks.md).
const REGISTER_WITHIN: Duration = Duration::from_secs(150);

struct Qemu {
    child: Option<Child>,
    monitor: PathBuf,
    console: PathBuf,
}

impl Qemu {
    fn start(dir: &Path, image: &Path, initrd: &Path, cmdline: &str) -> Qemu {
        let monitor = dir.join("mon.sock");
        // A new file per boot: a stale line of the previous boot must never match.
        static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let console = dir.join(format!("console-{n}.log"));
        let _ = std::fs::remove_file(&monitor);
        let kernel = if image.join("vmlinux").is_file() {
            image.join("vmlinux")
        } else {
            image.join("vmlinuz")
        };
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2", "-M", "pc",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", cmdline])
            .args([
                "-netdev",
                "user,id=n0,net=10.0.2.0/24",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .args(["-device", "virtio-scsi-pci,id=scsi"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=ssd,format=raw",
                dir.join("ssd.img").display()
            ))
            .args(["-device", "scsi-hd,drive=ssd,rotation_rate=1,serial=imgssd"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=hdd,format=raw",
                dir.join("hdd.img").display()
            ))
            .args(["-device", "scsi-hd,drive=hdd,serial=imghdd"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw",
                dir.join("boot.img").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Qemu {
            child: Some(child),
            monitor,
            console,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn hmp(&self, cmd: &str) -> String {
        for _ in 0..50 {
            if let Ok(mut s) = UnixStream::connect(&self.monitor) {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                writeln!(s, "{cmd}").unwrap();
                std::thread::sleep(Duration::from_millis(500));
                let mut out = String::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("QEMU monitor {} never answered", self.monitor.display());
    }

    /// The power button, then waits for QEMU to exit (zos powers off).
    fn power_off(&mut self, within: Duration) -> bool {
        self.hmp("system_powerdown");
        self.wait_exit(within)
    }

    /// Waits for QEMU to exit (a power-off, or a reboot under -no-reboot).
    fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().unwrap().is_some() {
                    self.child = None;
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn wait_console(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let c = self.console();
            if let Some(l) = c.lines().find(|l| l.contains(needle)) {
                return Some(l.to_string());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn skip(why: &str) {
    eprintln!("SKIP: image_boot: {why}");
}

/// The image built once per zos binary (kernel package cached).
fn image(dir: &Path) -> PathBuf {
    let out = dir.join("image");
    let zos_bin =
        std::env::var_os("ZOS_IMAGE_ZOS").map_or_else(|| PathBuf::from(zos()), PathBuf::from);
    let st = Command::new(zos())
        .args(["image", "build", "-o"])
        .arg(&out)
        .arg("--zos")
        .arg(&zos_bin)
        .status()
        .unwrap();
    assert!(st.success(), "zos image build failed");
    out
}

fn toml_value(cfg: &str, key: &str) -> Option<String> {
    cfg.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)?
            .trim()
            .strip_prefix('=')
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

#[test]
fn image_boots_registers_serves_zdb_and_keeps_its_identity() {
    for t in [
        "qemu-system-x86_64",
        "mkfs.vfat",
        "redis-cli",
        "apt-get",
        "dpkg-deb",
    ] {
        if !has(t) {
            return skip(&format!("{t} missing"));
        }
    }
    if let Err(why) = can_run_pools() {
        return skip(&why.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // The image: no shell, no busybox, no ssh, no users; /init is zos.
    let cpio = std::fs::read(img.join("initramfs.cpio")).unwrap();
    let files = zos_image::cpio::list(&cpio).unwrap();
    assert!(files.iter().any(|f| f.name == "init"), "no /init");
    for f in &files {
        assert!(
            !zos_image::build::forbidden(&f.name),
            "{} is in the image",
            f.name
        );
    }
    let init = zos_image::cpio::read_file(&cpio, "init").unwrap().unwrap();
    let zos_bin =
        std::env::var_os("ZOS_IMAGE_ZOS").map_or_else(|| PathBuf::from(zos()), PathBuf::from);
    assert_eq!(
        init,
        std::fs::read(&zos_bin).unwrap(),
        "/init is not the zos binary"
    );

    let (up, _) = Up::start(1, &["--relay-alias", "10.0.2.2"], Duration::from_secs(120));
    let data = up.data();
    let cfg = std::fs::read_to_string(up.dir.path().join("config.toml")).unwrap();
    let ledger = toml_value(&cfg, "ledger").unwrap();
    let relay = toml_value(&cfg, "relay").unwrap();
    let producer = toml_value(&cfg, "ledger_producer").unwrap();
    let lport = ledger.rsplit(':').next().unwrap().to_string();
    let rport = relay.rsplit(':').next().unwrap().to_string();
    let nodes_before = nodes(&up);
    let farm = nodes_before[0]["node"]["farm_id"].as_u64().unwrap();
    // The site overlay: the grid's pinned certificates, and the release key pinned for dev.
    let release_key = dir.path().join("release.key");
    let o = Command::new(zos())
        .args(["image", "keygen"])
        .arg(&release_key)
        .output()
        .unwrap();
    assert!(o.status.success(), "keygen: {o:?}");
    let pinned = String::from_utf8_lossy(&o.stdout)
        .split_ascii_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap()
        .to_string();
    let keys_file = dir.path().join("release-keys");
    std::fs::write(&keys_file, format!("dev {pinned}\n")).unwrap();
    let overlay = dir.path().join("site.cpio");
    let st = Command::new(zos())
        .args(["image", "overlay", "-o"])
        .arg(&overlay)
        .arg(format!(
            "--file=/etc/zos/ledger-cert.pem={}",
            data.join("ledger/tls/ledger-cert.pem").display()
        ))
        .arg(format!(
            "--file=/etc/zos/relay-cert.pem={}",
            data.join("relay/tls/relay-cert.pem").display()
        ))
        .arg(format!(
            "--file=/etc/zos/release-keys={}",
            keys_file.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let initrd = dir.path().join("boot.cpio");
    let mut all = cpio.clone();
    all.extend(std::fs::read(&overlay).unwrap());
    std::fs::write(&initrd, all).unwrap();
    // Two blank disks and the boot medium.
    for (f, size) in [
        ("ssd.img", 3u64 << 30),
        ("hdd.img", 3 << 30),
        ("boot.img", 32 << 20),
    ] {
        let file = std::fs::File::create(dir.path().join(f)).unwrap();
        file.set_len(size).unwrap();
    }
    let st = Command::new("mkfs.vfat")
        .args(["-n", "ZOSBOOT"])
        .arg(dir.path().join("boot.img"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let hub = Hub::start(dir.path());
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet farmer_id={farm} runmode=dev version=v3 \
         ledger=https://10.0.2.2:{lport} ledger_producer={producer} relay=wss://10.0.2.2:{rport} \
         relay_domain=127.0.0.1:{rport} zos.upgrade_hub=http://10.0.2.2:{} zos.upgrade_twin={HUB_TWIN} \
         zos.upgrade_interval=3 zos.upgrade_deadline={}",
        hub.port,
        TRIAL_DEADLINE.as_secs()
    );

    // An orphan first (no farmer_id): it says why on the console, keeps waiting, and the power
    // button still stops it cleanly. The disks stay blank: nothing starts without a farm.
    let orphan_cmdline = cmdline.replace(&format!("farmer_id={farm} "), "");
    let mut orphan = Qemu::start(dir.path(), &img, &initrd, &orphan_cmdline);
    let why = orphan.wait_console("no farmer_id", Duration::from_secs(60));
    assert!(why.is_some(), "orphan said nothing:\n{}", orphan.console());
    assert!(
        orphan.power_off(Duration::from_secs(60)),
        "orphan: no power-off:\n{}",
        orphan.console()
    );
    assert!(orphan.console().contains("ZOS-INIT: bye"));
    assert!(
        {
            let mut head = vec![0u8; 1 << 20];
            std::fs::File::open(dir.path().join("ssd.img"))
                .unwrap()
                .read_exact(&mut head)
                .unwrap();
            head.iter().all(|b| *b == 0)
        },
        "an orphan touched a disk"
    );

    let t0 = Instant::now();
    let mut vm = Qemu::start(dir.path(), &img, &initrd, &cmdline);
    let reg = vm.wait_console("node registered", REGISTER_WITHIN);
    let boot_to_registered = t0.elapsed();
    assert!(
        reg.is_some(),
        "not registered within {REGISTER_WITHIN:?}; console:\n{}",
        vm.console()
    );
    eprintln!(
        "image_boot: boot -> registered {:.1} s",
        boot_to_registered.as_secs_f64()
    );
    let after = nodes(&up);
    let ours: Vec<_> = after
        .iter()
        .filter(|n| {
            !nodes_before
                .iter()
                .any(|b| b["node"]["id"] == n["node"]["id"])
        })
        .collect();
    assert_eq!(ours.len(), 1, "one new node: {after:?}");
    let node_id = ours[0]["node"]["id"].as_u64().unwrap();

    // zdb on it: examples/zdb.yaml with the node pinned (the host grid has its own node too).
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/zdb.yaml"),
    )
    .unwrap()
    .replace("node: any", &format!("node: {node_id}"));
    let spec_file = dir.path().join("zdb.yaml");
    std::fs::write(&spec_file, spec).unwrap();
    let t1 = Instant::now();
    let out = up.client(&["deploy", spec_file.to_str().unwrap(), "--json"]);
    let deploy_time = t1.elapsed();
    assert!(
        out.status.success(),
        "deploy: {}; console:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.console()
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (ns, port) = zdb_result(&text);
    eprintln!(
        "image_boot: boot -> deployment ok {:.1} s (deploy {:.1} s): namespace {ns} port {port}",
        t0.elapsed().as_secs_f64(),
        deploy_time.as_secs_f64()
    );
    // The zdb port, forwarded to the same port on the host's loopback.
    vm.hmp(&format!("hostfwd_add tcp:127.0.0.1:{port}-:{port}"));
    let redis = |args: &[&str]| {
        let o = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let set = redis(&["SELECT", &ns, "s3cret-pass"]);
    assert_eq!(set, "OK", "SELECT");
    let script = format!("SELECT {ns} s3cret-pass\nSET image-key survived\nGET image-key\n");
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let o = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.contains("survived"), "SET/GET: {o}");

    // The farmer reboots it through the node API (`zos farm reboot`): PID 1 stops the node and
    // reboots cleanly; QEMU runs with -no-reboot, so the reboot ends this QEMU and the same
    // disks boot again in the next one. (The power button was pressed on the orphan above.)
    let o = up.client(&["farm", "reboot", "--node", &node_id.to_string()]);
    assert!(
        o.status.success(),
        "farm reboot: {o:?}; console:\n{}",
        vm.console()
    );
    assert!(
        vm.wait_exit(Duration::from_secs(90)),
        "no reboot; console:\n{}",
        vm.console()
    );
    let c = vm.console();
    assert!(
        c.contains("Reboot requested") && c.contains("ZOS-INIT: bye"),
        "unclean reboot:\n{c}"
    );
    let t2 = Instant::now();
    let mut vm2 = Qemu::start(dir.path(), &img, &initrd, &cmdline);
    let line = vm2.wait_console("zdb server started", REGISTER_WITHIN);
    assert!(
        line.is_some(),
        "second boot: no zdb; console:\n{}",
        vm2.console()
    );
    eprintln!(
        "image_boot: second boot -> pools, identity and zdb back {:.1} s",
        t2.elapsed().as_secs_f64()
    );
    let again = nodes(&up);
    assert_eq!(
        again.len(),
        after.len(),
        "a new node appeared after reboot: {again:?}"
    );
    // Identity: the node's log names its node id at start.
    let c2 = vm2.console();
    assert!(
        c2.contains(&format!("node={node_id}")) || c2.contains(&format!("node_id={node_id}")),
        "second boot is not node {node_id}:\n{c2}"
    );
    vm2.hmp(&format!("hostfwd_add tcp:127.0.0.1:{port}-:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = read_key(port, &ns);
    while !got.contains("survived") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        got = read_key(port, &ns);
    }
    assert!(got.contains("survived"), "data lost after reboot: {got}");

    upgrades(
        &up,
        &hub,
        dir.path(),
        &release_key,
        &vm2,
        node_id,
        &zos_bin,
        port,
        &|| read_key(port, &ns),
    );
    assert!(vm2.power_off(Duration::from_secs(90)), "second power-off");
    drop(up);
}

/// The hub namespace releases are published under, and its upload key.
const HUB_TWIN: u32 = 77;
const HUB_SEED: [u8; 32] = [0x11; 32];
/// How long a release on trial has to become healthy: the unoptimised debug node under TCG takes
/// about 2 min to verify and stage the 88 MiB release before the trial node even starts.
const TRIAL_DEADLINE: Duration = Duration::from_secs(420);
/// Ledger version set → the node healthy on it (download, verify, install, restart).
const UPGRADE_WITHIN: Duration = Duration::from_secs(600);

/// `zos hub serve` on the host's loopback (the guest reaches it at 10.0.2.2).
struct Hub {
    child: Child,
    port: u16,
}

impl Hub {
    fn start(dir: &Path) -> Hub {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(zos())
            .args(["hub", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(dir.join("hub"))
            .arg(format!(
                "--twin={HUB_TWIN}=ed25519:{}",
                zos_image::release::public_key_hex(&HUB_SEED)
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "hub did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Hub { child, port }
    }

    /// Signs `bin` as release `version` with `key` and publishes it as `zos-<version>.fl`.
    fn publish(&self, dir: &Path, version: &str, bin: &Path, key: &Path) {
        let b = dir.join(format!("bundle-{version}"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::copy(bin, b.join("zos")).unwrap();
        let o = Command::new(zos())
            .args(["image", "sign"])
            .arg(&b)
            .args(["--release", version, "--network", "dev", "--key"])
            .arg(key)
            .output()
            .unwrap();
        assert!(o.status.success(), "sign {version}: {o:?}");
        let o = Command::new(zos())
            .args(["image", "publish"])
            .arg(&b)
            .args(["--hub", &format!("http://127.0.0.1:{}", self.port)])
            .args(["--twin", &HUB_TWIN.to_string()])
            .args(["--seed", &hex::encode(HUB_SEED)])
            .output()
            .unwrap();
        assert!(o.status.success(), "publish {version}: {o:?}");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_key(port: u16, ns: &str) -> String {
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("SELECT {ns} s3cret-pass\nGET image-key\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A RESP PING through the forwarded port answered with PONG.
fn ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    ping_on(&mut s)
}

/// A RESP PING on an open connection answered with PONG.
fn ping_on(s: &mut std::net::TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(5000)));
    let mut buf = [0u8; 16];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn set_version(up: &Up, v: &str) {
    let o = up.client(&[
        "ledger",
        "set-version",
        v,
        "--safe-to-upgrade",
        "--dev-council",
    ]);
    assert!(o.status.success(), "set-version {v}: {o:?}");
}

fn node_version(up: &Up, node_id: u64) -> String {
    nodes(up)
        .into_iter()
        .find(|n| n["node"]["id"].as_u64() == Some(node_id))
        .and_then(|n| n["node"]["version"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Signed self-upgrades on the running image: v2 is installed and passes its trial; a bundle
/// signed by an unpinned key is refused and never run; a v3 that never becomes healthy is rolled
/// back to v2 by PID 1, the reason is on the ledger (the rollout halts) and the data stays.
#[allow(clippy::too_many_arguments)]
fn upgrades(
    up: &Up,
    hub: &Hub,
    dir: &Path,
    key: &Path,
    vm: &Qemu,
    node_id: u64,
    zos_bin: &Path,
    zdb_port: u16,
    read: &dyn Fn() -> String,
) {
    // v2: the same program without its debug sections (what a release build ships is smaller
    // still); published, then set on the ledger.
    let bin = dir.join("zos-stripped");
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(zos_bin)
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    hub.publish(dir, "v2", &bin, key);
    // ZeroDB runs in a process of its own that PID 1 leaves running through the switch: a
    // connection opened now must still answer afterwards. New connections are probed too: the
    // longest gap between answered PINGs.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", zdb_port)).unwrap();
    assert!(ping_on(&mut held), "PING on the held connection");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut last_ok, mut gap, mut answered) = (Instant::now(), Duration::ZERO, 0);
            // Used every second (the server closes connections idle for 5 minutes).
            let (mut held_ok, mut last_held) = (true, Instant::now());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if ping(zdb_port) {
                    gap = gap.max(last_ok.elapsed());
                    last_ok = Instant::now();
                    answered += 1;
                }
                if held_ok && last_held.elapsed() >= Duration::from_secs(1) {
                    held_ok = ping_on(&mut held);
                    last_held = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (gap, answered, held_ok && ping_on(&mut held))
        })
    };
    let t = Instant::now();
    set_version(up, "v2");
    let switch = vm.wait_console("the node installed a release", UPGRADE_WITHIN);
    assert!(
        switch.is_some(),
        "v2 not installed; console:\n{}",
        vm.console()
    );
    let installed = t.elapsed();
    let ok = vm.wait_console("release v2 is healthy", UPGRADE_WITHIN);
    assert!(ok.is_some(), "v2 not healthy; console:\n{}", vm.console());
    let healthy = t.elapsed();
    // The old node stops only after the new release was fetched and installed.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (gap, answered, held_ok) = pinger.join().unwrap();
    assert!(
        answered > 0,
        "ZeroDB never answered PING during the upgrade"
    );
    assert!(
        held_ok,
        "the ZeroDB connection opened before the upgrade was closed: the server was restarted"
    );
    eprintln!(
        "image_boot: version set on the ledger -> healthy on v2 {:.1} s (fetched, verified and \
         installed at {:.1} s); zdb unreachable for {:.1} s of it",
        healthy.as_secs_f64(),
        installed.as_secs_f64(),
        gap.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while node_version(up, node_id) != "v2" {
        assert!(Instant::now() < deadline, "the ledger never saw v2");
        std::thread::sleep(Duration::from_secs(1));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("survived") {
        assert!(Instant::now() < deadline, "data lost in the upgrade to v2");
        std::thread::sleep(Duration::from_secs(1));
    }

    // A bundle signed by a key nobody pinned: refused, never installed, never run.
    let rogue = dir.join("rogue.key");
    let o = Command::new(zos())
        .args(["image", "keygen"])
        .arg(&rogue)
        .output()
        .unwrap();
    assert!(o.status.success());
    hub.publish(dir, "v2-rogue", &bin, &rogue);
    set_version(up, "v2-rogue");
    let refused = vm.wait_console("no valid signature", Duration::from_secs(120));
    let c = vm.console();
    assert!(
        refused.is_some_and(|l| l.contains("v2-rogue")),
        "rogue bundle not refused; console:\n{c}"
    );
    assert!(
        !c.contains("running release v2-rogue"),
        "the rogue release ran:\n{c}"
    );

    // v3 never becomes healthy (a program that only waits): PID 1 rolls it back by itself.
    let src = dir.join("hang.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){for(;;)pause();}\n",
    )
    .unwrap();
    let hang = dir.join("hang");
    let st = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&hang)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "cc -static");
    hub.publish(dir, "v3", &hang, key);
    let t = Instant::now();
    set_version(up, "v3");
    let ran = vm.wait_console("running release v3", UPGRADE_WITHIN);
    assert!(ran.is_some(), "v3 never ran; console:\n{}", vm.console());
    // v3 gets SIGTERM at its deadline (PID 1 starts it with nothing blocked) and dies at once;
    // the margin covers a release that ignores it (killed after PID 1's 60 s grace).
    let back = vm.wait_console("rolling back", TRIAL_DEADLINE + Duration::from_secs(120));
    assert!(back.is_some(), "no rollback; console:\n{}", vm.console());
    eprintln!(
        "image_boot: v3 set -> rolled back {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Back on v2 by itself; the reason reached the ledger and halted the rollout.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut halted = serde_json::Value::Null;
    while Instant::now() < deadline {
        let o = up.client(&["ledger", "version", "--json"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if !v["halted"].is_null() {
                halted = v["halted"].clone();
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(halted["version"], "v3", "rollout not halted: {halted}");
    assert!(
        halted["reason"].as_str().unwrap_or("").contains("healthy"),
        "reason: {halted}"
    );
    assert_eq!(node_version(up, node_id), "v2");
    let c = vm.console();
    let after = &c[c.rfind("rolling back").unwrap()..];
    assert!(
        after.contains("running release v2"),
        "not back on v2:\n{after}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("survived") {
        assert!(Instant::now() < deadline, "data lost after the rollback");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn nodes(up: &Up) -> Vec<serde_json::Value> {
    let o = up.client(&["nodes", "--json"]);
    assert!(
        o.status.success(),
        "zos nodes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Namespace and port from `zos deploy --json`.
fn zdb_result(text: &str) -> (String, u16) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if let (Some(ns), Some(port)) = (v.get("Namespace"), v.get("Port")) {
            return (
                ns.as_str().unwrap().to_string(),
                port.as_u64().unwrap() as u16,
            );
        }
        match v {
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    panic!("no zdb result in {text}");
}
