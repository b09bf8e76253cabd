//! ZeroDB: a key-value store compatible with threefoldtech/0-db clients.
//!
//! It speaks RESP over TCP and a unix socket with 0-db's command set (namespaces, user and
//! seq modes, history, scans, admin and namespace passwords, secure challenge), stores each
//! namespace in append-only data files with a CRC per entry plus index files, and adds
//! per-namespace encryption at rest, group commit for `--sync` and bounded per-connection
//! memory. Formats, commands and every difference from upstream: `docs/zdb.md`.
//!
//! Layers, each testable alone (read in this order):
//! [`resp`] (bytes ↔ requests/replies) → [`command`] (typed [`Command`]) → [`session`]
//! (rights, command execution) → [`engine`] / [`namespace`] / [`store`] (storage, no sockets)
//! → [`server`] (tokio sockets). Embedding: [`ServerConfig`] → [`Server::bind`] →
//! [`Server::run`].
//!
//! Limits: keys ≤ 255 bytes, one request ≤ 8 MiB of payload and ≤ 1024 arguments, data files
//! ≤ 4 GiB (`--datasize`), all keys of a user-mode namespace are held in RAM.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

/// The byte-bounded read cache of recently written and read values.
pub mod cache;
/// Typed commands parsed from requests.
pub mod command;
/// Value encryption at rest (ChaCha20-Poly1305, HKDF-SHA256).
pub mod crypto;
/// The persistent namespace descriptor.
pub mod descriptor;
/// All namespaces, group commit.
pub mod engine;
/// On-disk record layouts (file headers, data and index entries).
pub mod format;
/// `--hook`: the executable run on server and namespace events.
pub mod hooks;
/// The in-memory index (key → location of its current version).
pub mod index;
/// `INFO` and `NSINFO` texts.
pub mod info;
/// Compact keys of the in-memory index.
pub mod key;
/// The memory this process may use (RAM or cgroup limit), to size the cache.
pub mod memlimit;
/// A namespace: descriptor, in-memory index, operations.
pub mod namespace;
/// `MIRROR` feeds and `--replicate-from` mirrors.
pub mod replication;
/// Request/reply codec with hard limits (pure).
pub mod resp;
/// TCP/unix listeners and connection tasks.
pub mod server;
/// Per-connection rights and command execution.
pub mod session;
/// Data and index files of one namespace: append, read, rotate, recover.
pub mod store;
/// Authentication throttling per connection and per source address, connection counters.
pub mod throttle;
/// Offline `check`, `repair` and `dump` of a stopped server's directories.
pub mod tools;

pub use command::Command;
pub use server::Server;

/// Index mode of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Mode {
    /// Key-value: user-chosen binary keys, all held in RAM.
    #[default]
    User = 0,
    /// Sequential: the server assigns 8-byte little-endian ids.
    Seq = 1,
}

impl Mode {
    /// `user` / `seq` (flags, NSSET, descriptor).
    pub fn name(self) -> &'static str {
        match self {
            Mode::User => "user",
            Mode::Seq => "seq",
        }
    }

    /// The name upstream prints in NSINFO/INFO.
    pub fn info_name(self) -> &'static str {
        match self {
            Mode::User => "userkey",
            Mode::Seq => "sequential",
        }
    }

    /// Parses `user` / `seq` (and upstream's deprecated `direct`, which runs as `seq`).
    pub fn from_name(s: &str) -> Option<Mode> {
        match s {
            "user" => Some(Mode::User),
            "seq" | "direct" => Some(Mode::Seq),
            _ => None,
        }
    }
}

