//! ZeroDB servers in processes of their own ([`ProcessZdb`]), so that they outlive the node.
//!
//! A release switch restarts the node; with the server in the node's process every client
//! lost its connection and the port was closed for the length of the restart. Here each pool's
//! server is a child process (`<exe> <args…>`, the binary's hidden `zdb pool-server`) in its
//! own process group, given its secrets on stdin (never on the command line), with its pid and
//! address in `<pool>/zdb/server.pid`. When the node stops with `keep_on_stop` (PID 1 of the
//! image), the server keeps running; the next node re-attaches to it (the pid must be alive,
//! not a zombie, and its command line must name this pool's directory, so a reused pid is
//! never mistaken for it) and connections stay open. Otherwise the node's stop stops it
//! (SIGTERM, then SIGKILL after 10 s).
//!
//! A re-attached server runs the binary that started it until it is restarted (a crash, a
//! reboot): the same as upstream, whose 0-db containers outlive a zos upgrade.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::zdb_server::{ZdbExit, ZdbLauncher, ZdbServerSpec};

/// The argument that marks a pool server's command line (checked before re-attaching).
pub const CHILD_MARK: &str = "pool-server";
/// Pid and address of the running server, in the pool's `zdb` directory.
const PID_FILE: &str = "server.pid";
/// The server's log (stderr), in the pool's `zdb` directory; cut at every start.
const LOG_FILE: &str = "server.log";
/// How long a server may take to load its indexes and bind.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts each ZeroDB server as a process of its own.
#[derive(Debug, Clone)]
pub struct ProcessZdb {
    /// The program (the node's own binary).
    pub exe: PathBuf,
    /// Its arguments before `--root DIR` (e.g. `["zdb", "pool-server"]`).
    pub args: Vec<String>,
    /// Leave the servers running when the node stops (a later node re-attaches).
    pub keep_on_stop: bool,
}

/// What the child reads on stdin (one JSON line).
#[derive(Serialize, Deserialize)]
struct ChildSpec {
    data_dir: PathBuf,
    index_dir: PathBuf,
    listen: SocketAddr,
    admin_password: String,
    at_rest_key: String,
    /// Stop when stdin reaches its end: the node (holding the pipe) is gone, even by kill -9.
    exit_with_parent: bool,
}

fn root_of(spec: &ZdbServerSpec) -> PathBuf {
    spec.data_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| spec.data_dir.clone())
}

/// The recorded server of `root` if it still runs: `(pid, addr)`.
fn recorded(root: &Path) -> Option<(u32, SocketAddr)> {
    let text = std::fs::read_to_string(root.join(PID_FILE)).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let addr: SocketAddr = words.next()?.parse().ok()?;
    alive(pid, root).then_some((pid, addr))
}

/// `pid` runs (not a zombie) and is the pool server of `root`.
fn alive(pid: u32, root: &Path) -> bool {
    let Some(cmdline) = zos_primitive::process::live_cmdline(pid) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let root = root.as_os_str().as_encoded_bytes();
    args.contains(&CHILD_MARK.as_bytes()) && args.contains(&root)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// SIGTERM, then SIGKILL when it still runs after 10 s.
async fn terminate(pid: u32, root: &Path) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(pid, root) && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid, root) {
        tracing::warn!(pid, "zdb server ignored SIGTERM for 10 s: killing it");
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Resolves when the (not our child) process `pid` has gone.
async fn gone(pid: u32, root: &Path) {
    while alive(pid, root) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl ProcessZdb {
    /// Waits for the stop request or the server's end; on a stop, leaves or stops it.
    fn exit(
        &self,
        pid: u32,
        root: PathBuf,
        mut child: Option<tokio::process::Child>,
        mut stop: watch::Receiver<bool>,
    ) -> ZdbExit {
        let keep = self.keep_on_stop;
        // A server that must not outlive the node reads its end of this pipe: kept open here.
        let lifeline = child.as_mut().and_then(|c| c.stdin.take());
        Box::pin(async move {
            let _lifeline = lifeline;
            let died = async {
                match child.as_mut() {
                    Some(c) => format!("exited: {:?}", c.wait().await),
                    None => {
                        gone(pid, &root).await;
                        "exited".to_string()
                    }
                }
            };
            let stopped = async {
                let _ = stop.wait_for(|s| *s).await;
            };
            let died = tokio::select! {
                why = died => Some(why),
                () = stopped => None,
            };
            if let Some(why) = died {
                return Err(why);
            }
            if keep {
                tracing::info!(pid, "leaving the zdb server running for the next node");
            } else {
                terminate(pid, &root).await;
                if let Some(c) = child.as_mut() {
                    let _ = c.wait().await;
                }
            }
            Ok(())
        })
    }

    async fn spawn(
        &self,
        spec: &ZdbServerSpec,
        root: &Path,
    ) -> Result<(u32, SocketAddr, tokio::process::Child), String> {
        let log = std::fs::File::create(root.join(LOG_FILE))
            .map_err(|e| format!("{}: {e}", root.join(LOG_FILE).display()))?;
        let mut child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .arg("--root")
            .arg(root)
            // Its own group: a signal meant for the node (or its group) does not reach it.
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let pid = child.id().ok_or("the zdb server exited at once")?;
        let input = ChildSpec {
            data_dir: spec.data_dir.clone(),
            index_dir: spec.index_dir.clone(),
            listen: spec.listen,
            admin_password: spec.admin_password.clone(),
            at_rest_key: hex::encode(spec.at_rest_key.0),
            exit_with_parent: !self.keep_on_stop,
        };
        let mut line = serde_json::to_vec(&input).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let keep = self.keep_on_stop;
        let ready = async {
            let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
            stdin
                .write_all(&line)
                .await
                .map_err(|e| format!("zdb server stdin: {e}"))?;
            if keep {
                drop(stdin);
            } else {
                child.stdin = Some(stdin);
            }
            let stdout = child.stdout.take().ok_or("no stdout pipe")?;
            let mut out = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut out)
                .await
                .map_err(|e| format!("zdb server stdout: {e}"))?;
            parse_ready(&out)
        };
        let addr = match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("{e} (log: {})", tail(&root.join(LOG_FILE))));
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("the zdb server was not ready in {READY_TIMEOUT:?}"));
            }
        };
        let tmp = root.join("server.pid.tmp");
        std::fs::write(&tmp, format!("{pid} {addr}\n"))
            .and_then(|()| std::fs::rename(&tmp, root.join(PID_FILE)))
            .map_err(|e| format!("{}: {e}", root.join(PID_FILE).display()))?;
        Ok((pid, addr, child))
    }
}

