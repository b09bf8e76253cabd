//! The ledger process: opens the store, starts the block producer thread and serves JSON-RPC
//! over HTTP and WebSocket (axum). Embeddable: `zos up` and tests run it in-process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures::{SinkExt as _, StreamExt as _};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use zos_types::crypto::{KeyPair, KeyType, PublicKey};

use crate::chain::{Chain, MAX_ADVANCE_SECS, Reader};
use crate::conn::{self, ConnCtx};
use crate::dev;
use crate::error::LedgerError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::producer::{self, Job};
use crate::rpc::{NotificationParams, Request, Response, RpcError, codes, methods};
use crate::store::{EtcdConfig, EtcdStore, LedgerStore, RedbStore};
use crate::throttle::Throttle;
use crate::tx::{SignedTransaction, decode32};
use crate::types::{Genesis, LedgerInfo};

/// How to run a ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Directory holding `ledger.redb` (created if missing).
    pub data_dir: PathBuf,
    /// Address to listen on (port 0: any free port; read it back with `local_addr`).
    pub listen: SocketAddr,
    /// Dev mode: dev genesis if the store is empty, instant blocks, `dev_*` methods.
    pub dev: bool,
    /// Genesis for an empty store (must match the stored one otherwise).
    pub genesis: Option<Genesis>,
    /// Block interval outside dev mode.
    pub block_interval: Duration,
    /// Connection, request and signature-failure limits.
    pub limits: Limits,
    /// Serve HTTPS/WSS with this certificate instead of plain HTTP/WS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Keep the chain in this etcd cluster instead of `data_dir/ledger.redb` (several servers,
    /// one producer at a time; `data_dir` then holds only the producer key).
    pub etcd: Option<EtcdConfig>,
    /// URL other servers of the cluster forward submissions to while this one produces
    /// (default: the scheme and bound address).
    pub advertise: Option<String>,
}

impl LedgerConfig {
    /// A dev ledger in `data_dir` on a free loopback port.
    pub fn dev(data_dir: PathBuf) -> Self {
        LedgerConfig {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dev: true,
            genesis: None,
            block_interval: Duration::from_millis(1000),
            limits: Limits::default(),
            tls: None,
            etcd: None,
            advertise: None,
        }
    }
}

/// How long shutdown waits for open connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest `max_connections` (the slots are a semaphore counted in `u32`).
const MAX_CONNECTIONS: usize = 1_000_000;

/// Descriptors kept free for everything but client connections: the store, the listener,
/// polite refusals (at most 64 at once), logs.
const RESERVED_FDS: u64 = 128;

/// The soft limit on open files (Linux `/proc`; `None` where it cannot be read).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Lowers `max_connections` to what the open-file limit allows: past it, `accept` fails and
/// no one gets in, where the cap refuses politely and lets the rest keep working.
fn fit_to_open_files(l: &mut Limits) {
    let Some(soft) = open_files_limit() else {
        return;
    };
    let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if l.max_connections > fits {
        warn!(
            max_connections = l.max_connections,
            open_files = soft,
            lowered_to = fits,
            "max connections lowered to fit the open-file limit (raise `ulimit -n` for more)"
        );
        l.max_connections = fits;
        l.max_connections_per_ip = l.max_connections_per_ip.min(fits);
    }
}

fn check_limits(l: &Limits) -> Result<(), LedgerError> {
    let bad = |what: String| Err(LedgerError::Config(what));
    if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
        return bad(format!(
            "max connections must be 1..={MAX_CONNECTIONS}, got {}",
            l.max_connections
        ));
    }
    if l.max_body_bytes == 0 || l.max_body_bytes > u32::MAX as usize {
        return bad(format!(
            "max body bytes must be 1..={}, got {}",
            u32::MAX,
            l.max_body_bytes
        ));
    }
    if l.max_connections_per_ip == 0 {
        return bad("max connections per address must be at least 1".into());
    }
    if l.body_memory < l.max_body_bytes || l.body_memory > Semaphore::MAX_PERMITS {
        return bad(format!(
            "body memory ({}) must be at least the max body size ({})",
            l.body_memory, l.max_body_bytes
        ));
    }
    for (name, d) in [
        ("header timeout", l.header_timeout),
        ("body timeout", l.body_timeout),
        ("idle timeout", l.idle_timeout),
    ] {
        if d.is_zero() {
            return bad(format!("{name} must be more than 0"));
        }
    }
    if l.max_subscriptions == 0 {
        return bad("max subscriptions per connection must be at least 1".into());
    }
    Ok(())
}

