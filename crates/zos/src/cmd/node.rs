//! `zos node run`: the node agent (identity, registration, engine, watcher, API over RMB).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// Node agent commands.
#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Run the node until SIGINT/SIGTERM.
    // Boxed: the node's options outgrow the other commands' (clippy::large_enum_variant).
    Run(Box<RunCmd>),
    /// The farmer's read-only diagnostics of a node over RMB:
    /// `diag NODE [health|logs|kernel|pools|net|reach ADDR]`.
    Diag(super::diag::DiagArgs),
}

/// `zos node run`: the node's options and its release (upgrade) options.
#[derive(Args, Debug)]
pub struct RunCmd {
    #[command(flatten)]
    node: RunArgs,
    #[command(flatten)]
    upgrade: super::upgrade::UpgradeArgs,
}

/// `zos node run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Ledger JSON-RPC URL, e.g. `http://127.0.0.1:9944`.
    #[arg(long, env = "ZOS_LEDGER")]
    pub ledger: String,
    /// The https ledger's certificate (PEM) to pin.
    #[arg(long, env = "ZOS_LEDGER_CERT")]
    pub ledger_cert: Option<PathBuf>,
    /// The ledger producer's ed25519 public key (hex) to pin: every answer a destructive
    /// decision rests on must be proven against a head it signed.
    #[arg(long, env = "ZOS_LEDGER_PRODUCER")]
    pub ledger_producer: Option<String>,
    /// RMB relay WebSocket URL (repeatable), e.g. `ws://127.0.0.1:8080`.
    #[arg(long = "relay", env = "ZOS_RELAY", required = true)]
    pub relays: Vec<String>,
    /// A `wss://` relay's certificate (PEM) to pin (repeatable); `zos up` hands it out.
    #[arg(long = "relay-cert", env = "ZOS_RELAY_CERT")]
    pub relay_certs: Vec<PathBuf>,
    /// Relay domain written into the node's twin (repeatable); default: host:port of each URL.
    #[arg(long = "relay-domain")]
    pub relay_domains: Vec<String>,
    /// Farm to register with (a node whose farm does not exist idles and says why).
    #[arg(long, env = "ZOS_FARM")]
    pub farm: u32,
    /// Persistent state directory (seed, engine store; with pools, only the pools' runtime
    /// directory and the default key root stay here).
    #[arg(long, env = "ZOS_DATA")]
    pub data: PathBuf,
    /// The key root: 32 random bytes that key disk encryption and ZeroDB admin passwords,
    /// created on first start. Keep it on the boot medium, never on a storage pool (refused);
    /// without it the node's encrypted disks cannot be opened. Default: DATA/key-root.
    #[arg(long, env = "ZOS_KEY_ROOT")]
    pub key_root: Option<PathBuf>,
    /// Storage pool (repeatable): a btrfs loop file `FILE:SIZE:ssd|hdd` (root), or a plain
    /// directory `dir:PATH:SIZE:ssd|hdd` (no root; volumes without quotas or snapshots).
    /// Enables the volume, zmount and zdb primitives; without pools the node runs no storage
    /// workloads.
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// Also take every blank whole disk (formatted into a btrfs pool) and every btrfs disk
    /// labelled `zos-*`; disks holding anything else are never touched. What the image's
    /// PID 1 passes: a real node's disks are its pools.
    #[arg(long)]
    pub discover_disks: bool,
    /// Address the ZeroDB servers listen on (default: loopback). The image's node listens on
    /// all addresses: its workloads are reached from outside the machine.
    #[arg(long)]
    pub zdb_listen: Option<std::net::IpAddr>,
    /// Leave the ZeroDB servers (processes of their own) running when the node stops; the next
    /// node re-attaches to them. What the image's PID 1 passes, so that a release switch does
    /// not close ZeroDB connections.
    #[arg(long)]
    pub keep_zdb_running: bool,
    /// Loopback address of the Prometheus endpoint (`GET /metrics`).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub metrics: Option<SocketAddr>,
    /// Twin allowed to call `zos.debug.*` (repeatable).
    #[arg(long = "admin-twin")]
    pub admin_twins: Vec<u32>,
    /// Full sync period in seconds.
    #[arg(long, default_value_t = 3600)]
    pub sync_secs: u64,
    /// Uptime report period in seconds (upstream: 40 min). Keep it well under the ledger's
    /// fair-billing cut-off: a node silent past it is not billed.
    #[arg(long, default_value_t = 2400)]
    pub uptime_secs: u64,
    /// Network namespace holding this node's network plane (WireGuard sockets, network
    /// bridges) when it is not the process's own: several nodes on one machine.
    #[arg(long, env = "ZOS_NET_NAMESPACE")]
    pub net_namespace: Option<String>,
    /// Prefix of the network resource namespaces (`<prefix>n-<netid>`), so that nodes sharing
    /// a machine do not share them. Empty on a real node.
    #[arg(long, default_value = "")]
    pub netns_prefix: String,
    /// The web gateway (off unless its listeners are given).
    #[command(flatten)]
    pub gateway: super::gateway::GatewayArgs,
    /// The link of the node's network plane that is its public NIC: with a public config on
    /// the ledger it becomes the uplink of `br-pub` (the public namespace and VMs' public IPs,
    /// docs/network.md). Without it the node refuses `ip` workloads.
    #[arg(long, env = "ZOS_PUBLIC_NIC")]
    pub public_nic: Option<String>,
    /// The host Mycelium instance (off unless `--mycelium`).
    #[command(flatten)]
    pub mycelium: super::mycelium::HostArgs,
}

