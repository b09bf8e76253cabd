#![allow(clippy::unwrap_used, missing_docs)]
//! ZeroDB servers as processes of their own (`zos zdb pool-server`, what `zos node run`
//! starts): a stopped node told to keep them leaves the server running, an open client
//! connection keeps working through the node's absence, and the next node re-attaches to the
//! same process (same pid, same port); kill -9 of the server → the supervisor starts a new one
//! on the same port with the data kept (--sync); a node not told to keep them stops them.
//! Directory pools: runs as any user.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zos_storage::{
    DirPoolSpec, NamespaceMode, NamespaceSpec, PoolConfig, PoolKind, ProcessZdb, Storage,
    StorageConfig,
};

const MIB: u64 = 1 << 20;

fn config(dir: &Path) -> PoolConfig {
    PoolConfig {
        runtime_dir: dir.join("run"),
        dir_pools: vec![DirPoolSpec {
            dir: dir.join("hdd"),
            size: 64 * MIB,
            kind: PoolKind::Hdd,
        }],
        ..Default::default()
    }
}

async fn node(dir: &Path, keep: bool) -> Storage {
    let cfg = config(dir);
    let mgr = Storage::start_pools(&cfg).await.unwrap();
    let st = Storage::new(mgr, [9; 32], StorageConfig::new(cfg));
    let launcher = ProcessZdb {
        exe: env!("CARGO_BIN_EXE_zos").into(),
        args: vec!["zdb".into(), "pool-server".into()],
        keep_on_stop: keep,
    };
    st.start_zdb(Arc::new(launcher)).await.unwrap();
    st
}

/// The pid in the pool's `zdb/server.pid`.
fn server_pid(dir: &Path) -> u32 {
    let text = std::fs::read_to_string(dir.join("hdd/zdb/server.pid")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// A connection with the test's namespace selected.
fn connect(client: &redis::Client) -> redis::Connection {
    let mut con = client.get_connection().unwrap();
    redis::cmd("SELECT")
        .arg("1-1-kv")
        .arg("pw")
        .query::<()>(&mut con)
        .unwrap();
    con
}

fn ping(con: &mut redis::Connection) -> bool {
    redis::cmd("PING").query::<String>(con).is_ok()
}

/// Kills a server the test left behind (a failed assertion).
struct Reap(std::path::PathBuf);
impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(t) = std::fs::read_to_string(self.0.join("hdd/zdb/server.pid"))
            && let Some(pid) = t.split_whitespace().next()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdb_servers_outlive_the_node_and_are_re_attached() {
    let tmp = tempfile::Builder::new()
        .prefix("zos-zdb-process-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let _reap = Reap(dir.to_path_buf());

    let st = node(dir, true).await;
    let r = st
        .zdb_create(
            "1-1-kv",
            &NamespaceSpec {
                size: 16 * MIB,
                mode: NamespaceMode::User,
                password: "pw".into(),
                public: false,
            },
        )
        .await
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", r.port)).unwrap();
    let mut con = connect(&client);
    let _: Vec<u8> = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .query(&mut con)
        .unwrap();
    let pid = server_pid(dir);
    assert_ne!(
        pid,
        std::process::id(),
        "the server is a process of its own"
    );

    // The node stops; the server does not, and the open connection keeps working.
    st.shutdown().await;
    drop(st);
    assert!(alive(pid));
    assert!(ping(&mut con), "the connection survives the node's stop");
    let _: Vec<u8> = redis::cmd("SET")
        .arg("k")
        .arg("v2")
        .query(&mut con)
        .unwrap();

    // The next node re-attaches: same process, same port, one start; namespaces answer.
    let st = node(dir, true).await;
    assert_eq!(server_pid(dir), pid);
    let servers = st.zdb_servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].addr.port(), r.port);
    assert_eq!(servers[0].starts, 1);
    assert!(st.zdb_get("1-1-kv").await.unwrap().is_some());
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v2");

    // kill -9 of the server: a new process on the same port, data kept.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        st.zdb_wait_starts(&servers[0].pool, 1),
    )
    .await
    .expect("the supervisor restarts a killed server")
    .unwrap();
    let pid2 = server_pid(dir);
    assert_ne!(pid2, pid);
    let mut con = connect(&client);
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v2", "acknowledged writes survive kill -9");
    st.shutdown().await;
    drop(st);
    assert!(alive(pid2), "kept for the next node");

    // A node not told to keep its servers re-attaches, then stops them with itself.
    let st = node(dir, false).await;
    assert_eq!(server_pid(dir), pid2);
    let t = std::time::Instant::now();
    st.shutdown().await;
    // SIGTERM stops it at once; the launcher's SIGKILL would come only after 10 s.
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the server ignored SIGTERM ({:?})",
        t.elapsed()
    );
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while alive(pid2) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid2), "stopped with the node");
    assert!(!ping(&mut con));

    // A server such a node started itself (its stdin lifeline open) stops at its SIGTERM too.
    let st = node(dir, false).await;
    let pid3 = server_pid(dir);
    assert_ne!(pid3, pid2);
    let t = std::time::Instant::now();
    st.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the server ignored SIGTERM ({:?})",
        t.elapsed()
    );
    assert!(!alive(pid3));
}

/// A server started for a node that does not keep it reads its stdin to the end: when the
/// node dies (here: its pipe closes, as with kill -9 of the node), the server stops too.
#[test]
fn a_server_not_kept_stops_when_its_node_is_gone() {
    use std::io::{BufRead as _, Write as _};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("zdb");
    std::fs::create_dir_all(&root).unwrap();
    let spec = serde_json::json!({
        "data_dir": root.join("data"),
        "index_dir": root.join("index"),
        "listen": "127.0.0.1:0",
        "admin_password": "admin",
        "at_rest_key": "00".repeat(32),
        "exit_with_parent": true,
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["zdb", "pool-server", "--root"])
        .arg(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{spec}").unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("ready 127.0.0.1:"), "{ready}");
    let addr = ready.trim().trim_start_matches("ready ").to_string();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    drop(stdin);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the server outlived its node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::net::TcpStream::connect(&addr).is_err());
}
