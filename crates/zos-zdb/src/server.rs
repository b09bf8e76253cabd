//! The network side: TCP and unix-socket listeners, one tokio task per connection.
//!
//! Each connection reads what is available, executes every complete request in it, then
//! flushes the namespaces it wrote (and waits for the group fsync with `--sync`) and sends all
//! replies in one write. Buffers are bounded: the input holds at most one request beyond what
//! was parsed (≤ 8 MiB + framing), the output is written out whenever it passes 1 MiB. A slow
//! reader only stalls its own task; no lock is held while writing to a socket.
//!
//! Limits (`docs/zdb.md`, "Connection limits"): at most `max_clients` connections (more are
//! told and closed), an idle timeout, a deadline for finishing a started request or a reply,
//! and a server-wide budget for the bytes of unfinished requests. The deadlines share one
//! timer per connection that is re-armed only when it fires (at most once per the shorter
//! timeout), so a request costs no timer operation; an idle connection holds no buffer.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::command;
use crate::engine::{Engine, EngineConfig};
use crate::namespace::{DiskRead, OpError};
use crate::resp::{self, Reply};
use crate::session::{Outcome, Session, Shared, op_reply};
use crate::throttle::{AuthThrottle, BANNED_MSG};
use crate::{ServerConfig, ZdbError};

/// Bytes asked from the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Output size that triggers a write before the rest of the input is processed.
const OUT_HIGH_WATER: usize = 1 << 20;
/// How long shutdown waits for connections to finish their current batch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of an unfinished request a connection holds without charging `max_pending_bytes`
/// (one read): pipelines of small requests never touch the shared counter.
const FREE_PENDING: usize = READ_CHUNK;
/// A buffer above this size is replaced by a small one once its large request is done, so
/// that the memory is given back.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;
/// File descriptors kept for data/index files and the rest when `max_clients` is lowered to
/// the open-file limit.
const FD_RESERVE: u64 = 128;
/// Reply to a client past `max_clients` (Redis's text).
const FULL_MSG: &str = "ERR max number of clients reached";
/// Reply to a client whose unfinished request does not fit `max_pending_bytes`.
const PENDING_MSG: &str = "ERR too much unfinished request data on this server, try again later";
/// Reply to a client that did not finish its request in time.
const REQUEST_TIMEOUT_MSG: &str = "ERR request not completed in time, closing";
/// How long a refusal or a goodbye may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// A bound server, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    /// `--dualnet`: the other address family's listener, when the first does not cover it.
    tcp2: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    stop: Arc<Notify>,
    synctime: u64,
    rotate: u64,
    replicate: Option<crate::Replication>,
}

/// The soft open-file limit of this process (`/proc/self/limits`), if readable.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// `max_clients` as the open-file limit allows: a connection past the limit must still be
/// accepted to be told, so it needs a descriptor to spare.
fn effective_max_clients(asked: usize) -> usize {
    let Some(nofile) = open_file_limit() else {
        return asked.max(1);
    };
    let room = nofile.saturating_sub(FD_RESERVE).max(nofile / 2).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < asked {
        tracing::warn!(
            asked,
            allowed = room,
            open_file_limit = nofile,
            "max clients lowered to fit the open-file limit (raise `ulimit -n` for more)"
        );
    }
    asked.min(room).max(1)
}

