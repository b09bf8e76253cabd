//! zos as PID 1: the system (pseudo filesystems, modules, read-only root), the network, the
//! boot medium, then the node as a supervised child process. PID 1 reaps every orphan, restarts
//! the node when it dies, and powers off cleanly on the ACPI power button, Ctrl-Alt-Del or
//! SIGTERM (node first, then everything else, then the filesystems).
//!
//! Why a child and not the node in PID 1's own process: PID 1 must reap every process
//! (`waitpid(-1)`), which would steal the exit statuses of the node's own children (mkfs,
//! btrfs, ip); a separate process keeps both correct, and it is the seam the A/B upgrade uses
//! (the child is the active release's binary).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::bootstrap::{HEALTHY_FILE, REQUEST_FILE, Trial, Verdict, judge};
use crate::cmdline::{BootConfig, NetConfig};
use crate::dhcp;

/// Where the boot medium (FAT, label [`BOOT_LABEL`]) is mounted.
pub const BOOT_MOUNT: &str = "/run/zos/boot";
/// The boot medium's filesystem label.
pub const BOOT_LABEL: &str = "ZOSBOOT";
/// The node's volatile data directory (tmpfs): pool mount points and runtime files.
pub const DATA_DIR: &str = "/var/lib/zos";

/// Says something on the console (PID 1's stderr is /dev/console) with a marker tests and
/// operators can grep.
pub fn say(msg: &str) {
    eprintln!("ZOS-INIT: {msg}");
}

fn mnt(src: &str, target: &str, fs: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(Some(src), target, Some(fs), flags, data) {
        if e != nix::errno::Errno::EBUSY {
            say(&format!("mount {fs} on {target}: {e}"));
        }
    }
}

/// Mounts the pseudo filesystems and tmpfs areas, loads the image's modules (from
/// `/etc/zos/modules`), and makes the root read-only. Returns the modules that failed.
pub fn system_setup() -> Vec<(String, String)> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None);
    mnt("sysfs", "/sys", "sysfs", nosuid, None);
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    );
    mnt("tmpfs", "/dev/shm", "tmpfs", nosuid, None);
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    mnt(
        "tmpfs",
        "/var",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mnt(
        "tmpfs",
        "/mnt",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    let _ = nix::unistd::sethostname("zos");
    let order = std::fs::read_to_string("/etc/zos/modules").unwrap_or_default();
    let failed = crate::kmod::load_all(Path::new("/lib/modules"), &order);
    // The image's files never change at run time: state lives on the pools.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        say(&format!("root stays writable: {e}"));
    }
    // Ctrl-Alt-Del becomes SIGINT to us: a clean shutdown, not an instant reset.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    failed
}

/// NICs with a device behind them (not lo, not virtual), sorted.
pub fn physical_nics() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join("device").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A tool of the image by absolute path: the kernel starts PID 1 without PATH.
pub fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.is_file() { p } else { PathBuf::from(name) }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool("ip"))
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Brings the network up as the command line says: loopback, then DHCP (or the static
/// address) on the chosen NIC; waits up to `wait` for the NIC to appear. Returns a summary and
/// the node's address.
pub fn network_up(
    cfg: &BootConfig,
    wait: Duration,
) -> Result<(String, std::net::Ipv4Addr), String> {
    ip(&["link", "set", "lo", "up"])?;
    let start = Instant::now();
    let nic = loop {
        let nics = physical_nics();
        let pick = match &cfg.nic {
            Some(n) => nics.iter().find(|x| *x == n).cloned(),
            None => nics.first().cloned(),
        };
        if let Some(n) = pick {
            break n;
        }
        if start.elapsed() > wait {
            return Err("no network interface".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ip(&["link", "set", &nic, "up"])?;
    match &cfg.net {
        NetConfig::Static {
            addr,
            prefix,
            gateway,
        } => {
            ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", &nic])?;
            if let Some(gw) = gateway {
                ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    &nic,
                ])?;
            }
            Ok((
                format!("{nic} {addr}/{prefix} (static) via {gateway:?}"),
                *addr,
            ))
        }
        NetConfig::Dhcp => {
            let lease = dhcp::acquire(&nic, wait).map_err(|e| e.to_string())?;
            ip(&[
                "addr",
                "add",
                &format!("{}/{}", lease.addr, lease.prefix),
                "dev",
                &nic,
            ])?;
            if let Some(gw) = lease.router {
                ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    &nic,
                ])?;
            }
            if !lease.dns.is_empty() {
                let conf: String = lease
                    .dns
                    .iter()
                    .map(|d| format!("nameserver {d}\n"))
                    .collect();
                // /etc is read-only: resolv.conf lives in /run (the image links it).
                let _ = std::fs::write("/run/resolv.conf", conf);
            }
            let summary = format!(
                "{nic} {}/{} (dhcp from {}, {} s) via {:?}",
                lease.addr, lease.prefix, lease.server, lease.lease_secs, lease.router
            );
            let (nic2, addr) = (nic.clone(), lease.addr);
            std::thread::spawn(move || keep_lease(&nic2, lease));
            Ok((summary, addr))
        }
    }
}

