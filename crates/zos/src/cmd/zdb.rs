//! `zos zdb …`: the ZeroDB server (0-db compatible), see docs/zdb.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// ZeroDB commands.
#[derive(Subcommand, Debug)]
pub enum ZdbCmd {
    /// Serve a ZeroDB (RESP over TCP and/or a unix socket) until SIGINT/SIGTERM.
    Serve(ServeArgs),
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
    /// Data file rotation size in bytes.
    #[arg(long, default_value_t = zos_zdb::DEFAULT_DATASIZE)]
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
        ZdbCmd::Serve(a) => serve(a),
    }
}

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
