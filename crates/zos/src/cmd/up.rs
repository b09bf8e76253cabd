//! `zos up`: a whole grid in one foreground process — a dev ledger, a relay and a node —
//! with the user's identity funded, a farm registered and the client configured, so the next
//! command is `zos deploy`. Ctrl-C stops everything (pools unmounted, loop devices detached);
//! running it again resumes the same grid with its deployments.
//!
//! Storage: btrfs pools on loop files under DATA/pools when run as root with loop devices and
//! btrfs-progs; otherwise directory pools there (no volume quotas, no snapshots), said at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::watch;
use zos_client::{Config, KeyFile, config};
use zos_ledger::{Call, LedgerClient, LedgerConfig, LedgerServer};
use zos_rmb::{CachedDirectory, LedgerDirectory, Relay, RelayConfig, TwinDirectory};
use zos_types::{KeyPair, KeyType};

/// Dev funds given to the user's account when it runs low.
const USER_FUNDS: u64 = 1_000_000_000_000;

/// `zos up` options.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the grid keeps its state (ledger, node, pools).
    #[arg(long, env = "ZOS_UP_DATA")]
    pub data: Option<PathBuf>,
    /// Ledger port on 127.0.0.1.
    #[arg(long, default_value_t = 7600)]
    pub ledger_port: u16,
    /// Relay port on 127.0.0.1.
    #[arg(long, default_value_t = 7700)]
    pub relay_port: u16,
    /// Node metrics port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 7800)]
    pub metrics_port: u16,
    /// Size of the SSD pool (a sparse file, or a directory's declared size without root).
    #[arg(long, default_value = "10GiB")]
    pub ssd: String,
    /// Size of the HDD pool (a sparse file, or a directory's declared size without root).
    #[arg(long, default_value = "20GiB")]
    pub hdd: String,
    /// Client config file to write (default: the XDG config directory's config.toml).
    #[arg(long, env = "ZOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Number of nodes. With more than one (root only), each node's network plane gets its own
    /// namespace on a local "internet" bridge, so private networks between nodes are real
    /// WireGuard packets; nodes 2..N run as supervised `zos node run` processes with directory
    /// pools under DATA/nodeI.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub nodes: u8,
    /// Port of the grid's flist hub on 127.0.0.1 (serves the VM test guest; 0: any free port).
    #[arg(long, default_value_t = 7900)]
    pub hub_port: u16,
    /// The VM test guest's directory: used when built, built there (from Debian packages, in
    /// the background) when not. Default: the user's cache, one build per machine.
    #[arg(long, env = "ZOS_VM_GUEST")]
    pub vm_guest: Option<PathBuf>,
    /// Do not offer the VM test guest (no build, no flist on the hub).
    #[arg(long, env = "ZOS_NO_VM_GUEST", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_vm_guest: bool,
    /// Ledger servers. 1: in this process on redb. More: an etcd cluster of as many members
    /// (`etcd` child processes, data under DATA/etcd, client ports from --ledger-port + 10) and
    /// as many `zos ledger serve --store etcd` child processes on --ledger-port, +1, …, one of
    /// them the producer at a time; the node and the client get every URL (docs/ledger.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub ledgers: u8,
    /// Another address nodes reach the relay's port by, besides 127.0.0.1 (repeatable): a
    /// node in a QEMU guest sees this host as 10.0.2.2 and signs its login for that name.
    #[arg(long = "relay-alias")]
    pub relay_aliases: Vec<String>,
    /// Port of node 1's web gateway TLS listener on 127.0.0.1 (docs/gateway.md; a free one
    /// when taken or 0).
    #[arg(long, default_value_t = 7443)]
    pub gateway_port: u16,
    /// Port of node 1's web gateway plain HTTP listener on 127.0.0.1.
    #[arg(long, default_value_t = 7480)]
    pub gateway_http_port: u16,
    /// Node 1's gateway domain: name proxies serve NAME.DOMAIN (no DNS: `curl --resolve`).
    #[arg(long, default_value = "gw.zos.local")]
    pub gateway_domain: String,
    /// Seconds between the gateway's checks of name contracts (a canceled one loses its route).
    #[arg(long, default_value_t = 60)]
    pub gateway_recheck_secs: u64,
    /// Fair billing's cut-off on a new grid's ledger: a node silent (no uptime or usage
    /// report) for longer is not billed until it reports again; its node reports uptime every
    /// third of it (at most every 40 min). Fixed when the grid is made (docs/ledger.md).
    #[arg(long, default_value_t = 7200, value_parser = clap::value_parser!(u64).range(3..))]
    pub offline_cutoff: u64,
    /// Run the node(s) as this image (`zos image build -o DIR`) in QEMU on a host bridge
    /// (root; docs/image.md "zos up --image"); the ledger and relay listen on the bridge.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Memory of each image node, MiB (--image).
    #[arg(long, default_value_t = 2048)]
    pub image_mem: u32,
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("zos").join("up");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/zos/up")
}

