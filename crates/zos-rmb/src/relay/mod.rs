//! The relay: authenticates sessions, routes envelopes by destination, queues for offline
//! twins, forwards to federated relays and serves `/metrics`.
//!
//! The relay never decrypts: it reads the routing header only. For a peer session it checks
//! that `envelope.source` is the logged-in twin and session (no crypto needed: the login
//! proved the key). For a federation link it verifies every envelope's signature against the
//! source twin's ledger key, because the link may carry any source.

mod federation;
pub(crate) mod guard;
mod session;
mod switch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State as AxState, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use zos_types::crypto::KeyPair;

use crate::directory::{TwinDirectory, lock, relay_domain, same_host};
use crate::envelope::{Envelope, Header, unix_now};
use crate::frame::{Bounce, BounceCode, Frame, Role};
use crate::limits::{Exceeded, Limits, RateLimiter};
use crate::metrics::{Gauges, RelayMetrics};
use crate::replay::{Refused, SeenIds};
use crate::tls::{RelayTls, TlsError, TlsListener};
use federation::Federation;
use guard::{ConnInfo, Guard, GuardedListener};
use switch::{Delivery, SessionTx, Switch};

/// A relay's own twin: used to log in to other relays for federation.
#[derive(Debug, Clone)]
pub struct RelayIdentity {
    /// The relay's twin id on the ledger.
    pub twin: u32,
    /// The key of that twin.
    pub key: KeyPair,
}

/// Relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on (port 0 picks one; read it back with [`Relay::local_addr`]).
    pub listen: SocketAddr,
    /// This relay's domain: twins whose ledger record lists it (or lists no relay) are local.
    pub domain: String,
    /// Other relays by domain → WebSocket URL (`ws://…` or `wss://…`).
    pub federation: HashMap<String, String>,
    /// Per-twin limits.
    pub limits: Limits,
    /// The relay's twin for outgoing federation links; without it the relay does not forward.
    pub identity: Option<RelayIdentity>,
    /// Serve `wss://` with this certificate and key; `None` serves plain `ws://`.
    pub tls: Option<RelayTls>,
    /// Twins allowed to log in as federation links (other relays' twins). Nobody else may:
    /// a federation link may carry envelopes of any source.
    pub federation_peers: Vec<u32>,
    /// URLs (or `host[:port]`) clients use to reach this relay, besides its domain and listen
    /// address (a proxy's name, say). A login signed for any other host is refused.
    pub public_urls: Vec<String>,
}

impl RelayConfig {
    /// A relay on `listen` for `domain` with default limits and no federation.
    pub fn new(listen: SocketAddr, domain: impl Into<String>) -> Self {
        RelayConfig {
            listen,
            domain: domain.into(),
            federation: HashMap::new(),
            limits: Limits::default(),
            identity: None,
            tls: None,
            federation_peers: Vec::new(),
            public_urls: Vec::new(),
        }
    }
}

/// Relay failures.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("relay server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The configuration is unusable.
    #[error("invalid relay config: {0}")]
    Config(String),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Shared state of a running relay.
pub(crate) struct State {
    domain: String,
    /// `host[:port]` names a login may be signed for (see [`RelayConfig::public_urls`]).
    hosts: Vec<String>,
    limits: Limits,
    dir: Arc<dyn TwinDirectory>,
    switch: Arc<Switch>,
    limiter: Mutex<RateLimiter>,
    /// Budgets of federation links, by the link's twin.
    link_limiter: Mutex<RateLimiter>,
    federation_peers: HashSet<u32>,
    /// The `(source, id)` duplicate filter.
    seen: Mutex<SeenIds>,
    guard: Arc<Guard>,
    metrics: Arc<RelayMetrics>,
    federation: Federation,
    shutdown: watch::Receiver<bool>,
    /// Each session task holds a clone; `run` waits until all are dropped.
    alive: mpsc::Sender<()>,
}

/// A bound relay.
pub struct Relay {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    alive_rx: mpsc::Receiver<()>,
}

