//! `zos up` end to end as a user who is not root: the grid runs on directory pools and says
//! what is missing; an example deployed with the CLI works, a redis client reaches the
//! namespace, a volume and a disk land in the pool directories, snapshot calls are refused
//! with what to run; cancel removes everything, and a clean stop leaves nothing behind.
//!
//! CI runs as root, so `zos up` and the CLI run as `nobody` (uid/gid 65534) in a temp dir owned
//! by it; run as another user, the test uses that user as it is.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Proc, TempDir};
use serde_json::Value;

const NOBODY: u32 = 65534;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

/// A grid run by a non-root user. Field order is drop order: `zos up` is killed before its
/// directory is removed, also when the test fails half-way.
struct Grid {
    child: Option<Proc>,
    tmp: TempDir,
    /// `Some(uid)` when we are root and drop to that user; `None` when already not root.
    user: Option<u32>,
    bin: PathBuf,
}

impl Grid {
    fn data(&self) -> PathBuf {
        self.tmp.0.join("data")
    }

    /// A command run as the grid's user, with its own HOME and XDG directories.
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        let t = &self.tmp.0;
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", t.join("home"))
            .env("XDG_CONFIG_HOME", t.join("xdg/config"))
            .env("XDG_DATA_HOME", t.join("xdg/data"))
            .env("ZOS_CONFIG", t.join("config.toml"))
            .env("RUST_LOG", "warn")
            .current_dir(t);
        if let Some(uid) = self.user {
            // std also drops the supplementary groups when it changes uid as root.
            c.uid(uid).gid(uid);
        }
        c
    }

    fn client(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn deploy(&self, spec: &str) -> Value {
        let (code, out, err) = self.client(&["deploy", spec, "--json"]);
        assert_eq!(code, 0, "deploy {spec} failed: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Mounts and loop devices that mention our directory (there must be none, ever).
    fn mounts_and_loops(&self) -> Vec<String> {
        let dir = self.tmp.0.display().to_string();
        let mut left: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_string)
            .collect();
        if let Ok(out) = Command::new("losetup").arg("-a").output() {
            left.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(&dir))
                    .map(str::to_string),
            );
        }
        left
    }
}

