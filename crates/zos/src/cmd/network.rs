//! Networks on the local grid: the "internet" of `zos up --nodes N` (one namespace per node,
//! joined through veths to a bridge namespace) and the supervisor of the extra nodes; and the
//! user's `zos network access NAME`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;

/// Namespaces of the local grid start with this (internet, nodes, network resources).
pub const PREFIX: &str = "zup";

/// One node's place on the local internet.
#[derive(Debug, Clone)]
pub struct NodeNet {
    /// 1-based node number.
    pub index: usize,
    /// The node's namespace (its network plane).
    pub namespace: String,
    /// Its address on the internet bridge (WireGuard endpoints use it).
    pub address: String,
    /// Prefix of its network resource namespaces.
    pub nr_prefix: String,
}

fn internet_ns() -> String {
    format!("{PREFIX}-inet")
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates (or finds) the internet namespace with bridge `br0` and `n` node namespaces, node
/// `i` at `198.18.0.i/24` (the benchmarking range: never routed anywhere) on `eth0`.
pub async fn setup_internet(n: usize) -> anyhow::Result<Vec<NodeNet>> {
    if n > 200 {
        bail!("--nodes {n}: at most 200 nodes");
    }
    zos_network::network_support().map_err(|why| anyhow::anyhow!("zos up --nodes {n}: {why}"))?;
    let inet = internet_ns();
    if !netns_exists(&inet) {
        ip(&["netns", "add", &inet]).await?;
    }
    if ip(&["-n", &inet, "link", "show", "br0"]).await.is_err() {
        zos_network::ip::bridge_add(Some(&inet), "br0").await?;
    }
    ip(&["-n", &inet, "link", "set", "br0", "up"]).await?;
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let ns = format!("{PREFIX}-node{i}");
        if !netns_exists(&ns) {
            ip(&["netns", "add", &ns]).await?;
        }
        let port = format!("p{i}");
        if ip(&["-n", &ns, "link", "show", "eth0"]).await.is_err() {
            let _ = ip(&["-n", &inet, "link", "del", &port]).await;
            ip(&[
                "-n", &inet, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])
            .await?;
        }
        ip(&["-n", &inet, "link", "set", &port, "master", "br0", "up"]).await?;
        let address = format!("198.18.0.{i}");
        ip(&[
            "-n",
            &ns,
            "addr",
            "replace",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])
        .await?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        nodes.push(NodeNet {
            index: i,
            namespace: ns,
            address,
            nr_prefix: format!("{PREFIX}{i}-"),
        });
    }
    Ok(nodes)
}

/// The local internet's public segment (TEST-NET-3 and the IPv6 documentation range: routed
/// nowhere): the farm's gateway on `br0`, node 1's public address, the farm's IP block.
pub const PUBLIC_GW4: &str = "203.0.113.1";
/// Node 1's public IPv4 (its public namespace).
pub const PUBLIC_NODE4: &str = "203.0.113.2/24";
/// The farm's IPv6 gateway.
pub const PUBLIC_GW6: &str = "2001:db8:1::1";
/// Node 1's public IPv6.
pub const PUBLIC_NODE6: &str = "2001:db8:1::2/64";
/// The farm's public IPs (each `/24`, gateway [`PUBLIC_GW4`]).
pub const FARM_IPS: [&str; 4] = [
    "203.0.113.10",
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.13",
];
/// Node 1's public NIC in its namespace.
pub const PUBLIC_NIC: &str = "pub0";

/// Gives `node` a public NIC on the internet bridge (`pub0` in its namespace, its peer `pubI`
/// a port of `br0`, no address: the node bridges it) and the bridge the farm's gateway
/// addresses, so that the internet namespace reaches public IPs.
pub async fn setup_public(node: &NodeNet) -> anyhow::Result<()> {
    let inet = internet_ns();
    let port = format!("pub{}", node.index);
    if ip(&["-n", &node.namespace, "link", "show", PUBLIC_NIC])
        .await
        .is_err()
    {
        let _ = ip(&["-n", &inet, "link", "del", &port]).await;
        ip(&[
            "-n",
            &inet,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            PUBLIC_NIC,
            "netns",
            &node.namespace,
        ])
        .await?;
    }
    ip(&["-n", &inet, "link", "set", &port, "master", "br0", "up"]).await?;
    ip(&["-n", &node.namespace, "link", "set", PUBLIC_NIC, "up"]).await?;
    ip(&[
        "-n",
        &inet,
        "addr",
        "replace",
        &format!("{PUBLIC_GW4}/24"),
        "dev",
        "br0",
    ])
    .await?;
    ip(&[
        "-n",
        &inet,
        "addr",
        "replace",
        &format!("{PUBLIC_GW6}/64"),
        "dev",
        "br0",
        "nodad",
    ])
    .await?;
    Ok(())
}

/// Removes every namespace of the local grid (the nodes re-create their network resources
/// from their stored deployments at the next start).
pub async fn teardown_internet() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(PREFIX) {
            if let Err(err) = ip(&["netns", "del", &name]).await {
                tracing::warn!(error = %err, "removing {name}");
            }
        }
    }
}

/// How an extra node of the local grid is run (a `zos node run` child process).
#[derive(Debug, Clone)]
pub struct ChildNode {
    /// `zos node run` arguments.
    pub args: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
    /// Its number, for messages.
    pub index: usize,
}

/// Runs `node` as a child process until `stop`; a node that dies (crash, `kill -9`) is started
/// again after a second, as zinit would, and finds its deployments in its state directory.
pub async fn supervise(node: ChildNode, stop: watch::Receiver<bool>) {
    let mut stop_wait = stop.clone();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("node {}: cannot find the zos binary: {e}", node.index);
            return;
        }
    };
    loop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let child = tokio::process::Command::new(&exe)
            .arg("node")
            .arg("run")
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("node {}: cannot start: {e}", node.index);
                return;
            }
        };
        tokio::select! {
            r = child.wait() => {
                if *stop.borrow() {
                    return;
                }
                eprintln!(
                    "node {} exited ({}); restarting it (log {})",
                    node.index,
                    r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    node.log.display()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            () = async { let _ = stop_wait.wait_for(|s| *s).await; } => {
                // SIGTERM: the node stops its agent and releases its pools.
                if let Some(pid) = child.id() {
                    let _ = tokio::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

/// `zos network …`.
#[derive(clap::Subcommand, Debug)]
pub enum NetworkCmd {
    /// Add this machine to private network NAME as a WireGuard peer of one of its nodes (the
    /// others route it through that node) and print its WireGuard configuration (wg-quick).
    Access {
        /// The network workload's name.
        name: String,
        /// Write the configuration to this file (mode 600) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// How long to wait for the nodes, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        #[command(flatten)]
        args: super::client::ClientArgs,
    },
}

/// Runs a `zos network` command.
pub fn run(cmd: NetworkCmd) -> anyhow::Result<()> {
    let NetworkCmd::Access {
        name,
        output,
        wait,
        args,
    } = cmd;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let grid = args.connect().await?;
        let opts = zos_client::grid::DeployOptions {
            wait: Duration::from_secs(wait),
            keep_on_error: false,
            rotate_keys: Vec::new(),
        };
        let config = grid.network_access(&name, &opts, |_| {}).await?;
        match output {
            Some(path) => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                // It holds a private key.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                f.write_all(config.as_bytes())?;
                eprintln!(
                    "WireGuard configuration of network {name} written to {}",
                    path.display()
                );
            }
            None => print!("{config}"),
        }
        Ok(())
    })
}