impl Server {
    /// Opens the storage (recovering it if needed) and binds the sockets.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ZdbError> {
        if cfg.listen.is_none() && cfg.socket.is_none() {
            return Err(ZdbError::Config(
                "nothing to listen on: give a TCP address or a unix socket".into(),
            ));
        }
        // `--dualnet` on the IPv4 any-address listens on `::`, which takes both families.
        let listen = match cfg.listen {
            Some(a) if cfg.dualnet && a.ip() == IpAddr::from([0u8; 4]) => {
                Some(SocketAddr::new(IpAddr::from([0u16; 8]), a.port()))
            }
            other => other,
        };
        let tcp = match listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ZdbError::Bind {
                        what: addr.to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        let unix = match &cfg.socket {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(|source| ZdbError::Bind {
                    what: path.display().to_string(),
                    source,
                })?;
                Some((l, path.clone()))
            }
            None => None,
        };
        let tcp2 = match (&tcp, cfg.dualnet) {
            (Some(l), true) => dual_listener(l).await?,
            _ => None,
        };
        // Upstream's instance id in hook calls: where this server listens.
        let instance = match (&tcp, &cfg.socket) {
            (Some(l), _) => l
                .local_addr()
                .map_or_else(|_| "tcp".to_string(), |a| a.to_string()),
            (None, Some(p)) => format!("unix:{}", p.display()),
            (None, None) => "zdb".to_string(),
        };
        let hooks = cfg
            .hook
            .as_ref()
            .map(|exe| crate::hooks::Hooks::new(exe.clone(), instance));
        let ecfg = EngineConfig {
            data_dir: cfg.data_dir.clone(),
            index_dir: cfg.index_dir.clone(),
            mode: cfg.mode,
            sync: cfg.sync,
            datasize: cfg.datasize,
            cache_bytes: cfg.cache_bytes,
            strict_index: cfg.strict_index,
            at_rest_key: cfg.at_rest_key.clone(),
        };
        let engine_hooks = hooks.clone();
        let engine =
            tokio::task::spawn_blocking(move || Engine::open_with_hooks(ecfg, engine_hooks))
                .await
                .map_err(|e| ZdbError::Config(format!("storage open task failed: {e}")))??;
        if let Some(max) = cfg.default_maxsize {
            let ns = engine.default_ns();
            let mut st = ns.lock();
            st.desc.maxsize = max;
            st.desc.save(&ns.index_dir)?;
        }
        if let Some(h) = &hooks {
            let (i, d) = (cfg.index_dir.clone(), cfg.data_dir.clone());
            h.fire(
                "namespaces-init",
                vec![i.display().to_string(), d.display().to_string()],
            );
            let h = h.clone();
            // As upstream, a failing `ready` hook aborts the start.
            tokio::task::spawn_blocking(move || h.run_wait("ready", Vec::new()))
                .await
                .map_err(|e| ZdbError::Config(format!("hook task failed: {e}")))?
                .map_err(|e| ZdbError::Config(format!("ready hook: {e}")))?;
        }
        if cfg.admin_password.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(
                "no admin password (--admin): EVERY client is admin and may create, change and \
                 delete namespaces, read their passwords and write timestamps, as upstream 0-db \
                 does; set --admin unless this server is reachable only by trusted clients"
            );
        }
        let mut limits = cfg.limits.clone();
        limits.max_clients = effective_max_clients(limits.max_clients);
        let synctime = if cfg.sync { 0 } else { cfg.synctime };
        let shared = Arc::new(Shared {
            secure: cfg.secure,
            replica: cfg.replicate_from.is_some(),
            engine: Arc::new(engine),
            admin_password: cfg.admin_password.filter(|p| !p.is_empty()),
            protect: cfg.protect,
            debug: cfg.debug,
            instance_id: rand::random(),
            started: Instant::now(),
            commands: Default::default(),
            clients: Default::default(),
            net_in: Default::default(),
            net_out: Default::default(),
            read_ewma_ns: Default::default(),
            throttle: AuthThrottle::new(limits.clone()),
            limits,
            stats: Default::default(),
            next_client_id: Default::default(),
            synctime,
        });
        tracing::info!(
            tcp = ?tcp.as_ref().and_then(|l| l.local_addr().ok()),
            socket = ?cfg.socket,
            max_clients = shared.limits.max_clients,
            idle_timeout = ?shared.limits.idle_timeout,
            request_timeout = ?shared.limits.request_timeout,
            max_pending_bytes = shared.limits.max_pending_bytes,
            synctime,
            "zdb listening"
        );
        Ok(Server {
            shared,
            tcp,
            tcp2,
            unix,
            stop: Arc::new(Notify::new()),
            synctime,
            rotate: cfg.rotate,
            replicate: cfg.replicate_from.clone(),
        })
    }

    /// The bound TCP address (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes (or `STOP` in debug mode), then lets connections
    /// finish their current batch and flushes and fsyncs every namespace.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ZdbError> {
        let (close_tx, close_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let syncer = (self.synctime > 0).then(|| {
            tokio::spawn(periodic_sync(
                self.shared.clone(),
                Duration::from_secs(self.synctime),
            ))
        });
        let follower = self.replicate.clone().map(|r| {
            tokio::spawn(crate::replication::follow(
                self.shared.clone(),
                r,
                close_rx.clone(),
            ))
        });
        let rotator = (self.rotate > 0).then(|| {
            tokio::spawn(periodic_rotate(
                self.shared.clone(),
                Duration::from_secs(self.rotate),
            ))
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.stop.notified() => break,
                r = accept_tcp2(&self.tcp, &self.tcp2) => match r {
                    Ok((s, peer)) => {
                        let ip = Some(peer.ip());
                        if self.shared.throttle.is_banned(ip) {
                            self.shared.stats.refused_banned.fetch_add(1, Ordering::Relaxed);
                            conns.spawn(refuse(s, BANNED_MSG));
                        } else if let Some(guard) = ClientGuard::admit(&self.shared) {
                            let _ = s.set_nodelay(true);
                            conns.spawn(serve(s, ip, guard, close_rx.clone(), self.stop.clone()));
                        } else {
                            conns.spawn(refuse(s, FULL_MSG));
                        }
                    }
                    Err(e) => accept_failed(e).await,
                },
                r = accept_unix(&self.unix) => match r {
                    Ok(s) => {
                        if let Some(guard) = ClientGuard::admit(&self.shared) {
                            conns.spawn(serve(s, None, guard, close_rx.clone(), self.stop.clone()));
                        } else {
                            conns.spawn(refuse(s, FULL_MSG));
                        }
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!("zdb shutting down");
        if let Some(t) = syncer {
            t.abort();
        }
        if let Some(t) = rotator {
            t.abort();
        }
        if let Some(t) = follower {
            // It stops at its next await on the close signal; a flush it was in finishes.
            let _ = close_tx.send(true);
            let _ = t.await;
        }
        let _ = close_tx.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            conns.abort_all();
        }
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            let r = engine.close();
            if let Some(h) = engine.hooks() {
                // Waited for, as upstream: the hook sees the files closed and synced.
                let _ = h.run_wait("close", Vec::new());
                h.shutdown();
            }
            r
        })
        .await
        .map_err(|e| ZdbError::Config(format!("close task failed: {e}")))?
    }
}

