//! `zos ledger serve|verify` and the ledger client commands `zos twin|farm|contracts|balance`.
//! Results are printed as JSON on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use zos_ledger::{Call, LedgerClient, LedgerConfig, LedgerServer};
use zos_types::crypto::{KeyPair, KeyType, PublicKey, decode_hex32};

use super::client::KeyTypeArg;

/// Ledger commands, flattened into the top-level command list.
#[derive(Subcommand, Debug)]
pub enum LedgerCommands {
    /// Run or audit the grid ledger.
    #[command(subcommand)]
    Ledger(Box<LedgerCmd>),
    /// Show or create twins.
    #[command(subcommand)]
    Twin(TwinCmd),
    /// Show or create farms and their public IPs.
    #[command(subcommand)]
    Farm(FarmCmd),
    /// List contracts: yours, a node's active ones, or one by id.
    Contracts(ContractsArgs),
    /// Show an account's balance (yours by default).
    Balance(BalanceArgs),
}

/// `zos ledger …`
// Parsed once per process; boxing `Serve` would only complicate clap's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Serve a ledger (JSON-RPC over HTTP `POST /` and WebSocket `/ws`) until SIGINT/SIGTERM.
    Serve {
        /// Data directory (holds `ledger.redb`).
        #[arg(long)]
        data: PathBuf,
        /// Listen address, e.g. 127.0.0.1:8900.
        #[arg(long)]
        listen: SocketAddr,
        /// Dev mode: dev genesis when empty, instant blocks, dev_* methods.
        #[arg(long)]
        dev: bool,
        /// Genesis JSON for an empty data directory.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Block interval in milliseconds (outside dev mode).
        #[arg(long, default_value_t = 1000)]
        block_interval: u64,
        /// Serve HTTPS/WSS with this certificate (PEM; clients pin it with --ledger-cert).
        #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve HTTPS/WSS with a self-signed certificate kept in DIR (made on first start:
        /// ledger-cert.pem, ledger-key.pem). Hand ledger-cert.pem to clients.
        #[arg(long, value_name = "DIR")]
        tls_self_signed: Option<PathBuf>,
        #[command(flatten)]
        limits: ServeLimits,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Replay a ledger from genesis and check every link, signature, event and the state
    /// (a stopped one in --data, or one in etcd, served or not).
    Verify {
        /// Data directory.
        #[arg(long, required_unless_present = "etcd")]
        data: Option<PathBuf>,
        /// etcd client URLs (URL[,URL…]) of an etcd-backed ledger instead of --data.
        #[arg(long, conflicts_with = "data")]
        etcd: Option<String>,
        /// Key prefix of the ledger in etcd.
        #[arg(long, default_value = "/zos-ledger/")]
        etcd_prefix: String,
        #[command(flatten)]
        etcd_tls: EtcdTlsArgs,
    },
    /// Council: set the node software version the grid runs, optionally staged to some farms
    /// or a share of the nodes; clears a halted rollout. Signed with --key/--seed (the
    /// council's key) or --dev-council.
    SetVersion {
        /// Version (the release `zos-<V>.fl` on the hub).
        // Not named `version`: that id is clap's own `--version`.
        #[arg(value_name = "VERSION")]
        target: String,
        /// Nodes may upgrade now (without it the version is announced only).
        #[arg(long)]
        safe_to_upgrade: bool,
        /// Stage: only nodes of this farm (repeatable; none: every farm).
        #[arg(long = "farm", value_name = "FARM_ID")]
        farms: Vec<u32>,
        /// Stage: only this percentage of nodes (1..=100; the same nodes go first when raised).
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
        share: Option<u8>,
        /// Sign with the well-known dev council key (a `--dev` ledger; never on a real grid).
        #[arg(long, conflicts_with_all = ["key", "seed"])]
        dev_council: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show the target node software version, its stage and whether the rollout is halted.
    Version {
        /// Print the ledger's JSON record instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Where `zos ledger serve` keeps the chain.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One embedded redb file in --data (one server).
    Redb,
    /// An etcd cluster (several servers, one producer at a time; docs/ledger.md).
    Etcd,
}

/// The etcd-backed ledger's options of `zos ledger serve`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Store: redb (default; or etcd when --etcd is given).
    #[arg(long, value_enum)]
    store: Option<StoreKind>,
    /// etcd client URLs, URL[,URL…] (every server of the ledger names the same cluster and
    /// holds the same producer.key in its --data).
    #[arg(long)]
    etcd: Option<String>,
    /// Key prefix of this ledger in etcd.
    #[arg(long, default_value = "/zos-ledger/")]
    etcd_prefix: String,
    /// Producer lease in seconds (≥ 2): the failover time after a producer dies.
    #[arg(long, default_value_t = 5)]
    lease_ttl: u64,
    /// URL the other servers forward submissions to (default: scheme://listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// This server's id in etcd (default: the advertised URL).
    #[arg(long)]
    server_id: Option<String>,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
}

/// TLS to etcd (`https://` endpoints): the cluster's CA, and this server's client certificate
/// when the cluster requires one (`--client-cert-auth`).
#[derive(Args, Debug, Clone)]
pub struct EtcdTlsArgs {
    /// PEM CA of the etcd members' certificates (the only root trusted).
    #[arg(long, value_name = "FILE")]
    etcd_cacert: Option<PathBuf>,
    /// PEM client certificate for etcd.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_key",
        requires = "etcd_cacert"
    )]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    fn apply(&self, cfg: &mut zos_ledger::store::EtcdConfig) -> anyhow::Result<()> {
        if let Some(ca) = &self.etcd_cacert {
            let client = self.etcd_cert.as_deref().zip(self.etcd_key.as_deref());
            cfg.tls = Some(zos_ledger::store::EtcdTls::from_files(ca, client)?);
        }
        Ok(())
    }
}