/// Why storage pools can or cannot run here (root, loop devices, btrfs tools).
fn pool_support() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err("not running as root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control (loop devices)".into());
    }
    for tool in ["losetup", "mkfs.btrfs", "btrfs"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "`{tool}` is not installed (apt-get install btrfs-progs mount)"
            ));
        }
    }
    Ok(())
}

/// What directory pools can and cannot do, and how to get the rest: said at start.
const DIR_POOLS_WORK: &str = "zdb namespaces, zmount disks, volumes as plain directories";
const DIR_POOLS_MISS: &str =
    "volume quotas (a volume's size is reserved, not enforced) and volume snapshots/restore";
const DIR_POOLS_FIX: &str =
    "run `zos up` as root with loop devices and btrfs-progs (btrfs pools on loop files)";

/// Which pools `zos up` gives its node.
#[derive(Debug, PartialEq, Eq)]
enum Storage {
    /// btrfs on loop files `pools/{ssd,hdd}.img`.
    Btrfs,
    /// Directories `pools/{ssd,hdd}` with a declared size; the reason btrfs is not used.
    Directories(String),
}

/// A grid keeps the kind of pools it was first started with: its node's identity and
/// deployments live on them, so switching would start a new, empty node. `Err` when the
/// grid's pools cannot be used here. `btrfs` is [`pool_support`]'s verdict on this host.
fn choose_storage(pools: &Path, btrfs: Result<(), String>) -> Result<Storage, String> {
    let has_loops = pools.join("ssd.img").exists();
    let has_dirs = pools
        .join("ssd")
        .join(zos_storage::dirpool::MARKER)
        .is_file();
    match (has_loops, has_dirs, btrfs) {
        (_, true, _) => Ok(Storage::Directories(
            "this grid was started with them (remove its --data directory to start over with \
             btrfs pools)"
                .into(),
        )),
        (true, false, Err(why)) => Err(format!(
            "this grid's node lives on btrfs loop-file pools ({}), which cannot be used: {why}; \
             run `zos up` as root, or give another --data",
            pools.join("ssd.img").display()
        )),
        (_, false, Ok(())) => Ok(Storage::Btrfs),
        (false, false, Err(why)) => Ok(Storage::Directories(why)),
    }
}

/// Runs `zos up` until Ctrl-C.
pub fn run(a: UpArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(up(a))
}

