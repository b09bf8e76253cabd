//! The running overlay node: TCP peer links, the TUN device, the data path (encrypt, forward,
//! decrypt) and the timers, around the pure [`Router`].
//!
//! Locks are `std::sync::Mutex`es held only for table work, never across an `.await`.
//! Frames to a peer go through a bounded channel to its writer task, which coalesces up to 50
//! ready frames per flush like upstream's `peer.rs`; a full channel drops data frames (a
//! congested link behaves like a lossy one) rather than stalling every other link.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::crypto::{AES_OVERHEAD, SecretKey};
use crate::discovery;
use crate::packet::{
    self, DATA_HEADER_LEN, DataPacket, HEADER_LEN, Packet, USER_HEADER_LEN, USER_TYPE_L3,
};
use crate::quic;
use crate::replay::ReplayWindow;
use crate::router::{Lookup, Output, PeerId, Router, Timers};
use crate::subnet::{GLOBAL_SUBNET, Subnet};

/// TUN MTU, as upstream.
pub const TUN_MTU: u16 = 1400;
/// Static peers are redialed this often when not connected.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// Packets waiting for a route are kept this long (then dropped; upstream answers ICMP).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many packets wait per destination /64.
pub const PENDING_MAX: usize = 1000;
/// Frames queued per link.
const LINK_QUEUE: usize = 1024;
/// Frames written per flush.
const COALESCE: usize = 50;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A peer endpoint string is not `tcp://ip:port` or `quic://ip:port`.
    #[error(
        "bad peer endpoint {0:?}: expected tcp://<ip>:<port> or quic://<ip>:<port> (IPv6 in brackets)"
    )]
    BadEndpoint(String),
    /// Binding a listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// QUIC could not be set up.
    #[error(transparent)]
    Quic(#[from] quic::QuicError),
    /// Creating or configuring the TUN failed.
    #[error("TUN {name}: {message}")]
    Tun {
        /// Interface name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// A link transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Plain TCP.
    Tcp,
    /// QUIC (control on a stream, data as DATAGRAMs).
    Quic,
}

impl Proto {
    /// Upstream's lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Quic => "quic",
        }
    }
}

/// A peer endpoint, `tcp://ip:port` or `quic://ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Transport.
    pub proto: Proto,
    /// Address (IPv6 link-local ones carry their scope).
    pub addr: SocketAddr,
}

impl Endpoint {
    /// A TCP endpoint.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            proto: Proto::Tcp,
            addr,
        }
    }

    /// As upstream's API shows it (v0.7.6+): `{"proto", "addr": {"socket"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"proto": self.proto.name(), "addr": {"socket": self.addr.to_string()}})
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.proto.name(), self.addr)
    }
}

/// Parses `tcp://ip:port` or `quic://ip:port` (IPv6 in brackets, case-insensitive protocol).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, NodeError> {
    let (proto, rest) = s
        .split_once("://")
        .ok_or_else(|| NodeError::BadEndpoint(s.into()))?;
    let proto = if proto.eq_ignore_ascii_case("tcp") {
        Proto::Tcp
    } else if proto.eq_ignore_ascii_case("quic") {
        Proto::Quic
    } else {
        return Err(NodeError::BadEndpoint(s.into()));
    };
    let addr = rest.parse().map_err(|_| NodeError::BadEndpoint(s.into()))?;
    Ok(Endpoint { proto, addr })
}

/// How a node is configured (upstream's daemon flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The node key.
    pub key: SecretKey,
    /// Static peers.
    pub peers: Vec<Endpoint>,
    /// TCP listen address (upstream: `[::]:9651`).
    pub tcp_listen: SocketAddr,
    /// QUIC (UDP) listen address (upstream: `[::]:9651`); `None` = `--disable-quic`.
    pub quic_listen: Option<SocketAddr>,
    /// TUN interface name; `None` = `--no-tun` (routing only).
    pub tun_name: Option<String>,
    /// Every timer divided by this (1 = upstream's); tests only, see [`Timers::divided`].
    pub timer_divisor: u32,
    /// Link-local discovery (upstream: on, port 9650); `None` = `--disable-peer-discovery`.
    pub discovery: Option<DiscoveryConfig>,
}

/// Link-local discovery settings (upstream's `--peer-discovery-port`,
/// `--peer-discovery-interface`).
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP port of the beacons.
    pub port: u16,
    /// Only these interfaces (all usable ones if empty).
    pub interfaces: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            port: discovery::DISCOVERY_PORT,
            interfaces: Vec::new(),
        }
    }
}

/// Peer kinds as the API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerKind {
    /// Configured.
    Static,
    /// Accepted connection.
    Inbound,
    /// Found by a link-local beacon.
    LinkLocalDiscovery,
}