impl ClusterArgs {
    fn etcd(&self, advertise: &str) -> anyhow::Result<Option<zos_ledger::store::EtcdConfig>> {
        let kind = self.store.unwrap_or(if self.etcd.is_some() {
            StoreKind::Etcd
        } else {
            StoreKind::Redb
        });
        match (kind, &self.etcd) {
            (StoreKind::Redb, None) => Ok(None),
            (StoreKind::Redb, Some(_)) => bail!("--etcd needs --store etcd (or no --store)"),
            (StoreKind::Etcd, None) => bail!("--store etcd needs --etcd URL[,URL…]"),
            (StoreKind::Etcd, Some(urls)) => {
                let id = self
                    .server_id
                    .clone()
                    .unwrap_or_else(|| advertise.to_string());
                let mut cfg = zos_ledger::store::EtcdConfig::new(urls, &id)?;
                self.etcd_tls.apply(&mut cfg)?;
                cfg.prefix.clone_from(&self.etcd_prefix);
                cfg.lease_ttl = Duration::from_secs(self.lease_ttl);
                Ok(Some(cfg))
            }
        }
    }
}

/// Connection, request and signature-failure limits of `zos ledger serve` (docs/ledger.md).
#[derive(Args, Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once (HTTP and WebSocket); more get HTTP 503 and are closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Connections from one address (IPv4, or IPv6 /64) at once; more are refused the same way.
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Seconds allowed for an HTTP request head; also the idle limit between keep-alive requests.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds allowed to receive a whole request body.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Seconds a WebSocket may stay silent (the server pings every third of it).
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Largest HTTP request body in bytes (WebSocket messages: at most 64 KiB).
    #[arg(long, default_value_t = 2 << 20)]
    max_body_bytes: usize,
    /// Bytes all unfinished request bodies may hold together.
    #[arg(long, default_value_t = 64 << 20)]
    body_memory: usize,
    /// Requests served on one keep-alive connection before it is closed.
    #[arg(long, default_value_t = 10_000)]
    keep_alive_requests: u64,
    /// Subscriptions open at once on one WebSocket.
    #[arg(long, default_value_t = 64)]
    max_subscriptions: usize,
    /// Bad signatures from one address before it is banned (0: no throttling at all).
    #[arg(long, default_value_t = 10)]
    sig_ban_after: u32,
    /// Seconds of the first ban (doubling per repeat, up to an hour or this if longer).
    #[arg(long, default_value_t = 60)]
    sig_ban: u64,
}