fn stop_signal(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    if a.nodes > 1 {
        // Said before anything starts: several nodes exist to carry private networks.
        zos_network::network_support().map_err(|why| {
            anyhow::anyhow!(
                "zos up --nodes {}: {why}; `zos up` (one node) runs without root",
                a.nodes
            )
        })?;
    }
    let data = a.data.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    // --image: the bridge first; the ledger and relay listen on its address.
    let image_net = match &a.image {
        Some(dir) => Some(super::up_image::prepare(
            dir,
            usize::from(a.nodes),
            a.ledgers,
            &data,
        )?),
        None => None,
    };
    let listen_ip = image_net
        .as_ref()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |n| {
            std::net::IpAddr::V4(n.host_ip())
        });
    let tls_names: Vec<String> = image_net.iter().map(|n| n.host_ip().to_string()).collect();
    let pools = data.join("pools");
    std::fs::create_dir_all(&pools).with_context(|| format!("creating {}", pools.display()))?;
    let storage = choose_storage(&pools, pool_support()).map_err(anyhow::Error::msg)?;
    if let Storage::Directories(why) = &storage {
        eprintln!(
            "zos up: no btrfs pools ({why}): using directory pools; MISSING: {DIR_POOLS_MISS}"
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    // The ledger, in dev mode: instant blocks, a funded faucet; HTTPS with a self-signed
    // certificate kept in DATA/ledger/tls, pinned by the node and the client config, and a
    // producer key the node and the client pin too.
    let mut lcfg = LedgerConfig::dev(data.join("ledger"));
    if !data.join("ledger").join("ledger.redb").exists() {
        // A new grid bills fairly; an existing one keeps the rules its chain was made with.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut g = zos_ledger::dev::genesis(now);
        g.offline_cutoff_secs = Some(a.offline_cutoff);
        lcfg.genesis = Some(g);
    }
    lcfg.listen = SocketAddr::new(listen_ip, a.ledger_port);
    let tls = zos_ledger::tls::self_signed(&data.join("ledger").join("tls"), &tls_names)
        .context("making the ledger's TLS certificate")?;
    let ledger_cert = tls.cert.clone();
    lcfg.tls = Some(tls);
    let (ledger_url, ledger_task) = if a.ledgers > 1 {
        ledger_cluster(&a, &data, &lcfg, stop_signal(&stop_rx)).await?
    } else {
        let ledger_server = LedgerServer::bind(lcfg).await.with_context(|| {
            format!(
                "starting the ledger on 127.0.0.1:{} (is another `zos up` running? --ledger-port)",
                a.ledger_port
            )
        })?;
        let ledger_url = format!("https://{}", ledger_server.local_addr());
        let task = tokio::spawn(ledger_server.run(stop_signal(&stop_rx)));
        (ledger_url, task)
    };
    let ledger = LedgerClient::with_trust(
        &ledger_url,
        zos_ledger::Trust::default().with_cert_file(&ledger_cert)?,
    )?;
    // Learned over the pinned channel, then pinned for the node and the client.
    let producer = ledger.producer().await?.to_hex();

    // The relay; twins name it by its address.
    let relay_addr = SocketAddr::new(listen_ip, a.relay_port);
    let relay_domain = relay_addr.to_string();
    let dir: Arc<dyn TwinDirectory> = Arc::new(CachedDirectory::new(
        LedgerDirectory::new(ledger.clone()),
        Duration::from_secs(30),
    ));
    // Over TLS with a self-signed certificate kept in DATA/relay/tls and pinned by the node
    // and the client config, as the ledger's: peers sign their login over the TLS channel.
    let relay_tls = zos_ledger::tls::self_signed_files(
        zos_ledger::tls::TlsFiles {
            cert: data.join("relay").join("tls").join("relay-cert.pem"),
            key: data.join("relay").join("tls").join("relay-key.pem"),
        },
        &tls_names,
    )
    .context("making the relay's TLS certificate")?;
    let relay_cert = relay_tls.cert.clone();
    zos_rmb::pin_relay_cert_file(&relay_cert).context("pinning the relay's certificate")?;
    let mut relay_cfg = RelayConfig::new(relay_addr, relay_domain.clone());
    relay_cfg.public_urls = a
        .relay_aliases
        .iter()
        .map(|h| format!("{h}:{}", relay_addr.port()))
        .collect();
    relay_cfg.tls = Some(zos_rmb::RelayTls {
        cert_chain_pem: relay_tls.cert,
        key_pem: relay_tls.key,
    });
    let relay = Relay::bind(relay_cfg, dir)
        .await
        .with_context(|| format!("starting the relay on {relay_addr} (--relay-port)"))?;
    let relay_url = format!("wss://{}", relay.local_addr());
    let relay_task = tokio::spawn(relay.run(stop_signal(&stop_rx)));

    // The user: key, funds, twin, farm, client configuration.
    let config_path = a.config.clone().unwrap_or_else(config::default_path);
    let mut client_cfg = Config::load(&config_path)?;
    let key_path = client_cfg
        .key
        .clone()
        .unwrap_or_else(|| config::config_dir().join("key.json"));
    let key = user_key(&key_path)?;
    let twin = ensure_twin(&ledger, &key, &relay_domain).await?;
    let farm = ensure_farm(&ledger, &key, twin).await?;
    client_cfg.ledger = Some(ledger_url.clone());
    client_cfg.ledger_cert = Some(ledger_cert.clone());
    client_cfg.ledger_producer = Some(producer.clone());
    client_cfg.relay = Some(relay_url.clone());
    client_cfg.relay_cert = Some(relay_cert.clone());
    client_cfg.key = Some(key_path.clone());
    client_cfg.save(&config_path)?;
    if let (Some(net), Some(image)) = (image_net, &a.image) {
        let grid = super::up_image::Grid {
            ledger_url,
            ledger_cert,
            producer,
            relay_url,
            relay_cert,
            relay_domain,
            farm,
            twin,
            key_path,
            config_path,
        };
        let sizes = (a.ssd.as_str(), a.hdd.as_str(), a.image_mem);
        let r = super::up_image::run(image, net, &data, grid, &ledger, sizes).await;
        let _ = stop_tx.send(true);
        let _ = relay_task.await;
        let _ = ledger_task.await;
        return r;
    }
    // The gateway's dev CA, next to the client config: `curl --cacert` trusts what node 1's
    // gateway serves.
    let gateway_ca_dir = config_path
        .parent()
        .map_or_else(|| data.clone(), Path::to_path_buf);
    let gateway_ca = zos_gateway::DevCa::load_or_create(&gateway_ca_dir)
        .context("making the gateway's dev CA")?;
    // A port another grid holds is replaced by a free one (printed below), as grids share
    // the machine in tests; 0 asks for a free one.
    let free_or = |p: u16| {
        std::net::TcpListener::bind(("127.0.0.1", p))
            .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("a port for the gateway")
    };
    let (gateway_port, gateway_http_port) =
        (free_or(a.gateway_port)?, free_or(a.gateway_http_port)?);

    // The node, with loop-file pools when this host can run them, directory pools otherwise.
    let pools_note;
    let mut node_args = super::node::RunArgs {
        ledger: ledger_url.clone(),
        ledger_cert: Some(ledger_cert.clone()),
        ledger_producer: Some(producer.clone()),
        relays: vec![relay_url.clone()],
        relay_certs: vec![relay_cert.clone()],
        relay_domains: vec![relay_domain.clone()],
        farm,
        data: data.join("node"),
        // DATA/node/key-root: under the grid's directory, outside DATA/pools.
        key_root: None,
        pools: Vec::new(),
        discover_disks: false,
        zdb_listen: None,
        keep_zdb_running: false,
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], a.metrics_port))),
        admin_twins: vec![twin],
        sync_secs: 3600,
        uptime_secs: (a.offline_cutoff / 3).clamp(1, 2400),
        net_namespace: None,
        netns_prefix: String::new(),
        gateway: super::gateway::GatewayArgs {
            gateway_https: Some(SocketAddr::from(([127, 0, 0, 1], gateway_port))),
            gateway_http: Some(SocketAddr::from(([127, 0, 0, 1], gateway_http_port))),
            gateway_domain: Some(a.gateway_domain.clone()),
            gateway_dev_ca: Some(gateway_ca_dir.clone()),
            gateway_recheck_secs: a.gateway_recheck_secs,
            gateway_no_dns_check: true,
            ..Default::default()
        },
        public_nic: None,
        mycelium: Default::default(),
    };
    // Several nodes: a local internet of namespaces; node 1 runs here, the others as children.
    let nodes_n = usize::from(a.nodes);
    let mut node_nets = Vec::new();
    let mut children = Vec::new();
    if nodes_n > 1 {
        node_nets = super::network::setup_internet(nodes_n).await?;
        node_args.net_namespace = Some(node_nets[0].namespace.clone());
        node_args.netns_prefix = node_nets[0].nr_prefix.clone();
        // Node 1 is the grid's public node: a public NIC on the internet, the farm's IPs there.
        super::network::setup_public(&node_nets[0]).await?;
        node_args.public_nic = Some(super::network::PUBLIC_NIC.into());
        // Every node runs its host Mycelium instance (network resources with a mycelium key
        // peer with it); the others also dial node 1's, besides discovery on the bridge.
        node_args.mycelium.mycelium = true;
        let mycelium_peer = format!(
            "--mycelium-peer=tcp://{}:{}",
            node_nets[0].address,
            zos_network::mycelium::HOST_PORT
        );
        ensure_farm_ips(&ledger, &key, farm).await?;
        for n in &node_nets[1..] {
            let dir = data.join(format!("node{}", n.index));
            let metrics = if a.metrics_port == 0 {
                0
            } else {
                a.metrics_port
                    .saturating_add(u16::try_from(n.index - 1).unwrap_or(0))
            };
            let args = vec![
                format!("--ledger={ledger_url}"),
                format!("--ledger-cert={}", ledger_cert.display()),
                format!("--ledger-producer={producer}"),
                format!("--relay={relay_url}"),
                format!("--relay-cert={}", relay_cert.display()),
                format!("--relay-domain={relay_domain}"),
                format!("--farm={farm}"),
                format!("--data={}", dir.join("state").display()),
                format!("--pool=dir:{}:{}:ssd", dir.join("ssd").display(), a.ssd),
                format!("--pool=dir:{}:{}:hdd", dir.join("hdd").display(), a.hdd),
                format!("--metrics=127.0.0.1:{metrics}"),
                format!("--admin-twin={twin}"),
                format!("--uptime-secs={}", (a.offline_cutoff / 3).clamp(1, 2400)),
                format!("--net-namespace={}", n.namespace),
                format!("--netns-prefix={}", n.nr_prefix),
                "--mycelium".into(),
                mycelium_peer.clone(),
            ];
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let child = super::network::ChildNode {
                args,
                log: dir.join("node.log"),
                index: n.index,
            };
            children.push(tokio::spawn(super::network::supervise(
                child,
                stop_rx.clone(),
            )));
        }
    }
    let (ssd_dir, hdd_dir) = (pools.join("ssd"), pools.join("hdd"));
    let cache_dir;
    match storage {
        Storage::Btrfs => {
            cache_dir = "the SSD pool's cache subvolume".to_string();
            node_args.pools = vec![
                format!("{}:{}:ssd", pools.join("ssd.img").display(), a.ssd),
                format!("{}:{}:hdd", pools.join("hdd.img").display(), a.hdd),
            ];
            pools_note = format!(
                "storage  btrfs pools on loop files {} ({}) and {} ({})",
                pools.join("ssd.img").display(),
                a.ssd,
                pools.join("hdd.img").display(),
                a.hdd
            );
        }
        Storage::Directories(why) => {
            cache_dir = ssd_dir.join("cache").display().to_string();
            node_args.pools = vec![
                format!("dir:{}:{}:ssd", ssd_dir.display(), a.ssd),
                format!("dir:{}:{}:hdd", hdd_dir.display(), a.hdd),
            ];
            pools_note = [
                format!(
                    "storage  directory pools {} ({}, ssd) and {} ({}, hdd), because {why}",
                    ssd_dir.display(),
                    a.ssd,
                    hdd_dir.display(),
                    a.hdd
                ),
                format!("           works:   {DIR_POOLS_WORK}"),
                format!("           MISSING: {DIR_POOLS_MISS}"),
                format!("           for those, {DIR_POOLS_FIX}"),
            ]
            .join("\n");
        }
    }
    let vm_note = vm_guest(&a, &data, &stop_rx).await;
    let mut node_task = tokio::spawn(super::node::run_node(node_args, stop_signal(&stop_rx)));

    let node_id = tokio::select! {
        id = wait_for_nodes(&ledger, farm, nodes_n) => Some(id),
        r = &mut node_task => {
            let _ = stop_tx.send(true);
            let _ = relay_task.await;
            let _ = ledger_task.await;
            return match r {
                Ok(Err(e)) => Err(e.context("the node stopped")),
                Ok(Ok(())) => Err(anyhow::anyhow!("the node stopped unexpectedly")),
                Err(e) => Err(anyhow::anyhow!("the node task failed: {e}")),
            };
        }
        () = super::shutdown_signal() => None,
    };
    if let Some(node_ids) = node_id {
        let node_ids = node_ids?;
        let node_id = node_ids[0];
        let public_note = if node_nets.len() > 1 {
            let dirs = vec![data.join("node"), pools.clone()];
            match ledger_node_id(&ledger, &dirs).await {
                Some(id) => {
                    set_public_config(&ledger, &key, id).await?;
                    Some(format!(
                        "public   node {id}: public namespace {}public at {} (gateway {}), farm IPs {} … {} (/24) on the internet {} (namespace {}-inet)",
                        node_nets[0].nr_prefix,
                        super::network::PUBLIC_NODE4,
                        super::network::PUBLIC_GW4,
                        super::network::FARM_IPS[0],
                        super::network::FARM_IPS[super::network::FARM_IPS.len() - 1],
                        "203.0.113.0/24",
                        super::network::PREFIX,
                    ))
                }
                None => Some("public   node 1's ledger id not found: no public config".into()),
            }
        } else {
            None
        };
        println!("zos grid is up");
        println!(
            "  ledger   {ledger_url}   (data {})",
            data.join("ledger").display()
        );
        println!("  relay    {relay_url}");
        println!("  node     {node_id} in farm {farm}   (state in {cache_dir})");
        if node_nets.len() > 1 {
            println!("  nodes    {node_ids:?} in farm {farm}, network planes:");
            for n in &node_nets {
                // Registration order is not the local index (children race node 1), so the
                // ledger id comes from each node's own key.
                let dirs = if n.index == 1 {
                    vec![data.join("node"), pools.clone()]
                } else {
                    vec![data.join(format!("node{}", n.index))]
                };
                let id = match ledger_node_id(&ledger, &dirs).await {
                    Some(id) => format!("node {id}"),
                    None => "node ?".to_string(),
                };
                println!(
                    "           {id}: namespace {} at {} (network resources {}n-<netid>)",
                    n.namespace, n.address, n.nr_prefix
                );
            }
        }
        if let Some(p) = &public_note {
            println!("  {p}");
        }
        println!(
            "  gateway  https://NAME.{} on 127.0.0.1:{} (http :{}), CA {}",
            a.gateway_domain,
            gateway_port,
            gateway_http_port,
            gateway_ca.cert.display()
        );
        println!("  {pools_note}");
        println!("  {vm_note}");
        println!("  you      twin {twin}, key {}", key_path.display());
        println!("  config   {}", config_path.display());
        println!();
        println!("next, in another terminal:");
        println!("  zos deploy examples/zdb.yaml");
        println!("  zos deploy examples/vm.yaml     # then: zos vm logs CONTRACT vm");
        println!("  zos deployments");
        println!("Ctrl-C stops the grid; `zos up` again resumes it.");
        tokio::select! {
            () = super::shutdown_signal() => {}
            r = &mut node_task => {
                let _ = stop_tx.send(true);
                let _ = relay_task.await;
                let _ = ledger_task.await;
                return match r {
                    Ok(Err(e)) => Err(e.context("the node stopped")),
                    _ => Err(anyhow::anyhow!("the node stopped unexpectedly")),
                };
            }
        }
    }
    eprintln!("stopping…");
    let _ = stop_tx.send(true);
    for c in children {
        let _ = c.await;
    }
    let node_result = node_task.await.context("node task")?;
    if nodes_n > 1 {
        super::network::teardown_internet().await;
    }
    let _ = relay_task.await;
    let _ = ledger_task.await;
    node_result?;
    eprintln!("stopped");
    Ok(())
}

