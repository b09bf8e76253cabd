//! `zos zdb …`: the ZeroDB server (0-db compatible), see docs/zdb.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// ZeroDB commands.
#[derive(Subcommand, Debug)]
pub enum ZdbCmd {
    /// Serve a ZeroDB (RESP over TCP and/or a unix socket) until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Verify a stopped server's files: every data entry's CRCs, every index entry against
    /// its data entry. Exit status 1 when damage is found.
    Check(DirArgs),
    /// Repair a stopped server's files: cut each data file at its first bad entry, rebuild
    /// every index from the data files, report what was lost.
    Repair(DirArgs),
    /// A node's pool server (started by `zos node run`, which writes its spec and secrets on
    /// stdin): serves until SIGTERM, outliving the node when it was told to.
    #[command(hide = true)]
    PoolServer {
        /// The pool's `zdb` directory (names the process, for re-attaching).
        #[arg(long)]
        root: PathBuf,
    },
}

/// The directories of a (stopped) server.
#[derive(Args, Debug)]
pub struct DirArgs {
    /// Data files directory.
    #[arg(long, default_value = "./zdb-data")]
    data: PathBuf,
    /// Index files directory.
    #[arg(long, default_value = "./zdb-index")]
    index: PathBuf,
}

/// Flags of `zos zdb serve`, named as upstream's zdbd flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data files directory.
    #[arg(long, default_value = "./zdb-data")]
    data: PathBuf,
    /// Index files directory.
    #[arg(long, default_value = "./zdb-index")]
    index: PathBuf,
    /// TCP listen address (default `::`; with --socket alone, TCP is off).
    #[arg(long)]
    listen: Option<IpAddr>,
    /// TCP port.
    #[arg(long, default_value_t = 9900)]
    port: u16,
    /// Unix socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Admin password (or the ZDB_ADMIN environment variable, which keeps it out of `ps`).
    #[arg(long, env = "ZDB_ADMIN", hide_env_values = true)]
    admin: Option<String>,
    /// One index mode for every namespace: user or seq (`direct` runs as seq). Default: per namespace.
    #[arg(long)]
    mode: Option<String>,
    /// fsync before acknowledging writes (group commit).
    #[arg(long)]
    sync: bool,
    /// Data file rotation size in bytes (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    datasize: u64,
    /// Make the default namespace read-only unless selected with the admin password.
    #[arg(long)]
    protect: bool,
    /// Enable the STOP command (upstream enables it in debug builds).
    #[arg(long)]
    debug: bool,
    /// Read cache: bytes of recently written and read values kept in RAM, shared by all
    /// namespaces (suffixes K, M, G; 0 turns it off). `auto`: a quarter of the memory this
    /// process may use (RAM, or its cgroup's limit).
    #[arg(long, default_value = "auto", value_parser = parse_cache_size)]
    cache_size: CacheSize,
    /// Worker threads (default: one per CPU). Redis uses one event-loop thread.
    #[arg(long)]
    threads: Option<usize>,
    /// Without --sync: fsync the data and index files at most every N seconds (0: never; the
    /// kernel's writeback then decides, typically within 30 s).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    synctime: u64,
    /// Most clients connected at once; more get `-ERR max number of clients reached`.
    /// Lowered at start to fit the open-file limit.
    #[arg(long, default_value_t = zos_zdb::Limits::default().max_clients)]
    max_clients: usize,
    /// Close a client that sends nothing for this many seconds (0: never).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    idle_timeout: u64,
    /// Close a client that does not finish a started request, or read a reply, within this
    /// many seconds (0: never).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    request_timeout: u64,
    /// Bytes of unfinished requests all clients together may hold beyond 64 KiB each
    /// (suffixes K, M, G); a client that would pass it is told and closed.
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    max_pending: u64,
    /// How long a source address is banned after repeated wrong passwords, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    auth_ban: u64,
    /// Executable run on events as `<exe> <event> <instance> [args]` (upstream's hooks).
    #[arg(long, value_name = "EXE")]
    hook: Option<PathBuf>,
    /// Write logs to this file (appended) instead of stderr.
    #[arg(long, value_name = "FILE")]
    logfile: Option<PathBuf>,
    /// Detach once ready: the started server runs in its own session; its pid is printed and
    /// written to --pidfile (default `<data>/zdb.pid`).
    #[arg(long)]
    background: bool,
    /// Where --background writes the server's pid.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Debug-level logs.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Print every namespace's descriptor and index entries, then exit.
    #[arg(long)]
    dump: bool,
    /// Limit of the default namespace's data in bytes (suffixes K, M, G), set at start.
    #[arg(long, value_parser = parse_bytes)]
    maxsize: Option<u64>,
    /// Start new data/index files every N seconds when the current ones hold data.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    rotate: u64,
    /// Listen on IPv4 and IPv6: the other family's any-address too, same port.
    #[arg(long)]
    dualnet: bool,
    /// Refuse plain-text passwords: only the SHA1 challenge (AUTH/SELECT … SECURE).
    #[arg(long)]
    secure: bool,
    /// Refuse to start on a damaged index instead of rebuilding it from the data files.
    #[arg(long)]
    strict_index: bool,
    /// Be a read-only mirror of the master at this TCP address (HOST:PORT): receive its
    /// writes through MIRROR, catch up after a restart.
    #[arg(long, value_name = "ADDR")]
    replicate_from: Option<String>,
    /// The master's admin password (or the ZDB_MASTER_ADMIN environment variable).
    #[arg(long, env = "ZDB_MASTER_ADMIN", hide_env_values = true)]
    master_admin: Option<String>,
}