/// Server settings, as the `zos zdb serve` flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--data`: root of data files.
    pub data_dir: PathBuf,
    /// `--index`: root of index files and namespace descriptors.
    pub index_dir: PathBuf,
    /// `--listen`/`--port`: TCP address (port 0 picks a free port).
    pub listen: Option<SocketAddr>,
    /// `--socket`: unix socket path.
    pub socket: Option<PathBuf>,
    /// `--admin`: admin password; without it every client is admin (upstream's rule, warned
    /// about at start).
    pub admin_password: Option<String>,
    /// `--mode`: one mode for all namespaces; `None` lets each namespace choose.
    pub mode: Option<Mode>,
    /// `--sync`: writes are on disk before they are acknowledged (group commit).
    pub sync: bool,
    /// `--datasize`: data file rotation size in bytes (64 KiB ..= 4 GiB).
    pub datasize: u64,
    /// `--protect`: `default` is read-only unless selected with the admin password.
    pub protect: bool,
    /// Enables `STOP` (upstream: debug builds only).
    pub debug: bool,
    /// `--cache-size`: bytes of recently written and read values kept in RAM (0: none).
    pub cache_bytes: u64,
    /// `--synctime`: without `--sync`, fsync every namespace's current files at most every
    /// this many seconds (0: never, the kernel's writeback decides).
    pub synctime: u64,
    /// Connection limits and authentication throttling.
    pub limits: Limits,
    /// `--hook`: executable run on server and namespace events (`hooks`).
    pub hook: Option<PathBuf>,
    /// `--maxsize`: limit of the `default` namespace's live data in bytes, applied at start.
    pub default_maxsize: Option<u64>,
    /// `--rotate`: start new data/index files every this many seconds when the current ones
    /// hold data (0: only at `--datasize`).
    pub rotate: u64,
    /// `--secure`: passwords only through the SHA1 challenge (`AUTH SECURE`, `SELECT … SECURE`).
    pub secure: bool,
    /// `--dualnet`: listen on IPv4 and IPv6 (the other family's any-address, same port).
    pub dualnet: bool,
    /// `--strict-index`: refuse to start on a damaged index instead of rebuilding it from
    /// the data files.
    pub strict_index: bool,
    /// `--replicate-from`: this server is a mirror of the master at this address.
    pub replicate_from: Option<Replication>,
    /// Encryption at rest under a server key (a node derives it from its key root, never
    /// stored with the data): values of namespaces without a user's `encryption-key` are
    /// stored sealed, bound to namespace, key and place. Clients see no difference; values
    /// stored before stay readable. `None`: values are stored as given.
    pub at_rest_key: Option<crypto::AtRestKey>,
}

/// How a mirror reaches its master.
#[derive(Debug, Clone)]
pub struct Replication {
    /// The master's TCP address.
    pub master: SocketAddr,
    /// The master's admin password (`MIRROR` is admin-only).
    pub password: Option<String>,
}

/// Connection limits and authentication throttling (`docs/zdb.md`, "Connection limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-clients`: connections served at once; more are told
    /// `-ERR max number of clients reached` and closed. Lowered at start to what the open-file
    /// limit allows.
    pub max_clients: usize,
    /// `--idle-timeout`: a client that sends nothing for this long is closed (`None`: never).
    pub idle_timeout: Option<std::time::Duration>,
    /// `--request-timeout`: a started request (or a reply the client does not read) must be
    /// finished within this (`None`: never). Stops slowloris clients.
    pub request_timeout: Option<std::time::Duration>,
    /// `--max-pending`: bytes of unfinished requests buffered by all connections together
    /// beyond a small allowance each; a connection that would pass it is told and closed.
    pub max_pending_bytes: usize,
    /// Authentication failures (AUTH, SELECT with a password) answered at once on one
    /// connection; each later one is answered after [`Limits::auth_delay`].
    pub auth_free_failures: u32,
    /// Delay before answering a failure past the free ones.
    pub auth_delay: std::time::Duration,
    /// Failures after which a connection is closed.
    pub auth_close_after: u32,
    /// Failures from one source address (IPv6: its /64) after which each failure is delayed.
    pub auth_ip_delay_after: u32,
    /// Failures from one source address after which it is banned.
    pub auth_ip_ban_after: u32,
    /// How long a ban lasts; a source's failure count also resets after this much quiet.
    pub auth_ban: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 10_000,
            idle_timeout: Some(std::time::Duration::from_secs(300)),
            request_timeout: Some(std::time::Duration::from_secs(30)),
            max_pending_bytes: 256 << 20,
            auth_free_failures: 3,
            auth_delay: std::time::Duration::from_secs(1),
            auth_close_after: 10,
            auth_ip_delay_after: 10,
            auth_ip_ban_after: 30,
            auth_ban: std::time::Duration::from_secs(600),
        }
    }
}

/// Upstream's default data file size: 256 MiB.
pub const DEFAULT_DATASIZE: u64 = 256 << 20;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("zdb-data"),
            index_dir: PathBuf::from("zdb-index"),
            listen: None,
            socket: None,
            admin_password: None,
            mode: None,
            sync: false,
            datasize: DEFAULT_DATASIZE,
            protect: false,
            debug: false,
            cache_bytes: cache::DEFAULT_CACHE_BYTES,
            synctime: 0,
            limits: Limits::default(),
            hook: None,
            default_maxsize: None,
            rotate: 0,
            secure: false,
            dualnet: false,
            strict_index: false,
            replicate_from: None,
            at_rest_key: None,
        }
    }
}

/// Server start-up and shutdown failures.
#[derive(Debug, thiserror::Error)]
pub enum ZdbError {
    /// A namespace cannot be opened or written.
    #[error("namespace {name}: {source}")]
    Namespace {
        /// Namespace name.
        name: String,
        /// Cause.
        #[source]
        source: store::StoreError,
    },
    /// A storage failure outside a namespace (root directories).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A socket cannot be bound.
    #[error("bind {what}: {source}")]
    Bind {
        /// Address or path.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Inconsistent settings.
    #[error("invalid configuration: {0}")]
    Config(String),
}
