//! `zos mycelium inspect|generate-keys|run`: the overlay's CLI, with upstream mycelium's
//! output formats and flag names (`{"publicKey": hex, "address": ipv6}`, `--key-file`, …).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use zos_mycelium::{PublicKey, SecretKey};

/// Mycelium subcommands.
#[derive(Subcommand, Debug)]
pub enum MyceliumCmd {
    /// Run the overlay daemon (upstream `mycelium` flags): TCP and QUIC links, link-local
    /// discovery, TUN, HTTP and JSON-RPC APIs.
    Run(RunArgs),
    /// Show the public key and overlay address of a public key, or of the key file.
    Inspect {
        /// A public key (64 hex characters); default: the key file's.
        pubkey: Option<String>,
        /// Print `{"publicKey": …, "address": …}`.
        #[arg(long)]
        json: bool,
        /// The node's key file (32 raw bytes).
        #[arg(short = 'k', long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
    /// Write a new key file and show its public key and address.
    GenerateKeys {
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where to write (32 raw bytes, mode 0640).
        #[arg(short = 'k', long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
}

/// `zos mycelium run` flags (upstream's names).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Static peers, `tcp://<ip>:<port>` or `quic://<ip>:<port>` (IPv6 in brackets); repeatable
    /// or space-separated.
    #[arg(long, num_args = 1..)]
    peers: Vec<String>,
    /// The node's key file (32 raw bytes; generated with mode 0640 if missing).
    #[arg(short = 'k', long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// TCP port for peer links, bound on `[::]`.
    #[arg(short = 't', long, default_value_t = 9651)]
    tcp_listen_port: u16,
    /// TUN interface name.
    #[arg(long, default_value = "mycelium")]
    tun_name: String,
    /// Route only: no TUN (this node forwards but has no local traffic).
    #[arg(long)]
    no_tun: bool,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8989")]
    api_addr: std::net::SocketAddr,
    /// JSON-RPC API address.
    #[arg(long, default_value = "127.0.0.1:8990")]
    jsonrpc_addr: std::net::SocketAddr,
    /// Serve Prometheus metrics (`GET /metrics`) on this address too (the HTTP API always has
    /// them).
    #[arg(long, value_name = "ADDR")]
    metrics_api_address: Option<std::net::SocketAddr>,
    /// UDP port for QUIC peer links, bound on `[::]`.
    #[arg(short = 'q', long, default_value_t = 9651)]
    quic_listen_port: u16,
    /// No QUIC: neither listen nor dial `quic://` peers.
    #[arg(long)]
    disable_quic: bool,
    /// Do not look for peers on the local links (multicast beacons on `ff02::cafe`).
    #[arg(long)]
    disable_peer_discovery: bool,
    /// UDP port of link-local discovery.
    #[arg(long, default_value_t = zos_mycelium::discovery::DISCOVERY_PORT)]
    peer_discovery_port: u16,
    /// Discover peers only on this interface (repeatable; default: every usable one).
    #[arg(long, value_name = "NAME")]
    peer_discovery_interface: Vec<String>,
    /// Tests only: divide every protocol timer (Hello, dead peer, announce, hold times,
    /// redial) by N so that failure detection fits a CI budget. Nodes must agree on it.
    #[arg(long, hide = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    test_timer_divisor: u32,
}

fn run_daemon(a: RunArgs) -> anyhow::Result<()> {
    let key_path = a.key_file.unwrap_or_else(default_key_file);
    let key = SecretKey::load_or_generate(&key_path)?;
    let peers = a
        .peers
        .iter()
        .map(|p| zos_mycelium::node::parse_endpoint(p))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = zos_mycelium::node::Config {
        key,
        peers,
        tcp_listen: std::net::SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            a.tcp_listen_port,
        )),
        quic_listen: (!a.disable_quic).then_some(std::net::SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            a.quic_listen_port,
        ))),
        tun_name: (!a.no_tun).then_some(a.tun_name),
        timer_divisor: a.test_timer_divisor,
        discovery: (!a.disable_peer_discovery).then(|| zos_mycelium::node::DiscoveryConfig {
            port: a.peer_discovery_port,
            interfaces: a.peer_discovery_interface.clone(),
        }),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async move {
        let node = zos_mycelium::node::Node::start(cfg).await?;
        let api = zos_mycelium::api::serve(node.clone(), a.api_addr);
        let rpc = zos_mycelium::rpc::serve(node.clone(), a.jsonrpc_addr);
        let metrics = async {
            match a.metrics_api_address {
                Some(addr) => zos_mycelium::api::serve_metrics(node.clone(), addr)
                    .await
                    .with_context(|| format!("metrics on {addr}")),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = api => r.with_context(|| format!("HTTP API on {}", a.api_addr))?,
            r = rpc => r.with_context(|| format!("JSON-RPC on {}", a.jsonrpc_addr))?,
            r = metrics => r?,
            _ = super::shutdown_signal() => {}
        }
        node.shutdown();
        Ok(())
    })
}