/// `--synctime`: every `every`, writes each namespace's buffered entries to the kernel and
/// fsyncs its current data and index files (and those rotated since the previous round),
/// outside the namespace lock. Namespaces not written since the previous round are skipped.
async fn periodic_sync(shared: Arc<Shared>, every: Duration) {
    use std::collections::HashMap;
    // Per namespace: (file id, data position) at the previous round.
    let mut seen: HashMap<String, (u32, u64)> = HashMap::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut work = Vec::new();
        let names = shared.engine.list();
        seen.retain(|n, _| names.contains(n));
        for name in names {
            let Some(ns) = shared.engine.get(&name) else {
                continue;
            };
            let mut st = ns.lock();
            let pos = st.store.data_position();
            let before = seen.get(&name).copied();
            if before == Some(pos) {
                continue;
            }
            let (id, data, index) = match st.store.flush_for_sync() {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(ns = %name, error = %e, "periodic flush failed");
                    continue;
                }
            };
            // Files rotated since the previous round: their last writes were flushed by the
            // rotation, they only need an fsync, by path.
            let first = before.map_or(id, |(old, _)| old.min(id));
            let rotated: Vec<(PathBuf, PathBuf)> =
                (first..id).map(|i| st.store.paths_of(i)).collect();
            drop(st);
            seen.insert(name.clone(), pos);
            work.push((name, data, index, rotated));
        }
        if work.is_empty() {
            continue;
        }
        let r = tokio::task::spawn_blocking(move || {
            for (name, data, index, rotated) in work {
                let mut res = data.sync_data().and_then(|()| index.sync_data());
                for (d, i) in rotated {
                    for p in [d, i] {
                        res = res.and_then(|()| match std::fs::File::open(&p) {
                            Ok(f) => f.sync_data(),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                            Err(e) => Err(e),
                        });
                    }
                }
                if let Err(e) = res {
                    tracing::error!(ns = %name, error = %e, "periodic fsync failed");
                }
            }
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "periodic fsync task failed");
        }
        shared.stats.periodic_syncs.fetch_add(1, Ordering::Relaxed);
    }
}

