//! QEMU processes: start, find again after an agent restart, restart after a crash (at most
//! 4 restarts in 2 minutes, then the VM is failed with the reason), pause/resume and stop
//! through QMP.
//!
//! A VM lives in its own directory: `qemu.pid` (the pid we started), `qmp.sock`,
//! `console.sock` (serial console, copied to `console.log` by [`crate::console`]),
//! `qemu.log` (QEMU's own stderr). QEMU runs in its own process group with its output in a
//! file, so signals to the agent's group and the agent's death do not reach it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::watch;

use crate::qmp;

/// How to (re)start one VM.
#[derive(Clone)]
pub struct Launch {
    /// QEMU arguments (without the binary).
    pub args: Vec<String>,
    /// Disk passphrases: `(fifo path named in a `-object secret,file=`, passphrase)`. The
    /// passphrase goes through a FIFO, never a file or the command line.
    pub secrets: Vec<(PathBuf, String)>,
    /// Processes QEMU connects to (virtiofsd), started before it at every (re)start; they
    /// exit when QEMU disconnects and are killed when the VM stops.
    pub helpers: Vec<Helper>,
    /// Where the console is served (see [`crate::console::serve`]): the network resource's
    /// namespace and `gateway:20000+octet`. None: only logged.
    pub console: Option<ConsoleAt>,
}

/// A console listen address.
#[derive(Debug, Clone)]
pub struct ConsoleAt {
    /// The namespace the address lives in (None: the agent's).
    pub netns: Option<String>,
    /// The address.
    pub addr: std::net::SocketAddr,
}

/// A process serving QEMU on a unix socket.
#[derive(Debug, Clone)]
pub struct Helper {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The socket it listens on (QEMU is started once it exists).
    pub socket: PathBuf,
}

/// Kills the helpers recorded in `dir/helpers.pid` that still run for `dir`.
fn kill_helpers(dir: &Path) {
    let pids = std::fs::read_to_string(dir.join("helpers.pid")).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if pid_alive(pid, dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = std::fs::remove_file(dir.join("helpers.pid"));
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("args", &self.args)
            .field("secrets", &self.secrets.len())
            .field("helpers", &self.helpers)
            .finish()
    }
}

/// Supervisor errors.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("starting qemu: {0}")]
    Start(String),
    /// The VM crashed too often and is not restarted any more.
    #[error("{0}")]
    Failed(String),
    /// The VM is not known or not running.
    #[error("vm {0} is not running")]
    NotRunning(String),
    /// QMP.
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    /// Files of the VM directory.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Crashes within [`SupervisorConfig::crash_window`] after which the VM is failed (upstream: 5).
    pub crash_limit: usize,
    /// Upstream: 2 minutes.
    pub crash_window: Duration,
    /// How long a stopping guest gets after an ACPI power-down before QEMU is told to quit.
    pub shutdown_grace: Duration,
    /// How long QEMU may take to open its QMP socket.
    pub start_timeout: Duration,
    /// The node's network namespace (`/run/netns/<name>`), where the bridges of its network
    /// resources and so the VMs' taps live; QEMU is started in it (`nsenter --net`) because a
    /// tap is opened in the namespace of the process. None: the agent's own.
    pub net_namespace: Option<String>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            crash_limit: 5,
            crash_window: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(30),
            net_namespace: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pid: Option<u32>,
    crashes: VecDeque<Instant>,
    restarts: u32,
    failed: Option<String>,
    stopping: bool,
}

struct Vm {
    dir: PathBuf,
    launch: Launch,
    state: Mutex<State>,
    stop: watch::Sender<bool>,
}

/// What [`Supervisor::ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Already supervised by this agent.
    Running,
    /// A QEMU left by a previous agent was found and re-attached.
    Attached,
    /// A new QEMU was started.
    Spawned,
}

