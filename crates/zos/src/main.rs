//! `zos`: one binary, thin subcommands. Each file under `cmd/` parses its arguments, calls a
//! library crate and prints; no subsystem logic lives here.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Zero-OS in Rust: a stateless, self-operating node OS for a sovereign cloud grid.
#[derive(Parser, Debug)]
#[command(name = "zos", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a whole grid here (dev ledger, relay, node) and configure the client.
    Up(cmd::up::UpArgs),
    /// Deploy and manage your workloads: `deploy`, `nodes`, `deployments`, `status`, `cancel`.
    #[command(flatten)]
    Client(cmd::client::ClientCommands),
    /// Inspect, hash, sign and check deployment documents.
    #[command(subcommand)]
    Deployment(cmd::deployment::DeploymentCmd),
    /// Create or show the user's key.
    #[command(subcommand)]
    Key(cmd::key::KeyCmd),
    /// Grid ledger: `ledger serve|verify`, `twin`, `farm`, `contracts`, `balance`.
    #[command(flatten)]
    Ledger(cmd::ledger::LedgerCommands),
    /// The node agent: `node run --ledger URL --relay URL --farm ID --data DIR`.
    #[command(subcommand)]
    Node(cmd::node::NodeCmd),
    /// RMB message bus: `relay serve`, `rmb call`, `rmb e2e-key`.
    #[command(flatten)]
    Rmb(cmd::rmb::RmbCommands),
    /// ZeroDB, the 0-db-compatible key-value store: `zdb serve`.
    #[command(subcommand)]
    Zdb(cmd::zdb::ZdbCmd),
}

/// Exit codes: 0 success, 1 the operation failed (a check did not pass, a server error),
/// 2 bad usage (clap's own code).
fn main() -> ExitCode {
    let cli = Cli::parse();
    // User commands keep the terminal for their own output; servers log at info.
    let quiet = matches!(
        cli.command,
        Command::Client(_) | Command::Deployment(_) | Command::Key(_)
    );
    init_logging(if quiet { "warn" } else { "info" });
    let result = match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::Client(c) => cmd::client::run(c),
        Command::Deployment(c) => cmd::deployment::run(c),
        Command::Key(c) => cmd::key::run(c),
        Command::Ledger(c) => cmd::ledger::run(c),
        Command::Node(c) => cmd::node::run(c),
        Command::Rmb(c) => cmd::rmb::run(c),
        Command::Zdb(c) => cmd::zdb::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so that stdout stays machine-readable; `RUST_LOG` filters them.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
