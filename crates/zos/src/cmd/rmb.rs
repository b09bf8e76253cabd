//! `zos relay serve` and `zos rmb call|e2e-key`: the message bus relay and a one-shot client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use zos_rmb::{
    CachedDirectory, LedgerDirectory, Limits, Peer, PeerConfig, Relay, RelayConfig, RelayIdentity,
    RelayTls, TwinDirectory,
};
use zos_types::crypto::{KeyPair, KeyType, decode_hex32};

/// How long twin records are cached.
const TWIN_CACHE: Duration = Duration::from_secs(60);

/// RMB commands, flattened into the top-level command list.
#[derive(Subcommand, Debug)]
pub enum RmbCommands {
    /// Run an RMB relay.
    #[command(subcommand)]
    Relay(RelayCmd),
    /// Talk to twins over RMB.
    #[command(subcommand)]
    Rmb(RmbCmd),
}

/// `zos relay …`
#[derive(Subcommand, Debug)]
pub enum RelayCmd {
    /// Serve a relay (WebSocket on `/`, Prometheus text on `/metrics`) until SIGINT/SIGTERM.
    Serve {
        /// Listen address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: SocketAddr,
        /// Ledger URL (twin keys and relays are read from it).
        #[arg(long, env = "ZOS_LEDGER")]
        ledger: String,
        /// This relay's domain, as twins list it in `Twin.relays` (default: the listen address).
        #[arg(long)]
        domain: Option<String>,
        /// Another relay to forward to: DOMAIN=URL, e.g. relay2.example=wss://relay2.example
        /// (repeatable; needs --twin and --seed).
        #[arg(long = "peer-relay", value_name = "DOMAIN=URL")]
        peer_relays: Vec<String>,
        /// The relay's own twin id (to log in to federated relays).
        #[arg(long)]
        twin: Option<u32>,
        /// Hex 32-byte seed of the relay twin's key.
        #[arg(long, env = "ZOS_RELAY_SEED", hide_env_values = true)]
        seed: Option<String>,
        /// Scheme of the relay twin's key.
        #[arg(long, value_enum, default_value = "ed25519")]
        key_type: KeyTypeArg,
        /// Largest envelope accepted, bytes.
        #[arg(long, default_value_t = Limits::default().max_envelope_bytes)]
        max_envelope: usize,
        /// Sustained messages per second per twin.
        #[arg(long, default_value_t = Limits::default().messages_per_sec)]
        rate: f64,
        /// Messages held per offline twin.
        #[arg(long, default_value_t = Limits::default().queue_messages_per_twin)]
        queue: usize,
        /// Longest envelope TTL accepted, seconds.
        #[arg(long, default_value_t = Limits::default().max_ttl)]
        max_ttl: u32,
        /// Open connections; more get HTTP 503 (keep it below `ulimit -n`).
        #[arg(long, default_value_t = Limits::default().max_connections)]
        max_connections: usize,
        /// Seconds from connect to a completed login (TLS, HTTP upgrade, challenge); slower
        /// connections are closed.
        #[arg(long, default_value_t = Limits::default().login_timeout.as_secs())]
        login_timeout: u64,
        /// Bytes of unfinished messages held for all connections together (above 64 KiB each).
        #[arg(long, default_value_t = Limits::default().frame_memory_total)]
        frame_memory: usize,
        /// Seconds a message above 64 KiB may take to arrive.
        #[arg(long, default_value_t = Limits::default().frame_timeout.as_secs())]
        frame_timeout: u64,
        /// Failed logins per address within a minute before the address is banned.
        #[arg(long, default_value_t = Limits::default().login_ban_after)]
        login_ban_after: u32,
        /// Seconds a banned address is refused.
        #[arg(long, default_value_t = Limits::default().login_ban.as_secs())]
        login_ban: u64,
        /// Twin of another relay allowed to open a federation link to this one (repeatable).
        /// Without any, no relay may forward to this one.
        #[arg(long = "federation-peer", value_name = "TWIN")]
        federation_peers: Vec<u32>,
        /// Another URL clients reach this relay by (repeatable), e.g. wss://rmb.example.org
        /// behind a proxy; logins signed for other hosts are refused.
        #[arg(long = "public-url", value_name = "URL")]
        public_urls: Vec<String>,
        /// Serve wss:// with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Extra CA (PEM) to trust for wss:// federation links.
        #[arg(long, env = "ZOS_RMB_CA")]
        ca_file: Option<PathBuf>,
    },
}

