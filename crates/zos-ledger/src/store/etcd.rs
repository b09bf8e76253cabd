//! The replicated backend: the ledger's block log in an etcd cluster (Raft), one full local
//! replica per ledger server.
//!
//! etcd holds, under a key prefix (default `/zos-ledger/`):
//! - `log/<height, 16 hex digits>`: one entry per block, the block's whole [`Batch`] (block,
//!   events, state and index writes, meta) and the id of the server that appended it;
//! - `head`: the height of the last entry (written in the same etcd transaction);
//! - `leader`: `{id, url}` of the block producer, attached to its lease.
//!
//! Every server keeps the state the log derives in memory ([`MemStore`]): it catches up with a
//! range read at start, then follows with a watch. Reads never touch etcd. Only the producer
//! commits, and every commit is one etcd transaction conditioned on the leader key still being
//! the one this server created (same create revision: its lease is alive) AND the head key not
//! having moved since the entry this server applied last: a deposed producer can never append.
//!
//! Why a log of batches and not one etcd key per state key: a block writes hundreds of keys,
//! over etcd's default 128 operations per transaction, and a single entry keeps the commit
//! atomic and the follower's apply trivial. An entry must fit etcd's request limit
//! (`--max-request-bytes`, 1.5 MiB by default): the producer bounds blocks (see `producer.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Batch, LedgerStore, MemStore, Pairs, StoreError, Table};
use crate::proof::{self, TreeSnapshot};

/// TLS to the etcd members. The CA is the only root trusted (not the system's: an etcd
/// cluster has its own PKI); the client certificate is what a cluster started with
/// `--client-cert-auth` requires of every client.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM of the CA that signed the members' certificates.
    pub ca_pem: Vec<u8>,
    /// PEM certificate (chain) and PEM private key of this client.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// Reads the CA and, when both are given, the client certificate and key.
    pub fn from_files(
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, StoreError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| err("open", format!("{}: {e}", p.display())))
        };
        Ok(EtcdTls {
            ca_pem: read(ca)?,
            client: match client {
                Some((c, k)) => Some((read(c)?, read(k)?)),
                None => None,
            },
        })
    }
}

/// Where a cluster's ledger lives in etcd and how long a producer's lease lasts.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:port`, or `https://` with [`Self::tls`]).
    pub endpoints: Vec<String>,
    /// TLS to the members: required for `https://` endpoints, refused with `http://` ones (a
    /// configuration that asks for TLS never silently talks in clear).
    pub tls: Option<EtcdTls>,
    /// Key prefix of this ledger (several ledgers may share a cluster).
    pub prefix: String,
    /// Lease of the producer: a dead or partitioned producer is replaced after at most this
    /// (plus one campaign poll). Whole seconds, at least 2 (etcd's minimum).
    pub lease_ttl: Duration,
    /// This server's id (in the leader key and in each entry it appends).
    pub id: String,
}

impl EtcdConfig {
    /// Parses `URL[,URL…]`.
    pub fn new(endpoints: &str, id: &str) -> Result<Self, StoreError> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(err("open", "no etcd endpoint given"));
        }
        for e in &endpoints {
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(err(
                    "open",
                    format!("etcd endpoint {e:?} must be http://host:port or https://host:port"),
                ));
            }
        }
        if endpoints.iter().any(|e| e.starts_with("https://"))
            && endpoints.iter().any(|e| e.starts_with("http://"))
        {
            return Err(err(
                "open",
                "etcd endpoints mix http:// and https://: a cluster is reached one way",
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            tls: None,
            prefix: "/zos-ledger/".into(),
            lease_ttl: Duration::from_secs(5),
            id: id.to_string(),
        })
    }
}

fn err(op: &'static str, msg: impl Into<String>) -> StoreError {
    StoreError::Backend {
        op,
        source: msg.into().into(),
    }
}