/// Runs a node subcommand.
pub fn run(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let RunCmd { node, upgrade } = *a;
            rt.block_on(run_node_with(node, upgrade, super::shutdown_signal()))
        }
        NodeCmd::Diag(a) => super::diag::run(a),
    }
}

/// Runs a node (with its storage pools when given) until `shutdown` completes; `zos up`
/// embeds the node through this too.
pub async fn run_node(
    a: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_node_with(a, Default::default(), shutdown).await
}

/// [`run_node`] with release options: the version it runs as, and the upgrader.
pub async fn run_node_with(
    a: RunArgs,
    up: super::upgrade::UpgradeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    for c in &a.relay_certs {
        zos_rmb::pin_relay_cert_file(c).context("--relay-cert")?;
    }
    let mut cfg = zos_node::NodeConfig::new(&a.ledger, a.relays[0].clone(), a.farm, a.data.clone());
    cfg.relay_urls = a.relays.clone();
    cfg.ledger_cert = a.ledger_cert.clone();
    cfg.ledger_producer = match &a.ledger_producer {
        Some(hex) => Some(zos_types::crypto::PublicKey {
            key_type: zos_types::crypto::KeyType::Ed25519,
            bytes: zos_types::crypto::decode_hex32("--ledger-producer", hex)?,
        }),
        None => None,
    };
    cfg.relay_domains = a.relay_domains.clone();
    cfg.metrics_listen = a.metrics;
    cfg.admin_twins = a.admin_twins.clone();
    cfg.sync_interval = Duration::from_secs(a.sync_secs.max(1));
    cfg.uptime_interval = Duration::from_secs(a.uptime_secs.max(1));
    let key_root_path = a
        .key_root
        .clone()
        .unwrap_or_else(|| a.data.join(zos_node::identity::KEY_ROOT_FILE));
    cfg.key_root = zos_node::identity::KeyRootSource::File(key_root_path.clone());
    // An explicit key root lives on the boot medium: the identity gets a copy there too.
    cfg.boot_seed_dir = a
        .key_root
        .as_ref()
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf);
    if a.key_root.is_none() {
        // DATA holds the default key root: owner only.
        std::fs::create_dir_all(&a.data)
            .with_context(|| format!("creating {}", a.data.display()))?;
        zos_node::identity::owner_only(&a.data, 0o700)?;
    }
    // The binary composes the node from primitive crates; the agent knows no workload type.
    let mut registry = zos_node::PrimitiveRegistry::new();
    zos_network::register(&mut registry);
    // Network resources need root (namespaces, TUN); without it network workloads are refused
    // at deploy time as an unsupported type, and the node says why here.
    match zos_network::network_support() {
        Ok(()) => {
            let net_cfg = zos_network::NetConfig {
                node_netns: a.net_namespace.clone(),
                ns_prefix: a.netns_prefix.clone(),
            };
            // The public side first: its lifecycle makes the public namespace before the
            // network set looks at where the public address lives.
            let public = zos_network::Public::new(
                net_cfg.clone(),
                a.public_nic.clone(),
                Arc::new(LedgerIps(public_ips_client(&a)?)),
            );
            zos_network::register_public_ips(&mut registry, public);
            zos_network::register_networks(&mut registry, net_cfg);
        }
        Err(why) => tracing::warn!("private networks disabled: {why}"),
    }
    let mut storage = None;
    if !a.pools.is_empty() || a.discover_disks {
        let mut pool_cfg = zos_storage::PoolConfig {
            runtime_dir: a.data.join("run"),
            discover_disks: a.discover_disks,
            ..Default::default()
        };
        for p in &a.pools {
            let spec = p
                .parse::<zos_storage::PoolSpec>()
                .with_context(|| format!("--pool {p}"))?;
            pool_cfg.add(spec);
        }
        let manager = zos_storage::Storage::start_pools(&pool_cfg)
            .await
            .context("starting pools")?;
        // The seed (signing identity) is mirrored on every pool; disk keys come from the key
        // root, which load_node_keys refuses to keep on any of them.
        cfg.seed_mirrors = manager
            .pools()
            .iter()
            .map(|p| p.mountpoint.clone())
            .collect();
        // The node's own state lives on the first SSD pool's `cache` (subvolume or directory),
        // as upstream's /var/cache does; --data keeps only the pool runtime directory.
        if let Some(cache) = manager.cache_dir() {
            adopt_state(&a.data, &cache, &key_root_path)?;
            cfg.data_dir = cache;
        }
        let keys = zos_node::identity::load_node_keys_with_boot(
            &cfg.data_dir,
            &cfg.seed_mirrors,
            cfg.boot_seed_dir.as_deref(),
            &cfg.key_root,
        )?;
        let mut storage_cfg = zos_storage::StorageConfig::new(pool_cfg);
        if let Some(ip) = a.zdb_listen {
            storage_cfg.zdb_listen = ip;
        }
        let s = Arc::new(zos_storage::Storage::new(manager, keys.secret, storage_cfg));
        // Each pool's server is a process of its own (`zos zdb pool-server`): it can outlive
        // the node (a release switch) and a crash of one does not take down the other.
        let exe = std::env::current_exe().context("the node's own binary")?;
        let launcher = zos_storage::ProcessZdb {
            exe,
            args: vec!["zdb".into(), "pool-server".into()],
            keep_on_stop: a.keep_zdb_running,
        };
        zos_storage::register_with(&mut registry, s.clone(), Arc::new(launcher));
        storage = Some(s);
    }
    // VMs keep their state next to the node's (the cache pool when there are pools). The
    // cloud-container kernel (vmlinux + initrd.img, see scripts/build-test-guest.sh) comes
    // from ZOS_CLOUD_CONTAINER or DATA/cloud-container (looked at when a VM starts: `zos up`
    // may link it there after the node started).
    let mut vm_cfg = zos_vm::VmConfig::new(cfg.data_dir.join("vm"));
    vm_cfg.cloud_container = std::env::var_os("ZOS_CLOUD_CONTAINER")
        .map(PathBuf::from)
        .or_else(|| Some(a.data.join("cloud-container")));
    // Taps join the network resources' bridges in the node's namespace.
    vm_cfg.supervisor.net_namespace = a.net_namespace.clone();
    vm_cfg.nr_ns_prefix = a.netns_prefix.clone();
    zos_vm::register(&mut registry, zos_vm::Vms::new(vm_cfg, storage));
    // The web gateway keeps its certificates next to the node's state.
    super::gateway::register(
        &mut registry,
        &a.gateway,
        &a.ledger,
        a.ledger_cert.as_deref(),
        a.ledger_producer.as_deref(),
        &cfg.data_dir,
        &a.netns_prefix,
    )?;
    // The host Mycelium instance lives as long as the node (dropped at return: stopped).
    let _mycelium =
        super::mycelium::start_host(&a.mycelium, &cfg, a.net_namespace.as_deref(), &mut registry)?;
    // Primitive sets bring up what they need (storage: its ZeroDB servers) before the node
    // reconciles, and release it (servers, then pools) after the node has stopped.
    registry
        .start()
        .await
        .map_err(anyhow::Error::msg)
        .context("starting primitives")?;
    // Releases live next to the engine store: the first SSD pool's cache when there are pools.
    cfg.version = up.running();
    let upgrader = super::upgrade::Upgrader {
        releases: cfg.data_dir.join("releases"),
        running: cfg.version.clone(),
        farm_id: a.farm,
        args: up,
        init_request: cfg.init_request.clone(),
        progress: cfg.progress.clone(),
    };
    if let Err(e) = std::fs::create_dir_all(&upgrader.releases) {
        tracing::warn!(error = %e, dir = %upgrader.releases.display(), "releases directory");
    }
    let upgrades = tokio::spawn(upgrader.run());
    let result = zos_node::run_node(cfg, registry.clone(), shutdown).await;
    upgrades.abort();
    registry.shutdown().await;
    result.context("node")
}