/// `--dualnet`: a listener for the other address family on the same port: `::` (dual-stack
/// on Linux by default) already takes IPv4, then nothing is added, otherwise `0.0.0.0`;
/// loopback gets the other loopback. (`0.0.0.0` is widened to `::` before binding, see
/// [`Server::bind`], since a dual-stack `::` cannot be bound next to it without
/// `IPV6_V6ONLY`, which tokio does not expose.)
async fn dual_listener(first: &TcpListener) -> Result<Option<TcpListener>, ZdbError> {
    let addr = first.local_addr().map_err(|source| ZdbError::Bind {
        what: "listener".into(),
        source,
    })?;
    let other: IpAddr = match addr.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from([0u8; 4]),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16]),
        ip => {
            tracing::warn!(%ip, "--dualnet applies to the any-address and loopback only");
            return Ok(None);
        }
    };
    let want = SocketAddr::new(other, addr.port());
    match TcpListener::bind(want).await {
        Ok(l) => {
            tracing::info!(%want, "dualnet: second listener");
            Ok(Some(l))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.ip().is_unspecified() => {
            tracing::info!(%addr, "dualnet: the IPv6 listener takes IPv4 too");
            Ok(None)
        }
        Err(source) => Err(ZdbError::Bind {
            what: want.to_string(),
            source,
        }),
    }
}

/// `--rotate`: every `every`, namespaces whose current data file holds entries written since
/// the previous round start new files (hooks `jump-index`/`jump-data`).
async fn periodic_rotate(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for name in shared.engine.list() {
            let Some(ns) = shared.engine.get(&name) else {
                continue;
            };
            // A new pair holds only its header: nothing written since the last rotation.
            let r = tokio::task::spawn_blocking(move || {
                let mut st = ns.lock();
                if st.store.data_position().1 <= crate::format::FILE_HEADER_LEN as u64 {
                    return Ok(());
                }
                st.store.jump()
            })
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(ns = %name, error = %e, "periodic rotation failed"),
                Err(e) => tracing::error!(error = %e, "periodic rotation task failed"),
            }
        }
    }
}

async fn accept_tcp2(
    a: &Option<TcpListener>,
    b: &Option<TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match b {
        None => accept_tcp(a).await,
        Some(_) => tokio::select! {
            r = accept_tcp(a) => r,
            r = accept_tcp(b) => r,
        },
    }
}

async fn accept_tcp(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(l: &Option<(UnixListener, PathBuf)>) -> std::io::Result<UnixStream> {
    match l {
        Some((l, _)) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Out of file descriptors and similar: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Tells a client why it is not served and closes (as Redis does past `maxclients`).
async fn refuse<S: AsyncWrite + Unpin>(mut s: S, msg: &'static str) {
    let mut b = BytesMut::new();
    Reply::err(msg).encode(&mut b);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        s.write_all(&b).await?;
        s.shutdown().await
    })
    .await;
}

/// One admitted connection, counted in `clients` until dropped.
struct ClientGuard(Arc<Shared>);

impl ClientGuard {
    /// Admits a connection unless `max_clients` are connected (then counts a refusal).
    fn admit(shared: &Arc<Shared>) -> Option<ClientGuard> {
        let max = shared.limits.max_clients as u64;
        if shared.clients.fetch_add(1, Ordering::Relaxed) >= max {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            shared.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(ClientGuard(shared.clone()))
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client socket: the connection waits for readability before taking a read buffer, so
/// that an idle client holds no memory.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_;
}

impl Socket for TcpStream {
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        self.readable()
    }
}

impl Socket for UnixStream {
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        self.readable()
    }
}

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Nothing received for `idle_timeout`.
    Idle,
    /// A request or a reply not finished within `request_timeout`.
    Request,
}