impl ZdbCmd {
    /// Log level and log file asked by `zdb serve` (`--verbose`, `--logfile`).
    pub fn log_settings(&self) -> (Option<&'static str>, Option<&std::path::Path>) {
        match self {
            ZdbCmd::Serve(a) => (a.verbose.then_some("debug"), a.logfile.as_deref()),
            _ => (None, None),
        }
    }
}

/// `HOST:PORT` to one socket address.
fn resolve(s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    s.to_socket_addrs()
        .with_context(|| format!("bad address {s:?} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("{s:?} resolves to no address"))
}

/// A size in bytes (`0`, `4096`, `64K`, `256M`, `1G`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    zos_storage::pool::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 64K, 256M, 1G)"))
}

/// `0` means off.
fn secs(n: u64) -> Option<std::time::Duration> {
    (n > 0).then(|| std::time::Duration::from_secs(n))
}

/// `--cache-size`: a size or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheSize {
    Auto,
    Bytes(u64),
}

/// `auto`, `0`, `4096`, `64K`, `256M`, `1GiB` (powers of 1024).
fn parse_cache_size(s: &str) -> Result<CacheSize, String> {
    if s == "auto" {
        return Ok(CacheSize::Auto);
    }
    zos_storage::pool::parse_size(s)
        .map(CacheSize::Bytes)
        .ok_or_else(|| format!("{s:?} is not a size (e.g. auto, 0, 64K, 256M, 1G)"))
}

/// The cache budget in bytes, with a log line saying how `auto` chose it.
fn cache_bytes(size: CacheSize) -> u64 {
    match size {
        CacheSize::Bytes(b) => b,
        CacheSize::Auto => {
            let limit = zos_zdb::memlimit::memory_limit();
            let bytes = zos_zdb::cache::auto_cache_bytes(limit.as_ref());
            match &limit {
                Some(l) => tracing::info!(
                    cache_mib = bytes >> 20,
                    usable_mib = l.bytes >> 20,
                    limited_by = %l.cgroup.as_deref().map_or("RAM".into(), |p| p.display().to_string()),
                    "read cache sized automatically (a quarter of usable memory)"
                ),
                None => tracing::warn!(
                    cache_mib = bytes >> 20,
                    "cannot read /proc/meminfo, read cache at its default size"
                ),
            }
            bytes
        }
    }
}

/// Runs a zdb subcommand.
pub fn run(cmd: ZdbCmd) -> anyhow::Result<()> {
    match cmd {
        ZdbCmd::Serve(a) if a.dump => dump(&a.data, &a.index),
        ZdbCmd::Serve(a) if a.background => background(&a),
        ZdbCmd::Serve(a) => serve(*a),
        ZdbCmd::Check(d) => check(&d),
        ZdbCmd::Repair(d) => repair(&d),
        ZdbCmd::PoolServer { root } => {
            tracing::info!(root = %root.display(), "zdb pool server starting");
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(zos_storage::zdb_process::serve_child(
                super::shutdown_signal(),
            ));
            // The lifeline read of stdin sits in a blocking thread that returns only when the
            // node closes the pipe: dropping the runtime would wait for it, and the stopped
            // server would hang until the node's SIGKILL.
            rt.shutdown_background();
            r.map_err(anyhow::Error::msg)
        }
    }
}

fn dump(data: &std::path::Path, index: &std::path::Path) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let n = zos_zdb::tools::dump(data, index, &mut out)
        .with_context(|| format!("dump {}", index.display()))?;
    eprintln!("{n} entries");
    Ok(())
}