impl ServeLimits {
    fn limits(&self) -> zos_ledger::Limits {
        let secs = Duration::from_secs;
        let sig_throttle = if self.sig_ban_after == 0 {
            zos_ledger::SigThrottle::off()
        } else {
            let d = zos_ledger::SigThrottle::default();
            zos_ledger::SigThrottle {
                free_failures: d.free_failures.min(self.sig_ban_after),
                ban_after: self.sig_ban_after,
                ban: secs(self.sig_ban),
                max_ban: d.max_ban.max(secs(self.sig_ban)),
                ..d
            }
        };
        zos_ledger::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_timeout: secs(self.header_timeout),
            body_timeout: secs(self.body_timeout),
            idle_timeout: secs(self.idle_timeout),
            max_body_bytes: self.max_body_bytes,
            body_memory: self.body_memory,
            keep_alive_requests: self.keep_alive_requests,
            max_subscriptions: self.max_subscriptions,
            sig_throttle,
        }
    }
}

/// Where the ledger is and who signs: found like every client command's (flag, then
/// `ZOS_LEDGER` / `ZOS_KEY` (a key file) / `ZOS_SEED` (a hex seed), then the config file that
/// `zos up` writes).
#[derive(Args, Debug)]
pub struct ClientOpts {
    /// Config file.
    #[arg(long, env = "ZOS_CONFIG")]
    config: Option<PathBuf>,
    /// Ledger URL (overrides ZOS_LEDGER and the config file).
    #[arg(long)]
    ledger: Option<String>,
    /// The https ledger's certificate to pin (PEM; overrides ZOS_LEDGER_CERT and the config).
    #[arg(long)]
    ledger_cert: Option<PathBuf>,
    /// Key file of the signing key (overrides ZOS_KEY and the config file).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Hex 32-byte seed of the signing key instead of a key file (overrides ZOS_SEED).
    #[arg(long)]
    seed: Option<String>,
    /// Scheme of --seed / ZOS_SEED (ed25519 by default; a key file names its own).
    #[arg(long, value_enum)]
    key_type: Option<KeyTypeArg>,
}

impl ClientOpts {
    fn config(&self) -> anyhow::Result<zos_client::Config> {
        let mut cfg = zos_client::Config::lookup(&zos_client::Overrides {
            config: self.config.clone(),
            ledger: self.ledger.clone(),
            relay: None,
            key: self.key.clone(),
            seed: self.seed.clone(),
            key_type: self.key_type.map(KeyType::from),
        })?;
        if let Some(c) = &self.ledger_cert {
            cfg.ledger_cert = Some(c.clone());
        }
        Ok(cfg)
    }

    fn client(&self) -> anyhow::Result<LedgerClient> {
        Ok(self.config()?.ledger_client()?)
    }

    fn key(&self) -> anyhow::Result<KeyPair> {
        Ok(self.config()?.key_pair()?)
    }

    /// `--account HEX` if given, else the signing key's public key.
    fn account(&self, account: &Option<String>) -> anyhow::Result<PublicKey> {
        match account {
            Some(hex) => Ok(PublicKey {
                key_type: self.key().map(|k| k.key_type()).unwrap_or(KeyType::Ed25519),
                bytes: decode_hex32("account", hex)?,
            }),
            None => Ok(self.key()?.public()),
        }
    }
}

