//! The Babel-variant router of upstream mycelium (reference §6), as a pure state machine: no
//! I/O, no clock. Callers feed it peer events, received TLVs and `tick(now)`, and drain
//! [`Output`]s (TLVs to send, peers to drop). The data path asks it for next hops and E2E keys.
//!
//! Mycelium is reactive: a node announces only its own /64 to direct neighbours (on link-up and
//! every 300 s); other routes are pulled with route requests when traffic needs them and pushed
//! to all neighbours when the locally selected route changes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::{PublicKey, SecretKey, SharedSecret};
use crate::packet::{Metric, RouterId, SeqNo, Tlv};
use crate::subnet::{GLOBAL_SUBNET, Subnet};

/// A link, numbered by the caller.
pub type PeerId = u64;

/// Hello period.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(20);
/// A peer without an IHU for this long is dead (2 × Hello + 3 s).
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(43);
/// How often dead peers are looked for.
pub const DEAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Own-subnet announcement period.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(300);
/// How long a retraction is held.
pub const RETRACTION_HOLD: Duration = Duration::from_secs(6);
/// Route request (query) timeout and dedup window.
pub const ROUTE_QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Seqno request dedup memory.
pub const SEQNO_CACHE_TIME: Duration = Duration::from_secs(60);
/// Minimum time between own seqno bumps, and between seqno requests to the same peer.
pub const SEQNO_BUMP_INTERVAL: Duration = Duration::from_secs(4);
/// Feasibility distance lifetime.
pub const SOURCE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Selected routes expiring within this are refreshed by a route request when used.
pub const ALMOST_EXPIRED: Duration = Duration::from_secs(15);

/// The router's timers. [`Timers::default`] is upstream's (reference §6.1); tests shorten them
/// all at once with [`Timers::divided`] (`zos mycelium run --test-timer-divisor`, hidden) so
/// that dead-link detection and route expiry fit a CI budget. The intervals written on the
/// wire (Hello, IHU, Update) follow, so a receiver's hold time (3.5 × the Update interval)
/// shrinks with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Hello period.
    pub hello: Duration,
    /// A peer without an IHU for this long is dead.
    pub dead_peer: Duration,
    /// How often dead peers are looked for.
    pub dead_check: Duration,
    /// Own-subnet announcement period (and the Update interval advertised).
    pub announce: Duration,
    /// How long a retraction is held.
    pub retraction_hold: Duration,
    /// Route request timeout and dedup window.
    pub route_query: Duration,
    /// Seqno request dedup memory.
    pub seqno_cache: Duration,
    /// Minimum time between own seqno bumps.
    pub seqno_bump: Duration,
    /// Feasibility distance lifetime.
    pub source_lifetime: Duration,
    /// Selected routes expiring within this are refreshed when used.
    pub almost_expired: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            hello: HELLO_INTERVAL,
            dead_peer: DEAD_PEER_TIMEOUT,
            dead_check: DEAD_CHECK_INTERVAL,
            announce: ANNOUNCE_INTERVAL,
            retraction_hold: RETRACTION_HOLD,
            route_query: ROUTE_QUERY_TIMEOUT,
            seqno_cache: SEQNO_CACHE_TIME,
            seqno_bump: SEQNO_BUMP_INTERVAL,
            source_lifetime: SOURCE_LIFETIME,
            almost_expired: ALMOST_EXPIRED,
        }
    }
}

impl Timers {
    /// Upstream's timers divided by `n` (≥ 1): for tests only; nodes must agree on it.
    pub fn divided(n: u32) -> Self {
        let n = n.max(1);
        let d = Self::default();
        Self {
            hello: d.hello / n,
            dead_peer: d.dead_peer / n,
            dead_check: d.dead_check / n,
            announce: d.announce / n,
            retraction_hold: d.retraction_hold / n,
            route_query: d.route_query / n,
            seqno_cache: d.seqno_cache / n,
            seqno_bump: d.seqno_bump / n,
            source_lifetime: d.source_lifetime / n,
            almost_expired: d.almost_expired / n,
        }
    }

    fn centis(d: Duration) -> u16 {
        u16::try_from(d.as_millis() / 10).unwrap_or(u16::MAX)
    }

