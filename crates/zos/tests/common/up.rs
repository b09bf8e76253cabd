//! `zos up --nodes N` as a child process, shared by the multi-node black-box tests: started
//! and waited for, a client on its config, and on drop everything it may leave: the QEMU
//! guests (they outlive the agent by design) and their overlay mounts, the grid itself
//! (SIGINT, then SIGKILL), and the `zup*` namespaces of the local internet.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn zos() -> &'static str {
    env!("CARGO_BIN_EXE_zos")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn grid_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("zup"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `zos up --nodes` process is alive (its namespaces are not stale then).
pub fn local_grid_running() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                args.iter().any(|a| a.ends_with(b"zos"))
                    && args.contains(&&b"up"[..])
                    && args.contains(&&b"--nodes"[..])
            })
        })
        .unwrap_or(false)
}

/// Pids whose command line contains `needle`.
pub fn pids_with(needle: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !needle.is_empty() && cmd.windows(needle.len()).any(|w| w == needle) {
            out.push(pid);
        }
    }
    out
}

/// The `zos node run` child of `parent` serving `namespace`.
pub fn node_child(parent: u32, namespace: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // ppid is the 4th field, after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let want = format!("--net-namespace={namespace}");
        if ppid == Some(parent) && cmd.split(|b| *b == 0).any(|a| a == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// The lines `child` prints on stdout, read by a thread (so a test can wait with a timeout).
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Ctrl-C for `child` (SIGINT, what `zos up` stops cleanly on); its exit status if it exited
/// within `within`.
pub fn interrupt(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether pools can be made here (root, loop devices, mkfs.btrfs); why not otherwise.
pub fn can_run_pools() -> Result<(), String> {
    if !is_root() {
        return Err("not root".into());
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        return Err("no loop devices".into());
    }
    if Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("mkfs.btrfs missing".into());
    }
    Ok(())
}

/// Unmounts everything under `data` (innermost first) and detaches the loop devices whose
/// backing files are there: what a killed grid leaves.
pub fn release_dir(data: &std::path::Path) {
    let data_s = data.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&data_s))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
    let loops = Command::new("losetup")
        .arg("-a")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    for l in String::from_utf8_lossy(&loops)
        .lines()
        .filter(|l| l.contains(&data_s))
    {
        if let Some(dev) = l.split(':').next() {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

/// A running `zos up --nodes N`.
pub struct Up {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Up {
    /// The grid's `--data`.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `zos up --nodes N` (small pools, free ports, `extra` arguments) and waits for
    /// "grid is up"; returns it and the lines it printed after that.
    pub fn start(nodes: u8, extra: &[&str], within: Duration) -> (Up, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut up = Up { child: None, dir };
        let printed = up.launch(nodes, extra, within);
        (up, printed)
    }

    /// Starts the same grid again (same data and config; new ports) after it stopped; the
    /// lines it printed after "grid is up".
    pub fn restart(&mut self, nodes: u8, extra: &[&str], within: Duration) -> Vec<String> {
        assert!(self.child.is_none(), "stop the grid first");
        self.launch(nodes, extra, within)
    }

    /// Stops the grid (Ctrl-C) and waits for it.
    pub fn stop(&mut self, within: Duration) {
        if let Some(mut c) = self.child.take() {
            if interrupt(&mut c, within).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    fn launch(&mut self, nodes: u8, extra: &[&str], within: Duration) -> Vec<String> {
        let dir = self.dir.path();
        // A grid for VMs is given the cached guest; the others do not build one.
        let vms = extra.contains(&"--vm-guest");
        let child = Command::new(zos())
            .args(["up", "--nodes", &nodes.to_string()])
            .args(if vms { &[][..] } else { &["--no-vm-guest"][..] })
            .env_remove("ZOS_NO_VM_GUEST")
            // VMs take a RootSize volume each (500 MiB at least): room for a few (sparse files).
            .args(["--ssd", if vms { "4GiB" } else { "1GiB" }])
            .args(["--hdd", "1GiB", "--metrics-port", "0"])
            .args(["--ledger-port", &free_port().to_string()])
            .args(["--relay-port", &free_port().to_string()])
            // not the fixed defaults: grids of parallel tests would collide there
            .args(["--gateway-port", &free_port().to_string()])
            .args(["--gateway-http-port", &free_port().to_string()])
            .args(extra)
            .arg("--data")
            .arg(dir.join("data"))
            .env("ZOS_CONFIG", dir.join("config.toml"))
            .env("XDG_CONFIG_HOME", dir.join("xdg"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let rx = stdout_lines(self.child.as_mut().unwrap());
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("grid is up") => break,
                Ok(line) => lines.push(line),
                Err(_) => {
                    panic!("zos up --nodes {nodes} did not come up within {within:?}: {lines:?}")
                }
            }
        }
        let mut printed = Vec::new();
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            printed.push(l);
        }
        printed
    }

    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(zos())
            .args(args)
            .env("ZOS_CONFIG", self.dir.path().join("config.toml"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // The grid first (SIGINT: nodes detach their guests and release pools), so that no
        // agent restarts a guest killed below.
        if let Some(mut c) = self.child.take() {
            if interrupt(&mut c, Duration::from_secs(30)).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        // Whatever still names the grid's directory: guests (they outlive the agent on
        // purpose) and node children of a grid that did not stop.
        let data = self.data();
        for pid in pids_with(data.as_os_str().as_encoded_bytes()) {
            if pid != std::process::id() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        // Then the overlays and pools they kept busy, and loop devices.
        release_dir(&data);
        // Ours are gone with our grid; what remains while another grid runs (a test in
        // parallel) is that grid's.
        if !local_grid_running() {
            for ns in grid_namespaces() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
    }
}