/// Starts the grid's flist hub and makes the VM test guest available on it (built in the
/// background when not cached yet); the line `zos up` prints about it.
async fn vm_guest(a: &UpArgs, data: &Path, stop_rx: &watch::Receiver<bool>) -> String {
    if a.no_vm_guest {
        return "vm guest off (--no-vm-guest)".into();
    }
    let hub_root = data.join("hub");
    let hub = zos_flist::hub::Hub::new(hub_root.clone(), Default::default());
    let hub_url = match tokio::net::TcpListener::bind(("127.0.0.1", a.hub_port)).await {
        Ok(l) => {
            let url = l
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default();
            tokio::spawn(zos_flist::hub::serve(l, hub, stop_signal(stop_rx)));
            url
        }
        Err(e) => {
            return format!(
                "vm guest not offered: the hub cannot listen on 127.0.0.1:{} ({e}; --hub-port)",
                a.hub_port
            );
        }
    };
    let mut node_dirs = vec![data.join("node")];
    for i in 2..=a.nodes {
        node_dirs.push(data.join(format!("node{i}")).join("state"));
    }
    let guest = a.vm_guest.clone().unwrap_or_else(super::guest::default_dir);
    if super::guest::is_built(&guest) {
        return match super::guest::install(&guest, &node_dirs, &hub_root).await {
            Ok(p) => format!("hub      {hub_url}   vm guest {hub_url}{p} (examples/vm.yaml)"),
            Err(e) => format!("hub      {hub_url}   vm guest not offered: {e:#}"),
        };
    }
    // First start on this machine: build once (~1 min, Debian packages) without holding the
    // grid back; the flist appears on the hub when done.
    let (g, h) = (guest.clone(), hub_root.clone());
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return tracing::warn!("vm guest build: {e}"),
        };
        let r = rt.block_on(async {
            super::guest::build(&g).await?;
            super::guest::install(&g, &node_dirs, &h).await
        });
        match r {
            Ok(p) => eprintln!("zos up: the vm guest is ready: {p} on the hub"),
            Err(e) => eprintln!("zos up: the vm guest could not be built: {e:#}"),
        }
    });
    format!(
        "hub      {hub_url}   vm guest building in {} (Debian packages, once; examples/vm.yaml works when done)",
        guest.display()
    )
}