/// Upstream's default key file: `$XDG_DATA_HOME/mycelium/priv_key.bin`
/// (`~/.local/share/mycelium/priv_key.bin`).
pub fn default_key_file() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("mycelium").join("priv_key.bin")
}

fn print_identity(pk: &PublicKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"publicKey": pk.to_string(), "address": pk.address().to_string()})
        );
    } else {
        println!("Public key: {pk}");
        println!("Address: {}", pk.address());
    }
}

/// Runs a mycelium subcommand.
pub fn run(cmd: MyceliumCmd) -> anyhow::Result<()> {
    match cmd {
        MyceliumCmd::Run(a) => run_daemon(a),
        MyceliumCmd::Inspect {
            pubkey,
            json,
            key_file,
        } => {
            let pk = match pubkey {
                Some(s) => s.parse::<PublicKey>()?,
                None => {
                    let path = key_file.unwrap_or_else(default_key_file);
                    SecretKey::load(&path)
                        .context("no PUBKEY given, reading the key file")?
                        .public_key()
                }
            };
            print_identity(&pk, json);
            Ok(())
        }
        MyceliumCmd::GenerateKeys {
            force,
            json,
            key_file,
        } => {
            let path = key_file.unwrap_or_else(default_key_file);
            if path.exists() && !force {
                anyhow::bail!(
                    "{} exists; pass --force to replace it (the node's address changes)",
                    path.display()
                );
            }
            let k = SecretKey::generate();
            k.save(&path)?;
            print_identity(&k.public_key(), json);
            Ok(())
        }
    }
}

/// `zos node run` flags for the node's host instance.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HostArgs {
    /// Run the node's host Mycelium instance (upstream's `mycelium` service) in the node's
    /// network namespace: key from the node's identity, TUN `my0`, TCP and QUIC on 9651,
    /// link-local discovery on 9650 (nodes on one LAN link up by themselves); the node then
    /// lists `mycelium` in its features.
    #[arg(long)]
    pub mycelium: bool,
    /// A peer of the host instance (`tcp://…` or `quic://…`; repeatable).
    #[arg(long = "mycelium-peer", value_name = "ENDPOINT", requires = "mycelium")]
    pub mycelium_peers: Vec<String>,
}

/// Starts the node's host instance if asked (before the primitives start; it runs until the
/// returned handle is dropped) and adds `mycelium` to the node's features.
pub fn start_host(
    args: &HostArgs,
    cfg: &zos_node::NodeConfig,
    netns: Option<&str>,
    registry: &mut zos_node::PrimitiveRegistry,
) -> anyhow::Result<Option<zos_mycelium::netns::NsNode>> {
    if !args.mycelium {
        return Ok(None);
    }
    // The same identity the agent loads (idempotent): its ed25519 seed, converted as upstream.
    let keys = zos_node::identity::load_node_keys_with_boot(
        &cfg.data_dir,
        &cfg.seed_mirrors,
        cfg.boot_seed_dir.as_deref(),
        &cfg.key_root,
    )?;
    let key = SecretKey::from_ed25519_seed(keys.key.seed());
    let peers = args
        .mycelium_peers
        .iter()
        .map(|p| zos_mycelium::node::parse_endpoint(p))
        .collect::<Result<Vec<_>, _>>()
        .context("--mycelium-peer")?;
    let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 9651));
    let pk = key.public_key();
    let node = zos_mycelium::netns::NsNode::start(
        zos_mycelium::node::Config {
            key,
            peers,
            tcp_listen: any,
            quic_listen: Some(any),
            tun_name: Some("my0".into()),
            timer_divisor: 1,
            discovery: Some(zos_mycelium::node::DiscoveryConfig::default()),
        },
        netns,
        None,
    )
    .context("starting the host mycelium instance")?;
    tracing::info!(address = %pk.address(), namespace = ?netns, "host mycelium instance running");
    registry.add_feature("mycelium");
    Ok(Some(node))
}
