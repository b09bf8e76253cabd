//! `zos up --image DIR`: the dev grid's node is the bootable image in QEMU on a host bridge.
//! The grid comes up with the image node registered, `zos deploy examples/zdb.yaml` from the
//! host lands on it, and a redis client reaches the namespace at the address the deployment's
//! result names (the guest's own address on the bridge: no forwarding). SIGTERM powers the
//! guest off cleanly and leaves no tap, bridge or QEMU behind.
//!
//! Needs root, qemu-system-x86_64, mkfs.vfat, ip and apt-get/dpkg-deb (the image's kernel);
//! says SKIP otherwise. About 2-3 min under TCG (the image boot is most of it).
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "common/image.rs"]
mod image;
#[path = "common/up.rs"]
mod up;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use up::{free_port, has, is_root, pids_with, stdout_lines, zos};

fn skip(why: &str) {
    eprintln!("SKIP: up_image_e2e: {why}");
}

/// `zos up --image` and whatever it may leave, stopped and removed on drop (also on failure).
struct Grid {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Grid {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(zos())
            .args(args)
            .env("ZOS_CONFIG", self.dir.path().join("config.toml"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.err")).unwrap_or_default()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.data().join("image/node1/console.log")).unwrap_or_default()
    }
}

/// The bridge and taps this grid made (`DATA/image/net`: "<n> <pid>").
fn links_of(data: &Path) -> Vec<String> {
    let Some(n) = std::fs::read_to_string(data.join("image/net"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
    else {
        return Vec::new();
    };
    let all = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let ours = |name: &str| name == format!("zimgbr{n}") || name.starts_with(&format!("zimg{n}t"));
    all.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .filter(|s| ours(s))
        .collect()
}

impl Drop for Grid {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if up::interrupt(&mut c, Duration::from_secs(100)).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        let data = self.data();
        for pid in pids_with(data.as_os_str().as_encoded_bytes()) {
            if pid != std::process::id() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        for l in links_of(&data) {
            let _ = Command::new("ip").args(["link", "del", &l]).status();
        }
    }
}

#[test]
fn up_image_node_serves_zdb_at_its_own_address() {
    if !is_root() {
        return skip("not root (the bridge and taps)");
    }
    for t in ["qemu-system-x86_64", "mkfs.vfat", "ip"] {
        if !has(t) {
            return skip(&format!("{t} missing"));
        }
    }
    if let Err(why) = image::can_build() {
        return skip(&why);
    }
    let t0 = Instant::now();
    let img = image::build();
    eprintln!(
        "up_image_e2e: image ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let err = std::fs::File::create(dir.path().join("up.err")).unwrap();
    let child = Command::new(zos())
        .arg("up")
        .arg("--image")
        .arg(&img)
        .args(["--no-vm-guest", "--ssd", "3GiB", "--hdd", "3GiB"])
        .args(["--metrics-port", "0"])
        .args(["--ledger-port", &free_port().to_string()])
        .args(["--relay-port", &free_port().to_string()])
        .args(["--gateway-port", &free_port().to_string()])
        .args(["--gateway-http-port", &free_port().to_string()])
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut grid = Grid {
        child: Some(child),
        dir,
    };
    let rx = stdout_lines(grid.child.as_mut().unwrap());
    let t1 = Instant::now();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(420);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("grid is up") => {
                lines.push(l);
                break;
            }
            Ok(l) => lines.push(l),
            Err(_) => panic!(
                "zos up --image did not come up: {lines:#?}\nstderr:\n{}\nconsole:\n{}",
                grid.stderr(),
                grid.console()
            ),
        }
    }
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    eprintln!(
        "up_image_e2e: zos up --image -> grid is up {:.1} s:\n{}",
        t1.elapsed().as_secs_f64(),
        lines.join("\n")
    );
    // It says which accelerator runs the guest.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("run under TCG") || l.contains("run under KVM")),
        "{lines:?}"
    );
    let node_line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("node ") && l.contains(" at 10.77."))
        .unwrap_or_else(|| panic!("no node line: {lines:?}"));
    let words: Vec<&str> = node_line.split_whitespace().collect();
    let node_id: u64 = words[1].parse().unwrap();
    let node_ip = words[words.iter().position(|w| *w == "at").unwrap() + 1].to_string();
    let links = links_of(&grid.data());
    assert!(
        links.iter().any(|l| l.starts_with("zimgbr")) && links.len() == 2,
        "bridge and tap: {links:?}"
    );