fn user_key(path: &Path) -> anyhow::Result<KeyPair> {
    if !path.exists() {
        KeyFile::generate(KeyType::Ed25519, false).save(path, false)?;
        eprintln!("created your key at {}", path.display());
    }
    KeyFile::load(path)?.key_pair().map_err(anyhow::Error::msg)
}

async fn ensure_twin(ledger: &LedgerClient, key: &KeyPair, relay: &str) -> anyhow::Result<u32> {
    if ledger.balance(&key.public()).await? < USER_FUNDS / 10 {
        ledger
            .dev_fund(&key.public(), USER_FUNDS)
            .await
            .context("funding your account")?;
    }
    let e2e = hex::encode(zos_rmb::e2e_public_key(key.seed()));
    let relays = vec![relay.to_string()];
    match ledger.twin_by_account(&key.public()).await? {
        Some(t) if t.relays == relays && t.e2e_key.as_deref() == Some(e2e.as_str()) => Ok(t.id),
        Some(t) => {
            ledger
                .send(
                    key,
                    Call::UpdateTwin {
                        relays,
                        e2e_key: Some(e2e),
                    },
                )
                .await?;
            Ok(t.id)
        }
        None => {
            ledger
                .send(
                    key,
                    Call::CreateTwin {
                        relays,
                        e2e_key: Some(e2e),
                    },
                )
                .await?;
            let t = ledger
                .twin_by_account(&key.public())
                .await?
                .context("the ledger did not store your twin")?;
            Ok(t.id)
        }
    }
}