/// `zos twin …`
#[derive(Subcommand, Debug)]
pub enum TwinCmd {
    /// Create the signing account's twin.
    Create {
        #[command(flatten)]
        opts: ClientOpts,
        /// Relay address (repeatable).
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// Hex E2E public key.
        #[arg(long)]
        e2e_key: Option<String>,
    },
    /// Show a twin by id, or the signing account's twin.
    Show {
        #[command(flatten)]
        opts: ClientOpts,
        /// Twin id.
        id: Option<u32>,
    },
    /// Replace the signing account's twin's relays and E2E key (e2e key rotation).
    Update {
        #[command(flatten)]
        opts: ClientOpts,
        /// Relay address (repeatable; the list replaces the old one).
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// Hex E2E public key (omit to publish none).
        #[arg(long)]
        e2e_key: Option<String>,
    },
    /// Move the signing account's twin to a new account (the new key signs its consent).
    RotateAccount {
        #[command(flatten)]
        opts: ClientOpts,
        /// Hex 32-byte seed of the new account.
        #[arg(long)]
        new_seed: String,
        /// Scheme of the new account (ed25519 by default).
        #[arg(long, value_enum)]
        new_key_type: Option<KeyTypeArg>,
    },
}

/// `zos farm …`
#[derive(Subcommand, Debug)]
pub enum FarmCmd {
    /// Create a farm owned by the signing account's twin.
    Create {
        #[command(flatten)]
        opts: ClientOpts,
        /// Unique farm name.
        name: String,
    },
    /// Show a farm by id or name.
    Show {
        #[command(flatten)]
        opts: ClientOpts,
        /// Farm id or name.
        farm: String,
    },
    /// Add a public IPv4 address (CIDR) and its gateway to a farm's pool.
    AddIp {
        #[command(flatten)]
        opts: ClientOpts,
        /// Farm id.
        farm_id: u32,
        /// Address with prefix, e.g. 185.69.166.10/24.
        ip: String,
        /// Gateway, e.g. 185.69.166.1.
        gateway: String,
    },
    /// Put a node of your farm in maintenance (`on`: new contracts refused, existing ones keep
    /// running; `--pause` pauses them, unbilled) or end it (`off`).
    Maintenance {
        #[command(flatten)]
        opts: ClientOpts,
        /// Node id.
        node_id: u32,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// Pause the node's workloads while in maintenance (owners are notified).
        #[arg(long)]
        pause: bool,
    },
    /// Reboot a node of your farm cleanly, through its API (the node asks the zos image's
    /// PID 1; a node running as a host process refuses).
    Reboot {
        #[command(flatten)]
        args: super::client::ClientArgs,
        /// Node id.
        #[arg(long)]
        node: u32,
    },
    /// Give node OLD's record (id, contracts, public config) to the machine that registered
    /// as node NEW after losing its identity (NEW's record goes; it must have no contracts).
    /// Restart the machine's node afterwards so that it serves as OLD.
    MoveNode {
        #[command(flatten)]
        opts: ClientOpts,
        /// The lost node's id (kept).
        old: u32,
        /// The id its new identity registered with (removed).
        new: u32,
    },
}

/// `zos contracts`
#[derive(Args, Debug)]
pub struct ContractsArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Active contracts of this node instead of your own.
    #[arg(long, conflicts_with = "id")]
    node: Option<u32>,
    /// One contract by id.
    #[arg(long)]
    id: Option<u64>,
}

/// `zos balance`
#[derive(Args, Debug)]
pub struct BalanceArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Hex account key (default: the signing key's).
    #[arg(long)]
    account: Option<String>,
}

/// Runs a ledger command.
pub fn run(cmd: LedgerCommands) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cmd {
            LedgerCommands::Ledger(c) => ledger(*c).await,
            LedgerCommands::Twin(c) => twin(c).await,
            LedgerCommands::Farm(c) => farm(c).await,
            LedgerCommands::Contracts(a) => contracts(a).await,
            LedgerCommands::Balance(a) => {
                let account = a.opts.account(&a.account)?;
                let acct = a.opts.client()?.account(&account).await?;
                print(&serde_json::json!({
                    "account": account,
                    "balance": acct.balance,
                    "nonce": acct.nonce,
                }))
            }
        }
    })
}