/// The VMs of this node.
pub struct Supervisor {
    cfg: SupervisorConfig,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The QMP socket of a VM directory.
pub fn qmp_path(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// The console socket of a VM directory.
pub fn console_sock(dir: &Path) -> PathBuf {
    dir.join("console.sock")
}

/// The QEMU started for `dir` if it still runs: the recorded pid must be alive (not a zombie)
/// and its command line must name `dir` (a reused pid belongs to someone else).
pub fn live_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    pid_alive(pid, dir).then_some(pid)
}

fn pid_alive(pid: u32, dir: &Path) -> bool {
    let Some(cmdline) = zos_primitive::process::live_cmdline(pid) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len().max(1)).any(|w| w == needle)
}

fn qemu_log_tail(dir: &Path) -> String {
    let s = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
    let lines: Vec<&str> = s.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl Supervisor {
    /// A supervisor with no VMs yet.
    pub fn new(cfg: SupervisorConfig) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            cfg,
            vms: Mutex::default(),
        })
    }

    /// Makes VM `id` run from `dir` with `launch`: already supervised → nothing; a QEMU of a
    /// previous agent still running → re-attached; else started. A VM failed by the crash
    /// policy stays failed (its error) until [`Supervisor::stop`].
    pub async fn ensure(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        launch: Launch,
    ) -> Result<Started, VmError> {
        if let Some(vm) = lock(&self.vms).get(id).cloned() {
            let st = lock(&vm.state);
            if let Some(f) = &st.failed {
                return Err(VmError::Failed(f.clone()));
            }
            return Ok(Started::Running);
        }
        let (stop, stop_rx) = watch::channel(false);
        let vm = Arc::new(Vm {
            dir: dir.to_path_buf(),
            launch,
            state: Mutex::default(),
            stop,
        });
        // The console copier runs for the VM's whole life and reconnects across restarts.
        let (hub, hub_rx) = crate::console::hub();
        if let Some(at) = &vm.launch.console {
            tokio::spawn(crate::console::serve(
                at.netns.clone(),
                at.addr,
                dir.to_path_buf(),
                hub.clone(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(crate::console::run(
            console_sock(dir),
            crate::console::log_path(dir),
            crate::console::ROTATE_AT,
            hub,
            hub_rx,
            stop_rx,
        ));
        let (child, pid, how) = match live_pid(dir) {
            Some(pid) => {
                tracing::info!(vm = id, pid, "re-attached to a running qemu");
                (None, pid, Started::Attached)
            }
            None => match self.spawn(&vm).await {
                Ok((c, pid)) => (Some(c), pid, Started::Spawned),
                Err(e) => {
                    let _ = vm.stop.send(true);
                    return Err(e);
                }
            },
        };
        lock(&vm.state).pid = Some(pid);
        lock(&self.vms).insert(id.to_string(), vm.clone());
        tokio::spawn(self.clone().monitor(id.to_string(), vm, child, pid));
        Ok(how)
    }

    async fn spawn(&self, vm: &Vm) -> Result<(Child, u32), VmError> {
        let dir = &vm.dir;
        let io = |what: &str| {
            let what = format!("{}/{what}", dir.display());
            move |e| VmError::Io(what, e)
        };
        for f in ["qmp.sock", "console.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        for (fifo, _) in &vm.launch.secrets {
            let _ = std::fs::remove_file(fifo);
            nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| VmError::Io(fifo.display().to_string(), e.into()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("qemu.log"))
            .map_err(io("qemu.log"))?;
        let log2 = log.try_clone().map_err(io("qemu.log"))?;
        self.start_helpers(vm).await?;
        // nsenter execs QEMU in place: the pid we record is QEMU's.
        let mut cmd = match &self.cfg.net_namespace {
            Some(ns) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(&self.cfg.qemu);
                c
            }
            None => tokio::process::Command::new(&self.cfg.qemu),
        };
        let mut child = cmd
            .args(&vm.launch.args)
            // Its own process group: a signal to the agent's group (Ctrl-C, a service
            // manager stopping the agent) does not stop the guests.
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                kill_helpers(dir);
                VmError::Start(format!("{}: {e}", self.cfg.qemu.display()))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| VmError::Start("qemu exited at once".into()))?;
        std::fs::write(dir.join("qemu.pid"), pid.to_string()).map_err(io("qemu.pid"))?;
        let deadline = Instant::now() + self.cfg.start_timeout;
        for (fifo, pass) in vm.launch.secrets.clone() {
            let r =
                tokio::task::spawn_blocking(move || write_fifo(&fifo, pass.as_bytes(), deadline))
                    .await
                    .map_err(|e| VmError::Start(e.to_string()))?;
            if let Err(e) = r {
                let _ = child.start_kill();
                let _ = child.wait().await;
                kill_helpers(dir);
                return Err(VmError::Start(format!(
                    "passing a disk key: {e}; qemu: {}",
                    qemu_log_tail(dir)
                )));
            }
        }
        // Started means QEMU answers on QMP (its devices and disks opened).
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                kill_helpers(dir);
                return Err(VmError::Start(format!(
                    "qemu exited ({status}): {}",
                    qemu_log_tail(dir)
                )));
            }
            if qmp::Qmp::connect(&qmp_path(dir)).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                kill_helpers(dir);
                return Err(VmError::Start(format!(
                    "no QMP socket after {:?}: {}",
                    self.cfg.start_timeout,
                    qemu_log_tail(dir)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (fifo, _) in &vm.launch.secrets {
            let _ = std::fs::remove_file(fifo);
        }
        Ok((child, pid))
    }

    /// Starts the VM's helpers (after killing any left from a previous QEMU) and waits for
    /// their sockets. Each runs in its own process group, as QEMU, and logs to `helpers.log`.
    async fn start_helpers(&self, vm: &Vm) -> Result<(), VmError> {
        let dir = &vm.dir;
        kill_helpers(dir);
        let mut pids = String::new();
        for h in &vm.launch.helpers {
            let _ = std::fs::remove_file(&h.socket);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("helpers.log"))
                .map_err(|e| VmError::Io(dir.join("helpers.log").display().to_string(), e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| VmError::Io("helpers.log".into(), e))?;
            let child = tokio::process::Command::new(&h.program)
                .args(&h.args)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log2)
                .kill_on_drop(false)
                .spawn()
                .map_err(|e| {
                    kill_helpers(dir);
                    VmError::Start(format!("{}: {e}", h.program.display()))
                })?;
            // The process is reaped by nobody while it runs; its exit is seen through /proc.
            if let Some(pid) = child.id() {
                pids += &format!("{pid}\n");
                std::fs::write(dir.join("helpers.pid"), &pids)
                    .map_err(|e| VmError::Io("helpers.pid".into(), e))?;
            }
            tokio::spawn(async move {
                let mut child = child;
                let _ = child.wait().await;
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !h.socket.exists() {
                if Instant::now() > deadline {
                    kill_helpers(dir);
                    let log = std::fs::read_to_string(dir.join("helpers.log")).unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    return Err(VmError::Start(format!(
                        "{} did not open {}: {tail}",
                        h.program.display(),
                        h.socket.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Waits for QEMU to exit and applies the crash policy.
    async fn monitor(self: Arc<Self>, id: String, vm: Arc<Vm>, child: Option<Child>, pid: u32) {
        let (mut child, mut pid) = (child, pid);
        // Detached (agent shutdown) or stopped: stop watching, leave the process alone.
        let mut detached = vm.stop.subscribe();
        loop {
            let exited = async {
                match child.as_mut() {
                    Some(c) => match c.wait().await {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    },
                    None => {
                        while pid_alive(pid, &vm.dir) {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        "exited (not our child: status unknown)".to_string()
                    }
                }
            };
            let how = tokio::select! {
                how = exited => how,
                _ = detached.wait_for(|d| *d) => return,
            };
            let now = Instant::now();
            {
                let mut st = lock(&vm.state);
                st.pid = None;
                if st.stopping {
                    return;
                }
                st.crashes.push_back(now);
                while st
                    .crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.cfg.crash_window)
                {
                    st.crashes.pop_front();
                }
                if st.crashes.len() >= self.cfg.crash_limit {
                    let why = format!(
                        "vm crashed {} times within {}s (last: qemu {how}; {}); not restarting",
                        st.crashes.len(),
                        self.cfg.crash_window.as_secs(),
                        qemu_log_tail(&vm.dir)
                    );
                    tracing::error!(vm = %id, "{why}");
                    st.failed = Some(why);
                    return;
                }
            }
            tracing::warn!(vm = %id, "qemu {how}: restarting");
            tokio::time::sleep(Duration::from_millis(500)).await;
            if lock(&vm.state).stopping {
                return;
            }
            match self.spawn(&vm).await {
                Ok((c, p)) => {
                    let mut st = lock(&vm.state);
                    st.restarts += 1;
                    st.pid = Some(p);
                    child = Some(c);
                    pid = p;
                }
                Err(e) => {
                    let why = format!("vm crashed and could not be restarted: {e}");
                    tracing::error!(vm = %id, "{why}");
                    lock(&vm.state).failed = Some(why);
                    return;
                }
            }
        }
    }

    /// The pid of VM `id`'s QEMU, when running.
    pub fn pid(&self, id: &str) -> Option<u32> {
        lock(&self.vms).get(id).and_then(|vm| lock(&vm.state).pid)
    }

    /// Restarts done by the crash policy.
    pub fn restarts(&self, id: &str) -> u32 {
        lock(&self.vms)
            .get(id)
            .map(|vm| lock(&vm.state).restarts)
            .unwrap_or(0)
    }

    /// Why VM `id` was given up on, if it was.
    pub fn failure(&self, id: &str) -> Option<String> {
        lock(&self.vms)
            .get(id)
            .and_then(|vm| lock(&vm.state).failed.clone())
    }

    /// QMP `query-status` of the VM in `dir`.
    pub async fn status(&self, dir: &Path) -> Result<String, VmError> {
        Ok(qmp::Qmp::connect(&qmp_path(dir)).await?.status().await?)
    }

    /// Stops the guest's CPUs (QMP `stop`).
    pub async fn pause(&self, dir: &Path) -> Result<(), VmError> {
        qmp::call(&qmp_path(dir), "stop", None).await?;
        Ok(())
    }

    /// Continues a paused guest (QMP `cont`).
    pub async fn resume(&self, dir: &Path) -> Result<(), VmError> {
        qmp::call(&qmp_path(dir), "cont", None).await?;
        Ok(())
    }

    /// Stops VM `id` (ACPI power-down, after the grace period QMP `quit`, then SIGKILL) and
    /// forgets it. A QEMU of a previous agent that was never re-attached is stopped too.
    pub async fn stop(&self, id: &str, dir: &Path) -> Result<(), VmError> {
        let vm = lock(&self.vms).remove(id);
        if let Some(vm) = &vm {
            lock(&vm.state).stopping = true;
        }
        let pid = vm
            .as_ref()
            .and_then(|vm| lock(&vm.state).pid)
            .or_else(|| live_pid(dir));
        if let Some(pid) = pid {
            let qmp = qmp_path(dir);
            let _ = qmp::call(&qmp, "system_powerdown", None).await;
            if !wait_gone(pid, dir, self.cfg.shutdown_grace).await {
                let _ = qmp::call(&qmp, "quit", None).await;
                if !wait_gone(pid, dir, Duration::from_secs(5)).await {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    wait_gone(pid, dir, Duration::from_secs(5)).await;
                }
            }
        }
        if let Some(vm) = vm {
            let _ = vm.stop.send(true);
        }
        kill_helpers(dir);
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        Ok(())
    }

    /// Stops supervising without stopping the guests (agent shutdown: QEMU keeps running and
    /// the next agent re-attaches).
    pub fn detach_all(&self) {
        for (_, vm) in lock(&self.vms).drain() {
            let _ = vm.stop.send(true);
        }
    }
}

async fn wait_gone(pid: u32, dir: &Path, within: Duration) -> bool {
    let end = Instant::now() + within;
    while pid_alive(pid, dir) {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Opens the FIFO for writing once QEMU opened it for reading, and writes `data`.
fn write_fifo(path: &Path, data: &[u8], deadline: Instant) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(mut f) => return f.write_all(data),
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
