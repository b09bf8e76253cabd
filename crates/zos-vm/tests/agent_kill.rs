#![allow(clippy::unwrap_used, missing_docs)]
//! kill -9 of the agent: a child process (this test binary re-run as the "agent") starts a
//! guest through the supervisor and is killed with SIGKILL; QEMU keeps running, and a new
//! supervisor re-attaches to it (same pid, QMP answers), then still restarts it after a crash
//! and stops it. Needs qemu-system-x86_64 and the test guest (SKIPs loudly otherwise).

use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zos_vm::{Launch, Started, Supervisor, SupervisorConfig, supervisor};

const HELPER_ENV: &str = "ZOS_VM_AGENT_KILL_DIR";

/// The kernel and initrd of the test guest, built once per script version.
fn guest() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = ws.join("scripts/build-test-guest.sh");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&script).ok()?.hash(&mut h);
    let out = ws.join(format!("target/zos-test-guest/{:016x}", h.finish()));
    let ok = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .ok()?
        .success();
    ok.then_some(out)
}

fn launch(guest: &Path, dir: &Path) -> Launch {
    let d = |p: &Path| p.to_string_lossy().replace(',', ",,");
    let args = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-M",
        "pc",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-net",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-kernel".into(),
        guest.join("vmlinux").to_string_lossy().into_owned(),
        "-initrd".into(),
        guest.join("initrd.img").to_string_lossy().into_owned(),
        "-append".into(),
        "console=ttyS0 panic=-1 quiet".into(),
        "-chardev".into(),
        format!(
            "socket,id=con0,path={},server=on,wait=on",
            d(&supervisor::console_sock(dir))
        ),
        "-serial".into(),
        "chardev:con0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", d(&supervisor::qmp_path(dir))),
    ])
    .collect();
    Launch {
        args,
        secrets: Vec::new(),
        helpers: Vec::new(),
        console: None,
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The "agent" half: runs only when re-executed by the test below.
#[tokio::test]
async fn agent_helper() {
    let Some(dir) = std::env::var_os(HELPER_ENV).map(PathBuf::from) else {
        return;
    };
    let guest = PathBuf::from(std::env::var("ZOS_VM_AGENT_KILL_GUEST").unwrap());
    let sup = Supervisor::new(SupervisorConfig::default());
    let how = sup
        .ensure("agent-vm", &dir, launch(&guest, &dir))
        .await
        .unwrap();
    assert_eq!(how, Started::Spawned);
    println!("READY {}", sup.pid("agent-vm").unwrap());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_outlives_a_killed_agent_and_is_reattached() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    if !zos_storage::exec::have("qemu-system-x86_64") {
        eprintln!("SKIP: qemu_outlives_a_killed_agent: qemu-system-x86_64 missing");
        return;
    }
    let Some(guest) = guest() else {
        eprintln!("SKIP: qemu_outlives_a_killed_agent: the test guest cannot be built here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "agent_helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, &dir)
        .env("ZOS_VM_AGENT_KILL_GUEST", &guest)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let pid: u32 = loop {
        let l = lines.next().expect("agent ended before READY").unwrap();
        // libtest prints `test agent_helper ... ` on the same line first.
        if let Some((_, p)) = l.split_once("READY ") {
            break p.trim().parse().unwrap();
        }
    };
    // Whatever happens next, no QEMU of this test survives it.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(pid);

    // SIGKILL the agent: its guest keeps running.
    agent.kill().unwrap();
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(pid), "qemu died with its agent");

    // A new agent re-attaches: same process, QMP answers, the console is copied again.
    let sup = Supervisor::new(SupervisorConfig::default());
    let how = sup
        .ensure("agent-vm", &dir, launch(&guest, &dir))
        .await
        .unwrap();
    assert_eq!(how, Started::Attached);
    assert_eq!(sup.pid("agent-vm"), Some(pid));
    assert_eq!(sup.status(&dir).await.unwrap(), "running");
    let end = Instant::now() + Duration::from_secs(120);
    while !zos_vm::console::tail(&dir, 1 << 20)
        .map(|c| String::from_utf8_lossy(&c).contains("ZOS-INIT: started"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < end, "no console output after re-attach");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // It is supervised: a crash restarts it (watched through /proc: not our child).
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let new = loop {
        match sup.pid("agent-vm") {
            Some(p) if p != pid => break p,
            _ => {}
        }
        assert!(Instant::now() < end, "not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _reap2 = Reap(new);
    assert_eq!(sup.restarts("agent-vm"), 1);
    sup.stop("agent-vm", &dir).await.unwrap();
    assert!(!alive(new), "stop left qemu running");
}
