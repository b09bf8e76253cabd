//! The user's commands: `deploy`, `nodes`, `deployments`, `status`, `cancel`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use zos_client::grid::{DeploymentView, Grid, Progress, redact};
use zos_client::size::format_size;
use zos_client::{Config, config};
use zos_types::ResultState;

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
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let path = self.config.clone().unwrap_or_else(config::default_path);
        let mut cfg = Config::load(&path)?.with_env();
        if let Some(v) = &self.ledger {
            cfg.ledger = Some(v.clone());
        }
        if let Some(v) = &self.relay {
            cfg.relay = Some(v.clone());
        }
        if let Some(v) = &self.key {
            cfg.key = Some(v.clone());
        }
        Ok(cfg)
    }

    async fn connect(&self) -> anyhow::Result<Grid> {
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
pub fn deploy(args: &ClientArgs, spec: PathBuf, wait: Duration) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&spec).with_context(|| format!("reading {}", spec.display()))?;
    let input = zos_client::spec::parse(&spec.display().to_string(), &text)?;
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let tty = std::io::stderr().is_terminal() && !args.json;
        let mut last = String::new();
        let view = grid
            .deploy(input, wait, |p: &Progress| {
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
    for w in &d.workloads {
        let mut data = redact_value(&w.result.data);
        if data.is_null() {
            data = serde_json::Value::String(String::new());
        }
        let detail = if w.result.state == ResultState::Error {
            w.result.error.clone()
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
            "{:<6} {:<6} {:<6} {:>12} {:>12} {:>12}",
            "node", "farm", "cores", "free mem", "free ssd", "free hdd"
        );
        for n in nodes {
            let (m, s, h) = match n.free {
                Some(f) => (format_size(f.mru), format_size(f.sru), format_size(f.hru)),
                None => ("offline".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<6} {:<6} {:<6} {:>12} {:>12} {:>12}",
                n.node.id, n.node.farm_id, n.node.resources.cru, m, s, h
            );
        }
        Ok(())
    })
}

/// `zos deployments`.
pub fn deployments(args: &ClientArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let grid = args.connect().await?;
        let list = grid.deployments().await?;
        if args.json {
            let v: Vec<_> = list
                .iter()
                .map(|d| {
                    let mut v = redact(&d.deployment);
                    v["node_id"] = d.node_id.into();
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
        #[command(flatten)]
        args: ClientArgs,
    },
    /// One deployment by contract id.
    Status {
        /// Contract id.
        contract: u64,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Volume snapshots: `volume snapshots CONTRACT NAME`, `volume restore CONTRACT NAME SNAPSHOT`.
    #[command(subcommand)]
    Volume(VolumeCmd),
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
        ClientCommands::Deploy { spec, wait, args } => {
            deploy(&args, spec, Duration::from_secs(wait))
        }
        ClientCommands::Nodes { args } => nodes(&args),
        ClientCommands::Deployments { args } => deployments(&args),
        ClientCommands::Status { contract, args } => status(&args, contract),
        ClientCommands::Cancel { contract, args } => cancel(&args, contract),
        ClientCommands::Volume(v) => volume(v),
    }
}