/// The deadlines of one connection, checked when its timer fires.
struct Deadlines {
    idle: Option<Duration>,
    request: Option<Duration>,
    /// Longest time between two checks: the shorter timeout, so that a deadline that
    /// starts after the timer was armed is never missed.
    period: Duration,
    last_read: Instant,
    /// Since when the buffered partial request has made no complete request.
    partial_since: Option<Instant>,
    /// Since when (at least) a write has been blocked; set lazily by the timer.
    writing_since: Option<Instant>,
}

impl Deadlines {
    fn new(shared: &Shared) -> Deadlines {
        let l = &shared.limits;
        let period = [l.idle_timeout, l.request_timeout]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(10));
        Deadlines {
            idle: l.idle_timeout,
            request: l.request_timeout,
            period,
            last_read: Instant::now(),
            partial_since: None,
            writing_since: None,
        }
    }

    /// The earliest deadline in force, and what passing it means.
    fn next(&self) -> Option<(Instant, Expiry)> {
        let started = self.writing_since.or(self.partial_since);
        let request = started
            .zip(self.request)
            .map(|(t, d)| (t + d, Expiry::Request));
        // A blocked write is the client's doing, not idleness: only its deadline counts.
        let idle = if self.writing_since.is_some() {
            None
        } else {
            self.idle.map(|d| (self.last_read + d, Expiry::Idle))
        };
        match (request, idle) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// When the timer fires: the expiry that passed, or when to check again.
    fn check(&self, now: Instant) -> Result<Instant, Expiry> {
        match self.next() {
            Some((t, kind)) if t <= now => Err(kind),
            Some((t, _)) => Ok(t.min(now + self.period)),
            None => Ok(now + self.period),
        }
    }
}

/// Bytes of this connection's unfinished request charged to the server-wide budget.
struct PendingCharge {
    shared: Arc<Shared>,
    charged: usize,
}