/// When to renew a lease of `secs` (RFC 2131's T1, half the lease), and when to retry a failed
/// renewal while `left` seconds of it remain (half of what is left, at least 10 s).
pub fn renew_after(secs: u32, failed_with_left: Option<u32>) -> Duration {
    match failed_with_left {
        None => Duration::from_secs(u64::from(secs / 2).max(10)),
        Some(left) => Duration::from_secs(u64::from(left / 2).max(10)),
    }
}

/// Renews the DHCP lease for as long as the node runs, moving the address if the server hands
/// out another one: a node on a real LAN outlives its lease.
fn keep_lease(nic: &str, mut lease: dhcp::Lease) {
    let mut granted = Instant::now();
    let mut failed = None;
    loop {
        std::thread::sleep(renew_after(lease.lease_secs, failed));
        match dhcp::acquire(nic, Duration::from_secs(30)) {
            Ok(new) => {
                if (new.addr, new.prefix) != (lease.addr, lease.prefix) {
                    say(&format!(
                        "dhcp: address moved from {}/{} to {}/{}",
                        lease.addr, lease.prefix, new.addr, new.prefix
                    ));
                    let add = format!("{}/{}", new.addr, new.prefix);
                    let del = format!("{}/{}", lease.addr, lease.prefix);
                    let r = ip(&["addr", "add", &add, "dev", nic])
                        .and_then(|()| ip(&["addr", "del", &del, "dev", nic]));
                    if let Err(e) = r {
                        say(&format!("dhcp: {e}"));
                    }
                }
                if let Some(gw) = new.router {
                    let _ = ip(&[
                        "route",
                        "replace",
                        "default",
                        "via",
                        &gw.to_string(),
                        "dev",
                        nic,
                    ]);
                }
                lease = new;
                granted = Instant::now();
                failed = None;
            }
            Err(e) => {
                let left = u64::from(lease.lease_secs).saturating_sub(granted.elapsed().as_secs());
                say(&format!(
                    "dhcp renewal on {nic}: {e}; {left} s of the lease left"
                ));
                failed = Some(u32::try_from(left).unwrap_or(u32::MAX));
            }
        }
    }
}

/// Finds and mounts the boot medium (a FAT filesystem labelled [`BOOT_LABEL`]: the USB stick
/// the image boots from) read-write at [`BOOT_MOUNT`]. It keeps the key root, which must not
/// live on a data pool. `None` when there is none.
pub fn mount_boot_medium() -> Option<PathBuf> {
    let out = Command::new(tool("blkid"))
        .args(["-t", &format!("LABEL={BOOT_LABEL}"), "-o", "device"])
        .output()
        .ok()?;
    let dev = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    if dev.is_empty() {
        return None;
    }
    let _ = std::fs::create_dir_all(BOOT_MOUNT);
    // quiet: chmod succeeds silently (the key root's owner-only checks); the masks make every
    // file 0600 and directory 0700.
    match mount(
        Some(dev.as_str()),
        BOOT_MOUNT,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("fmask=0177,dmask=0077,quiet,flush"),
    ) {
        Ok(()) => Some(PathBuf::from(BOOT_MOUNT)),
        Err(e) => {
            say(&format!("boot medium {dev}: {e}"));
            None
        }
    }
}