/// Reads a genesis JSON file.
pub fn load_genesis(path: &std::path::Path) -> Result<Genesis, LedgerError> {
    let text = std::fs::read_to_string(path).map_err(|e| LedgerError::GenesisFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| LedgerError::GenesisFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Opens the store of a data directory.
pub fn open_store(data_dir: &std::path::Path) -> Result<Arc<dyn LedgerStore>, LedgerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| LedgerError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    Ok(Arc::new(RedbStore::open(&data_dir.join("ledger.redb"))?))
}

pub(crate) struct App {
    reader: Reader,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    head: watch::Receiver<u64>,
    info: LedgerInfo,
    genesis_hash: [u8; 32],
    next_sub: AtomicU64,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// `max_connections` slots (see `conn.rs`).
    pub(crate) slots: Arc<Semaphore>,
    /// Bytes of request bodies being received, all connections together.
    body_memory: Arc<Semaphore>,
    throttle: Throttle,
    /// The TLS acceptor when serving HTTPS.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// The latest signed head and its state tree (`ledger_proof`).
    published: producer::Published,
    /// Set on an etcd-backed server.
    cluster: Option<Cluster>,
}

/// An etcd-backed server's side of the cluster: its store and the clients it forwards
/// submissions with while another server produces.
struct Cluster {
    store: Arc<EtcdStore>,
    /// Certificate the cluster's servers share (forwarding pins it).
    trust: crate::client::Trust,
    /// This server's own URL (a leader key naming it is stale: retry later).
    url: String,
    ttl: Duration,
    clients: Mutex<std::collections::HashMap<String, crate::client::LedgerClient>>,
}

/// A bound, not yet running ledger server.
pub struct LedgerServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    chain: Chain,
    cfg: LedgerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The etcd store, its producer key and the URL it advertises (etcd mode).
    cluster: Option<(Arc<EtcdStore>, KeyPair, String)>,
}

/// File of the producer's ed25519 seed (hex) in the data directory.
pub const PRODUCER_KEY_FILE: &str = "producer.key";