/// The child's first stdout line: `ready <addr>` or `error <why>`.
fn parse_ready(line: &str) -> Result<SocketAddr, String> {
    let line = line.trim();
    if let Some(a) = line.strip_prefix("ready ") {
        return a
            .parse()
            .map_err(|e| format!("zdb server said {line:?}: {e}"));
    }
    if let Some(why) = line.strip_prefix("error ") {
        return Err(why.to_string());
    }
    Err(format!(
        "the zdb server ended before it was ready ({line:?})"
    ))
}

/// The last line of a log, for errors.
fn tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl ZdbLauncher for ProcessZdb {
    async fn launch(
        &self,
        spec: &ZdbServerSpec,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, ZdbExit), String> {
        let root = root_of(spec);
        if let Some((pid, addr)) = recorded(&root) {
            let same = spec.listen.port() == 0 || addr == spec.listen;
            let answers = same
                && tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .is_ok_and(|c| c.is_ok());
            if answers {
                tracing::info!(pool = %spec.pool, pid, %addr, "re-attached to the running zdb server");
                return Ok((addr, self.exit(pid, root, None, stop)));
            }
            tracing::warn!(pool = %spec.pool, pid, %addr, want = %spec.listen, "the running zdb server does not serve the wanted address: replacing it");
            terminate(pid, &root).await;
        }
        let (pid, addr, child) = self.spawn(spec, &root).await?;
        tracing::info!(pool = %spec.pool, pid, %addr, "zdb server process started");
        Ok((addr, self.exit(pid, root, Some(child), stop)))
    }
}

/// The child's side: reads its [`ChildSpec`] from stdin, binds, says `ready <addr>` on stdout
/// (then never writes there again: the node may be gone), and serves until `shutdown`.
pub async fn serve_child(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    stdin
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading the server spec: {e}"))?;
    let result = bind(&line).await;
    let mut out = tokio::io::stdout();
    let said = match &result {
        Ok((s, _)) => format!(
            "ready {}\n",
            s.local_addr()
                .map_or_else(|| "?".to_string(), |a| a.to_string())
        ),
        Err(e) => format!("error {}\n", e.replace('\n', " ")),
    };
    let _ = out.write_all(said.as_bytes()).await;
    let _ = out.flush().await;
    drop(out);
    let (server, exit_with_parent) = result?;
    let orphaned = async move {
        if !exit_with_parent {
            return std::future::pending().await;
        }
        // Nothing more is written: this returns at the end of the pipe (or on an error).
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut rest).await;
        tracing::info!("the node is gone: stopping");
    };
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = orphaned => {}
        }
    };
    server.run(stop).await.map_err(|e| e.to_string())
}

async fn bind(line: &str) -> Result<(zos_zdb::Server, bool), String> {
    let spec: ChildSpec =
        serde_json::from_str(line).map_err(|e| format!("bad server spec on stdin: {e}"))?;
    let key: [u8; 32] = hex::decode(&spec.at_rest_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("bad at-rest key in the server spec")?;
    let cfg = crate::zdb_server::server_config(
        spec.data_dir,
        spec.index_dir,
        spec.listen,
        spec.admin_password,
        zos_zdb::crypto::AtRestKey(key),
    );
    let server = zos_zdb::Server::bind(cfg)
        .await
        .map_err(|e| e.to_string())?;
    if server.local_addr().is_none() {
        return Err("the zdb server has no TCP address".into());
    }
    Ok((server, spec.exit_with_parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        assert_eq!(
            parse_ready("ready 127.0.0.1:9900\n"),
            Ok("127.0.0.1:9900".parse().unwrap())
        );
        assert_eq!(parse_ready("error port taken"), Err("port taken".into()));
        assert!(parse_ready("").is_err());
        assert!(parse_ready("ready nonsense").is_err());
    }

    #[test]
    fn a_recorded_pid_must_be_the_pool_server() {
        let dir = tempfile::tempdir().unwrap();
        // This test process is alive but is not a pool server of `dir`.
        std::fs::write(
            dir.path().join(PID_FILE),
            format!("{} 127.0.0.1:1\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(recorded(dir.path()), None);
        std::fs::write(dir.path().join(PID_FILE), "garbage").unwrap();
        assert_eq!(recorded(dir.path()), None);
    }
}