/// `zos rmb …`
#[derive(Subcommand, Debug)]
pub enum RmbCmd {
    /// Send one request and print the JSON reply.
    Call {
        /// Destination twin id.
        twin: u32,
        /// Command, e.g. zos.system.version.
        command: String,
        /// JSON payload (default: null).
        json: Option<String>,
        /// Relay URL (repeatable), e.g. ws://127.0.0.1:8080 (default: ZOS_RELAY, else the
        /// config file).
        #[arg(long = "relay", value_delimiter = ',')]
        relays: Vec<String>,
        /// Hex 32-byte seed of your twin's key (default: ZOS_SEED; else the key file).
        #[arg(long)]
        seed: Option<String>,
        /// Your key file (default: ZOS_KEY, else the config file's).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Ledger URL (default: ZOS_LEDGER, else the config file).
        #[arg(long)]
        ledger: Option<String>,
        /// Config file.
        #[arg(long, env = "ZOS_CONFIG")]
        config: Option<PathBuf>,
        /// Your twin id (default: looked up on the ledger by your key).
        #[arg(long = "from-twin")]
        from_twin: Option<u32>,
        /// Scheme of your key (default: whichever has a twin on the ledger).
        #[arg(long, value_enum)]
        key_type: Option<KeyTypeArg>,
        /// Seconds to wait for the reply (also the message TTL).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Extra CA (PEM) to trust for wss:// relays (a private grid's CA).
        #[arg(long, env = "ZOS_RMB_CA")]
        ca_file: Option<PathBuf>,
    },
    /// Print the hex X25519 public key to publish as your twin's e2e key.
    E2eKey {
        /// Hex 32-byte seed of your twin's key (default: ZOS_SEED; else the key file).
        #[arg(long)]
        seed: Option<String>,
        /// Your key file (default: ZOS_KEY, else the config file's).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Config file.
        #[arg(long, env = "ZOS_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Key scheme on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyTypeArg {
    /// ed25519.
    Ed25519,
    /// sr25519 (Substrate).
    Sr25519,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> KeyType {
        match k {
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
            KeyTypeArg::Sr25519 => KeyType::Sr25519,
        }
    }
}

/// Runs an RMB subcommand.
pub fn run(cmd: RmbCommands) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cmd {
        RmbCommands::Relay(RelayCmd::Serve {
            listen,
            ledger,
            domain,
            peer_relays,
            twin,
            seed,
            key_type,
            max_envelope,
            rate,
            queue,
            max_ttl,
            max_connections,
            login_timeout,
            frame_memory,
            frame_timeout,
            login_ban_after,
            login_ban,
            federation_peers,
            public_urls,
            tls_cert,
            tls_key,
            ca_file,
        }) => {
            trust_ca(ca_file.as_deref())?;
            let mut federation = HashMap::new();
            for p in &peer_relays {
                let (d, u) = p
                    .split_once('=')
                    .with_context(|| format!("--peer-relay {p:?}: expected DOMAIN=URL"))?;
                federation.insert(d.to_owned(), u.to_owned());
            }
            let identity = match (twin, seed) {
                (Some(twin), Some(seed)) => Some(RelayIdentity {
                    twin,
                    key: KeyPair::from_seed(key_type.into(), decode_hex32("seed", &seed)?),
                }),
                (None, None) => None,
                _ => bail!("--twin and --seed go together"),
            };
            if !federation.is_empty() && identity.is_none() {
                bail!("--peer-relay needs the relay's own twin: --twin ID --seed HEX");
            }
            let cfg = RelayConfig {
                listen,
                domain: match domain {
                    Some(d) => d,
                    None if listen.port() == 0 => {
                        bail!("--domain is required with port 0 (twins name their relay by domain)")
                    }
                    None => listen.to_string(),
                },
                federation,
                limits: Limits {
                    max_envelope_bytes: max_envelope,
                    messages_per_sec: rate,
                    message_burst: rate * 2.0,
                    queue_messages_per_twin: queue,
                    max_ttl,
                    max_connections,
                    login_timeout: Duration::from_secs(login_timeout.max(1)),
                    frame_memory_total: frame_memory,
                    frame_timeout: Duration::from_secs(frame_timeout.max(1)),
                    login_ban_after: login_ban_after.max(1),
                    login_ban: Duration::from_secs(login_ban),
                    ..Limits::default()
                },
                federation_peers,
                public_urls,
                identity,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert_chain_pem, key_pem)| RelayTls {
                        cert_chain_pem,
                        key_pem,
                    }),
            };
            let dir: Arc<dyn TwinDirectory> = Arc::new(CachedDirectory::new(
                LedgerDirectory::connect(&ledger)?,
                TWIN_CACHE,
            ));
            let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
            rt.block_on(async move {
                let domain = cfg.domain.clone();
                let relay = Relay::bind(cfg, dir).await?;
                eprintln!(
                    "relay {domain} listening on {scheme}://{} (metrics on /metrics)",
                    relay.local_addr()
                );
                relay.run(super::shutdown_signal()).await?;
                Ok(())
            })
        }
        RmbCommands::Rmb(RmbCmd::E2eKey { seed, key, config }) => {
            let cfg = zos_client::Config::lookup(&zos_client::Overrides {
                config,
                key,
                seed,
                ..Default::default()
            })?;
            let key = cfg.key_pair()?;
            println!("{}", hex::encode(zos_rmb::e2e_public_key(key.seed())));
            Ok(())
        }
        RmbCommands::Rmb(RmbCmd::Call {
            twin,
            command,
            json,
            relays,
            seed,
            key,
            ledger,
            config,
            from_twin,
            key_type,
            timeout,
            ca_file,
        }) => {
            // The same lookup as every client command: flag, environment, config file.
            let cfg = zos_client::Config::lookup(&zos_client::Overrides {
                config,
                ledger,
                relay: None,
                key,
                seed,
                key_type: key_type.map(KeyType::from),
            })?;
            let relays = if relays.is_empty() {
                cfg.require_relay()?.split(',').map(str::to_owned).collect()
            } else {
                relays
            };
            let ledger = cfg.require_ledger()?.to_owned();
            let my_key = cfg.key_pair()?;
            // A bare seed may be either scheme: the one with a twin is used.
            let key_type = match (&cfg.seed, key_type) {
                (Some(_), None) => None,
                _ => Some(my_key.key_type()),
            };
            trust_ca(ca_file.as_deref())?;
            cfg.trust_relay().context("relay certificate")?;
            let payload: serde_json::Value = match json {
                Some(j) => serde_json::from_str(&j).context("the payload is not valid JSON")?,
                None => serde_json::Value::Null,
            };
            let seed = *my_key.seed();
            let ledger_dir = LedgerDirectory::connect(&ledger)?;
            rt.block_on(async move {
                let (key, me) = identify(&ledger_dir, seed, key_type, from_twin).await?;
                let dir: Arc<dyn TwinDirectory> =
                    Arc::new(CachedDirectory::new(ledger_dir, TWIN_CACHE));
                let peer = Peer::connect(
                    PeerConfig {
                        relays,
                        twin_id: me,
                        key,
                        // A one-shot session of its own, so it never displaces a running service
                        // of the same twin.
                        session: Some(format!("cli-{}", std::process::id())),
                    },
                    dir,
                )
                .await?;
                let reply = peer
                    .call(
                        twin,
                        &command,
                        &payload,
                        Duration::from_secs(timeout.max(1)),
                    )
                    .await;
                peer.close();
                println!("{}", serde_json::to_string_pretty(&reply?)?);
                Ok(())
            })
        }
    }
}

