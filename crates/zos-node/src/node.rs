//! Putting it together: [`run_node`] starts identity, registration, the engine worker, the
//! watcher, the uptime loop, the metrics endpoint and the RMB API, and stops them all when the
//! shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use zos_ledger::LedgerClient;

use crate::api::{Api, NodeState};
use crate::engine::{Engine, EngineConfig, HostCapacity};
use crate::ledger::NodeLedger;
use crate::metrics::Metrics;
use crate::primitives::PrimitiveRegistry;
use crate::registrar::{self, RegistrarError};
use crate::store::Store;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Ledger JSON-RPC URL (`https://HOST:PORT`, or `http://` on loopback).
    pub ledger_url: String,
    /// The ledger's TLS certificate (PEM) to pin; required for `https://`.
    pub ledger_cert: Option<PathBuf>,
    /// The ledger producer's key, pinned: heads must be signed by it. Without it, the key is
    /// read once from the ledger over the (pinned TLS, or loopback) connection.
    pub ledger_producer: Option<zos_types::crypto::PublicKey>,
    /// RMB relay WebSocket URLs.
    pub relay_urls: Vec<String>,
    /// Relay domains written into the node's twin; empty = the host[:port] of each relay URL.
    pub relay_domains: Vec<String>,
    /// Farm to register with.
    pub farm_id: u32,
    /// Persistent state directory (seed, engine store).
    pub data_dir: PathBuf,
    /// Directories the seed is mirrored to (one per storage pool). The key root may not be
    /// inside any of them.
    pub seed_mirrors: Vec<PathBuf>,
    /// The boot medium's directory (a real node's key root directory): one more identity
    /// copy, outside the pools, so losing every pool keeps the node id.
    pub boot_seed_dir: Option<PathBuf>,
    /// Where the key root comes from (default: `key-root` in the `data_dir` given to
    /// [`NodeConfig::new`]). Keep it off the data pools: see `docs/storage.md` §Threat model.
    pub key_root: crate::identity::KeyRootSource,
    /// Loopback address for `GET /metrics` (port 0 allowed); `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Twins allowed to call `zos.debug.*`.
    pub admin_twins: Vec<u32>,
    /// Full sync period (upstream: 1 h).
    pub sync_interval: Duration,
    /// Uptime report period (upstream: 40 min).
    pub uptime_interval: Duration,
    /// Registration re-check period (upstream: 24 h).
    pub registration_interval: Duration,
    /// Network consumption (NRU) report period (upstream: 1 h).
    pub nru_interval: Duration,
    /// PID 1's request file when the node runs under the zos image's PID 1 (`ZOS_INIT=1`;
    /// [`crate::init_request::from_env`]); `None` for a host process, which cannot reboot.
    pub init_request: Option<PathBuf>,
    /// The release version this node runs: what it registers on the ledger and answers to
    /// `zos.system.version` (the image's PID 1 passes the slot's version).
    pub version: String,
    /// Milestones of this run, shared with the embedder (the upgrader's health gate).
    pub progress: crate::progress::Progress,
}

impl NodeConfig {
    /// Defaults for everything but the addresses, farm and data directory.
    pub fn new(
        ledger_url: impl Into<String>,
        relay_url: impl Into<String>,
        farm_id: u32,
        data_dir: PathBuf,
    ) -> Self {
        NodeConfig {
            ledger_url: ledger_url.into(),
            ledger_cert: None,
            ledger_producer: None,
            relay_urls: vec![relay_url.into()],
            relay_domains: Vec::new(),
            farm_id,
            key_root: crate::identity::KeyRootSource::File(
                data_dir.join(crate::identity::KEY_ROOT_FILE),
            ),
            data_dir,
            seed_mirrors: Vec::new(),
            boot_seed_dir: None,
            metrics_listen: None,
            admin_twins: Vec::new(),
            sync_interval: Duration::from_secs(3600),
            uptime_interval: Duration::from_secs(40 * 60),
            registration_interval: Duration::from_secs(24 * 3600),
            nru_interval: Duration::from_secs(3600),
            init_request: crate::init_request::from_env(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            progress: crate::progress::Progress::default(),
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The engine store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The ledger URL is unusable.
    #[error("ledger client: {0}")]
    Ledger(String),
    /// The metrics endpoint could not bind.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// A long-running loop of the node.
#[async_trait]
pub trait Worker: Send + 'static {
    /// Name shown in diagnostics.
    fn name(&self) -> &'static str;
    /// Runs until `shutdown` turns true.
    async fn run(self: Box<Self>, shutdown: watch::Receiver<bool>);
}

struct EngineWorker(Engine);

#[async_trait]
impl Worker for EngineWorker {
    fn name(&self) -> &'static str {
        "engine"
    }
    async fn run(self: Box<Self>, shutdown: watch::Receiver<bool>) {
        self.0.run(wait(shutdown)).await;
    }
}

struct WatcherWorker {
    ledger: NodeLedger,
    engine: Engine,
    state: Arc<NodeState>,
    sync: Duration,
}

#[async_trait]
impl Worker for WatcherWorker {
    fn name(&self) -> &'static str {
        "watcher"
    }
    async fn run(self: Box<Self>, shutdown: watch::Receiver<bool>) {
        crate::watcher::run(self.ledger, self.engine, self.state, self.sync, shutdown).await;
    }
}

struct NruWorker {
    engine: Engine,
    every: Duration,
}

#[async_trait]
impl Worker for NruWorker {
    fn name(&self) -> &'static str {
        "nru"
    }
    async fn run(self: Box<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut meter = crate::engine::nru::NruMeter::default();
        // The first tick (now) takes the baseline.
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let sent = self.engine.report_consumption(&mut meter).await;
                    if !sent.is_empty() {
                        tracing::info!(contracts = sent.len(), "network consumption reported");
                    }
                }
            }
        }
    }
}