/// Discovered peers are forgotten after this many failed connects in a row.
const DISCOVERED_MAX_FAILURES: u32 = 3;

struct Link {
    tx: mpsc::Sender<Bytes>,
    remote: Endpoint,
    kind: PeerKind,
    rx_bytes: Arc<AtomicU64>,
    tx_bytes: Arc<AtomicU64>,
    abort: Vec<AbortHandle>,
}

struct StaticPeer {
    addr: Endpoint,
    kind: PeerKind,
    task: AbortHandle,
    link: Option<PeerId>,
    discovered: Instant,
    last_connected: Option<SystemTime>,
}

enum Pending {
    /// An IPv6 packet from our TUN, not yet encrypted.
    Tx(Bytes),
    /// A packet to forward.
    Fwd(DataPacket),
    /// A packet for us from a source we have no key for yet.
    Rx(DataPacket),
}

struct PendingQueue {
    since: Instant,
    items: Vec<Pending>,
}

/// Data-path counters (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the TUN and sent encrypted.
    pub tun_rx: AtomicU64,
    /// Packets decrypted and written to the TUN.
    pub tun_tx: AtomicU64,
    /// Packets forwarded for others.
    pub forwarded: AtomicU64,
    /// Packets dropped: no route in time, or the route is unusable.
    pub no_route: AtomicU64,
    /// Packets dropped: decryption failed.
    pub undecryptable: AtomicU64,
    /// Packets dropped: replayed nonce.
    pub replayed: AtomicU64,
    /// Frames dropped: a link's or the TUN's queue was full.
    pub queue_full: AtomicU64,
    /// Packets dropped: hop limit reached.
    pub hop_limit: AtomicU64,
    /// Data packets sent as QUIC DATAGRAMs.
    pub quic_datagrams: AtomicU64,
    /// Data packets sent on a QUIC stream (larger than the path's datagram size).
    pub quic_stream_data: AtomicU64,
}

/// A live link's health (for `/metrics`).
#[derive(Debug, Clone)]
pub struct LinkHealth {
    /// `proto://remote`.
    pub endpoint: String,
    /// How the link came to be.
    pub kind: PeerKind,
    /// Smoothed RTT cost + transport cost (the router's metric for the link).
    pub link_cost: u16,
    /// Time since the last IHU (dead at the dead-peer timeout).
    pub ihu_age: Duration,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Shared state of a running node.
pub struct Inner {
    router: Mutex<Router>,
    links: Mutex<HashMap<PeerId, Link>>,
    statics: Mutex<Vec<StaticPeer>>,
    pending: Mutex<HashMap<Subnet, PendingQueue>>,
    replay: Mutex<ReplayWindow>,
    next_id: AtomicU64,
    tun_tx: Option<mpsc::Sender<BytesMut>>,
    start_time: u64,
    /// Data-path counters.
    pub counters: Counters,
    /// The QUIC endpoint (listener and dialer), if QUIC is on.
    quic: Option<quinn::Endpoint>,
    /// Static peer redial period ([`RECONNECT_INTERVAL`] unless divided).
    reconnect: Duration,
    /// How long packets wait for a route ([`PENDING_TIMEOUT`] unless divided).
    pending_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a table lock leaves consistent-enough routing state; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running node; dropping it does not stop it (call [`Node::shutdown`]).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Node {
    /// Starts the node: listener, TUN (if any), static peers, timers. Needs a tokio runtime.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        let now = Instant::now();
        let rnd: [u8; 6] = rand::random();
        let pk = cfg.key.public_key();
        let tun = match &cfg.tun_name {
            Some(name) => Some(Arc::new(open_tun(name, pk.address()).await?)),
            None => None,
        };
        let (tun_tx, tun_rx) = mpsc::channel::<BytesMut>(LINK_QUEUE * 4);
        let listener =
            TcpListener::bind(cfg.tcp_listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: cfg.tcp_listen,
                    source,
                })?;
        let tcp_port = listener
            .local_addr()
            .map_or(cfg.tcp_listen.port(), |a| a.port());
        let rid = crate::packet::RouterId::new(pk, rnd);
        let quic = match cfg.quic_listen {
            Some(a) => Some(quic::endpoint(a, &rid.to_string())?),
            None => None,
        };
        let inner = Arc::new(Inner {
            router: Mutex::new(Router::with_timers(
                cfg.key.clone(),
                rnd,
                Timers::divided(cfg.timer_divisor),
                now,
            )),
            links: Mutex::new(HashMap::new()),
            statics: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            replay: Mutex::new(ReplayWindow::default()),
            next_id: AtomicU64::new(1),
            tun_tx: tun.is_some().then_some(tun_tx),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            counters: Counters::default(),
            quic: quic.clone(),
            reconnect: RECONNECT_INTERVAL / cfg.timer_divisor.max(1),
            pending_timeout: PENDING_TIMEOUT / cfg.timer_divisor.max(1),
        });
        tracing::info!(address = %pk.address(), subnet = %pk.subnet(), pubkey = %pk, "mycelium node starting");
        let node = Node {
            inner: inner.clone(),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let mut tasks = vec![
            tokio::spawn(accept_loop(inner.clone(), listener)).abort_handle(),
            tokio::spawn(timer_loop(inner.clone())).abort_handle(),
        ];
        if let Some(q) = quic {
            tasks.push(tokio::spawn(quic_accept_loop(inner.clone(), q)).abort_handle());
        }
        if let Some(d) = cfg.discovery {
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, d.port));
            let sock = discovery::bind(d.port)
                .await
                .map_err(|source| NodeError::Listen { addr, source })?;
            let period = discovery::BEACON_INTERVAL / cfg.timer_divisor.max(1);
            tasks.push(
                tokio::spawn(discovery_loop(inner.clone(), sock, d, tcp_port, period))
                    .abort_handle(),
            );
        }
        if let Some(t) = tun {
            tasks.push(tokio::spawn(tun_loop(inner.clone(), t.clone())).abort_handle());
            tasks.push(tokio::spawn(tun_write_loop(t, tun_rx)).abort_handle());
        }
        lock(&node.tasks).extend(tasks);
        for p in cfg.peers {
            node.add_static_peer(p);
        }
        Ok(node)
    }

    /// Shared state (for the HTTP API).
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Adds a static peer; `false` if it exists.
    pub fn add_static_peer(&self, addr: Endpoint) -> bool {
        self.inner.add_static_peer(addr)
    }

    /// Removes a static peer and closes its link; `false` if unknown.
    pub fn remove_static_peer(&self, addr: Endpoint) -> bool {
        self.inner.remove_static_peer(addr)
    }

    /// Stops every task of the node.
    pub fn shutdown(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        for s in lock(&self.inner.statics).drain(..) {
            s.task.abort();
        }
        for (_, l) in lock(&self.inner.links).drain() {
            for a in l.abort {
                a.abort();
            }
        }
        if let Some(q) = &self.inner.quic {
            q.close(0u8.into(), b"shutdown");
        }
    }
}