/// etcd encodes int64 fields as JSON strings and leaves out zero values.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn inum(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// An error with its causes: reqwest's own text hides why a connection failed (a refused
/// certificate, a reset), which is what an operator needs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The smallest key after every key starting with `p` (etcd's `range_end` for a prefix).
fn prefix_end(p: &[u8]) -> Vec<u8> {
    super::prefix_end(p).unwrap_or_else(|| vec![0])
}

/// A small etcd v3 client over its JSON gateway (`/v3/...`): no protoc, no gRPC stack; the
/// endpoints are tried in turn until one answers.
#[derive(Clone, Debug)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl Etcd {
    /// A client for these members, over TLS when `tls` is given (then only `https://`).
    pub fn new(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Self, StoreError> {
        let secure = endpoints.iter().all(|e| e.starts_with("https://"));
        match (secure, tls) {
            (true, None) => {
                return Err(err(
                    "open",
                    "https:// etcd endpoints need the cluster's CA (--etcd-cacert)",
                ));
            }
            (false, Some(_)) => {
                return Err(err(
                    "open",
                    "etcd TLS is configured but the endpoints are http://: use https://",
                ));
            }
            _ => {}
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let ca = reqwest::Certificate::from_pem(&tls.ca_pem)
                .map_err(|e| err("open", format!("etcd CA: {e}")))?;
            b = b
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .https_only(true)
                .min_tls_version(reqwest::tls::Version::TLS_1_2);
            if let Some((cert, key)) = &tls.client {
                let mut pem = cert.clone();
                pem.push(b'\n');
                pem.extend_from_slice(key);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| err("open", format!("etcd client certificate: {e}")))?;
                b = b.identity(id);
            }
        }
        let http = b.build().map_err(|e| err("open", e.to_string()))?;
        Ok(Etcd {
            http,
            endpoints: endpoints.to_vec().into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// POSTs `body` to `path`, moving to the next member on a transport error or an etcd
    /// error answer (a member without a leader, a stopped one). Each attempt has `timeout`.
    async fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let r = self
                .http
                .post(&url)
                .json(body)
                .timeout(timeout)
                .send()
                .await;
            let resp = match r {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {}", chain(&e));
                    continue;
                }
            };
            let status = resp.status();
            let v: Value = match resp.json().await {
                Ok(v) => v,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            if !status.is_success() || v.get("error").is_some() {
                last = format!("{url}: {status} {v}");
                continue;
            }
            if i > 0 {
                self.current.store(idx, Ordering::Relaxed);
            }
            return Ok(v);
        }
        Err(format!("no etcd member answered ({last})"))
    }

    async fn range(&self, key: &[u8], end: Option<&[u8]>, limit: u64) -> Result<Value, String> {
        let mut body = json!({ "key": b64(key), "limit": limit.to_string() });
        if let Some(end) = end {
            body["range_end"] = json!(b64(end));
        }
        self.post("/v3/kv/range", &body, Duration::from_secs(3))
            .await
    }

    async fn txn(&self, body: &Value) -> Result<Value, String> {
        self.post("/v3/kv/txn", body, Duration::from_secs(3)).await
    }

    async fn grant(&self, ttl: u64) -> Result<(i64, u64), String> {
        let v = self
            .post(
                "/v3/lease/grant",
                &json!({ "TTL": ttl.to_string() }),
                Duration::from_secs(2),
            )
            .await?;
        Ok((inum(&v["ID"]), num(&v["TTL"])))
    }

    /// Renews a lease; its remaining TTL (0: the lease is gone).
    async fn keepalive(&self, lease: i64) -> Result<u64, String> {
        let v = self
            .post(
                "/v3/lease/keepalive",
                &json!({ "ID": lease.to_string() }),
                Duration::from_millis(1000),
            )
            .await?;
        Ok(num(&v["result"]["TTL"]))
    }

    async fn revoke(&self, lease: i64) {
        let _ = self
            .post(
                "/v3/lease/revoke",
                &json!({ "ID": lease.to_string() }),
                Duration::from_millis(500),
            )
            .await;
    }
}