fn trust_ca(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(p) = path {
        let pem = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
        zos_rmb::trust_ca_pem(&pem).with_context(|| format!("CA file {}", p.display()))?;
    }
    Ok(())
}

/// Finds the caller's key scheme and twin id on the ledger.
async fn identify(
    dir: &LedgerDirectory,
    seed: [u8; 32],
    key_type: Option<KeyType>,
    from_twin: Option<u32>,
) -> anyhow::Result<(KeyPair, u32)> {
    let types = match key_type {
        Some(k) => vec![k],
        None => vec![KeyType::Ed25519, KeyType::Sr25519],
    };
    for kt in &types {
        let key = KeyPair::from_seed(*kt, seed);
        if let Some(id) = from_twin {
            let rec = dir
                .twin(id)
                .await?
                .with_context(|| format!("twin {id} does not exist"))?;
            if rec.account == key.public() {
                return Ok((key, id));
            }
            continue;
        }
        if let Some(t) = dir.client().twin_by_account(&key.public()).await? {
            return Ok((key, t.id));
        }
    }
    match from_twin {
        Some(id) => bail!("twin {id}'s account is not this key"),
        None => bail!(
            "no twin on the ledger for this key (create one with `zos twin create --relay … --e2e-key $(zos rmb e2e-key)`)"
        ),
    }
}