fn print_report(r: &zos_zdb::tools::Report) {
    println!(
        "{} namespaces, {} file pairs, {} data entries, {} index entries verified",
        r.namespaces, r.files, r.data_entries, r.index_entries
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    for e in &r.errors {
        println!("damage: {e}");
    }
}

fn check(d: &DirArgs) -> anyhow::Result<()> {
    let r = zos_zdb::tools::check(&d.data, &d.index)
        .with_context(|| format!("check {} and {}", d.data.display(), d.index.display()))?;
    print_report(&r);
    if r.is_clean() {
        println!("clean");
        Ok(())
    } else {
        anyhow::bail!(
            "{} problems; `zos zdb repair` rebuilds the index and cuts damaged tails",
            r.errors.len()
        )
    }
}

fn repair(d: &DirArgs) -> anyhow::Result<()> {
    let r = zos_zdb::tools::repair(&d.data, &d.index)
        .with_context(|| format!("repair {} and {}", d.data.display(), d.index.display()))?;
    println!("before:");
    print_report(&r.before);
    for (p, len, cut) in &r.truncated {
        println!(
            "cut {}: {cut} bytes removed after offset {len}",
            p.display()
        );
    }
    for p in &r.moved_aside {
        println!("moved aside (bad header): {}", p.display());
    }
    println!(
        "lost: {} bytes of data, including {} valid-looking entries after damage",
        r.before.bad_data_bytes, r.before.entries_after_damage
    );
    println!(
        "rebuilt {} index files; {} live keys",
        r.indexes_rebuilt, r.live_entries
    );
    println!("after:");
    print_report(&r.after);
    if r.after.is_clean() {
        Ok(())
    } else {
        anyhow::bail!("damage remains after repair")
    }
}

/// `--background`: starts this same command without `--background` in a new session, waits
/// until it is ready (or failed), writes its pid and returns.
fn background(a: &ServeArgs) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    // The setsid tool gives the server a session of its own (upstream daemonises); without
    // it, a process group of its own still keeps terminal signals away.
    let setsid = std::path::Path::new("/usr/bin/setsid");
    let mut cmd = if setsid.exists() {
        let mut c = Command::new(setsid);
        c.arg(&exe);
        c
    } else {
        use std::os::unix::process::CommandExt as _;
        let mut c = Command::new(&exe);
        c.process_group(0);
        c
    };
    cmd.args(&args)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if a.logfile.is_some() {
            Stdio::null()
        } else {
            Stdio::inherit()
        });
    let mut child = cmd.spawn().context("cannot start the background server")?;
    let pid = child.id();
    let out = child.stdout.take().context("no pipe to the server")?;
    let mut ready = false;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.context("reading the server's output")?;
        if line == "ready" {
            ready = true;
            break;
        }
        println!("{line}");
    }
    if !ready {
        let status = child.wait()?;
        anyhow::bail!("the background server did not start ({status})");
    }
    let pidfile = a.pidfile.clone().unwrap_or_else(|| a.data.join("zdb.pid"));
    std::fs::write(&pidfile, format!("{pid}\n"))
        .with_context(|| format!("write pid file {}", pidfile.display()))?;
    println!("pid {pid}");
    Ok(())
}

/// Set for the server `--background` starts: it prints `ready` on stdout once serving.
const READY_ENV: &str = "ZOS_ZDB_NOTIFY_READY";

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mode = match a.mode.as_deref() {
        None => None,
        Some(m) => {
            if m == "direct" {
                tracing::warn!("--mode direct is deprecated, running as seq");
            }
            Some(
                zos_zdb::Mode::from_name(m)
                    .with_context(|| format!("unknown mode {m:?} (user or seq)"))?,
            )
        }
    };
    let listen = match (a.listen, &a.socket) {
        (Some(ip), _) => Some(SocketAddr::new(ip, a.port)),
        (None, Some(_)) => None,
        (None, None) => Some(SocketAddr::new(IpAddr::from([0u16; 8]), a.port)),
    };
    let cfg = zos_zdb::ServerConfig {
        data_dir: a.data,
        index_dir: a.index,
        listen,
        socket: a.socket,
        admin_password: a.admin,
        mode,
        sync: a.sync,
        datasize: a.datasize,
        protect: a.protect,
        debug: a.debug,
        cache_bytes: cache_bytes(a.cache_size),
        synctime: a.synctime,
        hook: a.hook,
        default_maxsize: a.maxsize,
        rotate: a.rotate,
        secure: a.secure,
        dualnet: a.dualnet,
        strict_index: a.strict_index,
        // The standalone server stores values as given (upstream's behaviour); the node's
        // servers seal them under a key from its key root (zos-storage).
        at_rest_key: None,
        replicate_from: match a.replicate_from {
            None => None,
            Some(m) => Some(zos_zdb::Replication {
                master: resolve(&m)?,
                password: a.master_admin,
            }),
        },
        limits: zos_zdb::Limits {
            max_clients: a.max_clients.max(1),
            idle_timeout: secs(a.idle_timeout),
            request_timeout: secs(a.request_timeout),
            max_pending_bytes: usize::try_from(a.max_pending).unwrap_or(usize::MAX),
            auth_ban: std::time::Duration::from_secs(a.auth_ban),
            ..zos_zdb::Limits::default()
        },
    };
    if a.sync && a.synctime > 0 {
        tracing::info!("--synctime has no effect with --sync (every write is fsynced)");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        builder.worker_threads(n.max(1));
    }
    let rt = builder.enable_all().build()?;
    rt.block_on(async {
        let server = zos_zdb::Server::bind(cfg).await?;
        if let Some(addr) = server.local_addr() {
            // Machine-readable line for scripts that start us on port 0.
            println!("listening {addr}");
        }
        if std::env::var_os(READY_ENV).is_some() {
            println!("ready");
        }
        server.run(super::shutdown_signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_takes_auto_or_a_size() {
        assert_eq!(parse_cache_size("auto"), Ok(CacheSize::Auto));
        assert_eq!(parse_cache_size("0"), Ok(CacheSize::Bytes(0)));
        assert_eq!(parse_cache_size("1G"), Ok(CacheSize::Bytes(1 << 30)));
        assert!(parse_cache_size("lots").unwrap_err().contains("auto"));
    }
}