async fn ensure_farm(ledger: &LedgerClient, key: &KeyPair, twin: u32) -> anyhow::Result<u32> {
    let name = format!("dev-{twin}");
    if let Some(f) = ledger.farm_by_name(&name).await? {
        return Ok(f.id);
    }
    ledger
        .send(key, Call::CreateFarm { name: name.clone() })
        .await?;
    Ok(ledger
        .farm_by_name(&name)
        .await?
        .context("the ledger did not store the farm")?
        .id)
}

/// The farm's public IPs on the local internet (added once; the ledger keeps them).
async fn ensure_farm_ips(ledger: &LedgerClient, key: &KeyPair, farm: u32) -> anyhow::Result<()> {
    let have = ledger
        .farm(farm)
        .await?
        .map(|f| f.public_ips)
        .unwrap_or_default();
    for a in super::network::FARM_IPS {
        let ip = format!("{a}/24");
        if have.iter().any(|p| p.ip == ip) {
            continue;
        }
        ledger
            .send(
                key,
                Call::AddFarmIp {
                    farm_id: farm,
                    ip,
                    gateway: super::network::PUBLIC_GW4.into(),
                },
            )
            .await
            .context("adding the farm's public IPs")?;
    }
    Ok(())
}

/// Node `node_id`'s public config: its address on the local internet's public segment.
async fn set_public_config(
    ledger: &LedgerClient,
    key: &KeyPair,
    node_id: u32,
) -> anyhow::Result<()> {
    let config = zos_ledger::PublicConfig {
        ip4: zos_ledger::IpConfig {
            ip: super::network::PUBLIC_NODE4.into(),
            gw: super::network::PUBLIC_GW4.into(),
        },
        ip6: Some(zos_ledger::IpConfig {
            ip: super::network::PUBLIC_NODE6.into(),
            gw: super::network::PUBLIC_GW6.into(),
        }),
        domain: None,
    };
    let current = ledger.node(node_id).await?.and_then(|n| n.public_config);
    if current.as_ref() != Some(&config) {
        ledger
            .send(
                key,
                Call::SetNodePublicConfig {
                    node_id,
                    config: Some(config),
                },
            )
            .await
            .context("setting node 1's public config")?;
    }
    Ok(())
}

