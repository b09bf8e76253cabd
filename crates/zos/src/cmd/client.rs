//! The user's commands: `deploy`, `nodes`, `deployments`, `status`, `cancel`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use zos_client::grid::{DeployOptions, DeploymentView, Grid, Progress, redact};
use zos_client::size::format_size;
use zos_client::{Config, Overrides};
use zos_types::{KeyType, ResultState};

/// Where to find the grid and the user's key (each overrides the config file and environment).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Config file.
    #[arg(long, global = true, env = "ZOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ledger URL (overrides ZOS_LEDGER and the config file).
    #[arg(long, global = true)]
    pub ledger: Option<String>,
    /// Relay URL (overrides ZOS_RELAY and the config file).
    #[arg(long, global = true)]
    pub relay: Option<String>,
    /// Key file (overrides ZOS_KEY and the config file).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Hex 32-byte seed instead of a key file (overrides ZOS_SEED; wins over key files).
    #[arg(long, global = true)]
    pub seed: Option<String>,
    /// Scheme of --seed / ZOS_SEED.
    #[arg(long, global = true, value_enum)]
    pub key_type: Option<KeyTypeArg>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Key scheme on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
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

impl ClientArgs {
    fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::lookup(&Overrides {
            config: self.config.clone(),
            ledger: self.ledger.clone(),
            relay: self.relay.clone(),
            key: self.key.clone(),
            seed: self.seed.clone(),
            key_type: self.key_type.map(KeyType::from),
        })?)
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Grid> {
        Ok(Grid::connect(&self.config()?).await?)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `zos deploy SPEC`.
pub fn deploy(args: &ClientArgs, spec: PathBuf, opts: DeployOptions) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&spec).with_context(|| format!("reading {}", spec.display()))?;
    let input = zos_client::spec::parse(&spec.display().to_string(), &text)?;
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let tty = std::io::stderr().is_terminal() && !args.json;
        let mut last = String::new();
        if let zos_client::SpecInput::Spec(spec) = &input {
            if spec.is_mesh() {
                // Several nodes (or a private network): one contract and deployment per node.
                let views = grid
                    .deploy_mesh(spec, &opts, |p: &Progress| {
                        let line = progress_line(p);
                        if line != last && !args.json {
                            eprintln!("{line}");
                            last = line;
                        }
                    })
                    .await?;
                if args.json {
                    let all: Vec<_> = views
                        .iter()
                        .map(|v| {
                            let mut j = redact(&v.deployment);
                            j["node_id"] = v.node_id.into();
                            j
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&all)?);
                } else {
                    for v in &views {
                        print_view(v, false);
                    }
                }
                return Ok(());
            }
        }
        let view = grid
            .deploy(input, &opts, |p: &Progress| {
                let line = progress_line(p);
                if line != last {
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else if !args.json {
                        eprintln!("{line}");
                    }
                    last = line;
                }
            })
            .await;
        if tty {
            eprintln!();
        }
        let view = view?;
        print_view(&view, args.json);
        Ok(())
    })
}

fn progress_line(p: &Progress) -> String {
    p.workloads
        .iter()
        .map(|(name, _, state, _)| format!("{name}: {}", state_name(*state)))
        .collect::<Vec<_>>()
        .join("  ")
}

fn state_name(s: ResultState) -> &'static str {
    match s {
        ResultState::Unset => "-",
        ResultState::Init => "init",
        ResultState::Unchanged => "unchanged",
        ResultState::Error => "error",
        ResultState::Ok => "ok",
        ResultState::Deleted => "deleted",
        ResultState::Paused => "paused",
    }
}