impl Relay {
    /// Binds the listen address.
    pub async fn bind(cfg: RelayConfig, dir: Arc<dyn TwinDirectory>) -> Result<Self, RelayError> {
        if cfg.domain.is_empty() || cfg.domain.len() > crate::frame::MAX_DOMAIN {
            return Err(RelayError::Config(format!(
                "domain must be 1..=255 bytes, got {:?}",
                cfg.domain
            )));
        }
        if cfg.limits.max_envelope_bytes > crate::envelope::MAX_SEALED + 1024 {
            return Err(RelayError::Config(format!(
                "max_envelope_bytes {} above the protocol maximum {}",
                cfg.limits.max_envelope_bytes,
                crate::envelope::MAX_SEALED
            )));
        }
        for (d, url) in &cfg.federation {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(RelayError::Config(format!(
                    "federation URL for {d} must be ws:// or wss://, got {url}"
                )));
            }
        }
        let tls = cfg
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RelayError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let mut hosts = vec![relay_domain(&cfg.domain).to_owned(), local.to_string()];
        hosts.extend(cfg.public_urls.iter().map(|u| relay_domain(u).to_owned()));
        if local.ip().is_loopback() || local.ip().is_unspecified() {
            let port = local.port();
            hosts.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        let (stop, shutdown) = watch::channel(false);
        let (alive, alive_rx) = mpsc::channel(1);
        let metrics = Arc::new(RelayMetrics::default());
        let switch = Arc::new(Switch::new(cfg.limits.clone()));
        let federation = Federation::new(
            cfg.federation,
            cfg.identity,
            &cfg.limits,
            switch.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let state = Arc::new(State {
            domain: cfg.domain.clone(),
            hosts,
            limits: cfg.limits.clone(),
            dir,
            switch,
            limiter: Mutex::new(RateLimiter::new(cfg.limits.clone())),
            link_limiter: Mutex::new(RateLimiter::scaled(
                &cfg.limits,
                cfg.limits.federation_rate_factor,
            )),
            federation_peers: cfg.federation_peers.iter().copied().collect(),
            seen: Mutex::new(SeenIds::new(cfg.limits.ids_per_twin, cfg.limits.ids_total)),
            guard: Guard::new(cfg.limits.clone(), metrics.clone()),
            metrics,
            federation,
            shutdown,
            alive,
        });
        Ok(Relay {
            listener,
            tls,
            state,
            stop,
            alive_rx,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The relay's counters (also served at `/metrics`).
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then closes every session and link and returns once
    /// they are gone (so the port is free for a restart).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RelayError> {
        let Relay {
            listener,
            tls,
            state,
            stop,
            mut alive_rx,
        } = self;
        let app = Router::new()
            .route("/", get(ws_handler))
            .route("/metrics", get(metrics_handler))
            .with_state(state.clone());
        let sweeper = tokio::spawn(sweep_loop(state.clone()));
        let stop = Arc::new(stop);
        let stop2 = stop.clone();
        let signal = async move {
            shutdown.await;
            let _ = stop2.send(true);
        };
        let listener = GuardedListener::new(listener, state.guard.clone());
        let app = app.into_make_service_with_connect_info::<ConnInfo>();
        let served = match tls {
            Some(cfg) => {
                let listener = TlsListener::new(listener, cfg).map_err(RelayError::Serve)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
            }
        };
        // Sessions and links stop even if serve returned on its own (an I/O error).
        let _ = stop.send(true);
        sweeper.abort();
        state.switch.close_all();
        state.federation.stop();
        drop(state);
        // Sessions each hold an `alive` sender; once all are gone, recv() yields None.
        let _ = tokio::time::timeout(Duration::from_secs(10), alive_rx.recv()).await;
        served.map_err(RelayError::Serve)
    }
}

async fn sweep_loop(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = unix_now();
        lock(&state.seen).expire(now);
        let n = state.switch.sweep(now);
        if n > 0 {
            tracing::debug!(dropped = n, "expired queued envelopes");
        }
    }
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    ConnectInfo(ConnInfo(conn)): ConnectInfo<ConnInfo>,
    AxState(state): AxState<Arc<State>>,
) -> impl IntoResponse {
    // The socket accepts a little more than this relay's envelope limit, so that a slightly
    // larger envelope is bounced with a reason; far larger messages close the connection
    // (they would otherwise be held in memory in full before being refused).
    let max = (state.limits.max_envelope_bytes + 64 * 1024).min(crate::peer::MAX_MESSAGE);
    // A read buffer of the allowance keeps what a connection holds uncounted small.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(state.limits.frame_allowance.clamp(4096, 128 * 1024))
        .on_upgrade(move |socket| session::run(state, socket, conn))
}

async fn metrics_handler(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let (sessions, queued_messages, queued_bytes) = state.switch.gauges();
    let text = state.metrics.render(Gauges {
        sessions,
        queued_messages,
        queued_bytes,
        federation_links: state.federation.links_up(),
        connections: state.guard.open(),
        frame_bytes: state.guard.frame_bytes(),
        banned_addresses: state.guard.banned_addresses(),
        seen_ids: lock(&state.seen).len(),
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Who sent an envelope into this relay.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub role: Role,
    pub twin: u32,
    pub session: Option<String>,
}

impl State {
    /// Accepts one envelope frame from `origin`, or says why not (to bounce to the sender).
    pub(crate) async fn accept(&self, origin: &Origin, env_bytes: Bytes) -> Result<(), Bounce> {
        let received = Instant::now();
        self.metrics
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .bytes_in
            .fetch_add(env_bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let header = match Envelope::decode_header(&env_bytes) {
            Ok(h) => h,
            Err(e) => {
                return Err(self.bounce_for(
                    [0; 16],
                    crate::envelope::Address {
                        twin: origin.twin,
                        session: origin.session.clone(),
                    },
                    BounceCode::Malformed,
                    format!("envelope header: {e}"),
                ));
            }
        };
        let fail = |code, msg: String| self.bounce_for(header.id, header.source.clone(), code, msg);
        if env_bytes.len() > self.limits.max_envelope_bytes {
            return Err(fail(
                BounceCode::TooLarge,
                format!(
                    "envelope is {} bytes, this relay accepts at most {}",
                    env_bytes.len(),
                    self.limits.max_envelope_bytes
                ),
            ));
        }
        if origin.role == Role::Peer
            && (header.source.twin != origin.twin || header.source.session != origin.session)
        {
            return Err(fail(
                BounceCode::ForgedSource,
                format!(
                    "envelope source {} is not the logged-in session {}",
                    header.source,
                    crate::envelope::Address {
                        twin: origin.twin,
                        session: origin.session.clone()
                    }
                ),
            ));
        }
        let now = unix_now();
        if let Err(why) = header.check_time(now) {
            return Err(fail(BounceCode::Expired, format!("envelope {why}")));
        }
        if header.ttl > self.limits.max_ttl {
            return Err(fail(
                BounceCode::Expired,
                format!(
                    "ttl {} s is above this relay's maximum of {} s",
                    header.ttl, self.limits.max_ttl
                ),
            ));
        }
        // Duplicates go before any budget is charged: a replayed envelope costs its source
        // nothing. Dropped silently: a bounce carrying the id could fail the sender's call.
        if lock(&self.seen).contains(header.source.twin, &header.id, now) {
            self.duplicate(&header);
            return Ok(());
        }
        // A federation link is charged for what it carries (it vouches for nothing: every
        // envelope's signature is checked below), so a link replaying or flooding cannot use
        // up a twin's budget. Charged before the signature check, which may need a lookup.
        let limited = match origin.role {
            Role::Peer => lock(&self.limiter).take(header.source.twin, env_bytes.len(), received),
            Role::Federation => {
                lock(&self.link_limiter).take(origin.twin, env_bytes.len(), received)
            }
        };
        if let Err(which) = limited {
            let factor = match origin.role {
                Role::Peer => 1.0,
                Role::Federation => self.limits.federation_rate_factor,
            };
            let what = match which {
                Exceeded::Messages => {
                    format!("{} messages/s", self.limits.messages_per_sec * factor)
                }
                Exceeded::Bytes => format!("{} bytes/s", self.limits.bytes_per_sec * factor),
            };
            let who = match origin.role {
                Role::Peer => format!("twin {}", header.source.twin),
                Role::Federation => format!("federation link of twin {}", origin.twin),
            };
            return Err(fail(
                BounceCode::RateLimited,
                format!("{who} exceeded its rate of {what}"),
            ));
        }
        if origin.role == Role::Federation {
            self.verify_federated(&header, &env_bytes)
                .await
                .map_err(|m| fail(BounceCode::BadSignature, m))?;
        }
        // Recorded only once the source is authenticated (session or signature), so forged
        // envelopes cannot claim a genuine twin's ids.
        let recorded =
            lock(&self.seen).insert(header.source.twin, header.id, header.expires_at(), now);
        match recorded {
            Ok(()) => {}
            Err(Refused::Replay) => {
                self.duplicate(&header);
                return Ok(());
            }
            Err(Refused::SenderFull | Refused::Full) => {
                return Err(fail(
                    BounceCode::RateLimited,
                    format!(
                        "twin {} has too many envelopes in flight on this relay",
                        header.source.twin
                    ),
                ));
            }
        }
        self.route(&header, env_bytes, origin.role, received)
            .await
            .map_err(|(code, msg)| fail(code, msg))
    }

    fn duplicate(&self, header: &Header) {
        self.metrics
            .duplicates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(source = %header.source, "dropped duplicate envelope");
    }

    async fn verify_federated(&self, header: &Header, env_bytes: &Bytes) -> Result<(), String> {
        let env = Envelope::decode(env_bytes).map_err(|e| format!("envelope: {e}"))?;
        let twin = header.source.twin;
        for attempt in 0..2 {
            let rec = self
                .dir
                .twin(twin)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("source twin {twin} is unknown"))?;
            if env.verify(&rec.account) {
                return Ok(());
            }
            // Retry with a fresh record (the key may have rotated) only if the directory
            // allows a refresh now: at most one lookup per twin per interval.
            if attempt == 0 && !self.dir.invalidate(twin) {
                break;
            }
        }
        Err(format!("signature of source twin {twin} does not verify"))
    }

    /// True if a client that dialed `host` reached this relay.
    pub(crate) fn is_own_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| same_host(h, host))
    }

    async fn route(
        &self,
        header: &Header,
        env_bytes: Bytes,
        role: Role,
        received: Instant,
    ) -> Result<(), (BounceCode, String)> {
        let dst = header.destination.twin;
        let rec = match self.dir.twin(dst).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err((BounceCode::NoRoute, format!("twin {dst} does not exist"))),
            Err(e) => return Err((BounceCode::NoRoute, e.to_string())),
        };
        let frame = Frame::Envelope(env_bytes)
            .encode()
            .map_err(|e| (BounceCode::Malformed, e.to_string()))?;
        if rec.relays.is_empty()
            || rec
                .relays
                .iter()
                .any(|r| relay_domain(r) == relay_domain(&self.domain))
        {
            let d = self.switch.deliver(header, frame, received)?;
            if d == Delivery::Queued {
                self.metrics
                    .queued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(());
        }
        if role == Role::Federation {
            // One hop only: a federated envelope for a twin that is not ours is not forwarded
            // again (no loops, no amplification).
            return Err((
                BounceCode::NoRoute,
                format!(
                    "twin {dst} is on {:?}, not on relay {}",
                    rec.relays, self.domain
                ),
            ));
        }
        self.federation
            .forward(&rec.relays, header, frame)
            .map_err(|m| (BounceCode::Federation, m))?;
        self.metrics
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn bounce_for(
        &self,
        id: crate::envelope::MessageId,
        source: crate::envelope::Address,
        code: BounceCode,
        message: String,
    ) -> Bounce {
        self.metrics.bounce(code);
        tracing::debug!(source = %source, ?code, %message, "bounced envelope");
        Bounce {
            id,
            source,
            code,
            message,
        }
    }

    pub(crate) fn register(&self, twin: u32, session: Option<String>, tx: SessionTx) -> u64 {
        let (conn, drained) = self.switch.register(twin, session, tx, unix_now());
        if drained > 0 {
            tracing::debug!(twin, drained, "delivered queued envelopes on login");
        }
        conn
    }
}
