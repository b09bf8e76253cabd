//! `zos up` end to end: a grid in a subprocess, an example deployed with the CLI, a redis
//! client on the namespace, cancel, and a clean stop that leaves no loop device or mount.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/up.rs"]
mod up;
use up::{can_run_pools, free_port, interrupt, release_dir, stdout_lines, zos};

/// Kills `zos up` and removes whatever it left, even when the test fails half-way.
struct Grid {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Grid {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn client(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(zos())
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

    fn leftovers(&self) -> Vec<String> {
        let data = self.data().display().to_string();
        let mut left: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&data))
            .map(str::to_string)
            .collect();
        let loops = Command::new("losetup").arg("-a").output().unwrap();
        left.extend(
            String::from_utf8_lossy(&loops.stdout)
                .lines()
                .filter(|l| l.contains(&data))
                .map(str::to_string),
        );
        left
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

fn start_grid() -> Grid {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (free_port(), free_port());
    let child = Command::new(zos())
        .args([
            "up",
            "--ssd",
            "2GiB",
            "--hdd",
            "2GiB",
            "--metrics-port",
            "0",
        ])
        .args([
            "--ledger-port",
            &l.to_string(),
            "--relay-port",
            &r.to_string(),
        ])
        // Its own gateway ports: tests run in parallel, and zos up's defaults are fixed.
        .args(["--gateway-port", &free_port().to_string()])
        .args(["--gateway-http-port", &free_port().to_string()])
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("ZOS_CONFIG", dir.path().join("config.toml"))
        .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut grid = Grid {
        child: Some(child),
        dir,
    };
    let rx = stdout_lines(grid.child.as_mut().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("grid is up") => break,
            Ok(_) => {}
            Err(_) => panic!("zos up did not come up within 120 s"),
        }
    }
    grid
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

#[test]
fn up_deploy_use_cancel_stop() {
    if let Err(why) = can_run_pools() {
        eprintln!("SKIP: up_deploy_use_cancel_stop needs loop devices and btrfs: {why}");
        return;
    }
    let mut grid = start_grid();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/zdb.yaml");
    let (code, out, err) = grid.client(&["deploy", example.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "deploy failed: {err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap();
    let result = &d["workloads"][0]["result"];
    assert_eq!(result["state"], "ok");
    let ns = result["data"]["Namespace"].as_str().unwrap().to_string();
    let port = result["data"]["Port"].as_u64().unwrap() as u16;
    // The key root (disk keys) is under the grid's directory, 0600, outside every pool.
    let key_root = grid.data().join("node/key-root");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_root).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", key_root.display());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let data = grid.data().display().to_string();
    let pools: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&data))
        .collect();
    assert_eq!(pools.len(), 2, "the grid's two pools: {pools:?}");
    for pool in pools {
        assert!(!key_root.starts_with(pool), "key root on pool {pool}");
        assert!(
            Path::new(pool).join("seed.txt").is_file(),
            "seed mirrored on {pool}"
        );
    }
    assert!(
        !out.contains("s3cret-pass"),
        "secrets must be redacted: {out}"
    );

    let mut con = redis_select(port, &ns, "s3cret-pass").unwrap();
    let key: Vec<u8> = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query(&mut con)
        .unwrap();
    assert_eq!(key, b"greeting");
    let v: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
    assert_eq!(v, "hello");
    assert!(
        redis_select(port, &ns, "wrong").is_err(),
        "a wrong password must be refused"
    );