fn print_view(view: &DeploymentView, json: bool) {
    let d = &view.deployment;
    if json {
        let mut v = redact(d);
        v["node_id"] = view.node_id.into();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    let name = serde_json::from_str::<serde_json::Value>(&d.metadata)
        .ok()
        .and_then(|m| m["name"].as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "contract {}  node {}  version {}  {}",
        d.contract_id, view.node_id, d.version, name
    );
    if let Some(problem) = &view.problem {
        println!(
            "  (not on its node: {problem}; `zos cancel {}` ends it)",
            d.contract_id
        );
    }
    for w in &d.workloads {
        let mut data = redact_value(&w.result.data);
        if data.is_null() {
            data = serde_json::Value::String(String::new());
        }
        let detail = if w.result.state == ResultState::Error {
            w.result.error.clone()
        } else if let Some(url) = gateway_url(w) {
            url
        } else {
            data.to_string()
        };
        println!(
            "  {:<16} {:<10} {:<8} {}",
            w.name,
            w.workload_type,
            state_name(w.result.state),
            detail
        );
    }
}

/// The URL a gateway workload serves (a name proxy's from its result, an FQDN proxy's from its
/// data).
fn gateway_url(w: &zos_types::Workload) -> Option<String> {
    use zos_types::WorkloadType;
    let fqdn = match w.workload_type {
        WorkloadType::GatewayNameProxy => w.result.data["fqdn"].as_str()?,
        WorkloadType::GatewayFqdnProxy => w.data["fqdn"].as_str()?,
        _ => return None,
    };
    Some(format!("https://{fqdn}"))
}

fn redact_value(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        for key in ["password", "key"] {
            if map.contains_key(key) {
                map.insert(key.into(), "<redacted>".into());
            }
        }
    }
    v
}

/// `zos nodes`.
pub fn nodes(args: &ClientArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let nodes = grid.nodes().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&nodes)?);
            return Ok(());
        }
        println!(
            "{:<6} {:<6} {:<6} {:>12} {:>12} {:>12}  state",
            "node", "farm", "cores", "free mem", "free ssd", "free hdd"
        );
        for n in nodes {
            let (m, s, h) = match n.free {
                Some(f) => (format_size(f.mru), format_size(f.sru), format_size(f.hru)),
                None => ("offline".into(), "-".into(), "-".into()),
            };
            // Maintenance is the farmer's word on the ledger; "up" is the node answering.
            let state = match n.node.maintenance {
                Some(m) if m.pause => "maintenance (paused)",
                Some(_) => "maintenance",
                None if n.free.is_some() => "up",
                None => "down",
            };
            println!(
                "{:<6} {:<6} {:<6} {:>12} {:>12} {:>12}  {state}",
                n.node.id, n.node.farm_id, n.node.resources.cru, m, s, h
            );
        }
        Ok(())
    })
}

/// `zos deployments [--all]`.
pub fn deployments(args: &ClientArgs, all: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let list = grid.deployments(all).await?;
        if args.json {
            let v: Vec<_> = list
                .iter()
                .map(|d| {
                    let mut v = redact(&d.deployment);
                    v["node_id"] = d.node_id.into();
                    if let Some(p) = &d.problem {
                        v["problem"] = p.clone().into();
                    }
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        if list.is_empty() {
            println!("no deployments: try `zos deploy examples/zdb.yaml`");
        }
        for d in &list {
            print_view(d, false);
        }
        let failed = list.iter().filter(|d| d.has_failures()).count();
        if failed > 0 {
            println!(
                "{failed} contract(s) with failed workloads are billed: fix and deploy again, or `zos cancel CONTRACT`"
            );
        } else if !all {
            println!("(contracts whose workloads all failed show with --all)");
        }
        Ok(())
    })
}

/// `zos status CONTRACT`.
pub fn status(args: &ClientArgs, contract: u64) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        print_view(&grid.status(contract).await?, args.json);
        Ok(())
    })
}

/// `zos status CONTRACT --history`.
pub fn status_history(args: &ClientArgs, contract: u64) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let h = grid.history(contract).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&h)?);
            return Ok(());
        }
        println!(
            "{:>4}  {:<20}  {:<12} {:>3} {:>3}  {:<9}  {:<13}  MESSAGE",
            "SEQ", "TIME (UTC)", "WORKLOAD", "WV", "DV", "STATE", "CODE"
        );
        for e in h {
            let when = chrono_like(e.created);
            let state = serde_json::to_value(e.state)?;
            println!(
                "{:>4}  {:<20}  {:<12} {:>3} {:>3}  {:<9}  {:<13}  {}",
                e.seq,
                when,
                e.name,
                e.version,
                e.deployment_version,
                state.as_str().unwrap_or(""),
                e.code.map(|c| c.as_str()).unwrap_or("-"),
                e.message
            );
        }
        Ok(())
    })
}

/// `YYYY-MM-DD HH:MM:SS` from unix seconds (civil-from-days; no date crate in the binary).
fn chrono_like(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `zos cancel CONTRACT`.
pub fn cancel(args: &ClientArgs, contract: u64) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        grid.cancel(contract).await?;
        if args.json {
            println!("{}", serde_json::json!({"canceled": contract}));
        } else {
            println!("contract {contract} canceled; its node removes the workloads");
        }
        Ok(())
    })
}