    fn hello_cs(&self) -> u16 {
        Self::centis(self.hello)
    }

    /// IHU interval: upstream sends 3 × the Hello interval.
    fn ihu_cs(&self) -> u16 {
        Self::centis(self.hello * 3)
    }

    fn update_cs(&self) -> u16 {
        Self::centis(self.announce)
    }
}
/// Initial smoothed link cost.
const INITIAL_LINK_COST: u16 = 1000;
/// A different route must be better by more than this to replace the selected one.
const SIGNIFICANT_METRIC_DIFF: u16 = 10;
/// Route requests are not forwarded once generation + 1 reaches this.
const MAX_RR_GENERATION: u8 = 16;
/// Initial hop count of seqno requests.
const SEQNO_REQUEST_HOPS: u8 = 64;

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this TLV (one control packet) to the peer.
    Send(PeerId, Tlv),
    /// The peer is dead (no IHU in time): close the link. The router already dropped it.
    KillPeer(PeerId),
}

#[derive(Debug)]
struct Peer {
    static_cost: u16,
    cost: u16,
    hello_seqno: SeqNo,
    last_hello_sent: Option<Instant>,
    last_ihu: Instant,
}

impl Peer {
    fn link_cost(&self) -> u16 {
        self.cost.saturating_add(self.static_cost)
    }
}

#[derive(Debug, Clone)]
struct RouteEntry {
    neighbour: PeerId,
    router_id: RouterId,
    metric: Metric,
    seqno: SeqNo,
    selected: bool,
    expires: Instant,
}

#[derive(Debug)]
struct SubnetEntry {
    public_key: PublicKey,
    // Shared with the data path without copying the AES key schedule per packet.
    secret: Arc<SharedSecret>,
    routes: Vec<RouteEntry>,
}

#[derive(Debug, Clone, Copy)]
struct FeasibilityDistance {
    metric: Metric,
    seqno: SeqNo,
    expires: Instant,
}

#[derive(Debug, Default)]
struct SeqnoRequestState {
    expires: Option<Instant>,
    requesters: Vec<PeerId>,
}

/// A route as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The destination prefix.
    pub subnet: Subnet,
    /// The next hop link.
    pub next_hop: PeerId,
    /// Metric (neighbour's advertised metric + link cost).
    pub metric: Metric,
    /// Source seqno.
    pub seqno: SeqNo,
    /// The originator.
    pub router_id: RouterId,
    /// When the route expires.
    pub expires: Instant,
}

/// A peer as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The link.
    pub id: PeerId,
    /// Smoothed cost + transport cost.
    pub link_cost: u16,
    /// Last IHU.
    pub last_ihu: Instant,
}

/// Where a destination goes.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Inside our own /64: deliver to the TUN.
    Local,
    /// Forward to this peer; `secret` is the E2E key for the destination's owner.
    Route {
        /// Next hop.
        peer: PeerId,
        /// E2E key with the destination node.
        secret: Arc<SharedSecret>,
    },
    /// A route request is outstanding (queue the packet).
    Queried,
    /// Entries exist but none is usable (upstream answers ICMP no-route).
    Unreachable,
    /// Nothing known (send a route request with [`Router::request_route`], queue).
    Unknown,
}

/// The routing state of one node.
#[derive(Debug)]
pub struct Router {
    secret: SecretKey,
    public_key: PublicKey,
    router_id: RouterId,
    subnet: Subnet,
    seqno: SeqNo,
    last_bump: Option<Instant>,
    peers: BTreeMap<PeerId, Peer>,
    table: BTreeMap<Subnet, SubnetEntry>,
    queried: HashMap<Subnet, Instant>,
    /// Subnets whose selected route was lost, and when: a new link is asked for them (a zos
    /// addition, wire-compatible: plain route requests), so that a neighbour coming back after
    /// a crash restores the routes that went through it without waiting for traffic to time
    /// out a query first.
    lost: HashMap<Subnet, Instant>,
    sources: HashMap<(Subnet, RouterId), FeasibilityDistance>,
    seqno_requests: HashMap<(RouterId, Subnet, SeqNo), SeqnoRequestState>,
    seqno_sent: HashMap<(RouterId, Subnet, SeqNo, PeerId), Instant>,
    rr_sent: HashMap<(Subnet, PeerId), Instant>,
    timers: Timers,
    next_hello: Instant,
    next_announce: Instant,
    next_dead_check: Instant,
    out: Vec<Output>,
}