/// The ledger id of the node whose identity (`seed.txt`, its primary or a pool mirror) lies
/// under one of `dirs` (searched 4 levels deep); `None` when it cannot be found or is not
/// registered.
async fn ledger_node_id(ledger: &LedgerClient, dirs: &[PathBuf]) -> Option<u32> {
    fn find(dir: &Path, depth: u8) -> Option<PathBuf> {
        let seed = dir.join(zos_node::identity::SEED_FILE);
        if seed.is_file() {
            return Some(seed);
        }
        if depth == 0 {
            return None;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        subs.iter().find_map(|d| find(d, depth - 1))
    }
    let path = dirs.iter().find_map(|d| find(d, 4))?;
    let bytes = std::fs::read(&path).ok()?;
    let seed = zos_node::identity::decode(&path, &bytes).ok()?;
    let public = KeyPair::from_seed(KeyType::Ed25519, seed).public();
    let twin = ledger.twin_by_account(&public).await.ok()??;
    Some(ledger.node_by_twin(twin.id).await.ok()??.id)
}

/// Waits until `count` nodes of `farm` are registered (nodes register themselves at start);
/// their ids, lowest first.
async fn wait_for_nodes(
    ledger: &LedgerClient,
    farm: u32,
    count: usize,
) -> anyhow::Result<Vec<u32>> {
    let start = Instant::now();
    loop {
        let mut found = Vec::new();
        for id in 1u32.. {
            match ledger.node(id).await? {
                Some(n) if n.farm_id == farm => found.push(n.id),
                Some(_) => continue,
                None => break,
            }
        }
        if found.len() >= count {
            return Ok(found);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the node did not register within 2 minutes; see its log above");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--ledgers N` (N > 1): N etcd members and N `zos ledger serve --store etcd` servers, each its
/// own child process (one can be killed by hand), sharing the producer key and TLS certificate
/// of `DATA/ledger`. Returns the URL list and a task that stops them all on `stop`.
async fn ledger_cluster(
    a: &UpArgs,
    data: &std::path::Path,
    lcfg: &LedgerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    String,
    tokio::task::JoinHandle<Result<(), zos_ledger::LedgerError>>,
)> {
    use tokio::process::Command;
    let n = usize::from(a.ledgers);
    let have_etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_etcd {
        bail!("--ledgers {n} needs etcd (Debian: apt-get install etcd-server)");
    }
    let tls = lcfg.tls.clone().context("the ledger's TLS files")?;
    let key = zos_ledger::server::producer_key(&lcfg.data_dir)?;
    // A new cluster bills fairly too: its genesis (with the cut-off) goes in a file every
    // server is given at every start. A cluster made before has none and keeps its chain.
    let genesis_file = lcfg.data_dir.join("genesis.json");
    if !data.join("etcd").exists() {
        if let Some(g) = &lcfg.genesis {
            std::fs::write(&genesis_file, serde_json::to_vec_pretty(g)?)?;
        }
    }
    let port = |i: usize, k: usize| a.ledger_port + 10 + (2 * i + k) as u16;
    let initial: Vec<String> = (0..n)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", port(i, 1)))
        .collect();
    let etcd_urls: Vec<String> = (0..n)
        .map(|i| format!("http://127.0.0.1:{}", port(i, 0)))
        .collect();
    let mut children = Vec::new();
    let log = |name: &str| -> anyhow::Result<std::fs::File> {
        let path = data.join("etcd").join(format!("{name}.log"));
        std::fs::create_dir_all(data.join("etcd"))?;
        Ok(std::fs::File::create(path)?)
    };
    for (i, client_url) in etcd_urls.iter().enumerate() {
        let name = format!("m{i}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(data.join("etcd").join(&name))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                port(i, 1)
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                port(i, 1)
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-token=zos-up")
            .arg("--auto-compaction-retention=1")
            .arg("--log-level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(log(&name)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd")?;
        children.push(child);
    }
    let exe = std::env::current_exe().context("finding the zos binary")?;
    let mut urls = Vec::new();
    for i in 0..n {
        let dir = lcfg.data_dir.join(format!("server{i}"));
        std::fs::create_dir_all(&dir)?;
        // Every server signs as the one producer genesis names.
        std::fs::write(
            dir.join(zos_ledger::server::PRODUCER_KEY_FILE),
            hex::encode(key.seed()),
        )?;
        let listen = format!("127.0.0.1:{}", a.ledger_port + i as u16);
        urls.push(format!("https://{listen}"));
        let mut cmd = Command::new(&exe);
        cmd.args(["ledger", "serve", "--dev", "--store", "etcd"])
            .arg(format!("--data={}", dir.display()))
            .arg(format!("--listen={listen}"))
            .arg(format!("--tls-cert={}", tls.cert.display()))
            .arg(format!("--tls-key={}", tls.key.display()))
            .arg(format!("--etcd={}", etcd_urls.join(",")))
            .arg(format!("--server-id=ledger{i}"));
        if genesis_file.exists() {
            cmd.arg(format!("--genesis={}", genesis_file.display()));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(
                lcfg.data_dir.join(format!("server{i}.log")),
            )?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a ledger server")?;
        children.push(child);
    }
    let url = urls.join(",");
    let client = LedgerClient::with_trust(
        &url,
        zos_ledger::Trust::default().with_cert_file(&tls.cert)?,
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while client.head().await.is_err() {
        if std::time::Instant::now() > deadline {
            bail!(
                "the ledger servers did not come up (logs: {})",
                lcfg.data_dir.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "zos up: {n} ledger servers on etcd ({url}), logs under {}",
        data.display()
    );
    let task = tokio::spawn(async move {
        stop.await;
        // Ledger servers first (they stop cleanly on SIGTERM), then etcd.
        for c in children.iter_mut().rev() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.wait()).await;
            let _ = c.kill().await;
        }
        Ok(())
    });
    Ok((url, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_keeps_the_pools_it_started_with() {
        let t = tempfile::tempdir().expect("temp dir");
        let p = t.path();
        let no = || Err("not running as root".to_string());
        // A new grid: btrfs when the host can, directories (saying why) when not.
        assert_eq!(choose_storage(p, Ok(())), Ok(Storage::Btrfs));
        assert_eq!(
            choose_storage(p, no()),
            Ok(Storage::Directories("not running as root".into()))
        );
        // Started on directories: kept, even as root.
        std::fs::create_dir(p.join("ssd")).expect("mkdir");
        std::fs::write(p.join("ssd").join(zos_storage::dirpool::MARKER), "").expect("marker");
        assert!(matches!(
            choose_storage(p, Ok(())),
            Ok(Storage::Directories(why)) if why.contains("started with them")
        ));
        // Started on loop files: refused without root rather than a new, empty node.
        let t = tempfile::tempdir().expect("temp dir");
        std::fs::write(t.path().join("ssd.img"), "").expect("img");
        assert_eq!(choose_storage(t.path(), Ok(())), Ok(Storage::Btrfs));
        let e = choose_storage(t.path(), no()).expect_err("refused");
        assert!(
            e.contains("not running as root") && e.contains("as root"),
            "{e}"
        );
    }
}