/// A ledger client for the public IP reservations, trusting what the node trusts.
fn public_ips_client(a: &RunArgs) -> anyhow::Result<zos_ledger::LedgerClient> {
    let mut trust = zos_ledger::Trust {
        producer: match &a.ledger_producer {
            Some(hex) => Some(zos_types::crypto::PublicKey {
                key_type: zos_types::crypto::KeyType::Ed25519,
                bytes: zos_types::crypto::decode_hex32("--ledger-producer", hex)?,
            }),
            None => None,
        },
        ..Default::default()
    };
    if let Some(cert) = &a.ledger_cert {
        trust = trust.with_cert_file(cert)?;
    }
    Ok(zos_ledger::LedgerClient::with_trust(&a.ledger, trust)?)
}

/// The public IPs the ledger reserved for a contract, read from its proven record (an IP the
/// node hands out must be the contract's).
struct LedgerIps(zos_ledger::LedgerClient);

#[async_trait::async_trait]
impl zos_network::ContractIps for LedgerIps {
    async fn reserved(&self, contract_id: u64) -> Result<Vec<zos_network::ReservedIp>, String> {
        let c = self
            .0
            .verified_contract(contract_id)
            .await
            .map_err(|e| e.to_string())?
            .value
            .ok_or_else(|| format!("contract {contract_id} does not exist"))?;
        match c.kind {
            zos_ledger::types::ContractKind::Node {
                public_ips_list, ..
            } if c.state.is_active() => Ok(public_ips_list
                .into_iter()
                .map(|p| zos_network::ReservedIp {
                    ip: p.ip,
                    gateway: p.gateway,
                })
                .collect()),
            zos_ledger::types::ContractKind::Node { .. } => {
                Err(format!("contract {contract_id} is not active"))
            }
            _ => Err(format!("contract {contract_id} is not a node contract")),
        }
    }
}