struct RegistrarWorker {
    ledger: NodeLedger,
    cfg: NodeConfig,
    registry: PrimitiveRegistry,
    relays: Vec<String>,
    e2e: String,
    public: zos_types::crypto::PublicKey,
    state: Arc<NodeState>,
}

#[async_trait]
impl Worker for RegistrarWorker {
    fn name(&self) -> &'static str {
        "registrar"
    }
    async fn run(self: Box<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut uptime = tokio::time::interval(self.cfg.uptime_interval);
        let mut recheck = tokio::time::interval(self.cfg.registration_interval);
        recheck.tick().await; // registration just ran at start
        // An uptime report the ledger did not get is retried every few seconds instead of
        // at the next interval: the ledger's "last seen" (and fair billing) then follows the
        // node as soon as the ledger is reachable again.
        let mut pending = false;
        let retry = UPTIME_RETRY.min(self.cfg.uptime_interval);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = uptime.tick() => pending = true,
                _ = tokio::time::sleep(retry), if pending => {}
                _ = recheck.tick() => {
                    let mut facts = registrar::discover(self.cfg.farm_id, &self.registry).await;
                    facts.version = self.cfg.version.clone();
                    let public = self.public;
                    match registrar::register(&self.ledger, &public, &self.relays, &self.e2e, &facts).await {
                        Ok(r) => self.state.farm_twin.store(r.farm_twin, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "registration re-check failed"),
                    }
                    continue;
                }
            }
            if pending {
                // A ledger that is gone keeps a send retrying for a while: never hold a stop.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    r = registrar::report_uptime(&self.ledger) => match r {
                        Ok(()) => pending = false,
                        Err(e) => tracing::warn!(error = %e, "uptime report failed; retrying"),
                    },
                }
            }
        }
    }
}

/// How soon a failed uptime report is sent again.
const UPTIME_RETRY: Duration = Duration::from_secs(10);