fn print<T: Serialize>(v: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(v)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn ledger(cmd: LedgerCmd) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Serve {
            data,
            listen,
            dev,
            genesis,
            block_interval,
            tls_cert,
            tls_key,
            tls_self_signed,
            limits,
            cluster,
        } => {
            let genesis = genesis.map(|p| zos_ledger::load_genesis(&p)).transpose()?;
            let tls = match (tls_cert, tls_key, tls_self_signed) {
                (Some(cert), Some(key), _) => Some(zos_ledger::tls::TlsFiles { cert, key }),
                (_, _, Some(dir)) => Some(
                    zos_ledger::tls::self_signed(&dir, &[listen.ip().to_string()])
                        .context("making the self-signed certificate")?,
                ),
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let advertise = cluster
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{listen}"));
            let etcd = cluster.etcd(&advertise)?;
            let server = LedgerServer::bind(LedgerConfig {
                data_dir: data,
                listen,
                dev,
                genesis,
                block_interval: Duration::from_millis(block_interval.max(1)),
                limits: limits.limits(),
                tls,
                etcd,
                advertise: cluster.advertise.clone(),
            })
            .await?;
            eprintln!("ledger listening on {scheme}://{}", server.local_addr());
            server.run(super::shutdown_signal()).await?;
            Ok(())
        }
        LedgerCmd::Verify {
            data,
            etcd,
            etcd_prefix,
            etcd_tls,
        } => {
            let store: std::sync::Arc<dyn zos_ledger::LedgerStore> = match (data, etcd) {
                (_, Some(urls)) => {
                    let mut cfg = zos_ledger::store::EtcdConfig::new(&urls, "verify")?;
                    etcd_tls.apply(&mut cfg)?;
                    cfg.prefix = etcd_prefix;
                    tokio::task::spawn_blocking(move || {
                        zos_ledger::store::EtcdStore::open(cfg, false)
                    })
                    .await??
                }
                (Some(data), None) => zos_ledger::open_store(&data)?,
                (None, None) => bail!("--data or --etcd"),
            };
            let report = tokio::task::spawn_blocking(move || zos_ledger::verify(store)).await??;
            print(&report)
        }
        LedgerCmd::SetVersion {
            target,
            safe_to_upgrade,
            farms,
            share,
            dev_council,
            opts,
        } => {
            let key = if dev_council {
                zos_ledger::dev::council_key()
            } else {
                opts.key()?
            };
            let call = Call::SetZosVersion {
                version: target,
                safe_to_upgrade,
                farms,
                share_percent: share,
            };
            let r = opts.client()?.send(&key, call).await?;
            print(&r)
        }
        LedgerCmd::Version { json, opts } => {
            let v = opts.client()?.zos_version().await?;
            if json {
                return print(&v);
            }
            println!("{}", version_text(&v));
            Ok(())
        }
    }
}

/// `zos ledger version` as text: one `key: value` line each.
fn version_text(v: &zos_ledger::ZosVersion) -> String {
    let target = if v.version.is_empty() {
        "(none set)"
    } else {
        &v.version
    };
    let farms = if v.farms.is_empty() {
        "all".to_string()
    } else {
        let ids: Vec<String> = v.farms.iter().map(u32::to_string).collect();
        ids.join(",")
    };
    let share = v
        .share_percent
        .map_or("all nodes".to_string(), |p| format!("{p}% of nodes"));
    let halted = match &v.halted {
        None => "no".to_string(),
        Some(h) => format!(
            "yes: node {} rolled back from {}: {}",
            h.node_id, h.version, h.reason
        ),
    };
    format!(
        "version: {target}\nsafe_to_upgrade: {}\nfarms: {farms}\nshare: {share}\nhalted: {halted}",
        v.safe_to_upgrade
    )
}