/// The user's grid commands.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommands {
    /// Deploy a spec (YAML) or a deployment (JSON); a spec whose name exists is updated.
    Deploy {
        /// The spec file.
        spec: PathBuf,
        /// How long to wait for the workloads, in seconds.
        #[arg(long, default_value_t = 180)]
        wait: u64,
        /// When workloads fail, keep the contract (billed) instead of canceling a new one or
        /// rolling an update back.
        #[arg(long)]
        keep_on_error: bool,
        /// Give this node's private network resources new WireGuard keys (repeatable); the
        /// other nodes are updated with its new public key.
        #[arg(long, value_name = "NODE")]
        rotate_key: Vec<u32>,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Nodes and their free capacity.
    Nodes {
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Your deployments and their workloads.
    Deployments {
        /// Every contract that is not deleted, also those whose workloads all failed.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// One deployment by contract id.
    Status {
        /// Contract id.
        contract: u64,
        /// Every result change the node kept (state, error code, message), also after the
        /// contract is canceled or rolled back.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Volume snapshots: `volume snapshots CONTRACT NAME`, `volume restore CONTRACT NAME SNAPSHOT`.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Private networks: `network access NAME` (your machine as a peer, a WireGuard config).
    #[command(subcommand)]
    Network(super::network::NetworkCmd),
    /// Virtual machines: `vm logs CONTRACT NAME [--follow]` (the serial console).
    #[command(subcommand)]
    Vm(super::vm::VmCmd),
    /// Cancel a contract: its node removes the workloads.
    Cancel {
        /// Contract id.
        contract: u64,
        #[command(flatten)]
        args: ClientArgs,
    },
}

/// Volume snapshot commands (a snapshot is taken before every update of a volume).
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCmd {
    /// List a volume's snapshots, oldest first.
    Snapshots {
        /// Contract id of the deployment.
        contract: u64,
        /// Volume workload name.
        name: String,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Restore a volume to a snapshot (the current state is saved as a snapshot first).
    Restore {
        /// Contract id of the deployment.
        contract: u64,
        /// Volume workload name.
        name: String,
        /// Snapshot name, from `zos volume snapshots`.
        snapshot: String,
        #[command(flatten)]
        args: ClientArgs,
    },
}

fn volume(cmd: VolumeCmd) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (args, v) = match &cmd {
            VolumeCmd::Snapshots {
                contract,
                name,
                args,
            } => (
                args,
                args.connect()
                    .await?
                    .volume_snapshots(*contract, name)
                    .await?,
            ),
            VolumeCmd::Restore {
                contract,
                name,
                snapshot,
                args,
            } => (
                args,
                args.connect()
                    .await?
                    .volume_restore(*contract, name, snapshot)
                    .await?,
            ),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(list) = v.as_array() {
            if list.is_empty() {
                println!("no snapshots yet (one is taken before every update)");
            }
            for s in list {
                println!(
                    "{}  created {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["created"]
                );
            }
        } else {
            println!(
                "restored; the previous state is kept as snapshot {}",
                v["saved_as"].as_str().unwrap_or("?")
            );
        }
        Ok(())
    })
}

/// Runs a client command.
pub fn run(cmd: ClientCommands) -> anyhow::Result<()> {
    match cmd {
        ClientCommands::Deploy {
            spec,
            wait,
            keep_on_error,
            rotate_key: rotate_keys,
            args,
        } => deploy(
            &args,
            spec,
            DeployOptions {
                wait: Duration::from_secs(wait),
                keep_on_error,
                rotate_keys,
            },
        ),
        ClientCommands::Nodes { args } => nodes(&args),
        ClientCommands::Deployments { all, args } => deployments(&args, all),
        ClientCommands::Status {
            contract,
            history: true,
            args,
        } => status_history(&args, contract),
        ClientCommands::Status { contract, args, .. } => status(&args, contract),
        ClientCommands::Cancel { contract, args } => cancel(&args, contract),
        ClientCommands::Volume(v) => volume(v),
        ClientCommands::Network(n) => super::network::run(n),
        ClientCommands::Vm(v) => super::vm::run(v),
    }
}

#[cfg(test)]
mod history_time_tests {
    #[test]
    fn unix_seconds_print_as_utc() {
        assert_eq!(super::chrono_like(0), "1970-01-01 00:00:00");
        assert_eq!(super::chrono_like(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::chrono_like(1_796_562_001), "2026-12-06 13:00:01");
    }
}
