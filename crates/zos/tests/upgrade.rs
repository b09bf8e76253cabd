//! Upgrade from the previous version (issue 14's "Migration"): the previous release's `zos up`
//! (built from `scripts/previous-version` by `scripts/build-previous.sh`) makes a grid and a
//! deployment with data in a ZeroDB namespace, a volume and a zmount disk; this build's `zos up`
//! then starts on the same directory and must find all of it.
//!
//! Needs root, loop devices and btrfs (SKIP otherwise), and the previous binary: without it the
//! test SKIPs loudly, unless `ZOS_UPGRADE_TEST` is set (CI: `scripts/test` builds it), then it
//! fails. `ZOS_PREVIOUS_BIN` points at another binary.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/up.rs"]
mod up;
use up::{can_run_pools, free_port, interrupt, release_dir, stdout_lines};

fn new_zos() -> &'static str {
    env!("CARGO_BIN_EXE_zos")
}

fn previous_zos() -> Option<PathBuf> {
    let path = std::env::var_os("ZOS_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/zos-previous/zos")
        });
    path.is_file().then_some(path)
}

/// A `qemu-img` for the previous version that retries LUKS creation when qemu's PBKDF2
/// calibration reads 0 ms of CPU ("Unable to get accurate CPU usage": about 1 create in 4 with
/// sha256 on SHA-NI hosts). The previous version tries once; this one uses sha512 and retries.
/// Without the shim the test would fail on that old bug, not on the upgrade.
fn previous_qemu_img_shim(dir: &Path) -> PathBuf {
    let real = Command::new("sh")
        .args(["-c", "command -v qemu-img"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "qemu-img is not installed");
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let script = format!(
        r#"#!/bin/sh
case "$*" in *encrypt.format=luks*) ;; *) exec {real} "$@" ;; esac
in=$(mktemp) err=$(mktemp)
cat > "$in"
i=0
while [ $i -lt 10 ]; do
    if {real} "$@" < "$in" 2> "$err"; then rm -f "$in" "$err"; exit 0; fi
    grep -q "accurate CPU usage" "$err" || break
    i=$((i + 1))
done
cat "$err" >&2
rm -f "$in" "$err"
exit 1
"#
    );
    let file = shim.join("qemu-img");
    std::fs::write(&file, script).unwrap();
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&file, perms).unwrap();
    shim
}

/// One grid directory, run by one `zos up` after the other; whatever a run leaves attached or
/// mounted is removed even when the test fails half-way.
struct Grid {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: [u16; 2],
}

impl Grid {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn client(&self, zos: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(zos)
            .args(args)
            .env("ZOS_CONFIG", self.dir.path().join("config.toml"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `zos up` and returns its node id (from the "grid is up" summary). `shim`: a
    /// directory put first on its PATH.
    fn up(&mut self, zos: &Path, shim: Option<&Path>) -> u64 {
        let mut cmd = Command::new(zos);
        if let Some(dir) = shim {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![dir.to_path_buf()];
            paths.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).unwrap());
        }
        let child = cmd
            .args([
                "up",
                "--ssd",
                "4GiB",
                "--hdd",
                "4GiB",
                "--metrics-port",
                "0",
            ])
            .args(["--ledger-port", &self.ports[0].to_string()])
            .args(["--relay-port", &self.ports[1].to_string()])
            // This version's gateway gets its own ports (tests run in parallel and zos up's
            // defaults are fixed); the previous release has no gateway.
            .args(if zos == Path::new(env!("CARGO_BIN_EXE_zos")) {
                vec![
                    "--gateway-port".to_string(),
                    free_port().to_string(),
                    "--gateway-http-port".to_string(),
                    free_port().to_string(),
                ]
            } else {
                Vec::new()
            })
            .arg("--data")
            .arg(self.data())
            .env("ZOS_CONFIG", self.dir.path().join("config.toml"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let rx = stdout_lines(self.child.as_mut().unwrap());
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut up = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("grid is up") => up = true,
                // "  node     7 in farm 1   (state in …)"
                Ok(line) if up && line.trim_start().starts_with("node ") => {
                    return line.split_whitespace().nth(1).unwrap().parse().unwrap();
                }
                Ok(_) => {}
                Err(_) => panic!("{} up did not come up within 180 s", zos.display()),
            }
        }
    }

    /// Stops `zos up` like a user does (Ctrl-C).
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = interrupt(&mut child, Duration::from_secs(60))
            .expect("zos up did not stop within 60 s");
        assert!(status.success(), "zos up exited with {status}");
    }

    /// A workload's directory or file on whichever pool it landed.
    fn on_pool(&self, name: &str) -> Option<PathBuf> {
        let data = self.data().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&data))
            .map(|m| Path::new(m).join(name))
            .find(|p| p.exists())
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        release_dir(&self.data());
    }
}