/// Loads the producer key of a data directory, making one (owner-only file) if there is none.
pub fn producer_key(data_dir: &std::path::Path) -> Result<KeyPair, LedgerError> {
    let path = data_dir.join(PRODUCER_KEY_FILE);
    let err = |reason: String| LedgerError::Config(format!("{}: {reason}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            KeyPair::from_hex_seed(KeyType::Ed25519, text.trim()).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let key = KeyPair::generate(KeyType::Ed25519);
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(hex::encode(key.seed()).as_bytes())
                .and_then(|()| f.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| err(e.to_string()))?;
            info!(producer = %key.public().to_hex(), "made a producer key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Fills a new ledger's genesis: a random chain nonce and the producer key, where not given.
fn complete_genesis(mut g: Genesis, producer: &KeyPair) -> Genesis {
    if g.nonce.is_none() {
        g.nonce = Some(Genesis::random_nonce());
    }
    if g.producer.is_none() {
        g.producer = Some(producer.public());
    }
    g
}

impl LedgerServer {
    /// Opens (or creates) the ledger in `cfg.data_dir` and binds `cfg.listen`.
    pub async fn bind(mut cfg: LedgerConfig) -> Result<Self, LedgerError> {
        check_limits(&cfg.limits)?;
        fit_to_open_files(&mut cfg.limits);
        // Bound first: an etcd-backed server advertises its address when it campaigns.
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| LedgerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| LedgerError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let advertise = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        let (store, etcd): (Arc<dyn LedgerStore>, _) = match &cfg.etcd {
            None => (open_store(&cfg.data_dir)?, None),
            Some(ec) => {
                std::fs::create_dir_all(&cfg.data_dir).map_err(|source| LedgerError::DataDir {
                    path: cfg.data_dir.clone(),
                    source,
                })?;
                let ec = ec.clone();
                let s = tokio::task::spawn_blocking(move || EtcdStore::open(ec, true))
                    .await
                    .map_err(|e| LedgerError::Serve(std::io::Error::other(e)))??;
                let url = advertise.clone();
                let s2 = s.clone();
                // An empty log: the server that wins the first election writes genesis; the
                // others wait for it.
                tokio::task::spawn_blocking(move || wait_for_genesis(&s2, &url))
                    .await
                    .map_err(|e| LedgerError::Serve(std::io::Error::other(e)))??;
                (s.clone() as Arc<dyn LedgerStore>, Some(s))
            }
        };
        let key = producer_key(&cfg.data_dir)?;
        let given = cfg.genesis.clone().map(|g| complete_genesis(g, &key));
        // A given genesis was completed with a fresh nonce; an existing ledger keeps its own.
        let given = match (&given, crate::chain::stored_genesis(&*store)?) {
            (Some(g), Some(s)) if cfg.genesis.as_ref().is_some_and(|c| c.nonce.is_none()) => {
                Some(Genesis {
                    nonce: s.nonce.clone(),
                    ..g.clone()
                })
            }
            _ => given,
        };
        let chain = match Chain::open_with_producer(store.clone(), given, Some(key.clone())) {
            Err(LedgerError::NoGenesis) if cfg.dev => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let g = complete_genesis(dev::genesis(now), &key);
                Chain::open_with_producer(store, Some(g), Some(key.clone()))?
            }
            other => other?,
        };
        let tls = match &cfg.tls {
            Some(files) => {
                Some(crate::tls::acceptor(files).map_err(|e| LedgerError::Config(e.to_string()))?)
            }
            None => None,
        };
        Ok(LedgerServer {
            listener,
            local_addr,
            chain,
            cfg,
            tls,
            cluster: etcd.map(|s| (s, key, advertise)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes (or the producer fails), then stops the producer after
    /// it has committed what was queued.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LedgerError> {
        let LedgerServer {
            listener,
            local_addr,
            chain,
            cfg,
            tls,
            cluster,
        } = self;
        let g = chain.genesis().clone();
        let head = chain.head().header.clone();
        let info = LedgerInfo {
            genesis_hash: hex::encode(chain.genesis_hash()),
            chain_name: g.chain_name.clone(),
            head: head.height,
            time: head.timestamp,
            dev: cfg.dev,
            council: g.council,
            billing_interval_secs: g.billing_interval_secs,
            grace_period_secs: g.grace_period_secs,
            producer: chain.producer_key(),
            offline_cutoff_secs: g.offline_cutoff_secs,
        };
        let (head_tx, head_rx) = watch::channel(head.height);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        let app = Arc::new(App {
            reader: Reader::new(chain.store()),
            jobs: Mutex::new(Some(jobs_tx)),
            head: head_rx,
            genesis_hash: chain.genesis_hash(),
            info,
            next_sub: AtomicU64::new(1),
            stop: stop_rx,
            metrics: Arc::new(Metrics::default()),
            slots: Arc::new(Semaphore::new(cfg.limits.max_connections)),
            body_memory: Arc::new(Semaphore::new(cfg.limits.body_memory)),
            throttle: Throttle::new(cfg.limits.sig_throttle.clone()),
            limits: cfg.limits.clone(),
            tls,
            published: Default::default(),
            cluster: match &cluster {
                None => None,
                Some((store, _, url)) => Some(Cluster {
                    store: store.clone(),
                    trust: match &cfg.tls {
                        Some(files) => crate::client::Trust::default()
                            .with_cert_file(&files.cert)
                            .map_err(|e| LedgerError::Config(e.to_string()))?,
                        None => crate::client::Trust::default(),
                    },
                    url: url.clone(),
                    ttl: cfg
                        .etcd
                        .as_ref()
                        .map_or(Duration::from_secs(5), |e| e.lease_ttl),
                    clients: Mutex::new(Default::default()),
                }),
            },
        });
        let published = app.published.clone();
        let metrics = app.metrics.clone();

        let faucet = cfg.dev.then(dev::faucet_key);
        let exited = Arc::new(Notify::new());
        let exited2 = exited.clone();
        let (dev_mode, interval) = (cfg.dev, cfg.block_interval);
        let producer = match cluster {
            None => {
                producer::publish(&chain, &published);
                std::thread::Builder::new()
                    .name("ledger-producer".into())
                    .spawn(move || {
                        let r = producer::run(
                            chain,
                            &jobs_rx,
                            dev_mode,
                            interval,
                            faucet,
                            head_tx,
                            metrics,
                            published,
                            &|| true,
                        )
                        .map(|_| ());
                        exited2.notify_one();
                        r
                    })
                    .map_err(LedgerError::Serve)?
            }
            Some((store, key, url)) => {
                drop(chain);
                tokio::spawn(follow_applied(
                    store.clone(),
                    app.reader.clone(),
                    head_tx,
                    published,
                ));
                std::thread::Builder::new()
                    .name("ledger-elect".into())
                    .spawn(move || {
                        let r = elect_and_produce(
                            &store, &key, &url, &jobs_rx, dev_mode, interval, faucet, metrics,
                        );
                        store.resign();
                        exited2.notify_one();
                        r
                    })
                    .map_err(LedgerError::Serve)?
            }
        };

        let router = Router::new()
            .route("/", post(http_rpc))
            .route("/ws", get(ws_upgrade))
            .with_state(app.clone());
        info!(addr = %local_addr, dev = cfg.dev, max_connections = cfg.limits.max_connections,
            "ledger listening");
        let mut accept = Box::pin(conn::accept_loop(
            listener,
            router,
            app.clone(),
            app.stop.clone(),
        ));
        tokio::select! {
            () = shutdown => {}
            () = exited.notified() => warn!("ledger producer stopped; shutting down"),
            () = &mut accept => {}
        }
        // Closes the listener: new connections are refused by the OS from here on.
        drop(accept);
        let _ = stop_tx.send(true);
        // Connections finish their request in flight (graceful shutdown); wait for them all to
        // give their slot back, but not forever (a client may hold a slot for a while).
        conn::drain(&app, SHUTDOWN_GRACE).await;
        // Dropping the last sender lets the producer drain its queue and exit.
        if let Ok(mut g) = app.jobs.lock() {
            g.take();
        }
        let joined = tokio::task::spawn_blocking(move || producer.join())
            .await
            .map_err(|e| LedgerError::Serve(std::io::Error::other(e)))?;
        match joined {
            Ok(r) => r,
            Err(_) => Err(LedgerError::ProducerGone),
        }
    }
}

/// Who sent a request, and what its answer should do to the connection.
struct Caller {
    ip: IpAddr,
    /// Set when the connection should close after this answer (signature throttling).
    close: AtomicBool,
}

impl Caller {
    fn new(ip: IpAddr) -> Self {
        Caller {
            ip,
            close: AtomicBool::new(false),
        }
    }
}

/// A JSON-RPC error answer with an HTTP status other than 200.
fn http_error(status: StatusCode, code: i64, message: String) -> axum::response::Response {
    let resp = Response::from_result(Value::Null, Err(RpcError::new(code, message)));
    (status, axum::Json(resp)).into_response()
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    TimedOut,
    Busy,
    Broken(String),
}

/// Reads a request body within the size limit, the body deadline and the shared memory
/// budget (the returned permit holds the body's bytes until the request is answered).
async fn read_body(
    app: &App,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), BodyError> {
    let max = app.limits.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let waiting = AtomicBool::new(false);
    let read = async {
        if declared.is_some_and(|n| n > max as u64) {
            return Err(BodyError::TooLarge);
        }
        // Grown as bytes arrive (and are budgeted), not reserved on the client's word.
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(PREALLOC));
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            // The first FREE_BODY_BYTES of every body are not budgeted, so ordinary requests
            // never queue behind large ones waiting for the budget.
            let over = (buf.len() + data.len()).saturating_sub(FREE_BODY_BYTES.max(buf.len()));
            if over > 0 {
                // Frames are at most hyper's read buffer, and the total is under max (a u32).
                let n = u32::try_from(over).map_err(|_| BodyError::TooLarge)?;
                waiting.store(true, Ordering::Relaxed);
                let permit = app
                    .body_memory
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| BodyError::Busy)?;
                waiting.store(false, Ordering::Relaxed);
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok((buf, held))
    };
    let result = match tokio::time::timeout(app.limits.body_timeout, read).await {
        Ok(r) => r,
        // Out of time while waiting for the shared budget: the server's fault, not the client's.
        Err(_) if waiting.load(Ordering::Relaxed) => Err(BodyError::Busy),
        Err(_) => Err(BodyError::TimedOut),
    };
    // A client that waits for `100 Continue` has not sent its body: nothing to drain.
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if matches!(result, Err(BodyError::TooLarge)) && !expects_continue {
        // Read (and drop) what the client is still sending, within bounds: closing a socket
        // with unread input resets it, and the client would lose the 413 it should see.
        let drain = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len());
                left = left.saturating_sub(n);
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(app.limits.body_timeout.min(DRAIN_TIME), drain).await;
    }
    result
}

/// Largest WebSocket message (or the HTTP limit, if lower). A partial message is buffered
/// whole, so this bounds what each WebSocket can make the server hold; submissions larger than
/// this go over HTTP (which `LedgerClient` uses for everything but subscriptions).
const WS_MAX_MESSAGE: usize = 64 << 10;

/// Bytes of each request body outside the shared `body_memory` budget (every ordinary JSON-RPC
/// request fits): unfinished bodies hold at most `body_memory` + this × connections.
const FREE_BODY_BYTES: usize = 16 << 10;

/// Largest buffer reserved up front for a request body.
const PREALLOC: usize = 64 << 10;

/// Bytes and time spent reading an oversized body to the end before answering 413.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

async fn http_rpc(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnCtx>,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    let (body, _held) = match read_body(&app, &headers, body).await {
        Ok(b) => b,
        Err(e) => {
            app.metrics.rpc(true);
            let mut resp = match e {
                BodyError::TooLarge => {
                    app.metrics.too_large();
                    http_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        codes::INVALID_REQUEST,
                        format!(
                            "request body over the limit of {} bytes",
                            app.limits.max_body_bytes
                        ),
                    )
                }
                BodyError::TimedOut => {
                    app.metrics.timed_out();
                    http_error(
                        StatusCode::REQUEST_TIMEOUT,
                        codes::INVALID_REQUEST,
                        format!(
                            "request body not received within {} s",
                            app.limits.body_timeout.as_secs_f64()
                        ),
                    )
                }
                BodyError::Busy => http_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::BUSY,
                    "server busy; retry later".into(),
                ),
                BodyError::Broken(reason) => http_error(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    format!("request body: {reason}"),
                ),
            };
            // The rest of the body is unread: the connection cannot carry another request.
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    let caller = Caller::new(conn.peer.ip());
    let (status, resp) = match parse_request(&body) {
        Err(e) => {
            app.metrics.rpc(true);
            let status = if is_batch(&body) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (status, Response::from_result(Value::Null, Err(e)))
        }
        Ok(req) => {
            let id = req.id.clone().unwrap_or(Value::Null);
            let result = dispatch(&app, &req, &caller).await;
            app.metrics.rpc(result.is_err());
            let status = match &result {
                Err(e) if e.code == codes::BANNED => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::OK,
            };
            (status, Response::from_result(id, result))
        }
    };
    let mut out = (status, axum::Json(resp)).into_response();
    if caller.close.load(Ordering::Relaxed) {
        out.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

/// A JSON array: a JSON-RPC batch.
fn is_batch(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// Decodes one request; a batch gets a clear refusal instead of a confusing parse error.
fn parse_request(body: &[u8]) -> Result<Request, RpcError> {
    if is_batch(body) {
        return Err(RpcError::new(
            codes::INVALID_REQUEST,
            "batch requests are not supported: send one JSON-RPC request per HTTP body or \
             WebSocket message",
        ));
    }
    serde_json::from_slice::<Request>(body)
        .map_err(|e| RpcError::new(codes::PARSE_ERROR, format!("bad request: {e}")))
}

fn params<T: DeserializeOwned>(v: &Value) -> Result<T, RpcError> {
    let v = if v.is_null() { json!([]) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| RpcError::new(codes::INVALID_PARAMS, e.to_string()))
}

fn ok<T: Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(codes::INTERNAL, e.to_string()))
}

/// A proof of `key` at the latest published head. The value is read from the store and must
/// hash to the leaf of that head; if the store has already moved on (a block committed between
/// the two reads), the next published head is tried.
async fn prove(app: &App, key: &[u8]) -> Result<crate::proof::StateProof, RpcError> {
    for _ in 0..50 {
        let published = app
            .published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A replica following etcd publishes once it has applied its first block.
        let Some((head, snap)) = published else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let value = match snap.value_hash_of(key) {
            None => None,
            Some(want) => {
                let stored = app.reader.raw_state(key).map_err(internal)?;
                match stored {
                    Some(v) if crate::proof::value_hash(&v) == want => {
                        Some(String::from_utf8(v).map_err(internal)?)
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                }
            }
        };
        return Ok(crate::proof::StateProof {
            key: hex::encode(key),
            value,
            count: snap.len(),
            leaves: snap.prove(key),
            head,
        });
    }
    Err(RpcError::new(
        codes::BUSY,
        "no head published yet, or the state changed during every attempt to prove it; retry",
    ))
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(codes::INTERNAL, e.to_string())
}

async fn dispatch(app: &App, req: &Request, caller: &Caller) -> Result<Value, RpcError> {
    if req.jsonrpc != "2.0" {
        return Err(RpcError::new(
            codes::INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let r = &app.reader;
    let p = &req.params;
    match req.method.as_str() {
        methods::INFO => {
            let mut info = app.info.clone();
            info.head = r.head().map_err(internal)?;
            if let Some(b) = r.block(info.head).map_err(internal)? {
                info.time = b.header.timestamp;
            }
            ok(info)
        }
        methods::HEAD => ok(r.head().map_err(internal)?),
        methods::BLOCK => ok(r.block(params::<(u64,)>(p)?.0).map_err(internal)?),
        methods::EVENTS => ok(r.events(params::<(u64,)>(p)?.0).map_err(internal)?),
        methods::TX => {
            let (h,): (String,) = params(p)?;
            let h = decode32(&h)
                .ok_or_else(|| RpcError::new(codes::INVALID_PARAMS, "hash must be 64 hex chars"))?;
            ok(r.tx(&h).map_err(internal)?)
        }
        methods::ACCOUNT => ok(r.account(&params::<(PublicKey,)>(p)?.0).map_err(internal)?),
        methods::TWIN => ok(r.twin(params::<(u32,)>(p)?.0).map_err(internal)?),
        methods::TWIN_BY_ACCOUNT => ok(r
            .twin_by_account(&params::<(PublicKey,)>(p)?.0)
            .map_err(internal)?),
        methods::FARM => ok(r.farm(params::<(u32,)>(p)?.0).map_err(internal)?),
        methods::FARM_BY_NAME => ok(r
            .farm_by_name(&params::<(String,)>(p)?.0)
            .map_err(internal)?),
        methods::NODE => ok(r.node(params::<(u32,)>(p)?.0).map_err(internal)?),
        methods::NODE_BY_TWIN => ok(r.node_by_twin(params::<(u32,)>(p)?.0).map_err(internal)?),
        methods::CONTRACT => ok(r.contract(params::<(u64,)>(p)?.0).map_err(internal)?),
        methods::NODE_CONTRACTS => {
            ok(r.node_contracts(params::<(u32,)>(p)?.0).map_err(internal)?)
        }
        methods::TWIN_CONTRACTS => {
            ok(r.twin_contracts(params::<(u32,)>(p)?.0).map_err(internal)?)
        }
        methods::NAME_CONTRACT => ok(r
            .name_contract(&params::<(String,)>(p)?.0)
            .map_err(internal)?),
        methods::PROOF => {
            let (key,): (String,) = params(p)?;
            let key = hex::decode(&key)
                .ok()
                .filter(|k| k.len() <= 1024)
                .ok_or_else(|| {
                    RpcError::new(codes::INVALID_PARAMS, "key must be hex, at most 1024 bytes")
                })?;
            ok(prove(app, &key).await?)
        }
        methods::PRICING => ok(r.pricing().map_err(internal)?),
        methods::METRICS => ok(app.metrics.snapshot()),
        methods::CLUSTER => ok(app.cluster.as_ref().map(|c| c.store.status())),
        methods::ZOS_VERSION => ok(r.zos_version().map_err(internal)?),
        methods::SUBMIT => {
            if let Some(left) = app.throttle.banned(caller.ip) {
                app.metrics.sig_refused();
                return Err(RpcError::new(
                    codes::BANNED,
                    format!(
                        "too many bad signatures from {}: submissions refused for {} s more",
                        caller.ip,
                        left.as_secs().max(1)
                    ),
                ));
            }
            let (tx,): (SignedTransaction,) = params(p)?;
            // Cheap early answer; the producer checks again (it is the authority).
            if !tx.verify(&app.genesis_hash) {
                let penalty = app.throttle.failed(caller.ip);
                app.metrics.sig_failed(penalty.banned);
                if penalty.banned {
                    warn!(source = %caller.ip, "banned for repeated bad signatures");
                }
                if penalty.close {
                    caller.close.store(true, Ordering::Relaxed);
                }
                if !penalty.delay.is_zero() {
                    tokio::time::sleep(penalty.delay).await;
                }
                return Err(RpcError::new(codes::REJECTED, "bad signature"));
            }
            if let Some(c) = follower(app) {
                return forward(c, methods::SUBMIT, json!([tx])).await;
            }
            let (reply, rx) = oneshot::channel();
            enqueue(app, Job::Submit { tx, reply })?;
            outcome(rx.await)
        }
        methods::DEV_ADVANCE_TIME => {
            dev_only(app)?;
            let (seconds,): (u64,) = params(p)?;
            if seconds > MAX_ADVANCE_SECS {
                return Err(RpcError::new(
                    codes::INVALID_PARAMS,
                    format!(
                        "dev_advanceTime: at most {MAX_ADVANCE_SECS} s (10 years) per call, \
                         got {seconds}"
                    ),
                ));
            }
            if let Some(c) = follower(app) {
                return forward(c, methods::DEV_ADVANCE_TIME, json!([seconds])).await;
            }
            let (reply, rx) = oneshot::channel();
            enqueue(app, Job::Advance { seconds, reply })?;
            outcome(rx.await)
        }
        methods::DEV_FUND => {
            dev_only(app)?;
            let (to, amount): (PublicKey, u64) = params(p)?;
            if let Some(c) = follower(app) {
                return forward(c, methods::DEV_FUND, json!([to, amount])).await;
            }
            let (reply, rx) = oneshot::channel();
            enqueue(app, Job::Fund { to, amount, reply })?;
            outcome(rx.await)
        }
        methods::SUBSCRIBE_EVENTS | methods::SUBSCRIBE_BLOCKS | methods::UNSUBSCRIBE => {
            Err(RpcError::new(
                codes::WS_ONLY,
                "subscriptions need the WebSocket endpoint /ws",
            ))
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method {other}"),
        )),
    }
}

/// The cluster of a server that is not the producer now (`None`: produce here).
fn follower(app: &App) -> Option<&Cluster> {
    app.cluster.as_ref().filter(|c| !c.store.is_leader())
}

/// Sends a write to the producer and relays its answer. While there is none (an election
/// under way) or it cannot be reached, retries for up to two lease periods, then answers with
/// an `internal` error: the client retries on another server.
async fn forward(c: &Cluster, method: &str, params: Value) -> Result<Value, RpcError> {
    let deadline = tokio::time::Instant::now() + c.ttl * 2 + Duration::from_secs(1);
    let mut last = String::from("no producer elected");
    // The producer's URL as last read; read again from etcd after any failure.
    let mut fresh = false;
    while tokio::time::Instant::now() < deadline {
        if c.store.is_leader() {
            // Became the producer meanwhile: the client's retry lands here.
            return Err(RpcError::new(
                codes::INTERNAL,
                "this server just became the producer; retry",
            ));
        }
        let url = match c.store.cached_leader_url() {
            Some(u) if !fresh => Some(u),
            _ => c.store.leader_url().await,
        };
        let Some(url) = url.filter(|u| *u != c.url) else {
            fresh = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let client = {
            let mut g = c.clients.lock().map_err(internal)?;
            match g.get(&url) {
                Some(cl) => cl.clone(),
                None => {
                    let cl = crate::client::LedgerClient::with_trust(&url, c.trust.clone())
                        .map_err(internal)?;
                    g.insert(url.clone(), cl.clone());
                    cl
                }
            }
        };
        match client.call_one::<Value>(method, params.clone()).await {
            Ok(v) => return Ok(v),
            Err(crate::client::ClientError::Rejected(m)) => {
                return Err(RpcError::new(codes::REJECTED, m));
            }
            Err(crate::client::ClientError::Rpc { code, message, .. })
                if code != codes::INTERNAL =>
            {
                return Err(RpcError::new(code, message));
            }
            Err(e) => {
                last = e.to_string();
                fresh = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(RpcError::new(
        codes::INTERNAL,
        format!("forwarding to the producer failed: {last}"),
    ))
}

/// Waits until the etcd log holds a genesis: written by this server if it wins the first
/// election, else by the one that does (up to a minute).
fn wait_for_genesis(store: &Arc<EtcdStore>, url: &str) -> Result<(), LedgerError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        store.catch_up()?;
        if crate::chain::stored_genesis(&**store)?.is_some() || store.campaign(url)? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(LedgerError::Config(
                "etcd holds no ledger and another server holds the producer lease without \
                 writing genesis"
                    .into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps the server's head watch (subscriptions) and published head (proofs) at the height
/// the local replica applied, whoever produced it.
async fn follow_applied(
    store: Arc<EtcdStore>,
    reader: Reader,
    head: watch::Sender<u64>,
    published: producer::Published,
) {
    let mut rx = store.applied_watch();
    loop {
        let (h, snap) = store.tree();
        if let Ok(Some(b)) = reader.block(h) {
            let signed = crate::proof::SignedHead {
                header: b.header.clone(),
                hash: b.hash.clone(),
                signature: b.signature.clone().unwrap_or_default(),
            };
            *published.write().unwrap_or_else(|p| p.into_inner()) = Some((signed, snap));
            head.send_replace(h);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The etcd-backed server's producer thread: campaign; when elected, catch up, open the chain
/// at the head and produce until the lease is lost; then follow and campaign again. Returns
/// when the server shuts down (every job sender dropped).
// One call site; a parameter struct would only rename these.
#[allow(clippy::too_many_arguments)]
fn elect_and_produce(
    store: &Arc<EtcdStore>,
    key: &KeyPair,
    url: &str,
    jobs: &std::sync::mpsc::Receiver<Job>,
    dev: bool,
    interval: Duration,
    faucet: Option<KeyPair>,
    metrics: Arc<Metrics>,
) -> Result<(), LedgerError> {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        if !store.is_leader() {
            match store.campaign(url) {
                Ok(true) => {}
                Ok(false) => {}
                Err(e) => debug!(error = %e, "campaign failed"),
            }
        }
        if !store.is_leader() {
            // Not the producer: answer anything queued in a race, and notice shutdown.
            match jobs.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => producer::refuse([j]),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            continue;
        }
        let opened = store
            .catch_up()
            .map_err(LedgerError::from)
            .and_then(|()| Chain::open_with_producer(store.clone(), None, Some(key.clone())));
        let chain = match opened {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "elected, but the chain did not open; stepping down");
                store.resign();
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        info!(url, head = chain.head().header.height, "producing blocks");
        let active = || store.is_leader();
        let r = producer::run(
            chain,
            jobs,
            dev,
            interval,
            faucet.clone(),
            watch::channel(0).0,
            metrics.clone(),
            Default::default(),
            &active,
        );
        store.resign();
        producer::refuse(jobs.try_iter());
        match r {
            Ok(producer::Stopped::Closed) => return Ok(()),
            Ok(producer::Stopped::Deposed) => warn!(url, "lease lost; following"),
            Err(e) => warn!(url, error = %e, "append failed; following"),
        }
    }
}

fn dev_only(app: &App) -> Result<(), RpcError> {
    if app.info.dev {
        Ok(())
    } else {
        Err(RpcError::new(
            codes::DEV_ONLY,
            "dev methods are refused outside --dev",
        ))
    }
}

fn enqueue(app: &App, job: Job) -> Result<(), RpcError> {
    let sender = app
        .jobs
        .lock()
        .map_err(internal)?
        .clone()
        .ok_or_else(|| RpcError::new(codes::INTERNAL, "ledger is shutting down"))?;
    sender
        .send(job)
        .map_err(|_| RpcError::new(codes::INTERNAL, "block producer stopped"))
}

fn outcome<T: Serialize>(
    r: Result<Result<T, String>, oneshot::error::RecvError>,
) -> Result<Value, RpcError> {
    match r {
        Ok(Ok(v)) => ok(v),
        Ok(Err(reason)) if reason.starts_with("internal:") => {
            Err(RpcError::new(codes::INTERNAL, reason))
        }
        Ok(Err(reason)) => Err(RpcError::new(codes::REJECTED, reason)),
        Err(_) => Err(RpcError::new(codes::INTERNAL, "block producer stopped")),
    }
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    Extension(conn): Extension<ConnCtx>,
) -> impl IntoResponse {
    let max = app.limits.max_body_bytes.min(WS_MAX_MESSAGE);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| ws_session(socket, app, conn))
}

/// One WebSocket connection: requests are answered in order of completion; each subscription
/// runs in its own task and writes through the same bounded queue (a slow reader slows its
/// subscriptions down instead of growing memory). The session keeps its connection's slot
/// (`conn._slot`) until it ends. The server pings every third of the idle timeout; a client
/// that sends nothing at all (not even the pong) for the idle timeout is disconnected.
async fn ws_session(socket: WebSocket, app: Arc<App>, conn: ConnCtx) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
    let idle = app.limits.idle_timeout;
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(idle / 3);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let msg = tokio::select! {
                m = out_rx.recv() => match m {
                    Some(text) => Message::Text(text.into()),
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let caller = Caller::new(conn.peer.ip());
    let mut subs: Vec<(u64, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut stop = app.stop.clone();
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(idle, stream.next()) => match m {
                Ok(m) => m,
                Err(_) => {
                    app.metrics.timed_out();
                    debug!(peer = %conn.peer, "websocket idle; closing");
                    None
                }
            },
            _ = stop.wait_for(|s| *s) => None,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                // Most likely a message over the size limit: say so before closing.
                let err = RpcError::new(codes::INVALID_REQUEST, format!("websocket: {e}"));
                let _ = send_json(&out_tx, &Response::from_result(Value::Null, Err(err))).await;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let req = match parse_request(text.as_bytes()) {
            Ok(r) => r,
            Err(err) => {
                app.metrics.rpc(true);
                let resp = Response::from_result(Value::Null, Err(err));
                if send_json(&out_tx, &resp).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let id = req.id.clone().unwrap_or(Value::Null);
        let result = match req.method.as_str() {
            methods::SUBSCRIBE_EVENTS | methods::SUBSCRIBE_BLOCKS => {
                subs.retain(|(_, t)| !t.is_finished());
                match params::<(u64,)>(&req.params) {
                    Ok(_) if subs.len() >= app.limits.max_subscriptions => Err(RpcError::new(
                        codes::BUSY,
                        format!(
                            "at most {} subscriptions per connection",
                            app.limits.max_subscriptions
                        ),
                    )),
                    Ok((from,)) => {
                        let sub = app.next_sub.fetch_add(1, Ordering::Relaxed);
                        let blocks = req.method == methods::SUBSCRIBE_BLOCKS;
                        let task = tokio::spawn(subscription(
                            app.clone(),
                            out_tx.clone(),
                            sub,
                            from,
                            blocks,
                        ));
                        subs.push((sub, task));
                        Ok(json!(sub))
                    }
                    Err(e) => Err(e),
                }
            }
            methods::UNSUBSCRIBE => match params::<(u64,)>(&req.params) {
                Ok((sub,)) => {
                    let found = subs.iter().position(|(s, _)| *s == sub);
                    if let Some(i) = found {
                        subs.swap_remove(i).1.abort();
                    }
                    Ok(json!(found.is_some()))
                }
                Err(e) => Err(e),
            },
            _ => dispatch(&app, &req, &caller).await,
        };
        app.metrics.rpc(result.is_err());
        if send_json(&out_tx, &Response::from_result(id, result))
            .await
            .is_err()
            || caller.close.load(Ordering::Relaxed)
        {
            break;
        }
    }
    for (_, t) in subs {
        t.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    drop(conn);
}

async fn send_json<T: Serialize>(out: &mpsc::Sender<String>, v: &T) -> Result<(), ()> {
    let text = serde_json::to_string(v).map_err(|_| ())?;
    out.send(text).await.map_err(|_| ())
}

/// Sends every event (or block header) from height `from` on, exactly once and in order: reads
/// committed blocks from the store up to the head, then waits for the head to move.
async fn subscription(app: Arc<App>, out: mpsc::Sender<String>, sub: u64, from: u64, blocks: bool) {
    app.metrics.subscription(true);
    // Counted down when the task ends or is aborted (unsubscribe, connection closed).
    struct Open(Arc<Metrics>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.subscription(false);
        }
    }
    let _open = Open(app.metrics.clone());
    let mut head = app.head.clone();
    let mut next = from;
    loop {
        let h = *head.borrow_and_update();
        while next <= h {
            let items: Vec<Value> = if blocks {
                match app.reader.block(next) {
                    Ok(Some(b)) => vec![json!(b.header)],
                    Ok(None) => Vec::new(),
                    Err(e) => return warn!(error = %e, sub, "subscription read failed"),
                }
            } else {
                match app.reader.events(next) {
                    Ok(evs) => evs
                        .iter()
                        .filter_map(|e| serde_json::to_value(e).ok())
                        .collect(),
                    Err(e) => return warn!(error = %e, sub, "subscription read failed"),
                }
            };
            let method = if blocks {
                methods::BLOCK_NOTIFICATION
            } else {
                methods::EVENT_NOTIFICATION
            };
            for result in items {
                let note = json!({
                    "jsonrpc": "2.0",
                    "method": method,
                    "params": NotificationParams { subscription: sub, result },
                });
                if send_json(&out, &note).await.is_err() {
                    return;
                }
            }
            next += 1;
        }
        if head.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn max_connections_fit_the_open_file_limit() {
        let Some(soft) = open_files_limit() else {
            eprintln!("SKIPPING: /proc/self/limits unreadable");
            return;
        };
        let mut l = Limits {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS,
            ..Limits::default()
        };
        fit_to_open_files(&mut l);
        let fits = soft.saturating_sub(RESERVED_FDS).max(1) as usize;
        assert_eq!(l.max_connections, fits.min(MAX_CONNECTIONS));
        assert!(l.max_connections_per_ip <= l.max_connections);
        // Below the limit nothing changes.
        let mut small = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        fit_to_open_files(&mut small);
        assert_eq!(small.max_connections, 1);
    }

    #[test]
    fn batches_are_told_apart_from_bad_json() {
        let e = parse_request(b"  [{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ledger_head\"}]")
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_REQUEST);
        assert!(e.message.contains("batch requests are not supported"));
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.code, codes::PARSE_ERROR);
        assert!(parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"ledger_head"}"#).is_ok());
    }
}