impl Router {
    /// A router for `secret`; `rnd` is the random part of the router id (new at each start).
    pub fn new(secret: SecretKey, rnd: [u8; 6], now: Instant) -> Self {
        Self::with_timers(secret, rnd, Timers::default(), now)
    }

    /// A router with other timers than upstream's (tests).
    pub fn with_timers(secret: SecretKey, rnd: [u8; 6], timers: Timers, now: Instant) -> Self {
        let public_key = secret.public_key();
        Self {
            router_id: RouterId::new(public_key, rnd),
            subnet: public_key.subnet(),
            public_key,
            secret,
            seqno: SeqNo(0),
            last_bump: None,
            peers: BTreeMap::new(),
            table: BTreeMap::new(),
            queried: HashMap::new(),
            lost: HashMap::new(),
            sources: HashMap::new(),
            seqno_requests: HashMap::new(),
            seqno_sent: HashMap::new(),
            rr_sent: HashMap::new(),
            timers,
            next_hello: now + timers.hello,
            next_announce: now + timers.announce,
            next_dead_check: now + timers.dead_check,
            out: Vec::new(),
        }
    }

    /// The timers in use.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// This node's /64.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// This node's router id.
    pub fn router_id(&self) -> RouterId {
        self.router_id
    }

    /// Drains what must be sent.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, peer: PeerId, tlv: Tlv) {
        self.out.push(Output::Send(peer, tlv));
    }

    // ---------------------------------------------------------------- peers

    /// A link came up. `static_cost` is the transport's (TCP over IPv6 10, IPv4 15).
    pub fn add_peer(&mut self, id: PeerId, static_cost: u16, now: Instant) {
        self.peers.insert(
            id,
            Peer {
                static_cost,
                cost: INITIAL_LINK_COST,
                hello_seqno: SeqNo(0),
                last_hello_sent: None,
                last_ihu: now,
            },
        );
        self.send_hello(id, now);
        self.send(id, self.own_update());
        let mut queried: Vec<Subnet> = self.queried.keys().copied().collect();
        queried.extend(self.lost.keys().filter(|s| !self.queried.contains_key(s)));
        for s in queried {
            self.send(
                id,
                Tlv::RouteRequest {
                    generation: 0,
                    subnet: Some(s),
                },
            );
        }
    }

    /// A link went down: its routes are dropped and replacements selected (or retracted).
    pub fn remove_peer(&mut self, id: PeerId, now: Instant) {
        if self.peers.remove(&id).is_none() {
            return;
        }
        self.rr_sent.retain(|(_, p), _| *p != id);
        let affected: Vec<Subnet> = self
            .table
            .iter()
            .filter(|(_, e)| e.routes.iter().any(|r| r.neighbour == id))
            .map(|(s, _)| *s)
            .collect();
        for s in affected {
            let before = self.selected(&s);
            if let Some(e) = self.table.get_mut(&s) {
                e.routes.retain(|r| r.neighbour != id);
            }
            self.reselect(s, before, now);
        }
    }

    fn send_hello(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.hello_seqno = p.hello_seqno.next();
        p.last_hello_sent = Some(now);
        let seqno = p.hello_seqno;
        self.send(
            id,
            Tlv::Hello {
                flags: 0x8000,
                seqno,
                interval: self.timers.hello_cs(),
            },
        );
    }

    fn link_cost(&self, id: PeerId) -> u16 {
        self.peers
            .get(&id)
            .map_or(Metric::INFINITE.0, Peer::link_cost)
    }

    // ---------------------------------------------------------------- timers

    /// Runs due timers: Hellos, own announcements, dead peers, route and cache expiry.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_hello {
            self.next_hello = now + self.timers.hello;
            let ids: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in ids {
                self.send_hello(id, now);
            }
        }
        if now >= self.next_announce {
            self.next_announce = now + self.timers.announce;
            self.announce_own();
        }
        if now >= self.next_dead_check {
            self.next_dead_check = now + self.timers.dead_check;
            let dead: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| now.saturating_duration_since(p.last_ihu) > self.timers.dead_peer)
                .map(|(id, _)| *id)
                .collect();
            for id in dead {
                tracing::info!(peer = id, timeout = ?self.timers.dead_peer, "no IHU in time: peer dead");
                self.out.push(Output::KillPeer(id));
                self.remove_peer(id, now);
            }
        }
        // Route expiry.
        let expiring: Vec<Subnet> = self
            .table
            .iter()
            .filter(|(_, e)| e.routes.iter().any(|r| r.expires <= now))
            .map(|(s, _)| *s)
            .collect();
        for s in expiring {
            let before = self.selected(&s);
            if let Some(e) = self.table.get_mut(&s) {
                e.routes.retain(|r| r.expires > now);
            }
            self.reselect(s, before, now);
        }
        self.table.retain(|_, e| !e.routes.is_empty());
        self.queried.retain(|_, exp| *exp > now);
        let keep = self.timers.seqno_cache;
        self.lost
            .retain(|_, t| now.saturating_duration_since(*t) < keep);
        self.sources.retain(|_, fd| fd.expires > now);
        self.seqno_requests
            .retain(|_, r| r.expires.is_some_and(|e| e > now));
        self.seqno_sent
            .retain(|_, t| now.saturating_duration_since(*t) < self.timers.seqno_bump);
        self.rr_sent
            .retain(|_, t| now.saturating_duration_since(*t) < self.timers.route_query);
    }

    fn own_update(&self) -> Tlv {
        Tlv::Update {
            flags: 0,
            interval: self.timers.update_cs(),
            seqno: self.seqno,
            metric: Metric(0),
            subnet: self.subnet,
            router_id: self.router_id,
        }
    }

    fn announce_own(&mut self) {
        let u = self.own_update();
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.send(id, u.clone());
        }
    }

    // ---------------------------------------------------------------- input

    /// Handles one TLV received from `peer`.
    pub fn handle(&mut self, peer: PeerId, tlv: Tlv, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        match tlv {
            Tlv::Hello { .. } => {
                let rx_cost = self.link_cost(peer);
                self.send(
                    peer,
                    Tlv::Ihu {
                        rx_cost,
                        interval: self.timers.ihu_cs(),
                        address: None,
                    },
                );
            }
            Tlv::Ihu { .. } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.last_ihu = now;
                    if let Some(sent) = p.last_hello_sent {
                        let sample = now.saturating_duration_since(sent).as_millis();
                        let c = (u128::from(p.cost) * 9 + sample) / 10;
                        p.cost = u16::try_from(c).unwrap_or(0xFFFE).min(0xFFFE);
                    }
                }
            }
            Tlv::Update {
                interval,
                seqno,
                metric,
                subnet,
                router_id,
                ..
            } => self.handle_update(peer, interval, seqno, metric, subnet, router_id, now),
            Tlv::RouteRequest { generation, subnet } => {
                self.handle_route_request(peer, generation, subnet, now)
            }
            Tlv::SeqnoRequest {
                seqno,
                hop_count,
                router_id,
                subnet,
            } => self.handle_seqno_request(peer, seqno, hop_count, router_id, subnet, now),
        }
    }

    fn is_feasible(&self, subnet: Subnet, rid: RouterId, seqno: SeqNo, metric: Metric) -> bool {
        if metric.is_infinite() {
            return true;
        }
        match self.sources.get(&(subnet, rid)) {
            None => true,
            Some(fd) => seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_update(
        &mut self,
        peer: PeerId,
        interval: u16,
        seqno: SeqNo,
        metric: Metric,
        subnet: Subnet,
        rid: RouterId,
        now: Instant,
    ) {
        // Filters (§6.5): inside 400::/7, at least /64, and a finite route must be for the
        // originator's own subnet. Our own /64 is ours.
        if !GLOBAL_SUBNET.contains_subnet(&subnet)
            || subnet.prefix_len() < 64
            || (!metric.is_infinite() && !subnet.contains_ip(rid.public_key().address()))
            || self.subnet.contains_subnet(&subnet)
        {
            tracing::debug!(%subnet, "update filtered");
            return;
        }
        let feasible = self.is_feasible(subnet, rid, seqno, metric);
        let hold = if metric.is_infinite() {
            self.timers.retraction_hold
        } else {
            Duration::from_millis(u64::from(interval) * 10 * 7 / 2)
        };
        let before = self.selected(&subnet);
        if !self.table.contains_key(&subnet) {
            if metric.is_infinite() {
                return;
            }
            if !feasible {
                self.send_seqno_request(subnet, rid, Some(peer), now);
                return;
            }
            let pk = rid.public_key();
            self.table.insert(
                subnet,
                SubnetEntry {
                    public_key: pk,
                    secret: Arc::new(self.secret.shared_secret(&pk)),
                    routes: Vec::new(),
                },
            );
        }
        let Some(entry) = self.table.get_mut(&subnet) else {
            return;
        };
        let any_selected = entry.routes.iter().any(|r| r.selected);
        match entry.routes.iter_mut().find(|r| r.neighbour == peer) {
            Some(r) => {
                if r.selected && !feasible && r.router_id == rid {
                    self.send_seqno_request(subnet, rid, Some(peer), now);
                    return;
                }
                r.seqno = seqno;
                r.metric = metric;
                r.router_id = rid;
                if feasible {
                    r.expires = now + hold;
                } else if r.selected {
                    r.selected = false;
                }
            }
            None => {
                if feasible && !metric.is_infinite() {
                    entry.routes.push(RouteEntry {
                        neighbour: peer,
                        router_id: rid,
                        metric,
                        seqno,
                        selected: false,
                        expires: now + hold,
                    });
                } else {
                    if !feasible && !any_selected {
                        self.send_seqno_request(subnet, rid, Some(peer), now);
                    }
                    return;
                }
            }
        }
        self.reselect(subnet, before, now);
    }

    /// The selected route of a subnet: (neighbour, router id, metric incl. link cost, seqno).
    fn selected(&self, subnet: &Subnet) -> Option<(PeerId, RouterId, Metric, SeqNo)> {
        let e = self.table.get(subnet)?;
        let r = e.routes.iter().find(|r| r.selected)?;
        Some((
            r.neighbour,
            r.router_id,
            r.metric.plus(self.link_cost(r.neighbour)),
            r.seqno,
        ))
    }

    /// Route selection (§6.4 step 5) and triggered updates (step 6).
    fn reselect(
        &mut self,
        subnet: Subnet,
        before: Option<(PeerId, RouterId, Metric, SeqNo)>,
        now: Instant,
    ) {
        let Some(entry) = self.table.get(&subnet) else {
            if before.is_some() {
                self.trigger_update(subnet, None, now);
            }
            return;
        };
        let mut best: Option<(usize, Metric)> = None;
        let mut current: Option<(usize, Metric)> = None;
        for (i, r) in entry.routes.iter().enumerate() {
            if r.metric.is_infinite() || r.expires <= now {
                continue;
            }
            if !self.is_feasible(subnet, r.router_id, r.seqno, r.metric) {
                continue;
            }
            let m = r.metric.plus(self.link_cost(r.neighbour));
            if r.selected {
                current = Some((i, m));
            }
            if best.is_none_or(|(_, bm)| m < bm) {
                best = Some((i, m));
            }
        }
        let choice = match (current, best) {
            (Some((ci, cm)), Some((bi, bm))) => {
                let b = &entry.routes[bi];
                if bi != ci
                    && (bm.0.saturating_add(SIGNIFICANT_METRIC_DIFF) < cm.0 || b.metric.0 == 0)
                {
                    Some(bi)
                } else {
                    Some(ci)
                }
            }
            (None, Some((bi, _))) => Some(bi),
            (_, None) => None,
        };
        let Some(entry) = self.table.get_mut(&subnet) else {
            return;
        };
        for (i, r) in entry.routes.iter_mut().enumerate() {
            r.selected = Some(i) == choice;
        }
        if choice.is_some() {
            self.queried.remove(&subnet);
            self.lost.remove(&subnet);
        }
        let after = self.selected(&subnet);
        if after.is_none()
            && let Some((_, rid, _, _)) = before
        {
            // Lost the route: ask for a newer seqno from the old source everywhere.
            self.lost.insert(subnet, now);
            self.send_seqno_request(subnet, rid, None, now);
        }
        let significant = match (before, after) {
            (None, None) => false,
            (Some(_), None) | (None, Some(_)) => true,
            (Some((_, brid, bm, _)), Some((_, arid, am, _))) => {
                brid != arid || bm.0.abs_diff(am.0) > SIGNIFICANT_METRIC_DIFF
            }
        };
        if significant {
            self.trigger_update(subnet, after.map(|(n, ..)| n), now);
        } else if let Some((_, rid, _, seqno)) = after {
            // Answer seqno requests waiting for exactly this source and seqno.
            if let Some(req) = self.seqno_requests.get_mut(&(rid, subnet, seqno)) {
                let waiting = std::mem::take(&mut req.requesters);
                for p in waiting {
                    self.send_update_to(p, subnet, now);
                }
            }
        }
    }

    /// Sends the subnet's update to every peer but the next hop.
    fn trigger_update(&mut self, subnet: Subnet, next_hop: Option<PeerId>, now: Instant) {
        let ids: Vec<PeerId> = self
            .peers
            .keys()
            .copied()
            .filter(|p| Some(*p) != next_hop)
            .collect();
        for p in ids {
            self.send_update_to(p, subnet, now);
        }
    }

    /// Sends our view of `subnet` to `peer`: the selected route with its next hop's link cost
    /// added, or a retraction.
    fn send_update_to(&mut self, peer: PeerId, subnet: Subnet, now: Instant) {
        let tlv = match self.selected(&subnet) {
            Some((_, rid, metric, seqno)) => {
                self.record_source(subnet, rid, metric, seqno, now);
                Tlv::Update {
                    flags: 0,
                    interval: self.timers.update_cs(),
                    seqno,
                    metric,
                    subnet,
                    router_id: rid,
                }
            }
            None => Tlv::Update {
                flags: 0,
                interval: 0,
                seqno: self.seqno,
                metric: Metric::INFINITE,
                subnet,
                router_id: self.router_id,
            },
        };
        self.send(peer, tlv);
    }

    fn record_source(
        &mut self,
        subnet: Subnet,
        rid: RouterId,
        metric: Metric,
        seqno: SeqNo,
        now: Instant,
    ) {
        let expires = now + self.timers.source_lifetime;
        let fd = self
            .sources
            .entry((subnet, rid))
            .or_insert(FeasibilityDistance {
                metric,
                seqno,
                expires,
            });
        if seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric) {
            *fd = FeasibilityDistance {
                metric,
                seqno,
                expires,
            };
        } else if !metric.is_infinite() {
            fd.expires = expires;
        }
    }

    // ---------------------------------------------------------------- requests

    /// Asks all peers for a route to the /64 of `dst` (the data path calls this for unknown
    /// destinations). No-op if a request is outstanding.
    pub fn request_route(&mut self, dst: Ipv6Addr, now: Instant) {
        let Ok(subnet) = Subnet::new(dst, 64) else {
            return;
        };
        if self.queried.contains_key(&subnet) {
            return;
        }
        self.queried.insert(subnet, now + self.timers.route_query);
        self.forward_route_request(subnet, 0, None, now);
    }

    fn forward_route_request(
        &mut self,
        subnet: Subnet,
        generation: u8,
        except: Option<PeerId>,
        now: Instant,
    ) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in ids {
            if Some(p) == except || self.rr_sent.contains_key(&(subnet, p)) {
                continue;
            }
            self.rr_sent.insert((subnet, p), now);
            self.send(
                p,
                Tlv::RouteRequest {
                    generation,
                    subnet: Some(subnet),
                },
            );
        }
    }

    fn handle_route_request(
        &mut self,
        peer: PeerId,
        generation: u8,
        subnet: Option<Subnet>,
        now: Instant,
    ) {
        let Some(subnet) = subnet else {
            // Wildcard: the whole selected table plus our own route.
            let own = self.own_update();
            self.send(peer, own);
            let subnets: Vec<Subnet> = self.table.keys().copied().collect();
            for s in subnets {
                if self.selected(&s).is_some() {
                    self.send_update_to(peer, s, now);
                }
            }
            return;
        };
        if self.subnet.contains_subnet(&subnet) {
            let own = self.own_update();
            self.send(peer, own);
            return;
        }
        if let Some((nh, ..)) = self.selected(&subnet)
            && nh != peer
        {
            self.send_update_to(peer, subnet, now);
            return;
        }
        if self.queried.contains_key(&subnet) {
            return;
        }
        if generation.saturating_add(1) >= MAX_RR_GENERATION {
            return;
        }
        self.queried.insert(subnet, now + self.timers.route_query);
        self.forward_route_request(subnet, generation + 1, Some(peer), now);
    }

    /// Sends a seqno request for `(subnet, rid)` to one peer, or to every neighbour with a
    /// route for the subnet (every peer if none), skipping peers asked within 4 s.
    fn send_seqno_request(
        &mut self,
        subnet: Subnet,
        rid: RouterId,
        to: Option<PeerId>,
        now: Instant,
    ) {
        let seqno = self
            .sources
            .get(&(subnet, rid))
            .map_or(SeqNo(1), |fd| fd.seqno.next());
        let targets: Vec<PeerId> = match to {
            Some(p) => vec![p],
            None => {
                let with_route: Vec<PeerId> = self
                    .table
                    .get(&subnet)
                    .map(|e| e.routes.iter().map(|r| r.neighbour).collect())
                    .unwrap_or_default();
                if with_route.is_empty() {
                    self.peers.keys().copied().collect()
                } else {
                    with_route
                }
            }
        };
        for p in targets {
            if self.seqno_sent.contains_key(&(rid, subnet, seqno, p)) {
                continue;
            }
            self.seqno_sent.insert((rid, subnet, seqno, p), now);
            self.send(
                p,
                Tlv::SeqnoRequest {
                    seqno,
                    hop_count: SEQNO_REQUEST_HOPS,
                    router_id: rid,
                    subnet,
                },
            );
        }
    }

    fn handle_seqno_request(
        &mut self,
        peer: PeerId,
        seqno: SeqNo,
        hop_count: u8,
        rid: RouterId,
        subnet: Subnet,
        now: Instant,
    ) {
        let key = (rid, subnet, seqno);
        if self
            .seqno_requests
            .get(&key)
            .and_then(|r| r.expires)
            .is_some_and(|e| e > now)
        {
            return;
        }
        let st = self.seqno_requests.entry(key).or_default();
        st.expires = Some(now + self.timers.seqno_cache);
        st.requesters.push(peer);

        if self.subnet.contains_subnet(&subnet) {
            if rid == self.router_id
                && seqno.gt(self.seqno)
                && self
                    .last_bump
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.timers.seqno_bump)
            {
                self.seqno = self.seqno.next();
                self.last_bump = Some(now);
                self.announce_own();
            } else {
                let own = self.own_update();
                self.send(peer, own);
            }
            return;
        }
        if let Some((_, srid, _, sseq)) = self.selected(&subnet)
            && (srid != rid || !sseq.lt(seqno))
        {
            // Upstream adds the requester's link cost here (reference §14 notes the asymmetry).
            if let Some(Some(r)) = self
                .table
                .get(&subnet)
                .map(|e| e.routes.iter().find(|r| r.selected).cloned())
            {
                let metric = r.metric.plus(self.link_cost(peer));
                self.record_source(subnet, r.router_id, metric, r.seqno, now);
                self.send(
                    peer,
                    Tlv::Update {
                        flags: 0,
                        interval: self.timers.update_cs(),
                        seqno: r.seqno,
                        metric,
                        subnet,
                        router_id: r.router_id,
                    },
                );
            }
            return;
        }
        if hop_count < 2 {
            return;
        }
        // Forward to one neighbour with a route (feasible first), not the requester.
        let Some(entry) = self.table.get(&subnet) else {
            return;
        };
        let mut candidates: Vec<(bool, PeerId)> = entry
            .routes
            .iter()
            .filter(|r| r.neighbour != peer && !r.metric.is_infinite())
            .map(|r| {
                (
                    !self.is_feasible(subnet, r.router_id, r.seqno, r.metric),
                    r.neighbour,
                )
            })
            .collect();
        candidates.sort();
        if let Some((_, next)) = candidates.first().copied() {
            self.send(
                next,
                Tlv::SeqnoRequest {
                    seqno,
                    hop_count: hop_count - 1,
                    router_id: rid,
                    subnet,
                },
            );
        }
    }

    // ---------------------------------------------------------------- data path

    /// Where to send a packet for `dst`. Refreshes routes close to expiry with a route request.
    pub fn lookup(&mut self, dst: Ipv6Addr, now: Instant) -> Lookup {
        if self.subnet.contains_ip(dst) {
            return Lookup::Local;
        }
        let Some((subnet, entry)) = self.longest_match(dst) else {
            return if self.is_queried(dst) {
                Lookup::Queried
            } else {
                Lookup::Unknown
            };
        };
        let Some(r) = entry.routes.iter().find(|r| r.selected) else {
            return if self.queried.contains_key(&subnet) {
                Lookup::Queried
            } else {
                Lookup::Unreachable
            };
        };
        let (peer, secret, refresh) = (
            r.neighbour,
            entry.secret.clone(),
            r.expires.saturating_duration_since(now) < self.timers.almost_expired,
        );
        if refresh && !self.queried.contains_key(&subnet) {
            self.queried.insert(subnet, now + self.timers.route_query);
            self.forward_route_request(subnet, 0, None, now);
        }
        Lookup::Route { peer, secret }
    }

    fn is_queried(&self, dst: Ipv6Addr) -> bool {
        self.queried.keys().any(|s| s.contains_ip(dst))
    }

    fn longest_match(&self, ip: Ipv6Addr) -> Option<(Subnet, &SubnetEntry)> {
        // Subnets are ≥ /64 and few; a scan in prefix-length order is cheap enough here.
        self.table
            .iter()
            .filter(|(s, _)| s.contains_ip(ip))
            .max_by_key(|(s, _)| s.prefix_len())
            .map(|(s, e)| (*s, e))
    }

    /// The E2E key and source subnet for a packet from `src` (any route entry, selected or not).
    pub fn secret_for_source(&self, src: Ipv6Addr) -> Option<(Subnet, Arc<SharedSecret>)> {
        self.longest_match(src).map(|(s, e)| (s, e.secret.clone()))
    }

    /// Whether `subnet` has a selected route.
    pub fn has_selected(&self, subnet: &Subnet) -> bool {
        self.selected(subnet).is_some()
    }

    /// The public key of the node owning `ip`, if a route to it is known.
    pub fn public_key_for(&self, ip: Ipv6Addr) -> Option<PublicKey> {
        if self.subnet.contains_ip(ip) {
            return Some(self.public_key);
        }
        self.longest_match(ip).map(|(_, e)| e.public_key)
    }

    // ---------------------------------------------------------------- views

    /// Selected routes.
    pub fn selected_routes(&self) -> Vec<RouteInfo> {
        self.routes(true)
    }

    /// Known but unselected routes.
    pub fn fallback_routes(&self) -> Vec<RouteInfo> {
        self.routes(false)
    }

    fn routes(&self, selected: bool) -> Vec<RouteInfo> {
        self.table
            .iter()
            .flat_map(|(s, e)| {
                e.routes
                    .iter()
                    .filter(move |r| r.selected == selected)
                    .map(|r| RouteInfo {
                        subnet: *s,
                        next_hop: r.neighbour,
                        metric: if selected {
                            r.metric.plus(self.link_cost(r.neighbour))
                        } else {
                            r.metric
                        },
                        seqno: r.seqno,
                        router_id: r.router_id,
                        expires: r.expires,
                    })
            })
            .collect()
    }

    /// Subnets with an outstanding route request and when it expires.
    pub fn queried_subnets(&self) -> Vec<(Subnet, Instant)> {
        let mut v: Vec<_> = self.queried.iter().map(|(s, e)| (*s, *e)).collect();
        v.sort();
        v
    }

    /// Peers and their link costs.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(id, p)| PeerInfo {
                id: *id,
                link_cost: p.link_cost(),
                last_ihu: p.last_ihu,
            })
            .collect()
    }
}