impl PendingCharge {
    /// Charges the `held` bytes of an unfinished request (nothing within the free
    /// allowance). `false`: the budget is exhausted, the connection must go.
    fn set(&mut self, held: usize) -> bool {
        let held = if held > FREE_PENDING { held } else { 0 };
        if held == self.charged {
            return true;
        }
        let total = &self.shared.stats.pending_bytes;
        if held > self.charged {
            let add = held - self.charged;
            let before = total.fetch_add(add, Ordering::Relaxed);
            if before + add > self.shared.limits.max_pending_bytes {
                total.fetch_sub(add, Ordering::Relaxed);
                self.shared
                    .stats
                    .pending_refused
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
        } else {
            total.fetch_sub(self.charged - held, Ordering::Relaxed);
        }
        self.charged = held;
        true
    }
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        self.shared
            .stats
            .pending_bytes
            .fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// A client socket with its deadlines and their timer.
struct Conn<S> {
    s: S,
    dl: Deadlines,
    timer: Pin<Box<Sleep>>,
}

impl<S: Socket> Conn<S> {
    /// The timer fired: re-arms it, or says which deadline passed.
    fn on_timer(&mut self) -> Result<(), Expiry> {
        let now = Instant::now();
        let next = self.dl.check(now)?;
        self.timer.as_mut().reset(next.into());
        Ok(())
    }

    /// Counts an expiry and says goodbye (a slow request is told why; an idle client is
    /// closed silently, as Redis does).
    async fn expire(&mut self, kind: Expiry, shared: &Shared) {
        let stats = &shared.stats;
        match kind {
            Expiry::Idle => {
                stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Expiry::Request => {
                stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                if self.dl.writing_since.is_none() {
                    self.goodbye(REQUEST_TIMEOUT_MSG).await;
                }
            }
        }
        tracing::debug!(?kind, "closing a connection past its deadline");
    }

    /// Best-effort error reply, then close.
    async fn goodbye(&mut self, msg: &'static str) {
        let mut b = BytesMut::new();
        Reply::err(msg).encode(&mut b);
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            self.s.write_all(&b).await?;
            self.s.shutdown().await
        })
        .await;
    }

    /// Writes all of `out`; a client that does not read it within `request_timeout` is
    /// dropped. `write` (not `write_all`) so that the timer can interrupt without losing
    /// track of what was sent.
    async fn write_out(&mut self, out: &[u8], shared: &Shared) -> std::io::Result<()> {
        let mut sent = 0;
        while sent < out.len() {
            tokio::select! {
                biased;
                r = self.s.write(&out[sent..]) => match r? {
                    0 => return Err(std::io::ErrorKind::WriteZero.into()),
                    n => sent += n,
                },
                _ = &mut self.timer => {
                    if self.dl.writing_since.is_none() {
                        self.dl.writing_since = Some(Instant::now());
                    }
                    if let Err(kind) = self.on_timer() {
                        self.expire(kind, shared).await;
                        return Err(std::io::ErrorKind::TimedOut.into());
                    }
                }
            }
        }
        self.dl.writing_since = None;
        Ok(())
    }
}

/// Makes room to read: one chunk, or for a large request its announced size (at most
/// doubling what is held, so a client cannot make us reserve what it does not send).
fn reserve(inbuf: &mut BytesMut) {
    if inbuf.capacity() - inbuf.len() >= READ_CHUNK / 4 {
        return;
    }
    let add = if inbuf.len() > READ_CHUNK {
        resp::needed_len(inbuf)
            .saturating_sub(inbuf.len())
            .clamp(READ_CHUNK / 4, inbuf.len())
    } else {
        READ_CHUNK
    };
    inbuf.reserve(add);
}

/// Serves one connection until EOF, error, a deadline, `STOP` or server shutdown.
async fn serve<S: Socket>(
    s: S,
    peer: Option<IpAddr>,
    guard: ClientGuard,
    mut close: watch::Receiver<bool>,
    stop: Arc<Notify>,
) {
    let shared = guard.0.clone();
    let dl = Deadlines::new(&shared);
    let first = Instant::now() + dl.period;
    let mut c = Conn {
        s,
        dl,
        timer: Box::pin(tokio::time::sleep_until(first.into())),
    };
    let mut pending = PendingCharge {
        shared: shared.clone(),
        charged: 0,
    };
    let mut session = Session::with_peer(shared.clone(), peer);
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut deferred = Deferred::default();
    loop {
        if inbuf.capacity() == 0 {
            // Idle: no buffer until the client sends something.
            tokio::select! {
                r = c.s.ready_to_read() => if r.is_err() { return },
                _ = close.changed() => return,
                _ = &mut c.timer => {
                    if let Err(kind) = c.on_timer() {
                        c.expire(kind, &shared).await;
                        return;
                    }
                    continue;
                }
            }
        }
        reserve(&mut inbuf);
        let n = tokio::select! {
            r = c.s.read_buf(&mut inbuf) => match r { Ok(n) => n, Err(_) => return },
            _ = close.changed() => return,
            _ = &mut c.timer => {
                if let Err(kind) = c.on_timer() {
                    c.expire(kind, &shared).await;
                    return;
                }
                if inbuf.is_empty() {
                    // Quiet for a while: give the buffers back.
                    inbuf = BytesMut::new();
                    out = BytesMut::new();
                }
                continue;
            }
        };
        if n == 0 {
            return;
        }
        c.dl.last_read = Instant::now();
        shared.net_in.fetch_add(n as u64, Ordering::Relaxed);
        let mut close_after = false;
        let mut stop_after = false;
        let mut completed = false;
        let mut mirror = None;
        loop {
            let blank = resp::blank_prefix(&inbuf);
            inbuf.advance(blank);
            let frame = match resp::parse_request(&inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    Reply::err(e.to_string()).encode(&mut out);
                    close_after = true;
                    break;
                }
            };
            completed = true;
            let data: Bytes = inbuf.split_to(frame.len).freeze();
            let args: Vec<Bytes> = frame.args.iter().map(|r| data.slice(r.clone())).collect();
            let outcome = match command::parse(&args) {
                Ok(cmd) => session.execute(cmd),
                Err(e) => Outcome::Reply(Reply::err(e.0)),
            };
            match outcome {
                Outcome::Reply(r) => r.encode(&mut out),
                Outcome::Close(r) => {
                    r.encode(&mut out);
                    close_after = true;
                    break;
                }
                Outcome::Delayed(r, delay) => {
                    // A throttled password failure: what came before goes out now, the
                    // rest of this client's requests wait.
                    if commit(&mut c, &mut out, &mut deferred, &mut session, &shared)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = close.changed() => return,
                    }
                    r.encode(&mut out);
                }
                Outcome::Read(read) => {
                    // Disk-bound reads go to the blocking pool, all those of this batch in
                    // one trip, so that they do not stall the other connections of this
                    // worker; page-cache reads stay here.
                    if shared.reads_are_slow() {
                        deferred.push(&mut out, read);
                    } else {
                        let (r, took) = timed_read(read);
                        shared.note_read(took);
                        encode_read(r, &mut out);
                    }
                }
                Outcome::Mirror(have) => {
                    mirror = Some(have);
                    break;
                }
                Outcome::Stop(r) => {
                    r.encode(&mut out);
                    close_after = true;
                    stop_after = true;
                    break;
                }
                Outcome::Wait {
                    ns,
                    rx,
                    command,
                    timeout,
                } => {
                    let committed =
                        commit(&mut c, &mut out, &mut deferred, &mut session, &shared).await;
                    let r = match committed {
                        Ok(()) => tokio::select! {
                            r = wait_for(rx, &command, timeout) => Some(r),
                            _ = close.changed() => None,
                        },
                        Err(_) => None,
                    };
                    ns.unsubscribe();
                    let Some(r) = r else { return };
                    r.encode(&mut out);
                    // Waiting is activity, not idleness.
                    c.dl.last_read = Instant::now();
                }
            }
            if out.len() + deferred.bytes >= OUT_HIGH_WATER
                && commit(&mut c, &mut out, &mut deferred, &mut session, &shared)
                    .await
                    .is_err()
            {
                return;
            }
        }
        if commit(&mut c, &mut out, &mut deferred, &mut session, &shared)
            .await
            .is_err()
        {
            return;
        }
        if let Some(have) = mirror {
            // From now on this connection only carries the replication feed.
            crate::replication::feed(c.s, shared.clone(), have, close).await;
            return;
        }
        if stop_after {
            tracing::info!("STOP received (debug mode)");
            stop.notify_one();
        }
        if close_after {
            let _ = c.s.shutdown().await;
            return;
        }
        // A request counts against the request deadline from the end of the previous one.
        if inbuf.is_empty() {
            c.dl.partial_since = None;
        } else if completed || c.dl.partial_since.is_none() {
            c.dl.partial_since = Some(c.dl.last_read);
        }
        if !pending.set(inbuf.len()) {
            tracing::warn!(
                held = inbuf.len(),
                budget = shared.limits.max_pending_bytes,
                "unfinished requests over budget, closing a connection"
            );
            c.goodbye(PENDING_MSG).await;
            return;
        }
        // Give back the memory of a large request once it is done.
        if inbuf.capacity() > SHRINK_ABOVE && inbuf.len() <= READ_CHUNK {
            let mut small = BytesMut::new();
            if !inbuf.is_empty() {
                small.reserve(READ_CHUNK);
                small.extend_from_slice(&inbuf);
            }
            inbuf = small;
        }
        if out.capacity() > SHRINK_ABOVE {
            out = BytesMut::new();
        }
    }
}