async fn twin(cmd: TwinCmd) -> anyhow::Result<()> {
    match cmd {
        TwinCmd::Create {
            opts,
            relays,
            e2e_key,
        } => {
            let receipt = opts
                .client()?
                .send(&opts.key()?, Call::CreateTwin { relays, e2e_key })
                .await?;
            print(&receipt)
        }
        TwinCmd::Show { opts, id } => {
            let c = opts.client()?;
            let twin = match id {
                Some(id) => c.twin(id).await?,
                None => c.twin_by_account(&opts.key()?.public()).await?,
            };
            match twin {
                Some(t) => print(&t),
                None => bail!("no such twin"),
            }
        }
        TwinCmd::Update {
            opts,
            relays,
            e2e_key,
        } => {
            let receipt = opts
                .client()?
                .send(&opts.key()?, Call::UpdateTwin { relays, e2e_key })
                .await?;
            print(&receipt)
        }
        TwinCmd::RotateAccount {
            opts,
            new_seed,
            new_key_type,
        } => {
            let new = KeyPair::from_hex_seed(
                new_key_type.map(KeyType::from).unwrap_or(KeyType::Ed25519),
                &new_seed,
            )?;
            let (c, key) = (opts.client()?, opts.key()?);
            let twin = c
                .twin_by_account(&key.public())
                .await?
                .with_context(|| format!("account {} has no twin", key.public()))?;
            let call = Call::rotate_twin_account(twin.id, &key.public(), &new);
            print(&c.send(&key, call).await?)
        }
    }
}

async fn farm(cmd: FarmCmd) -> anyhow::Result<()> {
    match cmd {
        FarmCmd::Create { opts, name } => {
            let r = opts
                .client()?
                .send(&opts.key()?, Call::CreateFarm { name })
                .await?;
            print(&r)
        }
        FarmCmd::Show { opts, farm } => {
            let c = opts.client()?;
            let found = match farm.parse::<u32>() {
                Ok(id) => c.farm(id).await?,
                Err(_) => c.farm_by_name(&farm).await?,
            };
            match found {
                Some(f) => print(&f),
                None => bail!("no such farm {farm:?}"),
            }
        }
        FarmCmd::AddIp {
            opts,
            farm_id,
            ip,
            gateway,
        } => {
            let call = Call::AddFarmIp {
                farm_id,
                ip,
                gateway,
            };
            let r = opts.client()?.send(&opts.key()?, call).await?;
            print(&r)
        }
        FarmCmd::Maintenance {
            opts,
            node_id,
            mode,
            pause,
        } => {
            let on = mode == "on";
            if pause && !on {
                bail!("--pause only goes with `on`");
            }
            let call = Call::SetNodeMaintenance { node_id, on, pause };
            let r = opts.client()?.send(&opts.key()?, call).await?;
            print(&r)
        }
        FarmCmd::Reboot { args, node } => {
            let v = args.connect().await?.node_reboot(node).await?;
            if args.json {
                print(&v)
            } else {
                println!("node {node} is rebooting");
                Ok(())
            }
        }
        FarmCmd::MoveNode { opts, old, new } => {
            let call = Call::MoveNode { from: old, to: new };
            let r = opts.client()?.send(&opts.key()?, call).await?;
            print(&r)
        }
    }
}

async fn contracts(a: ContractsArgs) -> anyhow::Result<()> {
    let c = a.opts.client()?;
    if let Some(id) = a.id {
        return match c.contract(id).await? {
            Some(k) => print(&k),
            None => bail!("no such contract {id}"),
        };
    }
    if let Some(node) = a.node {
        return print(&c.node_contracts(node).await?);
    }
    let me = a.opts.key()?.public();
    let twin = c
        .twin_by_account(&me)
        .await?
        .with_context(|| format!("account {me} has no twin"))?;
    print(&c.twin_contracts(twin.id).await?)
}
