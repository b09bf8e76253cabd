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
    // The site overlay: the grid's pinned certificates.
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
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet farmer_id={farm} runmode=dev version=v3 \
         ledger=https://10.0.2.2:{lport} ledger_producer={producer} relay=wss://10.0.2.2:{rport} \
         relay_domain=127.0.0.1:{rport}"
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

    // Power button: a clean shutdown, then the same disks boot again.
    assert!(
        vm.power_off(Duration::from_secs(90)),
        "no power-off; console:\n{}",
        vm.console()
    );
    assert!(
        vm.console().contains("ZOS-INIT: bye"),
        "unclean shutdown:\n{}",
        vm.console()
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
    let mut got = String::new();
    while Instant::now() < deadline {
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
        got = String::from_utf8_lossy(&o.stdout).to_string();
        if got.contains("survived") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(got.contains("survived"), "data lost after reboot: {got}");
    assert!(vm2.power_off(Duration::from_secs(90)), "second power-off");
    drop(up);
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