    let (code, _, err) = grid.client(&["cancel", &contract.to_string()]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = grid.client(&["deployments", "--json"]);
        let gone = serde_json::from_str::<Vec<Value>>(&out).is_ok_and(|v| v.is_empty());
        if gone && redis_select(port, &ns, "s3cret-pass").is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canceled deployment is still there: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stop like a user does (Ctrl-C) and check nothing is left attached or mounted.
    let mut child = grid.child.take().unwrap();
    let status =
        interrupt(&mut child, Duration::from_secs(60)).expect("zos up did not stop within 60 s");
    assert!(status.success(), "zos up exited with {status}");
    assert_eq!(
        grid.leftovers(),
        Vec::<String>::new(),
        "left behind after stop"
    );
}

#[test]
fn missing_configuration_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(zos())
        .args(["deployments"])
        .env("ZOS_CONFIG", dir.path().join("none.toml"))
        .env_remove("ZOS_LEDGER")
        .env_remove("ZOS_RELAY")
        .env_remove("ZOS_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("run `zos up`"), "{err}");
}

#[test]
fn a_spec_error_names_the_line_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "name: x\nworkloads:\n  db:\n    zdb:\n      size: 1GiB\n      pasword: p\n",
    )
    .unwrap();
    let out = Command::new(zos())
        .arg("deploy")
        .arg(&spec)
        .env("ZOS_CONFIG", dir.path().join("none.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("pasword") && err.contains("line 6") && err.contains("bad.yaml"),
        "{err}"
    );
}

/// The volume's directory on whichever pool it landed.
fn volume_dir(grid: &Grid, wlid: &str) -> PathBuf {
    let data = grid.data().display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&data))
        .map(|m| Path::new(m).join(wlid))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("volume {wlid} not found on any pool"))
}

