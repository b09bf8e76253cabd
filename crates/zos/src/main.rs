//! `zos`: one binary, thin subcommands. Each file under `cmd/` parses its arguments, calls a
//! library crate and prints; no subsystem logic lives here.

mod cmd;

use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::{CommandFactory as _, Parser, Subcommand};

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
    /// Flists, content-addressed read-only images (upstream `.fl`): `pack`, `inspect`,
    /// `mount`, `unpack`, `verify`, `push`.
    #[command(subcommand)]
    Flist(cmd::flist::FlistCmd),
    /// Mycelium, the end-to-end encrypted IPv6 overlay: `run`, `inspect`, `generate-keys`.
    #[command(subcommand)]
    Mycelium(cmd::mycelium::MyceliumCmd),
    /// The flist hub: `hub serve`.
    #[command(subcommand)]
    Hub(cmd::flist::HubCmd),
    /// The bootable image: `image build -o DIR`, `image ls FILE`, `image overlay`.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Print a shell completion script: `source <(zos completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit codes: 0 success, 1 the operation failed (a check did not pass, a server error),
/// 2 bad usage (clap's own code).
fn main() -> ExitCode {
    // The image's /init: the kernel starts us as PID 1 with its own arguments. A `zos` command
    // that is PID 1 of a container (argv[0] not /init) stays an ordinary command.
    if std::process::id() == 1 && std::env::args_os().next().is_some_and(|a| a == "/init") {
        cmd::image::pid1();
    }
    // A parent may hand us blocked signals (zos' own PID 1 blocks SIGTERM/SIGINT to take them
    // with sigwait, and a spawned child inherits the mask): a server would then never see its
    // stop signal. Unblocked here, before any thread exists, so every thread inherits this.
    {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        let _ = set.thread_unblock();
    }
    let cli = Cli::parse();
    // User commands keep the terminal for their own output; servers log at info.
    let quiet = matches!(
        cli.command,
        Command::Client(_) | Command::Deployment(_) | Command::Key(_) | Command::Completions { .. }
    );
    // `zdb serve --verbose/--logfile` (upstream's flags) choose the level and destination.
    let (level, logfile) = match &cli.command {
        Command::Zdb(z) => z.log_settings(),
        _ => (None, None),
    };
    let logfile = match logfile.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("cannot open log file {}: {e}", p.display()))
    }) {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Some(Ok(f)) => Some(f),
        None => None,
    };
    init_logging(
        level.unwrap_or(if quiet { "warn" } else { "info" }),
        logfile,
    );
    let result = match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::Client(c) => cmd::client::run(c),
        Command::Deployment(c) => cmd::deployment::run(c),
        Command::Key(c) => cmd::key::run(c),
        Command::Ledger(c) => cmd::ledger::run(c),
        Command::Node(c) => cmd::node::run(c),
        Command::Rmb(c) => cmd::rmb::run(c),
        Command::Zdb(c) => cmd::zdb::run(c),
        Command::Flist(c) => cmd::flist::run(c),
        Command::Hub(c) => cmd::flist::run_hub(c),
        Command::Mycelium(c) => cmd::mycelium::run(c),
        Command::Image(c) => cmd::image::run(c),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "zos", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so that stdout stays machine-readable; `RUST_LOG` filters them. Colour
/// codes only when stderr is a terminal (log files and pipes get plain text) and `NO_COLOR`
/// is not set.
fn init_logging(default_level: &str, logfile: Option<std::fs::File>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    // The node's diagnostics ring (`zos node diag NODE logs`) sees what the log sees.
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    match logfile {
        Some(f) => fmt
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .finish()
            .with(zos_node::diag::RingLayer)
            .init(),
        None => fmt
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .finish()
            .with(zos_node::diag::RingLayer)
            .init(),
    }
}