impl Inner {
    /// The router (for views).
    pub fn router(&self) -> MutexGuard<'_, Router> {
        lock(&self.router)
    }

    /// Unix time the node started.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    fn add_static_peer(self: &Arc<Self>, addr: Endpoint) -> bool {
        self.add_dialed_peer(addr, PeerKind::Static)
    }

    /// A peer found by a beacon: dialed unless it is known or already linked to us.
    fn add_discovered_peer(self: &Arc<Self>, addr: Endpoint) {
        let linked = lock(&self.links)
            .values()
            .any(|l| same_host(&l.remote.addr, &addr.addr));
        if !linked && self.add_dialed_peer(addr, PeerKind::LinkLocalDiscovery) {
            tracing::info!(%addr, "peer discovered on the link");
        }
    }

    fn add_dialed_peer(self: &Arc<Self>, addr: Endpoint, kind: PeerKind) -> bool {
        let mut statics = lock(&self.statics);
        if statics.iter().any(|s| s.addr == addr) {
            return false;
        }
        let task = tokio::spawn(static_peer_loop(self.clone(), addr, kind)).abort_handle();
        statics.push(StaticPeer {
            addr,
            kind,
            task,
            link: None,
            discovered: Instant::now(),
            last_connected: None,
        });
        true
    }

    fn remove_static_peer(&self, addr: Endpoint) -> bool {
        let removed = {
            let mut statics = lock(&self.statics);
            let Some(i) = statics.iter().position(|s| s.addr == addr) else {
                return false;
            };
            statics.remove(i)
        };
        removed.task.abort();
        if let Some(id) = removed.link {
            self.close_link(id);
        }
        true
    }

    /// Peers for the API: every static peer (connected or not) and every inbound link.
    pub fn peer_stats(&self) -> Vec<serde_json::Value> {
        let links = lock(&self.links);
        let statics = lock(&self.statics);
        let now = Instant::now();
        let endpoint = Endpoint::to_json;
        let kind = |k: PeerKind| serde_json::to_value(k).unwrap_or_default();
        let mut out = Vec::new();
        for s in statics.iter() {
            let l = s.link.and_then(|id| links.get(&id));
            out.push(serde_json::json!({
                "endpoint": endpoint(&s.addr),
                "type": kind(s.kind),
                "connectionState": if l.is_some() { "alive" } else { "connecting" },
                "txBytes": l.map_or(0, |l| l.tx_bytes.load(Ordering::Relaxed)),
                "rxBytes": l.map_or(0, |l| l.rx_bytes.load(Ordering::Relaxed)),
                "discovered": now.saturating_duration_since(s.discovered).as_secs(),
                "lastConnected": s.last_connected.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs()),
            }));
        }
        for l in links.values().filter(|l| l.kind == PeerKind::Inbound) {
            out.push(serde_json::json!({
                "endpoint": endpoint(&l.remote),
                "type": "inbound",
                "connectionState": "alive",
                "txBytes": l.tx_bytes.load(Ordering::Relaxed),
                "rxBytes": l.rx_bytes.load(Ordering::Relaxed),
                "discovered": 0,
                "lastConnected": 0,
            }));
        }
        out
    }

    /// Every live link with the router's view of it.
    pub fn link_health(&self) -> Vec<LinkHealth> {
        let now = Instant::now();
        let peers = lock(&self.router).peers();
        let links = lock(&self.links);
        peers
            .into_iter()
            .filter_map(|p| {
                let l = links.get(&p.id)?;
                Some(LinkHealth {
                    endpoint: l.remote.to_string(),
                    kind: l.kind,
                    link_cost: p.link_cost,
                    ihu_age: now.saturating_duration_since(p.last_ihu),
                    rx_bytes: l.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: l.tx_bytes.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// "TCP [local] <-> [remote]"-style next hop names for the API.
    pub fn link_name(&self, id: PeerId) -> String {
        lock(&self.links).get(&id).map_or_else(
            || format!("link {id}"),
            |l| format!("{} {}", l.remote.proto.name().to_uppercase(), l.remote.addr),
        )
    }

    fn close_link(&self, id: PeerId) {
        if let Some(l) = lock(&self.links).remove(&id) {
            for a in l.abort {
                a.abort();
            }
        }
        let now = Instant::now();
        let mut r = lock(&self.router);
        r.remove_peer(id, now);
        let out = r.take_outputs();
        drop(r);
        self.dispatch(out);
    }

    /// Sends router outputs to their links.
    fn dispatch(&self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(peer, tlv) => {
                    let mut b = BytesMut::with_capacity(80);
                    packet::encode_control(&tlv, &mut b);
                    self.send_frame(peer, b.freeze());
                }
                Output::KillPeer(peer) => {
                    // The router already dropped the peer; just close the connection.
                    if let Some(l) = lock(&self.links).remove(&peer) {
                        for a in l.abort {
                            a.abort();
                        }
                    }
                }
            }
        }
    }

    fn send_frame(&self, peer: PeerId, frame: Bytes) {
        let links = lock(&self.links);
        if let Some(l) = links.get(&peer)
            && l.tx.try_send(frame).is_err()
        {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer, "link queue full: frame dropped");
        }
    }

    fn with_router<T>(&self, f: impl FnOnce(&mut Router) -> T) -> T {
        let mut r = lock(&self.router);
        let v = f(&mut r);
        let out = r.take_outputs();
        drop(r);
        self.dispatch(out);
        v
    }

    /// A packet read from the TUN: encrypt for its destination and send, or queue for a route.
    fn handle_tun_packet(&self, pkt: &[u8], arena: &mut BytesMut) {
        if pkt.len() < 40 || pkt[0] >> 4 != 6 {
            return;
        }
        let src = ipv6_at(pkt, 8);
        let dst = ipv6_at(pkt, 24);
        let own = lock(&self.router).subnet();
        if own.contains_ip(dst) || !GLOBAL_SUBNET.contains_ip(dst) {
            return;
        }
        if !GLOBAL_SUBNET.contains_ip(src) {
            tracing::debug!(%src, "TUN packet with a source outside 400::/7 dropped");
            return;
        }
        let hop = pkt[7];
        if hop < 2 {
            return;
        }
        let now = Instant::now();
        match self.with_router(|r| r.lookup(dst, now)) {
            Lookup::Route { peer, secret } => {
                let body_len = USER_HEADER_LEN + pkt.len() + AES_OVERHEAD;
                let Ok(len16) = u16::try_from(body_len) else {
                    return;
                };
                let f = frame_buf(arena, HEADER_LEN + DATA_HEADER_LEN + body_len);
                packet::encode_data_header(hop, src, dst, len16, f);
                let start = f.len();
                f.put_slice(&[1, USER_TYPE_L3, 0, 0]);
                f.put_slice(pkt);
                let trailer = secret.encrypt_detached(&mut f[start..]);
                f.put_slice(&trailer);
                self.counters.tun_rx.fetch_add(1, Ordering::Relaxed);
                self.send_frame(peer, f.split().freeze());
            }
            Lookup::Unknown => {
                self.with_router(|r| r.request_route(dst, now));
                self.queue(dst, Pending::Tx(Bytes::copy_from_slice(pkt)));
            }
            Lookup::Queried => self.queue(dst, Pending::Tx(Bytes::copy_from_slice(pkt))),
            Lookup::Unreachable => {
                self.counters.no_route.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Local => {}
        }
    }

    fn queue(&self, ip: Ipv6Addr, p: Pending) {
        let Ok(s) = Subnet::new(ip, 64) else { return };
        let mut pending = lock(&self.pending);
        let q = pending.entry(s).or_insert_with(|| PendingQueue {
            since: Instant::now(),
            items: Vec::new(),
        });
        if q.items.len() < PENDING_MAX {
            q.items.push(p);
        }
    }

    /// A data frame from a link: deliver if it is for us, else forward.
    fn handle_link_data(&self, mut p: DataPacket, arena: &mut BytesMut) {
        let own = lock(&self.router).subnet();
        if own.contains_ip(p.dst) {
            self.deliver(p);
            return;
        }
        if p.hop_limit < 2 {
            self.counters.hop_limit.fetch_add(1, Ordering::Relaxed);
            // Upstream answers with an out-of-band ICMP time-exceeded; not implemented here.
            return;
        }
        p.hop_limit -= 1;
        self.forward(p, arena);
    }

    fn forward(&self, p: DataPacket, arena: &mut BytesMut) {
        let now = Instant::now();
        match self.with_router(|r| r.lookup(p.dst, now)) {
            Lookup::Route { peer, .. } => {
                let f = frame_buf(arena, HEADER_LEN + DATA_HEADER_LEN + p.body.len());
                packet::encode_data(&p, f);
                self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                self.send_frame(peer, f.split().freeze());
            }
            Lookup::Unknown => {
                self.with_router(|r| r.request_route(p.dst, now));
                self.queue(p.dst, Pending::Fwd(p));
            }
            Lookup::Queried => self.queue(p.dst, Pending::Fwd(p)),
            Lookup::Unreachable => {
                self.counters.no_route.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Local => {}
        }
    }

    fn deliver(&self, mut p: DataPacket) {
        let Some((src_subnet, secret)) = lock(&self.router).secret_for_source(p.src) else {
            let now = Instant::now();
            self.with_router(|r| r.request_route(p.src, now));
            let src = p.src;
            self.queue(src, Pending::Rx(p));
            return;
        };
        let Ok((n, nonce)) = secret.decrypt_in_place(&mut p.body) else {
            self.counters.undecryptable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(src = %p.src, "undecryptable data packet dropped");
            return;
        };
        if !lock(&self.replay).accept(src_subnet, nonce) {
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(src = %p.src, "replayed data packet dropped");
            return;
        }
        let mut plain = p.body;
        plain.truncate(n);
        if plain.len() < USER_HEADER_LEN + 40 || plain[0] != 1 {
            return;
        }
        if plain[1] != USER_TYPE_L3 {
            // Messages and out-of-band ICMP are not implemented (docs/mycelium.md).
            return;
        }
        let mut ip = plain.split_off(USER_HEADER_LEN);
        if ip[0] >> 4 != 6 {
            return;
        }
        // Upstream overwrites the inner hop limit with the outer one.
        ip[7] = p.hop_limit;
        if let Some(t) = &self.tun_tx {
            if t.try_send(ip).is_err() {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TUN queue full: packet dropped");
            } else {
                self.counters.tun_tx.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Retries queued packets whose route or key appeared; drops those past the timeout.
    fn flush_pending(&self) {
        let now = Instant::now();
        let mut arena = BytesMut::new();
        let subnets: Vec<Subnet> = lock(&self.pending).keys().copied().collect();
        for s in subnets {
            // Sends need a selected route; receptions only the source's key.
            let (routed, keyed) = {
                let r = lock(&self.router);
                (
                    r.has_selected(&s),
                    r.secret_for_source(s.address()).is_some(),
                )
            };
            let (only_rx, expired) = lock(&self.pending).get(&s).map_or((false, false), |q| {
                (
                    q.items.iter().all(|p| matches!(p, Pending::Rx(_))),
                    now.saturating_duration_since(q.since) > self.pending_timeout,
                )
            });
            let ready = routed || (keyed && only_rx);
            if !ready && !expired {
                continue;
            }
            let Some(q) = lock(&self.pending).remove(&s) else {
                continue;
            };
            if !ready {
                tracing::debug!(subnet = %s, dropped = q.items.len(), "no route in time");
                self.counters
                    .no_route
                    .fetch_add(q.items.len() as u64, Ordering::Relaxed);
                continue;
            }
            for p in q.items {
                match p {
                    Pending::Tx(b) => self.handle_tun_packet(&b, &mut arena),
                    Pending::Fwd(p) => self.forward(p, &mut arena),
                    Pending::Rx(p) => self.deliver(p),
                }
            }
        }
    }
}

/// Size of the blocks frames are carved from.
const ARENA_BLOCK: usize = 256 * 1024;

/// Frames are written into a per-task arena and split off as `Bytes` that share its block, so
/// the data path allocates once per 256 KiB block (≈ 170 full-size frames), not per packet;
/// a block is freed when the last frame cut from it has been written out.
fn frame_buf(arena: &mut BytesMut, need: usize) -> &mut BytesMut {
    if arena.capacity() - arena.len() < need {
        *arena = BytesMut::with_capacity(ARENA_BLOCK.max(need));
    }
    arena
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

async fn open_tun(name: &str, addr: Ipv6Addr) -> Result<tun::AsyncDevice, NodeError> {
    let err = |message: String| NodeError::Tun {
        name: name.to_string(),
        message,
    };
    let mut c = tun::Configuration::default();
    c.tun_name(name).mtu(TUN_MTU).layer(tun::Layer::L3);
    c.platform_config(|p| {
        p.ensure_root_privileges(false);
    });
    let dev = tun::create(&c).map_err(|e| err(e.to_string()))?;
    let dev = tun::AsyncDevice::new(dev).map_err(|e| err(e.to_string()))?;
    // The address with prefix length 7 makes the kernel route all of 400::/7 into the TUN.
    for args in [
        vec![
            "-6".to_string(),
            "addr".into(),
            "add".into(),
            format!("{addr}/7"),
            "dev".into(),
            name.into(),
            "nodad".into(),
        ],
        vec![
            "link".into(),
            "set".into(),
            "dev".into(),
            name.into(),
            "mtu".into(),
            TUN_MTU.to_string(),
            "up".into(),
        ],
    ] {
        let out = tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .map_err(|e| err(format!("running ip: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(dev)
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, remote)) => {
                tracing::info!(%remote, "inbound peer");
                let inner = inner.clone();
                tokio::spawn(async move {
                    run_tcp_link(inner, s, Endpoint::tcp(remote), PeerKind::Inbound, None).await;
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Upstream bounds inbound QUIC handshakes to 10 at once, 10 s each.
const QUIC_HANDSHAKES: usize = 10;
const QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn quic_accept_loop(inner: Arc<Inner>, ep: quinn::Endpoint) {
    let slots = Arc::new(tokio::sync::Semaphore::new(QUIC_HANDSHAKES));
    while let Some(incoming) = ep.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = Endpoint {
                proto: Proto::Quic,
                addr: incoming.remote_address(),
            };
            let setup = async {
                let conn = incoming.await?;
                // The connector's stream becomes visible with its first control packet.
                let (send, recv) = conn.accept_bi().await?;
                Ok::<_, quinn::ConnectionError>((conn, send, recv))
            };
            let link = tokio::time::timeout(QUIC_HANDSHAKE_TIMEOUT, setup).await;
            drop(permit);
            match link {
                Ok(Ok((conn, send, recv))) => {
                    tracing::info!(remote = %remote.addr, "inbound QUIC peer");
                    run_quic_link(inner, conn, send, recv, remote, PeerKind::Inbound, None).await;
                }
                Ok(Err(e)) => tracing::debug!(remote = %remote.addr, "QUIC handshake: {e}"),
                Err(_) => tracing::debug!(remote = %remote.addr, "QUIC handshake timed out"),
            }
        });
    }
}

/// Same address and, for link-local ones, same interface (ports differ between directions).
fn same_host(a: &SocketAddr, b: &SocketAddr) -> bool {
    match (a, b) {
        (SocketAddr::V6(a), SocketAddr::V6(b)) => a.ip() == b.ip() && a.scope_id() == b.scope_id(),
        _ => a.ip() == b.ip(),
    }
}

/// Dials one endpoint and runs its link until it ends; `Err` if the dial failed.
async fn dial(inner: &Arc<Inner>, ep: Endpoint, kind: PeerKind) -> Result<(), String> {
    match ep.proto {
        Proto::Tcp => {
            let s = tokio::time::timeout(
                inner.reconnect.max(Duration::from_secs(1)),
                TcpStream::connect(ep.addr),
            )
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
            tracing::info!(%ep, "connected to peer");
            run_tcp_link(inner.clone(), s, ep, kind, Some(ep)).await;
        }
        Proto::Quic => {
            let q = inner.quic.as_ref().ok_or("QUIC is disabled")?;
            let setup = async {
                let conn = q
                    .connect(ep.addr, quic::SNI)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((conn, send, recv))
            };
            let (conn, send, recv) = tokio::time::timeout(QUIC_HANDSHAKE_TIMEOUT, setup)
                .await
                .map_err(|_| "QUIC handshake timed out".to_string())??;
            tracing::info!(%ep, "connected to peer");
            run_quic_link(inner.clone(), conn, send, recv, ep, kind, Some(ep)).await;
        }
    }
    Ok(())
}

/// Dials a static or discovered peer, keeps its link, redials when it drops. A discovered
/// peer is forgotten after [`DISCOVERED_MAX_FAILURES`] failed connects in a row (upstream).
async fn static_peer_loop(inner: Arc<Inner>, addr: Endpoint, kind: PeerKind) {
    let mut failures = 0;
    loop {
        match dial(&inner, addr, kind).await {
            Ok(()) => {
                failures = 0;
                tracing::info!(%addr, "peer link closed");
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(%addr, "connect: {e}");
            }
        }
        if kind == PeerKind::LinkLocalDiscovery && failures >= DISCOVERED_MAX_FAILURES {
            tracing::info!(%addr, "discovered peer unreachable: forgotten");
            lock(&inner.statics).retain(|s| s.addr != addr);
            return;
        }
        tokio::time::sleep(inner.reconnect).await;
    }
}

/// Beacons out (at start, then every [`discovery::BEACON_INTERVAL`]) and in.
async fn discovery_loop(
    inner: Arc<Inner>,
    sock: Arc<tokio::net::UdpSocket>,
    cfg: DiscoveryConfig,
    tcp_port: u16,
    period: Duration,
) {
    let rid = inner.router().router_id();
    let beacon = packet::encode_beacon(tcp_port, &rid);
    let mut joined = std::collections::BTreeSet::new();
    let mut buf = [0u8; 256];
    // A beacon can be lost while a neighbour is still joining the group (seen in tests: the
    // first one then waits a whole period), so the first three go out 1 s and 2 s apart.
    let mut sent = 0u32;
    let next = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next);
    loop {
        tokio::select! {
            () = &mut next => {
                discovery::beacon_round(&sock, &mut joined, &cfg.interfaces, &beacon, cfg.port).await;
                sent += 1;
                let wait = if sent < 3 { Duration::from_secs(u64::from(sent)) } else { period };
                next.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if let Some(d) = discovery::accept_beacon(from, &buf[..n], &rid) {
                        inner.add_discovered_peer(Endpoint::tcp(d.endpoint));
                    }
                }
                Err(e) => {
                    tracing::debug!("discovery socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn run_tcp_link(
    inner: Arc<Inner>,
    stream: TcpStream,
    remote: Endpoint,
    kind: PeerKind,
    static_addr: Option<Endpoint>,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let cost = match remote.addr.ip() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => 10,
        _ => 15,
    };
    run_link(
        inner,
        rd,
        remote,
        kind,
        static_addr,
        cost,
        |rx, tx_bytes, _| vec![tokio::spawn(write_loop(wr, rx, tx_bytes)).abort_handle()],
    )
    .await;
}

async fn run_quic_link(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    remote: Endpoint,
    kind: PeerKind,
    static_addr: Option<Endpoint>,
) {
    let cost = quic::static_cost(&remote.addr);
    let inner2 = inner.clone();
    let inner3 = inner.clone();
    run_link(
        inner,
        recv,
        remote,
        kind,
        static_addr,
        cost,
        move |rx, tx_bytes, rx_bytes| {
            vec![
                tokio::spawn(quic_write_loop(inner3, send, conn.clone(), rx, tx_bytes))
                    .abort_handle(),
                tokio::spawn(quic_datagram_loop(inner2, conn, rx_bytes)).abort_handle(),
            ]
        },
    )
    .await;
}

/// Runs one link until it fails; registers it with the router while it lives. `rd` carries
/// the packet stream; `spawn_io` starts the writer (and, for QUIC, the datagram reader) from
/// the link's frame queue and byte counters (tx, rx).
#[allow(clippy::too_many_arguments)]
async fn run_link<R: tokio::io::AsyncRead + Unpin>(
    inner: Arc<Inner>,
    mut rd: R,
    remote: Endpoint,
    kind: PeerKind,
    static_addr: Option<Endpoint>,
    cost: u16,
    spawn_io: impl FnOnce(mpsc::Receiver<Bytes>, Arc<AtomicU64>, Arc<AtomicU64>) -> Vec<AbortHandle>,
) {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let rx_bytes = Arc::new(AtomicU64::new(0));
    let tx_bytes = Arc::new(AtomicU64::new(0));
    let mut abort = spawn_io(rx, tx_bytes.clone(), rx_bytes.clone());
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    // The reader runs in this task; an abort of the link (dead peer, API delete) is signalled
    // through `done` by dropping the writer and this sender.
    let reader_abort = tokio::spawn(async move {
        let _keep = done_tx;
        std::future::pending::<()>().await;
    });
    abort.push(reader_abort.abort_handle());
    lock(&inner.links).insert(
        id,
        Link {
            tx,
            remote,
            kind,
            rx_bytes: rx_bytes.clone(),
            tx_bytes,
            abort,
        },
    );
    if let Some(a) = static_addr {
        let mut statics = lock(&inner.statics);
        if let Some(s) = statics.iter_mut().find(|s| s.addr == a) {
            s.link = Some(id);
            s.last_connected = Some(SystemTime::now());
        }
    }
    let now = Instant::now();
    inner.with_router(|r| r.add_peer(id, cost, now));

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut arena = BytesMut::new();
    loop {
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = done_rx.recv() => break,
        };
        rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut control = false;
        loop {
            match packet::decode(&mut buf) {
                Ok(Some(Packet::Control(tlv))) => {
                    control = true;
                    let now = Instant::now();
                    inner.with_router(|r| r.handle(id, tlv, now));
                }
                Ok(Some(Packet::Data(p))) => inner.handle_link_data(p, &mut arena),
                Ok(Some(Packet::Ignored)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%remote, "protocol error, dropping link: {e}");
                    buf.clear();
                    inner.close_link(id);
                    reader_abort.abort();
                    return finish(&inner, static_addr, id);
                }
            }
        }
        if control && !lock(&inner.pending).is_empty() {
            inner.flush_pending();
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(64 * 1024);
        }
    }
    reader_abort.abort();
    inner.close_link(id);
    finish(&inner, static_addr, id);
}

fn finish(inner: &Inner, static_addr: Option<Endpoint>, id: PeerId) {
    if let Some(a) = static_addr {
        let mut statics = lock(&inner.statics);
        if let Some(s) = statics
            .iter_mut()
            .find(|s| s.addr == a && s.link == Some(id))
        {
            s.link = None;
        }
    }
}

async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    tx_bytes: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(COALESCE);
    let mut out = BytesMut::with_capacity(64 * 1024);
    while rx.recv_many(&mut batch, COALESCE).await > 0 {
        for f in batch.drain(..) {
            out.extend_from_slice(&f);
        }
        let n = out.len();
        if wr.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
        tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = wr.shutdown().await;
}

/// QUIC: data frames go out as one DATAGRAM each (the `Bytes` is handed over, no copy);
/// control frames, and data frames larger than the path allows in a datagram, go on the
/// stream (the receiver's stream decoder takes both kinds, as on TCP).
async fn quic_write_loop(
    inner: Arc<Inner>,
    mut send: quinn::SendStream,
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Bytes>,
    tx_bytes: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(COALESCE);
    let mut out = BytesMut::with_capacity(64 * 1024);
    while rx.recv_many(&mut batch, COALESCE).await > 0 {
        let max = conn.max_datagram_size().unwrap_or(0);
        let mut n = 0;
        for f in batch.drain(..) {
            n += f.len();
            let is_data = f.len() > HEADER_LEN && f[1] == 0;
            if is_data && f.len() <= max {
                match conn.send_datagram(f) {
                    Ok(()) => {
                        inner
                            .counters
                            .quic_datagrams
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
                    Err(e) => {
                        tracing::debug!("QUIC datagram: {e}");
                        continue;
                    }
                }
            }
            if is_data {
                inner
                    .counters
                    .quic_stream_data
                    .fetch_add(1, Ordering::Relaxed);
            }
            out.extend_from_slice(&f);
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = send.finish();
}

/// QUIC: each DATAGRAM holds one data packet (header included).
async fn quic_datagram_loop(inner: Arc<Inner>, conn: quinn::Connection, rx_bytes: Arc<AtomicU64>) {
    let mut arena = BytesMut::new();
    while let Ok(d) = conn.read_datagram().await {
        rx_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        let mut b = BytesMut::from(&d[..]);
        match packet::decode(&mut b) {
            Ok(Some(Packet::Data(p))) => inner.handle_link_data(p, &mut arena),
            Ok(_) => {}
            Err(e) => tracing::debug!("bad QUIC datagram: {e}"),
        }
    }
}

async fn timer_loop(inner: Arc<Inner>) {
    let mut iv = tokio::time::interval(Duration::from_millis(250));
    loop {
        iv.tick().await;
        let now = Instant::now();
        inner.with_router(|r| r.tick(now));
        if !lock(&inner.pending).is_empty() {
            inner.flush_pending();
        }
    }
}

async fn tun_loop(inner: Arc<Inner>, tun: Arc<tun::AsyncDevice>) {
    let mut buf = vec![0u8; 65536];
    let mut arena = BytesMut::new();
    loop {
        match tun.recv(&mut buf).await {
            Ok(n) => inner.handle_tun_packet(&buf[..n], &mut arena),
            Err(e) => {
                tracing::warn!("TUN read: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tun_write_loop(tun: Arc<tun::AsyncDevice>, mut rx: mpsc::Receiver<BytesMut>) {
    while let Some(p) = rx.recv().await {
        if let Err(e) = tun.send(&p).await {
            tracing::debug!("TUN write: {e}");
        }
    }
}