/// Moves node state files (seed, engine store) left in `old` by a node that ran before it had
/// pools into `cache`, once: files already in `cache` win. The key root (`key_root` and its
/// temp file) stays where it is: moving it onto a pool would put it next to the disks it keys.
fn adopt_state(
    old: &std::path::Path,
    cache: &std::path::Path,
    key_root: &std::path::Path,
) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(old) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let p = entry.path();
        if p == key_root || p == key_root.with_extension("tmp") {
            continue;
        }
        let target = cache.join(entry.file_name());
        if entry.file_type()?.is_file() && !target.exists() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!("moving {} to {}", entry.path().display(), target.display())
            })?;
            std::fs::remove_file(entry.path())?;
            tracing::info!(file = %target.display(), "node state moved to the cache subvolume");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State files move to the pool's cache; the key root stays off the pool.
    #[test]
    fn adopting_state_leaves_the_key_root_behind() {
        let d = tempfile::tempdir().unwrap();
        let (old, cache) = (d.path().join("data"), d.path().join("pool/cache"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        let key_root = old.join(zos_node::identity::KEY_ROOT_FILE);
        std::fs::write(&key_root, b"root").unwrap();
        std::fs::write(old.join("seed.txt"), b"seed").unwrap();
        adopt_state(&old, &cache, &key_root).unwrap();
        assert!(key_root.is_file());
        assert!(!cache.join(zos_node::identity::KEY_ROOT_FILE).exists());
        assert!(cache.join("seed.txt").is_file() && !old.join("seed.txt").exists());
    }
}