fn redis_select(port: u16, ns: &str, password: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection()?;
    redis::cmd("SELECT")
        .arg(ns)
        .arg(password)
        .query::<()>(&mut con)?;
    Ok(con)
}

/// examples/zdb-and-volume.yaml plus an encrypted zmount disk (its key is derived from the node
/// seed by the previous version: the new one must still open it).
fn spec(disk: &str) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/zdb-and-volume.yaml");
    let mut s = std::fs::read_to_string(example).unwrap();
    s.push_str(&format!("  disk:\n    zmount: {{ size: {disk} }}\n"));
    s
}

fn workload<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name} in {deployment}"))
}

#[test]
fn a_grid_made_by_the_previous_version_runs_on_this_one() {
    let Some(old) = previous_zos() else {
        assert!(
            std::env::var_os("ZOS_UPGRADE_TEST").is_none(),
            "ZOS_UPGRADE_TEST is set but the previous binary is missing: run scripts/build-previous.sh"
        );
        eprintln!(
            "SKIP: a_grid_made_by_the_previous_version_runs_on_this_one needs the previous \
             version's binary: run scripts/build-previous.sh (or set ZOS_PREVIOUS_BIN)"
        );
        return;
    };
    if let Err(why) = can_run_pools() {
        eprintln!("SKIP: the upgrade test needs loop devices and btrfs: {why}");
        return;
    }
    let new = Path::new(new_zos());
    let mut grid = Grid {
        child: None,
        dir: tempfile::tempdir().unwrap(),
        ports: [free_port(), free_port()],
    };

    // The previous version: a grid, a deployment, data in each workload.
    let shim = previous_qemu_img_shim(grid.dir.path());
    let node = grid.up(&old, Some(&shim));
    let spec_path = grid.dir.path().join("app.yaml");
    std::fs::write(&spec_path, spec("256MiB")).unwrap();
    let (code, out, err) = grid.client(&old, &["deploy", spec_path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "old deploy: {err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap();
    let kv = &workload(&d, "kv")["result"]["data"];
    let (ns, port) = (
        kv["Namespace"].as_str().unwrap().to_string(),
        kv["Port"].as_u64().unwrap() as u16,
    );
    let mut con = redis_select(port, &ns, "app-pass").unwrap();
    // A sequential namespace: the server picks the key.
    let key: Vec<u8> = redis::cmd("SET")
        .arg("")
        .arg("kept")
        .query(&mut con)
        .unwrap();
    drop(con);
    let volume_id = workload(&d, "files")["result"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disk_id = workload(&d, "disk")["result"]["data"]["volume_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(grid.on_pool(&volume_id).unwrap().join("note"), "from v1").unwrap();
    assert!(
        grid.on_pool(&format!("vdisks/{disk_id}")).is_some(),
        "old zmount disk on a pool"
    );
    grid.stop();

    // This version on the same directory.
    assert_eq!(grid.up(new, None), node, "the same node id");
    let (code, out, err) = grid.client(new, &["deployments", "--json"]);
    assert_eq!(code, 0, "deployments: {err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        listed
            .iter()
            .any(|d| d["contract_id"].as_u64() == Some(contract)),
        "deployment {contract} not listed after the upgrade: {out}"
    );
    let mut con = redis_select(port, &ns, "app-pass").unwrap();
    let v: String = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert_eq!(v, "kept");
    drop(con);
    assert_eq!(
        std::fs::read_to_string(grid.on_pool(&volume_id).unwrap().join("note")).unwrap(),
        "from v1"
    );
    assert!(
        grid.on_pool(&format!("vdisks/{disk_id}")).is_some(),
        "zmount disk after the upgrade"
    );

    // An update: growing the disk resizes the encrypted image, which needs its (legacy) key.
    std::fs::write(&spec_path, spec("512MiB")).unwrap();
    let (code, out, err) = grid.client(new, &["deploy", spec_path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "update after the upgrade: {err}\n{out}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        d["contract_id"].as_u64(),
        Some(contract),
        "updated in place"
    );
    for w in ["kv", "files", "disk"] {
        assert_eq!(workload(&d, w)["result"]["state"], "ok", "{w}: {out}");
    }
    let disk = grid.on_pool(&format!("vdisks/{disk_id}")).unwrap();
    match Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
    {
        Ok(o) if o.status.success() => {
            let info: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(info["virtual-size"], 512 << 20, "{info}");
            assert_eq!(
                info["encrypted"], true,
                "the v1 disk stays encrypted: {info}"
            );
        }
        _ => assert_eq!(std::fs::metadata(&disk).unwrap().len(), 512 << 20),
    }
    grid.stop();

    // The migrated ledger audits clean: legacy prefix re-executed, signed blocks after.
    let ledger = grid.data().join("ledger");
    let (code, out, err) = grid.client(
        new,
        &["ledger", "verify", "--data", ledger.to_str().unwrap()],
    );
    assert_eq!(code, 0, "ledger verify: {err}\n{out}");
}