fn timed_read(read: DiskRead) -> (Result<Bytes, OpError>, Duration) {
    let t = Instant::now();
    let r = read.run();
    (r, t.elapsed())
}

fn encode_read(r: Result<Bytes, OpError>, out: &mut BytesMut) {
    match r {
        Ok(v) => Reply::Bulk(v),
        Err(e) => op_reply(e),
    }
    .encode(out);
}

/// Value reads put off to the end of the input batch, each with the replies that precede it.
#[derive(Default)]
struct Deferred {
    parts: Vec<(BytesMut, DiskRead)>,
    /// Bytes the reads will return (counted against the output high-water mark).
    bytes: usize,
}

impl Deferred {
    fn push(&mut self, out: &mut BytesMut, read: DiskRead) {
        self.bytes += read.bytes();
        self.parts.push((out.split(), read));
    }

    /// Runs the reads in one blocking task and puts every reply back in its place in `out`.
    async fn resolve(&mut self, out: &mut BytesMut, shared: &Shared) {
        if self.parts.is_empty() {
            return;
        }
        self.bytes = 0;
        let (befores, reads): (Vec<BytesMut>, Vec<DiskRead>) =
            std::mem::take(&mut self.parts).into_iter().unzip();
        let count = reads.len();
        let done = tokio::task::spawn_blocking(move || {
            reads.into_iter().map(timed_read).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            // Only a panic gets here; every read still gets a reply, so that the client's
            // replies stay aligned with its requests.
            tracing::error!(error = %e, count, "deferred read task failed");
            (0..count)
                .map(|_| (Err(OpError::Client("Internal Error")), Duration::ZERO))
                .collect()
        });
        let tail = out.split();
        for (before, (r, took)) in befores.into_iter().zip(done) {
            shared.note_read(took);
            out.unsplit(before);
            encode_read(r, out);
        }
        out.unsplit(tail);
    }
}