    // The client's config points at the bridge; the node is on the ledger.
    let o = grid.client(&["nodes", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nodes: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"]["id"].as_u64() == Some(node_id)),
        "{nodes}"
    );

    // examples/zdb.yaml as it is: the farm's only node is the image's.
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/zdb.yaml");
    let t2 = Instant::now();
    let out = grid.client(&["deploy", spec.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "deploy: {}\nconsole:\n{}",
        String::from_utf8_lossy(&out.stderr),
        grid.console()
    );
    let (ns, ips, port) = zdb_result(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "up_image_e2e: deploy {:.1} s: namespace {ns} at {ips:?} port {port}",
        t2.elapsed().as_secs_f64()
    );
    // The result names the guest's own address, reachable from here as it is.
    assert!(
        ips.contains(&node_ip),
        "the zdb result names {ips:?}, not the node's address {node_ip}"
    );
    let client = redis::Client::open(format!("redis://{node_ip}:{port}/")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap();
    let _: () = redis::cmd("SELECT")
        .arg(&ns)
        .arg("s3cret-pass")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("image-key")
        .arg("from-the-host")
        .query(&mut con)
        .unwrap();
    let got: String = redis::cmd("GET").arg("image-key").query(&mut con).unwrap();
    assert_eq!(got, "from-the-host");
    drop(con);

    // SIGTERM: the guest powers off cleanly, the network goes.
    let mut child = grid.child.take().unwrap();
    let t3 = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut status = None;
    while t3.elapsed() < Duration::from_secs(150) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("zos up did not stop within 150 s:\n{}", grid.stderr());
    };
    eprintln!("up_image_e2e: stop {:.1} s", t3.elapsed().as_secs_f64());
    let stderr = grid.stderr();
    assert!(status.success(), "zos up: {status}\n{stderr}");
    assert!(
        stderr.contains("node 1 powered off"),
        "no clean power-off:\n{stderr}"
    );
    assert!(
        grid.console().contains("ZOS-INIT: bye"),
        "unclean guest shutdown:\n{}",
        grid.console()
    );
    assert_eq!(links_of(&grid.data()), Vec::<String>::new(), "links left");
    let mut left = String::new();
    for pid in pids_with(grid.data().as_os_str().as_encoded_bytes()) {
        let _ = std::fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|mut f| f.read_to_string(&mut left));
    }
    assert!(left.is_empty(), "processes left: {left}");
    assert!(
        !grid.data().join("image/net").exists(),
        "the network's record is left"
    );
}

/// Namespace, IPs and port from `zos deploy --json`.
fn zdb_result(text: &str) -> (String, Vec<String>, u16) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if let (Some(ns), Some(port)) = (v.get("Namespace"), v.get("Port")) {
            let ips = v
                .get("IPs")
                .and_then(|i| i.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            return (
                ns.as_str().unwrap().to_string(),
                ips,
                u16::try_from(port.as_u64().unwrap()).unwrap(),
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

/// Without root: a clear refusal, nothing made. With root and a directory that is no image:
/// refused before any bridge exists.
#[test]
fn up_image_refuses_without_root_or_image() {
    if !is_root() {
        return skip("not root (drops to nobody with setpriv)");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", zos()])
        .args(["up", "--image", "/nonexistent", "--data"])
        .arg(dir.path())
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .output();
    let Ok(out) = out else {
        return skip("setpriv missing");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && !err.contains("needs root") {
        return skip(&format!("nobody cannot run the test binary: {err}"));
    }
    assert!(!out.status.success());
    assert!(err.contains("zos up --image needs root"), "{err}");

    let empty = dir.path().join("not-an-image");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(zos())
        .arg("up")
        .arg("--image")
        .arg(&empty)
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not an image") && err.contains("zos image build -o DIR"),
        "{err}"
    );
    // Refused before the grid's image state (and so any bridge: its record lives there).
    assert!(
        !dir.path().join("data/image").exists(),
        "image state was made"
    );
}