/// One log entry: a block's batch.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    height: u64,
    /// Id of the server that appended it (audit; not part of the chain).
    leader: String,
    /// `(table, key, value)`, base64; `None` deletes.
    writes: Vec<(String, String, Option<String>)>,
}

fn table_by_name(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.name() == name)
}

impl Entry {
    fn from_batch(height: u64, leader: &str, batch: &Batch) -> Self {
        Entry {
            height,
            leader: leader.to_string(),
            writes: batch
                .writes
                .iter()
                .map(|(t, k, v)| (t.name().to_string(), b64(k), v.as_deref().map(b64)))
                .collect(),
        }
    }

    fn to_batch(&self) -> Result<Batch, StoreError> {
        let mut b = Batch::default();
        for (t, k, v) in &self.writes {
            let table = table_by_name(t).ok_or_else(|| err("apply", format!("table {t:?}")))?;
            let key = B64
                .decode(k)
                .map_err(|e| err("apply", format!("entry {}: {e}", self.height)))?;
            let value = match v {
                Some(v) => Some(
                    B64.decode(v)
                        .map_err(|e| err("apply", format!("entry {}: {e}", self.height)))?,
                ),
                None => None,
            };
            b.writes.push((table, key, value));
        }
        Ok(b)
    }
}

/// The producer's tenure: its lease and the create revision of the leader key it made.
#[derive(Debug, Clone, Copy)]
struct Term {
    lease: i64,
    leader_rev: u64,
    /// The lease certainly outlives this instant (last renewal's send time + TTL).
    valid_until: Instant,
}

/// What the local replica has applied.
#[derive(Debug, Default)]
struct Applied {
    /// Height of the last applied entry (`None`: empty log).
    height: Option<u64>,
    /// Mod revision of the head key as of that entry (the commit condition).
    head_rev: u64,
}

/// Cluster facts for `ledger_cluster` and tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This server's id.
    pub id: String,
    /// Whether this server holds a live producer lease.
    pub producer: bool,
    /// The producer's URL as last read from etcd.
    pub leader_url: Option<String>,
    /// Height applied by the local replica.
    pub applied: Option<u64>,
    /// Terms won since start.
    pub terms: u64,
    /// Terms ended since start.
    pub stepdowns: u64,
    /// Unix ms of the last step-down.
    pub last_stepdown_unix_ms: u64,
    /// Unix ms at which the lease of the last ended term could expire at the earliest, as this
    /// server knew it when it stepped down (a step-down before it means no block was appended
    /// by a possibly deposed producer).
    pub last_lease_expiry_unix_ms: u64,
    /// Entries this server appended.
    pub appended: u64,
}

fn unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = wall.as_millis() as i128
        + if at >= now {
            (at - now).as_millis() as i128
        } else {
            -((now - at).as_millis() as i128)
        };
    ms.max(0) as u64
}

/// A runtime dropped without blocking (a store may be dropped inside async code).
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    cfg: EtcdConfig,
    etcd: Etcd,
    local: MemStore,
    applied: Mutex<Applied>,
    /// The state tree at the applied height (for proofs on every server).
    tree: RwLock<(u64, Arc<TreeSnapshot>)>,
    notify: watch::Sender<u64>,
    term: Mutex<Option<Term>>,
    leader_url: Mutex<Option<String>>,
    terms: AtomicU64,
    stepdowns: AtomicU64,
    last_stepdown: Mutex<Option<(Instant, Instant)>>,
    appended: AtomicU64,
}