/// Prepare the temp dir and find a `zos` binary the user can run (the build's, or a copy).
/// `Err` says why the test cannot run here.
fn prepare() -> Result<Grid, String> {
    let user = (euid() == 0).then_some(NOBODY);
    let tmp = TempDir::new();
    for d in ["home", "xdg/config", "xdg/data", "data"] {
        std::fs::create_dir_all(tmp.0.join(d)).unwrap();
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    std::fs::copy(examples.join("zdb.yaml"), tmp.0.join("zdb.yaml")).unwrap();
    std::fs::write(
        tmp.0.join("files.yaml"),
        "name: files\nworkloads:\n  data:\n    volume: { size: 256MiB }\n  disk:\n    zmount: { size: 512MiB }\n",
    )
    .unwrap();
    if let Some(uid) = user {
        chown_tree(&tmp.0, uid);
    }
    let mut grid = Grid {
        child: None,
        tmp,
        user,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_zos")),
    };
    let runs = |g: &Grid| {
        g.command()
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs(&grid) {
        // The build directory may not be reachable by that user: run a copy from the temp dir.
        let copy = grid.tmp.0.join("zos");
        std::fs::copy(&grid.bin, &copy).map_err(|e| format!("cannot copy the binary: {e}"))?;
        if let Some(uid) = user {
            chown_tree(&copy, uid);
        }
        grid.bin = copy;
        if !runs(&grid) {
            return Err(format!(
                "uid {user:?} cannot run {} nor a copy of it",
                env!("CARGO_BIN_EXE_zos")
            ));
        }
    }
    Ok(grid)
}

/// Start `zos up`; returns what it printed up to the end of its banner.
fn start(grid: &mut Grid) -> String {
    let (l, r) = (free_port(), free_port());
    let mut child = grid
        .command()
        .args([
            "up",
            "--ssd",
            "2GiB",
            "--hdd",
            "2GiB",
            "--metrics-port",
            "0",
        ])
        .args(["--ledger-port", &l.to_string()])
        .args(["--relay-port", &r.to_string()])
        // Its own gateway ports: tests run in parallel, and zos up's defaults are fixed.
        .args(["--gateway-port", &free_port().to_string()])
        .args(["--gateway-http-port", &free_port().to_string()])
        .arg("--data")
        .arg(grid.data())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    grid.child = Some(Proc(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut banner = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with("Ctrl-C stops the grid") {
                    return banner;
                }
            }
            Err(_) => panic!("zos up did not come up within 120 s; printed:\n{banner}"),
        }
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

/// Files under `dir` not owned by `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().map_while(Result::ok) {
            let m = e.path().symlink_metadata().unwrap();
            if m.uid() != uid {
                out.push(e.path());
            }
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

#[test]
fn up_without_root_on_directory_pools() {
    let mut grid = match prepare() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIP: up_without_root_on_directory_pools cannot run here: {why}");
            eprintln!("SKIP: (the non-root `zos up` path is NOT tested by this run)");
            return;
        }
    };
    let banner = start(&mut grid);
    for said in [
        "directory pools",
        "because not running as root",
        "MISSING: volume quotas",
        "snapshots",
        "run `zos up` as root",
    ] {
        assert!(
            banner.contains(said),
            "the banner must say {said:?}:\n{banner}"
        );
    }
    let pools = grid.data().join("pools");

    // The example: a namespace, reached with a redis client.
    let d = grid.deploy("zdb.yaml");
    let kv_contract = d["contract_id"].as_u64().unwrap().to_string();
    let result = &d["workloads"][0]["result"];
    assert_eq!(result["state"], "ok", "{d}");
    let ns = result["data"]["Namespace"].as_str().unwrap().to_string();
    let port = result["data"]["Port"].as_u64().unwrap() as u16;
    let mut con = redis_select(port, &ns, "s3cret-pass").unwrap();
    let _: Vec<u8> = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query(&mut con)
        .unwrap();
    let v: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
    assert_eq!(v, "hello");
    drop(con);
    assert!(redis_select(port, &ns, "wrong").is_err());
    assert!(
        pools.join("hdd/zdb/data").is_dir(),
        "ZeroDB data on the HDD pool directory"
    );

    // A volume and a disk in the SSD pool directory; snapshots refused with what to run.
    let have_qemu = Command::new("qemu-img").arg("--version").output().is_ok();
    let spec = if have_qemu {
        "files.yaml"
    } else {
        eprintln!(
            "SKIP (part): no qemu-img, so no zmount disk in up_without_root_on_directory_pools"
        );
        std::fs::write(
            grid.tmp.0.join("vol.yaml"),
            "name: files\nworkloads:\n  data:\n    volume: { size: 256MiB }\n",
        )
        .unwrap();
        if let Some(uid) = grid.user {
            chown_tree(&grid.tmp.0.join("vol.yaml"), uid);
        }
        "vol.yaml"
    };
    let d = grid.deploy(spec);
    let files_contract = d["contract_id"].as_u64().unwrap().to_string();
    let mut made = Vec::new();
    for w in d["workloads"].as_array().unwrap() {
        assert_eq!(w["result"]["state"], "ok", "{w}");
        let path = match w["type"].as_str().unwrap() {
            "volume" => pools
                .join("ssd")
                .join(w["result"]["data"]["id"].as_str().unwrap()),
            _ => pools
                .join("ssd/vdisks")
                .join(w["result"]["data"]["volume_id"].as_str().unwrap()),
        };
        assert!(path.exists(), "{} missing", path.display());
        made.push(path);
    }
    let (code, _, err) = grid.client(&["volume", "snapshots", &files_contract, "data"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("plain directory") && err.contains("`zos up` as root"),
        "the refusal says why and what to run: {err}"
    );

    // Cancel: the workloads go.
    for c in [&kv_contract, &files_contract] {
        let (code, _, err) = grid.client(&["cancel", c]);
        assert_eq!(code, 0, "{err}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = grid.client(&["deployments", "--json"]);
        let gone = serde_json::from_str::<Vec<Value>>(&out).is_ok_and(|v| v.is_empty())
            && redis_select(port, &ns, "s3cret-pass").is_err()
            && made.iter().all(|p| !p.exists());
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canceled deployments are still there: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stop like a user does (Ctrl-C): a clean exit, nothing left running, mounted or attached.
    let mut child = grid.child.take().unwrap();
    Command::new("kill")
        .arg("-INT")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "zos up did not stop within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "zos up exited with {status}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "ZeroDB still listening after stop"
    );
    assert_eq!(grid.mounts_and_loops(), Vec::<String>::new());
    if let Some(uid) = grid.user {
        assert_eq!(
            not_owned_by(&grid.tmp.0, uid),
            Vec::<PathBuf>::new(),
            "everything was made by the non-root user"
        );
    }
}
