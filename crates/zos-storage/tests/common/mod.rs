//! Test harness: unique loop files and runtime dirs per test, released by a Drop guard even
//! when the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use zos_storage::{LoopPoolSpec, PoolConfig, PoolKind, Storage, StorageConfig};

/// The host has 8 loop devices shared by every engineer: at most 4 in use by this binary.
static LOOPS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| tokio::sync::Semaphore::new(4));

/// Whether we can run: root, losetup, btrfs-progs, qemu-img. Prints a loud SKIP otherwise.
pub fn capable(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    let tools = [
        "losetup",
        "mkfs.btrfs",
        "btrfs",
        "qemu-img",
        "qemu-io",
        "chattr",
        "blkid",
        "mkfs.ext4",
    ];
    let missing: Vec<_> = tools
        .iter()
        .filter(|t| !zos_storage::exec::have(t))
        .collect();
    if !root || !missing.is_empty() || !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: {test}: needs root, /dev/loop-control and {missing:?} (root={root})");
        return false;
    }
    true
}

/// One test's sandbox.
pub struct Env {
    pub dir: PathBuf,
    pub runtime: PathBuf,
    pub specs: Vec<LoopPoolSpec>,
    _permits: tokio::sync::SemaphorePermit<'static>,
}

impl Env {
    /// `pools`: (name, size MiB, kind). Files live in a fresh temp dir.
    pub async fn new(test: &str, pools: &[(&str, u64, PoolKind)]) -> Env {
        let permits = LOOPS.acquire_many(pools.len() as u32).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("zos-storage-{test}-"))
            .tempdir()
            .unwrap()
            .keep();
        let specs = pools
            .iter()
            .map(|(name, mib, kind)| {
                // The label comes from the file stem: make it unique per test run.
                let stem = format!(
                    "{name}-{}",
                    dir.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .rsplit('-')
                        .next()
                        .unwrap()
                );
                LoopPoolSpec {
                    file: dir.join(format!("{stem}.img")),
                    size: mib << 20,
                    kind: *kind,
                }
            })
            .collect();
        Env {
            runtime: dir.join("run"),
            dir,
            specs,
            _permits: permits,
        }
    }

    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            runtime_dir: self.runtime.clone(),
            loop_pools: self.specs.clone(),
            dir_pools: Vec::new(),
            discover_disks: false,
        }
    }

    pub async fn storage(&self, seed: [u8; 32]) -> Storage {
        let mgr = Storage::start_pools(&self.pool_config()).await.unwrap();
        Storage::new(mgr, seed, StorageConfig::new(self.pool_config()))
    }
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Env {
    fn drop(&mut self) {
        // Unmount everything under our runtime dir (deepest first), then detach our loops.
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mounts: Vec<String> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.dir))
                .map(str::to_string)
                .collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                if sh("umount", &[&m]).is_none() {
                    let _ = sh("umount", &["-l", &m]);
                }
            }
        }
        for spec in &self.specs {
            if let Some(devs) = sh(
                "losetup",
                &["-n", "-O", "NAME", "-j", &spec.file.to_string_lossy()],
            ) {
                for d in devs.lines().map(str::trim).filter(|d| !d.is_empty()) {
                    let _ = sh("losetup", &["-d", d]);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `path` is mounted.
pub fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// Loop devices attached to `file`.
pub fn loops_of(file: &Path) -> Vec<String> {
    sh(
        "losetup",
        &["-n", "-O", "NAME", "-j", &file.to_string_lossy()],
    )
    .unwrap_or_default()
    .lines()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
    .collect()
}

/// Run qemu-io on an encrypted image with `key` on stdin; returns (success, stdout+stderr).
pub fn qemu_io(image: &Path, key: &str, cmd: &str) -> (bool, String) {
    use std::io::Write;
    let opts = format!(
        "driver=qcow2,file.filename={},encrypt.key-secret=s0",
        image.display()
    );
    let mut child = Command::new("qemu-io")
        .args([
            "--object",
            "secret,id=s0,file=/dev/stdin",
            "--image-opts",
            &opts,
            "-c",
            cmd,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io exits 0 even when a read -P pattern mismatches; look at the text too.
    (
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("can't open"),
        text,
    )
}

/// Whether `hay` contains a run of `n` bytes equal to `b`.
pub fn has_run(hay: &[u8], b: u8, n: usize) -> bool {
    let mut run = 0;
    for &x in hay {
        if x == b {
            run += 1;
            if run >= n {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Create an encrypted qcow2 image the way the previous version did (a passphrase on stdin, no
/// key record). Retried like the storage's own creation: qemu's PBKDF2 calibration can read
/// 0 ms of thread CPU and give up ("Unable to get accurate CPU usage") on a busy host.
#[allow(dead_code)]
pub fn qemu_img_create_luks(image: &Path, key: &str, size: &str) {
    let mut last = None;
    for _ in 0..10 {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s {key} | qemu-img create -q -f qcow2 --object secret,id=s0,file=/dev/stdin \
                 -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 {} {size}",
                image.display()
            ))
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let calibration = String::from_utf8_lossy(&out.stderr).contains("accurate CPU usage");
        last = Some(out);
        if !calibration {
            break;
        }
    }
    panic!("qemu-img create {}: {last:?}", image.display());
}