async fn wait(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn domain_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn spawn(
    w: Box<dyn Worker>,
    state: &Arc<NodeState>,
    rx: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let name = w.name();
    state.set_module(name, "running", "");
    let state = state.clone();
    let rx = rx.clone();
    tokio::spawn(async move {
        w.run(rx).await;
        state.set_module(name, "stopped", "");
        tracing::debug!(worker = name, "stopped");
    })
}

/// Opens the engine store `<data>/engine.redb`, owner-only (0600): it holds users'
/// deployments, secrets included (zdb namespace passwords, environment variables).
fn open_store(data_dir: &std::path::Path) -> Result<Store, NodeError> {
    let path = data_dir.join("engine.redb");
    let store = Store::open(&path)?;
    crate::identity::owner_only(&path, 0o600)?;
    Ok(store)
}

/// Runs a node until `shutdown` completes. Registration is retried until it succeeds (a node
/// whose farm does not exist idles and logs why); the API is served once the node is known.
pub async fn run_node(
    cfg: NodeConfig,
    registry: PrimitiveRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let keys = crate::identity::load_node_keys_with_boot(
        &cfg.data_dir,
        &cfg.seed_mirrors,
        cfg.boot_seed_dir.as_deref(),
        &cfg.key_root,
    )?;
    let key = keys.key;
    tracing::info!(public = %key.public(), "node identity loaded");
    let store = open_store(&cfg.data_dir)?;
    let mut trust = zos_ledger::Trust {
        producer: cfg.ledger_producer,
        ..Default::default()
    };
    if let Some(cert) = &cfg.ledger_cert {
        trust = trust
            .with_cert_file(cert)
            .map_err(|e| NodeError::Ledger(e.to_string()))?;
    }
    let client = LedgerClient::with_trust(&cfg.ledger_url, trust)
        .map_err(|e| NodeError::Ledger(e.to_string()))?;
    let ledger = NodeLedger::new(client.clone(), key.clone());
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::new(
        store,
        Arc::new(ledger.clone()),
        registry.clone(),
        keys.secret,
        EngineConfig {
            host: HostCapacity::discover(),
        },
        metrics,
    )?;
    let state = Arc::new(NodeState {
        farm_id: cfg.farm_id,
        admin_twins: cfg.admin_twins.clone(),
        init_request: cfg.init_request.clone(),
        version: cfg.version.clone(),
        progress: cfg.progress.clone(),
        ..NodeState::default()
    });
    let relays: Vec<String> = if cfg.relay_domains.is_empty() {
        cfg.relay_urls.iter().map(|u| domain_of(u)).collect()
    } else {
        cfg.relay_domains.clone()
    };
    let e2e = hex::encode(zos_rmb::e2e_public_key(key.seed()));

    // Registration: retried until it works or we are told to stop.
    let mut backoff = Duration::from_millis(200);
    let reg = loop {
        let mut facts = registrar::discover(cfg.farm_id, &registry).await;
        facts.version = cfg.version.clone();
        match registrar::register(&ledger, &key.public(), &relays, &e2e, &facts).await {
            Ok(r) => break r,
            Err(e) => {
                let idle = matches!(e, RegistrarError::NoFarm(_));
                state.set_module("registrar", "error", e.to_string());
                if idle {
                    tracing::warn!(error = %e, "node idles: no farm");
                } else {
                    tracing::warn!(error = %e, "registration failed; retrying");
                }
                tokio::select! {
                    _ = wait(stop_rx.clone()) => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    engine.set_node_id(reg.node_id);
    // The public config stored while the node was down applies before reconciliation.
    let public = reg
        .public_config
        .as_ref()
        .map(crate::watcher::public_config_json);
    *state.public_config.write().expect("public config lock") = public.clone();
    registry.public_config_changed(public.as_ref()).await;
    state.twin_id.store(reg.twin_id, Ordering::Relaxed);
    state.farm_twin.store(reg.farm_twin, Ordering::Relaxed);
    *state.maintenance.write().expect("maintenance lock") = reg
        .maintenance
        .map(|m| serde_json::json!({ "pause": m.pause, "since": m.since }));
    tracing::info!(
        node = reg.node_id,
        twin = reg.twin_id,
        farm = cfg.farm_id,
        "node registered"
    );
    cfg.progress
        .registered(reg.node_id, reg.twin_id, ledger.clone());

    let n = engine.reconcile_all().map_err(|e| match e {
        crate::engine::EngineError::Store(s) => NodeError::Store(s),
        other => NodeError::Ledger(other.to_string()),
    })?;
    tracing::info!(deployments = n, "reconciliation queued");
    // The first pass is done once the queue (those jobs and any queued before) drained.
    let (eng, progress, stop) = (engine.clone(), cfg.progress.clone(), stop_rx.clone());
    let reconciled = tokio::spawn(async move {
        while eng.queued_jobs() > 0 {
            tokio::select! {
                _ = wait(stop.clone()) => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!("first reconcile pass done");
        progress.reconciled();
    });

    let mut tasks = vec![
        spawn(Box::new(EngineWorker(engine.clone())), &state, &stop_rx),
        spawn(
            Box::new(WatcherWorker {
                ledger: ledger.clone(),
                engine: engine.clone(),
                state: state.clone(),
                sync: cfg.sync_interval,
            }),
            &state,
            &stop_rx,
        ),
        spawn(
            Box::new(NruWorker {
                engine: engine.clone(),
                every: cfg.nru_interval,
            }),
            &state,
            &stop_rx,
        ),
        spawn(
            Box::new(RegistrarWorker {
                ledger: ledger.clone(),
                cfg: cfg.clone(),
                registry: registry.clone(),
                relays: relays.clone(),
                e2e: e2e.clone(),
                public: key.public(),
                state: state.clone(),
            }),
            &state,
            &stop_rx,
        ),
    ];
    if let Some(addr) = cfg.metrics_listen {
        let listener = crate::metrics::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics endpoint");
        tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            engine.clone(),
            wait(stop_rx.clone()),
        )));
    }

    // The API over RMB.
    let api = Api::new(engine.clone(), state.clone());
    let dir: Arc<dyn zos_rmb::TwinDirectory> = Arc::new(zos_rmb::CachedDirectory::new(
        zos_rmb::LedgerDirectory::new(client),
        Duration::from_secs(30),
    ));
    let peer_cfg = zos_rmb::PeerConfig {
        relays: cfg.relay_urls.clone(),
        twin_id: reg.twin_id,
        key: key.clone(),
        session: None,
    };
    let mut backoff = Duration::from_millis(200);
    let peer = loop {
        // The receiver's replay cache lives with the node's state, so a restart does not
        // reopen the window for captured requests.
        match zos_rmb::Peer::connect_with_replay_file(
            peer_cfg.clone(),
            dir.clone(),
            Some(cfg.data_dir.join("rmb-replay")),
        )
        .await
        {
            Ok(p) => break Some(p),
            Err(e) => {
                state.set_module("api", "error", e.to_string());
                tracing::warn!(error = %e, "cannot connect to the relay; retrying");
                tokio::select! {
                    _ = wait(stop_rx.clone()) => break None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut health_task = None;
    if let Some(peer) = &peer {
        peer.serve(api.router());
        state.set_module("api", "running", "");
        tracing::info!(twin = reg.twin_id, "node API served over RMB");
        // The API answering a client through the relay (not a direct call): what a release on
        // trial must show before it is kept.
        let (p, progress, stop, twin) = (
            peer.clone(),
            cfg.progress.clone(),
            stop_rx.clone(),
            reg.twin_id,
        );
        tasks.push(tokio::spawn(async move {
            let mut tries = 0u32;
            loop {
                tries += 1;
                let r = p
                    .call(
                        twin,
                        "zos.system.version",
                        &serde_json::Value::Null,
                        Duration::from_secs(10),
                    )
                    .await;
                match r.map(|v| v["zos"].as_str().map(str::to_string)) {
                    Ok(Some(v)) => return progress.api_answered(v),
                    Ok(None) => tracing::warn!("zos.system.version answered without a version"),
                    // Said now and then: a release on trial waits for this answer.
                    Err(e) if tries % 5 == 1 => {
                        tracing::warn!(error = %e, tries, "the node API does not answer over the relay yet")
                    }
                    Err(e) => tracing::debug!(error = %e, "the node API does not answer yet"),
                }
                tokio::select! {
                    _ = wait(stop.clone()) => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }));
        // The self-check every 15 s: relay links, then the metrics' health gauge.
        let (peer, api, state, stop) = (peer.clone(), api.clone(), state.clone(), stop_rx.clone());
        health_task = Some(tokio::spawn(async move {
            loop {
                state
                    .relay_links
                    .store(peer.connected(), std::sync::atomic::Ordering::Relaxed);
                let h = api.health().await;
                if !h.reasons.is_empty() {
                    tracing::debug!(reasons = ?h.reasons, "self-check degraded");
                }
                tokio::select! {
                    _ = wait(stop.clone()) => break,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                }
            }
        }));
    }
    wait(stop_rx.clone()).await;
    if let Some(t) = health_task {
        let _ = t.await;
    }
    if let Some(peer) = peer {
        peer.close();
    }
    drop(api);
    let _ = reconciled.await;
    for t in tasks {
        let _ = t.await;
    }
    // The peer's link and request tasks hold the API router (and so the engine and its store)
    // until they notice the close. Returning before they let go would leave the database open,
    // and a restart in the same process would fail with "already open".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.handle_count() > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if engine.handle_count() > 1 {
        tracing::warn!(
            handles = engine.handle_count(),
            "engine still referenced at stop"
        );
    }
    tracing::info!("node stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_domain_is_host_and_port() {
        assert_eq!(domain_of("ws://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(domain_of("wss://relay.grid.tf"), "relay.grid.tf");
        assert_eq!(domain_of("relay.local"), "relay.local");
    }

    #[test]
    fn engine_store_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().expect("tempdir");
        let store = open_store(d.path()).expect("store");
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
        };
        let path = d.path().join("engine.redb");
        assert_eq!(mode(&path), 0o600);
        drop(store);
        // A store left readable by an older version is narrowed on the next open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _store = open_store(d.path()).expect("reopen");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn key_root_defaults_to_the_data_dir_given() {
        let cfg = NodeConfig::new("http://l", "ws://r", 1, PathBuf::from("/var/lib/zos"));
        assert_eq!(
            cfg.key_root,
            crate::identity::KeyRootSource::File(PathBuf::from("/var/lib/zos/key-root"))
        );
    }
}