/// Why PID 1 stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Power off (power button, SIGTERM).
    PowerOff,
    /// Reboot (Ctrl-Alt-Del, SIGINT).
    Reboot,
}

/// Events PID 1 waits on.
enum Event {
    Stop(Stop),
}

/// Watches every input device named "Power Button" (the ACPI button driver's) for KEY_POWER.
fn watch_power_button(tx: mpsc::Sender<Event>) {
    let Ok(rd) = std::fs::read_dir("/sys/class/input") else {
        say("no /sys/class/input: the power button is not watched");
        return;
    };
    let mut seen = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        seen.push(format!("{name}={}", dev_name.trim()));
        if !dev_name.contains("Power Button") {
            continue;
        }
        say(&format!("power button: /dev/input/{name}"));
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let Ok(mut f) = std::fs::File::open(format!("/dev/input/{name}")) else {
                return;
            };
            // struct input_event on 64-bit: timeval (16), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                // EV_KEY, KEY_POWER, pressed
                if kind == 1 && code == 116 && value == 1 {
                    let _ = tx.send(Event::Stop(Stop::PowerOff));
                    return;
                }
            }
        });
        return;
    }
    say(&format!("no power button among the input devices {seen:?}"));
}

/// A started node, and the trial PID 1 judges it by when it runs a release on trial.
#[derive(Debug)]
pub struct Started {
    /// The node's process id.
    pub pid: u32,
    /// Set when the node runs a slot on trial.
    pub trial: Option<Trial>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Takes the node's request from [`REQUEST_FILE`] (one word), if there is one.
fn take_request() -> Option<String> {
    let r = std::fs::read_to_string(REQUEST_FILE).ok()?;
    let _ = std::fs::remove_file(REQUEST_FILE);
    Some(r.trim().to_string())
}

/// Runs `spawn()` (the node) under supervision until a stop: restarts it with backoff when it
/// exits, reaps every other process, acts on the node's requests ([`REQUEST_FILE`]: `switch`
/// restarts it onto a newly installed release, prepared by `prestage()` while the old node still
/// runs; `reboot` reboots cleanly), judges a release on
/// trial (health marker, exit, deadline: a failed trial is stopped and `rollback(reason)`
/// called before the next start), then stops it and powers off (or reboots). `preflight` is
/// asked before each start: `Err(why)` is said on the console and retried later (a node
/// without disks or without a farm). Never returns.
pub fn supervise(
    mut preflight: impl FnMut() -> Result<(), String>,
    mut prestage: impl FnMut(),
    mut spawn: impl FnMut() -> std::io::Result<Started>,
    mut rollback: impl FnMut(&str),
) -> ! {
    let (tx, rx) = mpsc::channel();
    signals(tx.clone());
    watch_power_button(tx.clone());
    let mut node: Option<u32> = None;
    let mut trial: Option<Trial> = None;
    let mut backoff = Duration::from_secs(2);
    let mut next_start = Instant::now();
    let mut started = Instant::now();
    let stop = loop {
        let was_running = node.is_some();
        let exit = reap(&mut node);
        if was_running && node.is_none() {
            if let Some(t) = trial.take() {
                // A release on trial that dies is not restarted: the known-good one is.
                let status = exit.unwrap_or_else(|| "unknown status".into());
                if let Verdict::Failed(why) = judge(&t, now_secs(), None, Some(&status)) {
                    fail_trial(&why, &mut rollback);
                }
                next_start = Instant::now();
            } else {
                // A node that dies young is restarted less and less often (up to a minute);
                // one that ran a while starts again promptly.
                if started.elapsed() < Duration::from_secs(60) {
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                } else {
                    backoff = Duration::from_secs(2);
                }
                say(&format!("restarting the node in {backoff:?}"));
                next_start = Instant::now() + backoff;
            }
        }
        if let (Some(t), Some(_)) = (&trial, node) {
            let marker = std::fs::read_to_string(HEALTHY_FILE).ok();
            match judge(t, now_secs(), marker.as_deref(), None) {
                Verdict::Waiting => {}
                Verdict::Healthy => {
                    say(&format!("release {} is healthy", t.version));
                    trial = None;
                }
                Verdict::Failed(why) => {
                    stop_node(&mut node);
                    trial = None;
                    fail_trial(&why, &mut rollback);
                    next_start = Instant::now();
                }
            }
        }
        match take_request().as_deref() {
            None => {}
            Some("switch") => {
                say("the node installed a release: restarting it on the new slot");
                // The new release is verified and copied while the old node still serves:
                // its workloads are down only from its stop to the new node's start.
                prestage();
                stop_node(&mut node);
                trial = None;
                backoff = Duration::from_secs(2);
                next_start = Instant::now();
            }
            Some("reboot") => break Stop::Reboot,
            Some(other) => say(&format!("unknown request from the node: {other:?}")),
        }
        if node.is_none() && Instant::now() >= next_start {
            // What a dead node left mounted (its pools) is released first: a mounted disk is
            // not offered to the next start.
            unmount_all();
            match preflight() {
                Err(why) => {
                    say(&format!("not starting the node: {why}; retrying in 30 s"));
                    next_start = Instant::now() + Duration::from_secs(30);
                }
                Ok(()) => {
                    // A marker from an earlier run proves nothing about this one.
                    let _ = std::fs::remove_file(HEALTHY_FILE);
                    match spawn() {
                        Ok(mut s) => {
                            // The window counts from now, when the trial really starts
                            // (staging and the old node's stop come before).
                            if let Some(t) = s.trial.as_mut() {
                                t.deadline = crate::bootstrap::trial_deadline(
                                    t.deadline,
                                    t.window,
                                    now_secs(),
                                );
                            }
                            say(&format!("node started (pid {})", s.pid));
                            node = Some(s.pid);
                            if let Some(t) = &s.trial {
                                say(&format!(
                                    "release {} on trial: it must be healthy within {} s",
                                    t.version,
                                    t.deadline.saturating_sub(now_secs())
                                ));
                            }
                            trial = s.trial;
                            started = Instant::now();
                        }
                        Err(e) => {
                            say(&format!(
                                "cannot start the node: {e}; retrying in {backoff:?}"
                            ));
                            next_start = Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            }
        }
        if let Ok(Event::Stop(s)) = rx.recv_timeout(Duration::from_millis(200)) {
            break s;
        }
    };
    say(&format!("{stop:?} requested: stopping the node"));
    stop_node(&mut node);
    // Everything else: TERM, a moment, KILL (kill(-1) spares PID 1).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let mut none = None;
    reap(&mut none);
    nix::unistd::sync();
    let _ = nix::mount::umount2(BOOT_MOUNT, nix::mount::MntFlags::empty());
    unmount_all();
    nix::unistd::sync();
    say("bye");
    let mode = match stop {
        Stop::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Stop::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let _ = nix::sys::reboot::reboot(mode);
    // reboot(2) only returns on error; PID 1 must never exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A failed trial: said on the console, its pools released, the rollback recorded.
fn fail_trial(why: &str, rollback: &mut impl FnMut(&str)) {
    say(&format!("release trial failed: {why}: rolling back"));
    unmount_all();
    rollback(why);
}

/// SIGTERM to the node, then up to 60 s for it to stop (its workloads' servers and pools),
/// then SIGKILL.
fn stop_node(node: &mut Option<u32>) {
    let Some(pid) = *node else { return };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.is_some() && Instant::now() < deadline {
        reap(node);
        std::thread::sleep(Duration::from_millis(100));
    }
    if node.is_some() {
        say("the node did not stop in 60 s: killing it");
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        while node.is_some() {
            reap(node);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Unmounts what the node left mounted (pools), deepest first.
fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(DATA_DIR) || t.starts_with("/mnt/"))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Err(e) = nix::mount::umount2(t, nix::mount::MntFlags::empty()) {
            say(&format!("umount {t}: {e}"));
        }
    }
}

/// Reaps every exited child; returns the node's exit status when it was among them.
fn reap(node: &mut Option<u32>) -> Option<String> {
    let mut node_exit = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return node_exit,
            Ok(st) => {
                let pid = st.pid().map(|p| p.as_raw() as u32);
                if pid.is_some() && pid == *node {
                    say(&format!("the node exited: {st:?}"));
                    node_exit = Some(match st {
                        WaitStatus::Exited(_, c) => format!("exit status {c}"),
                        WaitStatus::Signaled(_, s, _) => format!("killed by {s}"),
                        other => format!("{other:?}"),
                    });
                    *node = None;
                }
            }
        }
    }
}

/// Starts `exe args…` with PID 1's environment plus `env`, the signal mask cleared and the
/// signals PID 1 blocks or ignores back at their defaults. std's spawn hands a child PID 1's
/// blocked SIGTERM: a release that does not unblock it itself (any program but zos) would
/// ignore the stop and be killed only after the 60 s grace.
pub fn spawn_clean(
    exe: &std::path::Path,
    args: &[String],
    env: &[(&str, &str)],
) -> std::io::Result<u32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;

    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
    use nix::sys::signal::SigSet;
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("a NUL byte in an argument"));
    let mut argv = vec![cstr(exe.as_os_str().as_bytes())?];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if env.iter().any(|(n, _)| k.as_bytes() == n.as_bytes()) {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstr(&kv)?);
    }
    for (k, v) in env {
        envp.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut defaults = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        defaults.add(sig);
    }
    attr.set_sigdefault(&defaults)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let actions = PosixSpawnFileActions::init()?;
    let pid = posix_spawn(exe.as_os_str(), &actions, &attr, &argv, &envp)?;
    u32::try_from(pid.as_raw()).map_err(|_| std::io::Error::other("negative pid"))
}

/// SIGTERM → power off, SIGINT (Ctrl-Alt-Del) → reboot. PID 1 ignores signals it has no
/// handler for, so they are blocked in every thread (this runs before any thread starts) and
/// taken with sigwait on one. The node is started with a clean mask ([`spawn_clean`]); zos also
/// unblocks them first thing in main(), for its own children of other parents.
fn signals(tx: mpsc::Sender<Event>) {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        say(&format!(
            "no signal handling ({e}): the power button still works"
        ));
        return;
    }
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let s = if sig == Signal::SIGINT {
                Stop::Reboot
            } else {
                Stop::PowerOff
            };
            let _ = tx.send(Event::Stop(s));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node starts with nothing blocked or ignored, whatever PID 1 blocked, and with its
    /// arguments and environment.
    #[test]
    fn children_start_with_a_clean_signal_mask() {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(Signal::SIGTERM);
        // This thread's mask is what posix_spawn would hand down without the reset.
        set.thread_block().unwrap();
        let pid = spawn_clean(
            std::path::Path::new("/bin/sleep"),
            &["30".to_string()],
            &[("ZOS_SPAWN_TEST", "yes")],
        )
        .unwrap();
        set.thread_unblock().unwrap();
        // posix_spawn returns once exec has begun (vfork): the new image's arguments and
        // environment are in place a moment later.
        let end = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/environ")).map_or(true, |e| e.is_empty())
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let mask = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        assert_eq!(mask("SigBlk:"), 0, "{status}");
        let term_pipe =
            (1u64 << (Signal::SIGTERM as u32 - 1)) | (1 << (Signal::SIGPIPE as u32 - 1));
        assert_eq!(mask("SigIgn:") & term_pipe, 0, "{status}");
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|e| e == b"ZOS_SPAWN_TEST=yes")
        );
        assert_eq!(cmdline, b"/bin/sleep\x0030\x00");
    }

    #[test]
    fn leases_renew_at_half_and_retry_at_half_of_what_is_left() {
        assert_eq!(renew_after(86_400, None), Duration::from_secs(43_200));
        assert_eq!(renew_after(3_600, Some(1_000)), Duration::from_secs(500));
        // Never a busy loop, even on a silly lease.
        assert_eq!(renew_after(0, None), Duration::from_secs(10));
        assert_eq!(renew_after(3_600, Some(0)), Duration::from_secs(10));
    }
}