#[test]
fn volume_snapshot_and_restore_through_the_cli() {
    if let Err(why) = can_run_pools() {
        eprintln!(
            "SKIP: volume_snapshot_and_restore_through_the_cli needs loop devices and btrfs: {why}"
        );
        return;
    }
    let grid = start_grid();
    let spec = grid.dir.path().join("vol.yaml");
    std::fs::write(
        &spec,
        "name: files\nworkloads:\n  data:\n    volume: { size: 256MiB }\n",
    )
    .unwrap();
    let (code, out, err) = grid.client(&["deploy", spec.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let contract = d["contract_id"].as_u64().unwrap().to_string();
    let wlid = d["workloads"][0]["result"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = volume_dir(&grid, &wlid).join("state");
    std::fs::write(&file, "before").unwrap();

    // Growing the volume is an update: the node snapshots it first.
    std::fs::write(
        &spec,
        "name: files\nworkloads:\n  data:\n    volume: { size: 512MiB }\n",
    )
    .unwrap();
    let (code, _, err) = grid.client(&["deploy", spec.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&file, "after").unwrap();

    let (code, out, err) = grid.client(&["volume", "snapshots", &contract, "data", "--json"]);
    assert_eq!(code, 0, "{err}");
    let snaps: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(!snaps.is_empty(), "no snapshot after an update: {out}");
    let snap = snaps.last().unwrap()["name"].as_str().unwrap().to_string();

    let (code, out, err) = grid.client(&["volume", "restore", &contract, "data", &snap, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("saved_as"), "{out}");
    assert_eq!(
        std::fs::read_to_string(volume_dir(&grid, &wlid).join("state")).unwrap(),
        "before"
    );

    // Another twin's view: a volume that is not the caller's is not found.
    let (code, _, _) = grid.client(&["volume", "snapshots", "999", "data"]);
    assert_eq!(code, 1);
}

/// The user's contracts on the ledger (`zos contracts`, which finds the ledger in the config
/// `zos up` wrote) that are still active, with their `deployment_data` (the spec's name).
fn active_contracts(grid: &Grid) -> Vec<(u64, String)> {
    let (code, out, err) = grid.client(&["contracts"]);
    assert_eq!(code, 0, "zos contracts: {err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.iter()
        .filter(|c| c["state"] == "created" || c["state"].get("grace_period").is_some())
        .map(|c| {
            (
                c["id"].as_u64().unwrap(),
                c["kind"]["node"]["deployment_data"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn write_spec(grid: &Grid, file: &str, text: &str) -> String {
    let path = grid.dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Failed deployments (issue 13), through the real binary on `zos up`: a new deployment
/// whose workloads fail leaves no active contract; `--keep-on-error` keeps it, `zos
/// deployments --all` shows it, and the corrected spec updates that same contract (the
/// failed workload is provisioned again); a partly failed update is rolled back.
#[test]
fn failed_deployments_leave_no_bill() {
    if let Err(why) = can_run_pools() {
        eprintln!("SKIP: failed_deployments_leave_no_bill needs loop devices and btrfs: {why}");
        return;
    }
    let grid = start_grid();
    // `node: 1` skips the client's own capacity check, so the node's refusal is what we see.
    let three = |big: &str| {
        format!(
            "name: three\nnode: 1\nworkloads:\n  one:\n    zdb: {{ size: 64MiB, password: pw1 }}\n  \
             two:\n    zdb: {{ size: {big}, password: pw2 }}\n  tre:\n    zdb: {{ size: 64MiB, password: pw3 }}\n"
        )
    };
    let bad = write_spec(&grid, "three.yaml", &three("100TiB"));

    // 1. A new deployment with one of three workloads failing: canceled, nothing billed.
    let (code, _, err) = grid.client(&["deploy", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("workload \"two\"") && err.contains("canceled"),
        "each failed workload and the cancel are said: {err}"
    );
    assert!(
        !err.contains("workload \"one\"") && !err.contains("workload \"tre\""),
        "{err}"
    );
    assert_eq!(active_contracts(&grid), vec![], "no active contract left");

    // 2. --keep-on-error keeps it; `zos deployments --all` lists it with the error.
    let (code, _, err) = grid.client(&["deploy", &bad, "--keep-on-error"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--keep-on-error") && err.contains("workload \"two\""),
        "{err}"
    );
    let kept = active_contracts(&grid);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept_id = kept[0].0;
    let (code, out, err) = grid.client(&["deployments", "--all", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let shown = list
        .iter()
        .find(|d| d["contract_id"] == kept_id)
        .unwrap_or_else(|| panic!("contract {kept_id} not in --all: {out}"));
    let two = shown["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "two")
        .unwrap();
    assert_eq!(two["result"]["state"], "error", "{shown}");
    let (_, human, _) = grid.client(&["deployments", "--all"]);
    assert!(human.contains("failed workloads"), "{human}");

    // 3. The corrected spec updates the kept contract (no second one), and the failed
    //    workload is provisioned again instead of failing with "… not found".
    let good = write_spec(&grid, "three.yaml", &three("64MiB"));
    let (code, out, err) = grid.client(&["deploy", &good, "--json"]);
    assert_eq!(code, 0, "the corrected spec deploys: {err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["contract_id"], kept_id, "updated in place");
    for w in d["workloads"].as_array().unwrap() {
        assert_eq!(w["result"]["state"], "ok", "{w}");
    }
    let two = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "two")
        .unwrap();
    let port = two["result"]["data"]["Port"].as_u64().unwrap() as u16;
    let ns = two["result"]["data"]["Namespace"].as_str().unwrap();
    redis_select(port, ns, "pw2").expect("the re-provisioned namespace answers");
    assert_eq!(
        active_contracts(&grid).len(),
        1,
        "one contract for the name"
    );

    // 4. A partly failed update (a new workload the node cannot hold) is rolled back: the
    //    previous workloads stay, the added one is removed, the contract stays active.
    let grown = format!(
        "{}  huge:\n    zdb: {{ size: 100TiB, password: pw4 }}\n",
        three("64MiB")
    );
    let grown = write_spec(&grid, "three.yaml", &grown);
    let (code, _, err) = grid.client(&["deploy", &grown]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("workload \"huge\"") && err.contains("rolled back"),
        "{err}"
    );
    let (code, out, err) = grid.client(&["status", &kept_id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["result"]["state"], "ok", "{w}");
            w["name"].as_str().unwrap()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["one", "tre", "two"], "{d}");
    assert!(
        d["version"].as_u64().unwrap() >= 3,
        "update + rollback: {d}"
    );
    redis_select(port, ns, "pw2").expect("the previous workloads kept serving");
    assert_eq!(active_contracts(&grid).len(), 1);
}
