//! The ledger process: opens the store, starts the block producer thread and serves JSON-RPC
//! over HTTP and WebSocket (axum). Embeddable: `zos up` and tests run it in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{info, warn};
use zos_types::crypto::PublicKey;

use crate::chain::{Chain, Reader};
use crate::dev;
use crate::error::LedgerError;
use crate::metrics::Metrics;
use crate::producer::{self, Job};
use crate::rpc::{NotificationParams, Request, Response, RpcError, codes, methods};
use crate::store::{LedgerStore, RedbStore};
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
        }
    }
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

struct App {
    reader: Reader,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    head: watch::Receiver<u64>,
    info: LedgerInfo,
    genesis_hash: [u8; 32],
    next_sub: AtomicU64,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// A bound, not yet running ledger server.
pub struct LedgerServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    chain: Chain,
    cfg: LedgerConfig,
}

impl LedgerServer {
    /// Opens (or creates) the ledger in `cfg.data_dir` and binds `cfg.listen`.
    pub async fn bind(cfg: LedgerConfig) -> Result<Self, LedgerError> {
        let store = open_store(&cfg.data_dir)?;
        let chain = match Chain::open(store.clone(), cfg.genesis.clone()) {
            Err(LedgerError::NoGenesis) if cfg.dev => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Chain::open(store, Some(dev::genesis(now)))?
            }
            other => other?,
        };
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
        Ok(LedgerServer {
            listener,
            local_addr,
            chain,
            cfg,
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
        });
        let metrics = app.metrics.clone();

        let faucet = cfg.dev.then(dev::faucet_key);
        let exited = Arc::new(Notify::new());
        let exited2 = exited.clone();
        let (dev_mode, interval) = (cfg.dev, cfg.block_interval);
        let producer = std::thread::Builder::new()
            .name("ledger-producer".into())
            .spawn(move || {
                let r = producer::run(chain, jobs_rx, dev_mode, interval, faucet, head_tx, metrics);
                exited2.notify_one();
                r
            })
            .map_err(LedgerError::Serve)?;

        let router = Router::new()
            .route("/", post(http_rpc))
            .route("/ws", get(ws_upgrade))
            .with_state(app.clone());
        info!(addr = %local_addr, dev = cfg.dev, "ledger listening");
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = exited.notified() => warn!("ledger producer stopped; shutting down"),
                }
                let _ = stop_tx.send(true);
            })
            .await;
        // Dropping the last sender lets the producer drain its queue and exit.
        if let Ok(mut g) = app.jobs.lock() {
            g.take();
        }
        let joined = tokio::task::spawn_blocking(move || producer.join())
            .await
            .map_err(|e| LedgerError::Serve(std::io::Error::other(e)))?;
        served.map_err(LedgerError::Serve)?;
        match joined {
            Ok(r) => r,
            Err(_) => Err(LedgerError::ProducerGone),
        }
    }
}

async fn http_rpc(State(app): State<Arc<App>>, body: Bytes) -> impl IntoResponse {
    let resp = match serde_json::from_slice::<Request>(&body) {
        Err(e) => Response::from_result(
            Value::Null,
            Err(RpcError::new(
                codes::PARSE_ERROR,
                format!("bad request: {e}"),
            )),
        ),
        Ok(req) => {
            let id = req.id.clone().unwrap_or(Value::Null);
            let result = dispatch(&app, &req).await;
            app.metrics.rpc(result.is_err());
            Response::from_result(id, result)
        }
    };
    axum::Json(resp)
}

fn params<T: DeserializeOwned>(v: &Value) -> Result<T, RpcError> {
    let v = if v.is_null() { json!([]) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| RpcError::new(codes::INVALID_PARAMS, e.to_string()))
}

fn ok<T: Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(codes::INTERNAL, e.to_string()))
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(codes::INTERNAL, e.to_string())
}

async fn dispatch(app: &App, req: &Request) -> Result<Value, RpcError> {
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
        methods::PRICING => ok(r.pricing().map_err(internal)?),
        methods::METRICS => ok(app.metrics.snapshot()),
        methods::ZOS_VERSION => ok(r.zos_version().map_err(internal)?),
        methods::SUBMIT => {
            let (tx,): (SignedTransaction,) = params(p)?;
            // Cheap early answer; the producer checks again (it is the authority).
            if !tx.verify(&app.genesis_hash) {
                return Err(RpcError::new(codes::REJECTED, "bad signature"));
            }
            let (reply, rx) = oneshot::channel();
            enqueue(app, Job::Submit { tx, reply })?;
            outcome(rx.await)
        }
        methods::DEV_ADVANCE_TIME => {
            dev_only(app)?;
            let (seconds,): (u64,) = params(p)?;
            let (reply, rx) = oneshot::channel();
            enqueue(app, Job::Advance { seconds, reply })?;
            outcome(rx.await)
        }
        methods::DEV_FUND => {
            dev_only(app)?;
            let (to, amount): (PublicKey, u64) = params(p)?;
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

async fn ws_upgrade(ws: WebSocketUpgrade, State(app): State<Arc<App>>) -> impl IntoResponse {
    ws.on_upgrade(move |socket| ws_session(socket, app))
}

/// One WebSocket connection: requests are answered in order of completion; each subscription
/// runs in its own task and writes through the same bounded queue (a slow reader slows its
/// subscriptions down instead of growing memory).
async fn ws_session(socket: WebSocket, app: Arc<App>) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut subs: Vec<(u64, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut stop = app.stop.clone();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = stop.wait_for(|s| *s) => None,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let req = match serde_json::from_str::<Request>(&text) {
            Ok(r) => r,
            Err(e) => {
                let err = RpcError::new(codes::PARSE_ERROR, format!("bad request: {e}"));
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
                match params::<(u64,)>(&req.params) {
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
            _ => dispatch(&app, &req).await,
        };
        app.metrics.rpc(result.is_err());
        if send_json(&out_tx, &Response::from_result(id, result))
            .await
            .is_err()
        {
            break;
        }
    }
    for (_, t) in subs {
        t.abort();
    }
    drop(out_tx);
    let _ = writer.await;
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