/// A [`LedgerStore`] replicated through etcd (see the module documentation).
pub struct EtcdStore {
    inner: Arc<Inner>,
    rt: Rt,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.cfg.endpoints)
            .field("prefix", &self.inner.cfg.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects, catches the local replica up with the whole log and, if `follow`, keeps it
    /// following (watch). Blocking: call it outside async code (or in `spawn_blocking`).
    pub fn open(cfg: EtcdConfig, follow: bool) -> Result<Arc<Self>, StoreError> {
        let secs = cfg.lease_ttl.as_secs();
        if secs < 2 {
            return Err(err("open", "the etcd lease TTL must be at least 2 s"));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger-etcd")
            .enable_all()
            .build()
            .map_err(|e| err("open", e.to_string()))?;
        let etcd = Etcd::new(&cfg.endpoints, cfg.tls.as_ref())?;
        let (notify, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            cfg,
            etcd,
            local: MemStore::new(),
            applied: Mutex::new(Applied::default()),
            tree: RwLock::new((0, Arc::new(TreeSnapshot::from_pairs(std::iter::empty())))),
            notify,
            term: Mutex::new(None),
            leader_url: Mutex::new(None),
            terms: AtomicU64::new(0),
            stepdowns: AtomicU64::new(0),
            last_stepdown: Mutex::new(None),
            appended: AtomicU64::new(0),
        });
        let store = Arc::new(EtcdStore {
            inner,
            rt: Rt(Some(rt)),
        });
        store.catch_up()?;
        if follow {
            let inner = store.inner.clone();
            store.handle().spawn(follow_loop(inner));
        }
        Ok(store)
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.rt
            .0
            .as_ref()
            .expect("the runtime lives as long as the store")
            .handle()
            .clone()
    }

    /// Runs `f` on the store's runtime and waits (usable from any thread, async or not).
    fn block<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let h = self.handle().spawn(f);
        futures::executor::block_on(h).map_err(|e| err("runtime", e.to_string()))
    }

    /// Runs `f` on the store's runtime from async code.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.handle()
            .spawn(f)
            .await
            .map_err(|e| err("runtime", e.to_string()))
    }

    /// Applies every entry etcd has beyond the local replica (blocking).
    pub fn catch_up(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.block(async move { inner.catch_up().await.map(|_| ()) })?
            .map_err(|e| err("catch up", e))
    }

    /// Changes with every applied height (the server's subscriptions and proofs follow it).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    /// The applied height and the state tree at it.
    pub fn tree(&self) -> (u64, Arc<TreeSnapshot>) {
        let g = self.inner.tree.read().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Whether this server holds a producer lease that certainly has not expired yet (with a
    /// margin for the commit in flight).
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Tries once to become the producer: if no leader key exists, a new lease and the key
    /// attached to it (created only if absent). `url` is where followers forward to.
    pub fn campaign(&self, url: &str) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let url = url.to_string();
        self.block(async move { inner.campaign(&url).await })?
            .map_err(|e| err("campaign", e))
    }

    /// Ends this server's term (if any): stops renewing and revokes the lease.
    pub fn resign(&self) {
        let inner = self.inner.clone();
        let _ = self.block(async move { inner.resign().await });
    }

    /// The producer's URL (read from etcd; `None`: no producer now).
    pub async fn leader_url(&self) -> Option<String> {
        let inner = self.inner.clone();
        self.run(async move { inner.read_leader().await })
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// The producer's URL as last read from etcd (no request).
    pub fn cached_leader_url(&self) -> Option<String> {
        self.inner.leader_url.lock().ok().and_then(|g| g.clone())
    }

    /// Facts for `ledger_cluster`.
    pub fn status(&self) -> ClusterStatus {
        let i = &self.inner;
        let (stepdown, expiry) = i
            .last_stepdown
            .lock()
            .map(|g| g.map(|(a, b)| (unix_ms(a), unix_ms(b))))
            .ok()
            .flatten()
            .unwrap_or((0, 0));
        ClusterStatus {
            id: i.cfg.id.clone(),
            producer: i.is_leader(),
            leader_url: i.leader_url.lock().ok().and_then(|g| g.clone()),
            applied: i.applied.lock().ok().and_then(|a| a.height),
            terms: i.terms.load(Ordering::Relaxed),
            stepdowns: i.stepdowns.load(Ordering::Relaxed),
            last_stepdown_unix_ms: stepdown,
            last_lease_expiry_unix_ms: expiry,
            appended: i.appended.load(Ordering::Relaxed),
        }
    }

    /// Which server appended each entry, by height (audit, tests).
    pub fn entry_leaders(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let inner = self.inner.clone();
        self.block(async move {
            let mut out = Vec::new();
            let mut from = inner.log_key(0);
            let end = prefix_end(&inner.key("log/"));
            loop {
                let v = inner.etcd.range(&from, Some(&end), 1000).await?;
                let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
                for kv in &kvs {
                    let e: Entry =
                        serde_json::from_slice(&unb64(&kv["value"])).map_err(|e| e.to_string())?;
                    out.push((e.height, e.leader));
                }
                match kvs.last() {
                    Some(kv) if v["more"].as_bool() == Some(true) => {
                        from = unb64(&kv["key"]);
                        from.push(0);
                    }
                    _ => return Ok::<_, String>(out),
                }
            }
        })?
        .map_err(|e| err("read", e))
    }
}

impl Inner {
    fn key(&self, s: &str) -> Vec<u8> {
        format!("{}{s}", self.cfg.prefix).into_bytes()
    }

    fn log_key(&self, h: u64) -> Vec<u8> {
        self.key(&format!("log/{h:016x}"))
    }

    fn margin(&self) -> Duration {
        (self.cfg.lease_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
    }

    fn is_leader(&self) -> bool {
        let g = self.term.lock().unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|t| Instant::now() + self.margin() < t.valid_until)
    }

    /// Applies one entry if it is the next one; entries at or below the applied height are
    /// already here. A gap is an error (the caller catches up with a range read).
    fn apply(&self, e: &Entry, mod_rev: u64) -> Result<bool, String> {
        let mut a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let next = a.height.map_or(0, |h| h + 1);
        if e.height < next {
            return Ok(false);
        }
        if e.height > next {
            return Err(format!("entry {} after {:?}: gap", e.height, a.height));
        }
        let batch = e.to_batch().map_err(|e| e.to_string())?;
        let changes: std::collections::BTreeMap<_, _> = batch
            .writes
            .iter()
            .filter(|(t, _, _)| *t == Table::State)
            .map(|(_, k, v)| (k.clone(), v.as_deref().map(proof::value_hash)))
            .collect();
        self.local.commit(batch).map_err(|e| e.to_string())?;
        {
            let mut t = self.tree.write().unwrap_or_else(|p| p.into_inner());
            Arc::make_mut(&mut t.1).update(changes);
            t.0 = e.height;
        }
        a.height = Some(e.height);
        a.head_rev = mod_rev;
        drop(a);
        self.notify.send_replace(e.height);
        Ok(true)
    }

    fn apply_kv(&self, kv: &Value) -> Result<(), String> {
        let e: Entry = serde_json::from_slice(&unb64(&kv["value"]))
            .map_err(|e| format!("undecodable log entry: {e}"))?;
        self.apply(&e, num(&kv["mod_revision"])).map(|_| ())
    }

    /// Range-reads the log past the applied height; returns the etcd revision it read at.
    async fn catch_up(&self) -> Result<u64, String> {
        let end = prefix_end(&self.key("log/"));
        loop {
            let from = {
                let a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
                self.log_key(a.height.map_or(0, |h| h + 1))
            };
            let v = self.etcd.range(&from, Some(&end), 256).await?;
            let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
            for kv in &kvs {
                self.apply_kv(kv)?;
            }
            if v["more"].as_bool() != Some(true) || kvs.is_empty() {
                return Ok(num(&v["header"]["revision"]));
            }
        }
    }

    async fn read_leader(&self) -> Result<Option<String>, String> {
        let v = self.etcd.range(&self.key("leader"), None, 1).await?;
        let url = v["kvs"].as_array().and_then(|k| k.first()).and_then(|kv| {
            let l: Value = serde_json::from_slice(&unb64(&kv["value"])).ok()?;
            l["url"].as_str().map(str::to_string)
        });
        if let Ok(mut g) = self.leader_url.lock() {
            g.clone_from(&url);
        }
        Ok(url)
    }

    async fn campaign(self: &Arc<Self>, url: &str) -> Result<bool, String> {
        if self.is_leader() {
            return Ok(true);
        }
        if self.read_leader().await?.is_some() {
            return Ok(false);
        }
        let ttl = self.cfg.lease_ttl.as_secs();
        let sent = Instant::now();
        let (lease, granted) = self.etcd.grant(ttl).await?;
        let value = json!({ "id": self.cfg.id, "url": url }).to_string();
        let key = b64(&self.key("leader"));
        let v = self
            .etcd
            .txn(&json!({
                "compare": [{ "target": "CREATE", "key": key, "create_revision": "0" }],
                "success": [{ "request_put": {
                    "key": key, "value": b64(value.as_bytes()), "lease": lease.to_string() } }],
            }))
            .await?;
        if v["succeeded"].as_bool() != Some(true) {
            self.etcd.revoke(lease).await;
            return Ok(false);
        }
        let term = Term {
            lease,
            leader_rev: num(&v["header"]["revision"]),
            valid_until: sent + Duration::from_secs(granted.min(ttl)),
        };
        *self.term.lock().unwrap_or_else(|p| p.into_inner()) = Some(term);
        self.terms.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.leader_url.lock() {
            *g = Some(url.to_string());
        }
        info!(id = %self.cfg.id, lease, leader_rev = term.leader_rev, "won the producer election");
        tokio::spawn(keep_alive(self.clone(), lease));
        Ok(true)
    }

    async fn resign(&self) {
        let old = self.term.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = old {
            self.stepdowns.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.last_stepdown.lock() {
                *g = Some((Instant::now(), t.valid_until));
            }
            info!(id = %self.cfg.id, lease = t.lease, "stepped down as producer");
            self.etcd.revoke(t.lease).await;
        }
    }

    /// The conditional append (see the module documentation).
    async fn append(&self, e: Entry) -> Result<(), String> {
        let term = {
            let g = self.term.lock().unwrap_or_else(|p| p.into_inner());
            match *g {
                Some(t) if Instant::now() + self.margin() < t.valid_until => t,
                _ => return Err("this server is not the producer (no live lease)".into()),
            }
        };
        let head_rev = {
            let a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            let next = a.height.map_or(0, |h| h + 1);
            if e.height != next {
                return Err(format!(
                    "append of {} but the next height is {next}",
                    e.height
                ));
            }
            a.head_rev
        };
        let value = serde_json::to_vec(&e).map_err(|e| e.to_string())?;
        let log_key = b64(&self.log_key(e.height));
        let v = self
            .etcd
            .txn(&json!({
                "compare": [
                    { "target": "CREATE", "key": b64(&self.key("leader")),
                      "create_revision": term.leader_rev.to_string() },
                    { "target": "MOD", "key": b64(&self.key("head")),
                      "mod_revision": head_rev.to_string() },
                ],
                "success": [
                    { "request_put": { "key": log_key, "value": b64(&value) } },
                    { "request_put": { "key": b64(&self.key("head")),
                                       "value": b64(e.height.to_string().as_bytes()) } },
                ],
                "failure": [ { "request_range": { "key": log_key } } ],
            }))
            .await?;
        if v["succeeded"].as_bool() == Some(true) {
            self.apply(&e, num(&v["header"]["revision"]))?;
            self.appended.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // A retried request whose first attempt went through finds its own entry.
        let found = &v["responses"][0]["response_range"]["kvs"][0];
        if unb64(&found["value"]) == value {
            self.apply(&e, num(&found["mod_revision"]))?;
            self.appended.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err("append refused: the lease is gone or another producer moved the head".into())
    }
}

/// Renews the lease every third of its TTL until it is gone or the term ended.
async fn keep_alive(inner: Arc<Inner>, lease: i64) {
    let every = inner.cfg.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let still = inner
            .term
            .lock()
            .map(|g| g.is_some_and(|t| t.lease == lease))
            .unwrap_or(false);
        if !still {
            return;
        }
        let sent = Instant::now();
        match inner.etcd.keepalive(lease).await {
            Ok(ttl) if ttl > 0 => {
                let mut g = inner.term.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = g.as_mut().filter(|t| t.lease == lease) {
                    t.valid_until = sent + Duration::from_secs(ttl);
                }
            }
            Ok(_) => {
                warn!(lease, "producer lease expired");
                return;
            }
            // The term lapses by itself when renewals keep failing (partition).
            Err(e) => debug!(error = %e, lease, "lease renewal failed"),
        }
    }
}

/// Catch up, then watch the log; on any error or a quiet spell, start over.
async fn follow_loop(inner: Arc<Inner>) {
    let end = prefix_end(&inner.key("log/"));
    let mut failures = 0u64;
    loop {
        let rev = match inner.catch_up().await {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) => {
                // Said at once, then every ~5 s while it lasts (etcd unreachable, a bad entry).
                if failures % 25 == 0 {
                    warn!(error = %e, failures, "ledger follower: cannot read the log from etcd");
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Err(e) = watch_once(&inner, rev + 1, &end).await {
            debug!(error = %e, "ledger follower: watch ended");
        }
    }
}

async fn watch_once(inner: &Inner, from_rev: u64, end: &[u8]) -> Result<(), String> {
    let body = json!({ "create_request": {
        "key": b64(&inner.key("log/")), "range_end": b64(end),
        "start_revision": from_rev.to_string() } });
    let n = inner.etcd.endpoints.len();
    let idx = inner.etcd.current.load(Ordering::Relaxed) % n;
    let url = format!("{}/v3/watch", inner.etcd.endpoints[idx]);
    let mut resp = inner
        .etcd
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            inner.etcd.current.store((idx + 1) % n, Ordering::Relaxed);
            e.to_string()
        })?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // A quiet watch is restarted (with a range read first): a silently dead connection
        // cannot stall the follower for long.
        let chunk = match tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await {
            Err(_) => return Ok(()),
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return Err("watch stream closed".into()),
            Ok(Err(e)) => {
                inner.etcd.current.store((idx + 1) % n, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v.get("error").is_some() || v["result"]["canceled"].as_bool() == Some(true) {
                return Err(format!("watch: {v}"));
            }
            for ev in v["result"]["events"].as_array().into_iter().flatten() {
                if ev["type"].as_str() == Some("DELETE") {
                    continue;
                }
                // A gap (missed entries) sends us back to the range read.
                inner.apply_kv(&ev["kv"])?;
            }
        }
    }
}

impl LedgerStore for EtcdStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.local.get(table, key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StoreError> {
        self.inner.local.range(table, start, end)
    }

    /// One conditional etcd transaction (only the producer, only while its lease lives), then
    /// the same writes on the local replica.
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let head = batch
            .writes
            .iter()
            .rev()
            .find(|(t, k, _)| *t == Table::Meta && k.as_slice() == b"head")
            .and_then(|(_, _, v)| v.as_deref())
            .and_then(|v| serde_json::from_slice::<u64>(v).ok())
            .ok_or_else(|| err("commit", "a batch without a head height"))?;
        let e = Entry::from_batch(head, &self.inner.cfg.id, &batch);
        let inner = self.inner.clone();
        self.block(async move { inner.append(e).await })?
            .map_err(|e| err("commit", e))
    }
}