/// Makes this session's writes durable as configured, then sends the pending replies.
/// On a storage failure nothing is sent: the client must not see an acknowledgement.
async fn commit<S: Socket>(
    c: &mut Conn<S>,
    out: &mut BytesMut,
    deferred: &mut Deferred,
    session: &mut Session,
    shared: &Shared,
) -> std::io::Result<()> {
    deferred.resolve(out, shared).await;
    let mut epoch = 0;
    let touched = session.take_touched();
    if !touched.is_empty() {
        // Let the other ready connections append first: appends share the namespace's buffer,
        // so the first flush after them writes them all and the later ones find nothing to
        // write. That is one write(2) per round of ready clients instead of one per client,
        // as Redis does with its AOF buffer. With nobody else ready this returns at once.
        tokio::task::yield_now().await;
    }
    for ns in touched {
        match shared.engine.flush(&ns) {
            Ok(e) => epoch = epoch.max(e),
            Err(e) => {
                tracing::error!(ns = %ns.name, error = %e, "flush failed, closing the connection unacknowledged");
                return Err(std::io::Error::other(e));
            }
        }
    }
    if let Err(e) = shared.engine.sync_upto(epoch).await {
        tracing::error!(error = %e, "fsync failed, closing the connection unacknowledged");
        return Err(std::io::Error::other(e));
    }
    if !out.is_empty() {
        c.write_out(out, shared).await?;
        shared
            .net_out
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
    }
    Ok(())
}

async fn wait_for(
    mut rx: broadcast::Receiver<&'static str>,
    command: &str,
    timeout: Duration,
) -> Reply {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Reply::err("Timeout"),
            r = rx.recv() => match r {
                Ok(name) if command == "*" || name == command => return Reply::Simple(name.into()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Reply::err("Timeout"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerConfig;
    use tokio::net::TcpStream;

    fn resp(commands: &[&[&str]]) -> Vec<u8> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
        out
    }

    /// With reads classed as slow, GETs of a pipeline are deferred to one blocking task; every
    /// reply must still come back in request order, between the replies around it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn deferred_reads_keep_reply_order() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig {
            data_dir: dir.path().join("data"),
            index_dir: dir.path().join("index"),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            cache_bytes: 0, // every GET reads the data file
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let shared = server.shared.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&resp(&[&["SET", "a", "1111"], &["SET", "b", "22"]]))
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while got.len() < b"$1\r\na\r\n$1\r\nb\r\n".len() {
            let n = c.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        // Far above the threshold; real reads pull it down by 1/8 each, slowly enough here.
        shared.read_ewma_ns.store(u64::MAX / 4, Ordering::SeqCst);
        assert!(shared.reads_are_slow());
        let pipeline = resp(&[
            &["GET", "a"],
            &["PING"],
            &["GET", "b"],
            &["GET", "nope"],
            &["GET", "a"],
            &["DBSIZE"],
        ]);
        c.write_all(&pipeline).await.unwrap();
        let want: &[u8] = b"$4\r\n1111\r\n+PONG\r\n$2\r\n22\r\n$-1\r\n$4\r\n1111\r\n:2\r\n";
        let mut got = Vec::new();
        while got.len() < want.len() {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed early after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        assert!(
            shared.reads_are_slow(),
            "the test must have used the deferred path"
        );
        drop(c);
        let _ = stop_tx.send(());
        task.await.unwrap().unwrap();
    }
}
