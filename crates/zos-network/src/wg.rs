//! A userspace WireGuard device: boringtun's Noise state machine per peer, between a TUN
//! interface (packets of the private network) and one UDP socket (the encrypted side).
//!
//! The TUN and the socket are opened in the node's network namespace (a dedicated thread
//! enters it when the node's network plane is a named namespace), then the TUN is moved into
//! the network resource's namespace: the encrypted traffic leaves from the node's addresses
//! while the cleartext side exists only inside the resource, as upstream does with a kernel
//! WireGuard interface created in the host namespace and moved.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The largest datagram we read or write (MTU 1420 + WireGuard overhead, with room).
const BUF: usize = 65_536;
/// MTU of the WireGuard interface (the usual WireGuard value: 1500 − 80 bytes of headers).
pub const MTU: u16 = 1420;
/// Keepalive towards peers with an endpoint, so that a restarted node's peers learn about it
/// and NAT state stays open (seconds).
const KEEPALIVE: u16 = 25;

/// A 32-byte WireGuard key from base64, with a clear error.
pub fn decode_key(what: &str, s: &str) -> Result<[u8; 32], String> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what} is not valid base64: {e}"))?;
    <[u8; 32]>::try_from(b.as_slice())
        .map_err(|_| format!("{what} must be 32 bytes, got {}", b.len()))
}

/// The base64 public key of a base64 private key.
pub fn public_key_of(private_b64: &str) -> Result<String, String> {
    let k = decode_key("private key", private_b64)?;
    let p = PublicKey::from(&StaticSecret::from(k));
    Ok(base64::engine::general_purpose::STANDARD.encode(p.as_bytes()))
}

/// A fresh private key, base64.
pub fn generate_private_key() -> String {
    let s = StaticSecret::random_from_rng(rand::rngs::OsRng);
    base64::engine::general_purpose::STANDARD.encode(s.to_bytes())
}

/// A peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its static public key.
    pub public_key: [u8; 32],
    /// Networks whose packets go to (and may come from) this peer.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    /// Where to send to until the peer is heard from.
    pub endpoint: Option<SocketAddr>,
}

/// The whole device configuration (what `wg setconf` would hold).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Static private key.
    pub private_key: [u8; 32],
    /// Peers.
    pub peers: Vec<PeerConfig>,
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

struct Peer {
    cfg: PeerConfig,
    tunn: Tunn,
    /// The address last heard from (roaming), else the configured endpoint.
    endpoint: Option<SocketAddr>,
    /// Index handed to boringtun (shifted left 8 bits in session ids), unique per device.
    index: u32,
    /// When the last handshake completed, as we saw it. Kept by us because boringtun forgets
    /// it once the session expires (9 min without a new one), exactly when a dead peer matters.
    last_handshake: Option<Instant>,
}

impl Peer {
    /// Refreshes [`Peer::last_handshake`] from the state machine.
    fn note_handshake(&mut self) -> Option<Instant> {
        if let Some(age) = self.tunn.time_since_last_handshake() {
            let at = Instant::now().checked_sub(age);
            if at > self.last_handshake {
                self.last_handshake = at;
            }
        }
        self.last_handshake
    }
}

/// A peer as the device sees it now (diagnostics).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Its static public key.
    pub public_key: [u8; 32],
    /// The configured endpoint (what we dial); `None` for peers that dial us.
    pub configured_endpoint: Option<SocketAddr>,
    /// Where packets go now (the address last heard from, else the configured one).
    pub endpoint: Option<SocketAddr>,
    /// Networks routed to this peer.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    /// Time since the last completed handshake; `None`: never since the device started.
    pub last_handshake: Option<Duration>,
    /// Bytes received from / sent to the peer (WireGuard payload, this session set).
    pub rx_bytes: u64,
    /// See `rx_bytes`.
    pub tx_bytes: u64,
}

impl PeerStatus {
    /// Stale: the peer has an endpoint to dial, handshook once, and not again for longer than
    /// `limit` (sessions are renewed every 2 min while keepalives flow, so a healthy peer's
    /// handshake is never much older than that). Peers that never handshook are not stale:
    /// a remote node may simply not be deployed yet.
    pub fn is_stale(&self, limit: Duration) -> bool {
        self.configured_endpoint.is_some() && self.last_handshake.is_some_and(|a| a > limit)
    }
}

struct State {
    private: StaticSecret,
    public: PublicKey,
    peers: Vec<Peer>,
    next_index: u32,
}

impl State {
    fn new_peer(&mut self, cfg: PeerConfig) -> Peer {
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let index = self.next_index;
        let keepalive = cfg.endpoint.map(|_| KEEPALIVE);
        Peer {
            tunn: Tunn::new(
                self.private.clone(),
                PublicKey::from(cfg.public_key),
                None,
                keepalive,
                index,
                None,
            ),
            endpoint: cfg.endpoint,
            cfg,
            index,
            last_handshake: None,
        }
    }

    /// Longest-prefix match of `dst` over every peer's allowed IPs.
    fn route(&mut self, dst: IpAddr) -> Option<&mut Peer> {
        let mut best: Option<(usize, u8)> = None;
        for (i, p) in self.peers.iter().enumerate() {
            for (net, len) in &p.cfg.allowed_ips {
                if contains(*net, *len, dst) && best.is_none_or(|(_, l)| *len > l) {
                    best = Some((i, *len));
                }
            }
        }
        best.map(|(i, _)| &mut self.peers[i])
    }
}

/// Whether `ip` is inside `net/len`.
pub fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A running device. Dropping it stops its tasks and closes the TUN (the interface goes away
/// with its last file descriptor).
pub struct Device {
    state: Arc<Mutex<State>>,
    udp: Arc<UdpSocket>,
    tasks: Vec<JoinHandle<()>>,
    listen_port: u16,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in a packet handler must not take the whole network down with a poisoned lock.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the UDP socket bound to `port` (0.0.0.0) and the TUN `name`, both in the namespace
/// `netns` when given (by a thread that enters it: sockets and TUNs belong to the namespace
/// they were created in), else in the caller's.
pub fn open(
    netns: Option<&str>,
    name: &str,
    port: u16,
) -> io::Result<(std::net::UdpSocket, tun::Device)> {
    let name = name.to_string();
    let netns = netns.map(str::to_string);
    std::thread::spawn(move || -> io::Result<_> {
        if let Some(ns) = &netns {
            let f = std::fs::File::open(format!("/run/netns/{ns}"))
                .map_err(|e| io::Error::new(e.kind(), format!("namespace {ns}: {e}")))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("entering namespace {ns}: {e}")))?;
        }
        let udp = std::net::UdpSocket::bind(("0.0.0.0", port))
            .map_err(|e| io::Error::new(e.kind(), format!("wireguard listen port {port}: {e}")))?;
        udp.set_nonblocking(true)?;
        let mut c = tun::Configuration::default();
        c.tun_name(&name).mtu(MTU).layer(tun::Layer::L3);
        // Addresses and link state are set with `ip` once the TUN is in its namespace.
        c.platform_config(|p| {
            p.ensure_root_privileges(false);
        });
        let dev =
            tun::create(&c).map_err(|e| io::Error::other(format!("creating TUN {name}: {e}")))?;
        Ok((udp, dev))
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

impl Device {
    /// Starts the packet loops over an opened socket and TUN (see [`open`]); must run inside a
    /// tokio runtime.
    pub fn start(
        udp: std::net::UdpSocket,
        tun: tun::Device,
        cfg: &DeviceConfig,
    ) -> io::Result<Device> {
        let listen_port = udp.local_addr()?.port();
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tun = Arc::new(tun::AsyncDevice::new(tun)?);
        let private = StaticSecret::from(cfg.private_key);
        let mut st = State {
            public: PublicKey::from(&private),
            private,
            peers: Vec::new(),
            next_index: 0,
        };
        for p in &cfg.peers {
            let peer = st.new_peer(p.clone());
            st.peers.push(peer);
        }
        let state = Arc::new(Mutex::new(st));
        let tasks = vec![
            tokio::spawn(tun_to_net(state.clone(), tun.clone(), udp.clone())),
            tokio::spawn(net_to_tun(state.clone(), tun, udp.clone())),
            tokio::spawn(timers(state.clone(), udp.clone())),
        ];
        Ok(Device {
            state,
            udp,
            tasks,
            listen_port,
        })
    }

    /// The bound UDP port.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Applies a new configuration in place: peers whose key is unchanged keep their sessions
    /// (only allowed IPs and endpoint change); a new private key restarts every session.
    pub fn reconfigure(&self, cfg: &DeviceConfig) {
        let mut st = lock(&self.state);
        let key_changed = st.private.to_bytes() != cfg.private_key;
        if key_changed {
            st.private = StaticSecret::from(cfg.private_key);
            st.public = PublicKey::from(&st.private);
            st.peers.clear();
        }
        let mut old = std::mem::take(&mut st.peers);
        for p in &cfg.peers {
            if let Some(pos) = old.iter().position(|o| o.cfg.public_key == p.public_key) {
                let mut kept = old.swap_remove(pos);
                if kept.cfg.endpoint != p.endpoint {
                    kept.endpoint = p.endpoint;
                }
                kept.cfg = p.clone();
                st.peers.push(kept);
            } else {
                let peer = st.new_peer(p.clone());
                st.peers.push(peer);
            }
        }
        tracing::debug!(
            peers = st.peers.len(),
            key_changed,
            "wireguard reconfigured"
        );
    }

    /// `(public key, endpoint, seconds since last handshake)` per peer, for diagnostics/tests.
    pub fn peer_status(&self) -> Vec<([u8; 32], Option<SocketAddr>, Option<Duration>)> {
        self.peers()
            .into_iter()
            .map(|p| (p.public_key, p.endpoint, p.last_handshake))
            .collect()
    }

    /// Every peer's status (keys, endpoints, allowed IPs, handshake age, traffic).
    pub fn peers(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        lock(&self.state)
            .peers
            .iter_mut()
            .map(|p| {
                let last = p.note_handshake();
                let (_, tx, rx, _, _) = p.tunn.stats();
                PeerStatus {
                    public_key: p.cfg.public_key,
                    configured_endpoint: p.cfg.endpoint,
                    endpoint: p.endpoint,
                    allowed_ips: p.cfg.allowed_ips.clone(),
                    last_handshake: last.map(|t| now.saturating_duration_since(t)),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect()
    }

    /// The local socket address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Cleartext packets from the TUN: encrypt for the peer owning the destination.
async fn tun_to_net(state: Arc<Mutex<State>>, tun: Arc<tun::AsyncDevice>, udp: Arc<UdpSocket>) {
    let mut src = vec![0u8; BUF];
    let mut dst = vec![0u8; BUF];
    loop {
        let n = match tun.recv(&mut src).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "TUN read failed; device stops");
                return;
            }
        };
        let Some(addr) = Tunn::dst_address(&src[..n]) else {
            continue;
        };
        let out = {
            let mut st = lock(&state);
            let Some(peer) = st.route(addr) else {
                continue;
            };
            match peer.tunn.encapsulate(&src[..n], &mut dst) {
                TunnResult::WriteToNetwork(p) => peer.endpoint.map(|e| (e, p.len())),
                TunnResult::Err(e) => {
                    tracing::debug!(error = ?e, "encapsulate");
                    None
                }
                _ => None,
            }
        };
        if let Some((to, len)) = out {
            let _ = udp.send_to(&dst[..len], to).await;
        }
    }
}

/// Which peer a datagram is for: handshake initiations by the sender's static key, everything
/// else by our session index in the packet.
fn peer_for(st: &State, datagram: &[u8]) -> Option<usize> {
    match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(h) => {
            let half = parse_handshake_anon(&st.private, &st.public, &h).ok()?;
            st.peers
                .iter()
                .position(|p| p.cfg.public_key == half.peer_static_public)
        }
        Packet::HandshakeResponse(p) => by_index(st, p.receiver_idx),
        Packet::PacketCookieReply(p) => by_index(st, p.receiver_idx),
        Packet::PacketData(p) => by_index(st, p.receiver_idx),
    }
}

fn by_index(st: &State, receiver: u32) -> Option<usize> {
    st.peers.iter().position(|p| p.index == receiver >> 8)
}

/// Encrypted datagrams from the socket: decrypt, check the source against the peer's allowed
/// IPs (cryptokey routing), hand to the TUN; send what the state machine answers.
async fn net_to_tun(state: Arc<Mutex<State>>, tun: Arc<tun::AsyncDevice>, udp: Arc<UdpSocket>) {
    let mut src = vec![0u8; BUF];
    let mut dst = vec![0u8; BUF];
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        let (n, from) = match udp.recv_from(&mut src).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        let mut to_tun: Option<usize> = None;
        {
            let mut st = lock(&state);
            let Some(i) = peer_for(&st, &src[..n]) else {
                continue;
            };
            let peer = &mut st.peers[i];
            match peer.tunn.decapsulate(Some(from.ip()), &src[..n], &mut dst) {
                TunnResult::WriteToNetwork(p) => {
                    peer.endpoint = Some(from);
                    replies.push((from, p.to_vec()));
                    // Packets queued while the handshake was running go out now.
                    while let TunnResult::WriteToNetwork(p) =
                        peer.tunn.decapsulate(None, &[], &mut dst)
                    {
                        replies.push((from, p.to_vec()));
                    }
                }
                TunnResult::WriteToTunnelV4(p, ip) => {
                    let (ip, len) = (IpAddr::V4(ip), p.len());
                    peer.endpoint = Some(from);
                    if peer
                        .cfg
                        .allowed_ips
                        .iter()
                        .any(|(n, l)| contains(*n, *l, ip))
                    {
                        to_tun = Some(len);
                    }
                }
                TunnResult::WriteToTunnelV6(p, ip) => {
                    let (ip, len) = (IpAddr::V6(ip), p.len());
                    peer.endpoint = Some(from);
                    if peer
                        .cfg
                        .allowed_ips
                        .iter()
                        .any(|(n, l)| contains(*n, *l, ip))
                    {
                        to_tun = Some(len);
                    }
                }
                TunnResult::Err(e) => tracing::debug!(error = ?e, %from, "decapsulate"),
                TunnResult::Done => {}
            }
        }
        for (to, p) in replies.drain(..) {
            let _ = udp.send_to(&p, to).await;
        }
        if let Some(len) = to_tun {
            let _ = tun.send(&dst[..len]).await;
        }
    }
}

/// Handshake retries, rekeys and keepalives.
async fn timers(state: Arc<Mutex<State>>, udp: Arc<UdpSocket>) {
    let mut dst = vec![0u8; BUF];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        tick.tick().await;
        {
            let mut st = lock(&state);
            for p in st.peers.iter_mut() {
                // Recorded before boringtun may drop an expired session (and its time).
                p.note_handshake();
                if let TunnResult::WriteToNetwork(b) = p.tunn.update_timers(&mut dst) {
                    if let Some(e) = p.endpoint {
                        out.push((e, b.to_vec()));
                    }
                }
            }
        }
        for (to, p) in out.drain(..) {
            let _ = udp.send_to(&p, to).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(contains(ip("10.1.2.0"), 24, ip("10.1.2.9")));
        assert!(!contains(ip("10.1.2.0"), 24, ip("10.1.3.1")));
        assert!(contains(ip("0.0.0.0"), 0, ip("1.2.3.4")));
        assert!(contains(ip("fd00::"), 8, ip("fd12::1")));
        assert!(!contains(ip("10.0.0.0"), 8, ip("fd12::1")));
    }

    #[test]
    fn keys_decode_with_clear_errors() {
        let k = generate_private_key();
        assert_eq!(decode_key("k", &k).expect("decodes").len(), 32);
        assert!(public_key_of(&k).is_ok());
        let e = decode_key("peer key", "abc").expect_err("short");
        assert!(e.contains("peer key"), "{e}");
        let e = decode_key("peer key", "AAAA").expect_err("3 bytes");
        assert!(e.contains("must be 32 bytes, got 3"), "{e}");
    }

    /// Namespaces of the device test, removed on drop (also when an assertion fails).
    struct Netns(Vec<String>);

    impl Drop for Netns {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", n])
                    .status();
            }
        }
    }

    fn ip(args: &[&str]) {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip runs");
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn key(b64: &str) -> [u8; 32] {
        decode_key("test key", b64).expect("generated key")
    }

    fn peer(private_b64: &str, allowed: &str, endpoint: SocketAddr) -> PeerConfig {
        let (net, len) = allowed.split_once('/').expect("cidr");
        PeerConfig {
            public_key: key(&public_key_of(private_b64).expect("public key")),
            allowed_ips: vec![(net.parse().expect("ip"), len.parse().expect("len"))],
            endpoint: Some(endpoint),
        }
    }

    /// Two real devices (UDP on the host's loopback, TUNs moved into namespaces of this test)
    /// handshake when one pings the other: the status shows keys, allowed IPs, traffic and a
    /// fresh handshake; a third peer whose endpoint never answers shows `never` and is not
    /// stale; once B is gone, B's handshake on A ages past a limit and B is stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_status_shows_handshakes_traffic_and_staleness() {
        if let Err(e) = crate::network_support() {
            eprintln!("SKIP: WireGuard device test: {e}");
            return;
        }
        let pid = std::process::id();
        let (na, nb) = (format!("wgd{pid}a"), format!("wgd{pid}b"));
        let _guard = Netns(vec![na.clone(), nb.clone()]);
        for n in [&na, &nb] {
            ip(&["netns", "add", n]);
        }
        let (ka, kb, kc) = (
            generate_private_key(),
            generate_private_key(),
            generate_private_key(),
        );
        let (ua, ta) = open(None, &na, 0).expect("device a");
        let (ub, tb) = open(None, &nb, 0).expect("device b");
        // C's endpoint: a socket held open that never answers (no ICMP, no handshake).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let at = |u: &std::net::UdpSocket| {
            SocketAddr::from(([127, 0, 0, 1], u.local_addr().expect("addr").port()))
        };
        let (pa, pb, pc) = (at(&ua), at(&ub), at(&silent));
        let a = Device::start(
            ua,
            ta,
            &DeviceConfig {
                private_key: key(&ka),
                peers: vec![peer(&kb, "10.77.0.2/32", pb), peer(&kc, "10.77.0.3/32", pc)],
            },
        )
        .expect("start a");
        let b = Device::start(
            ub,
            tb,
            &DeviceConfig {
                private_key: key(&kb),
                peers: vec![peer(&ka, "10.77.0.1/32", pa)],
            },
        )
        .expect("start b");
        for (dev, ns, addr) in [(&na, &na, "10.77.0.1/24"), (&nb, &nb, "10.77.0.2/24")] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        assert_eq!(
            a.peers()[0].last_handshake,
            None,
            "no handshake before traffic"
        );
        let pinged = tokio::task::spawn_blocking({
            let na = na.clone();
            move || {
                (0..10).any(|_| {
                    std::process::Command::new("ip")
                        .args(["netns", "exec", &na, "ping", "-c1", "-W1", "10.77.0.2"])
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
            }
        })
        .await
        .expect("ping task");
        assert!(pinged, "A reaches B over WireGuard");

        let st = a.peers();
        assert_eq!(st.len(), 2);
        let (sb, sc) = (&st[0], &st[1]);
        assert_eq!(sb.public_key, key(&public_key_of(&kb).expect("pk")));
        assert_eq!(sb.configured_endpoint, Some(pb));
        assert_eq!(sb.allowed_ips, vec![("10.77.0.2".parse().expect("ip"), 32)]);
        let age = sb.last_handshake.expect("B handshook");
        assert!(age < Duration::from_secs(15), "{age:?}");
        assert!(sb.rx_bytes > 0 && sb.tx_bytes > 0, "{sb:?}");
        assert!(!sb.is_stale(Duration::from_secs(180)));
        assert_eq!(sc.last_handshake, None, "C never answers");
        assert_eq!(sc.rx_bytes, 0);
        assert!(
            !sc.is_stale(Duration::ZERO),
            "never handshaken is not stale"
        );

        // B goes away: its last handshake on A only ages (and survives boringtun's session
        // expiry, kept by the device).
        drop(b);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let st = a.peers();
        let aged = st[0].last_handshake.expect("still remembered");
        assert!(aged > age, "{aged:?} after {age:?}");
        assert!(st[0].is_stale(Duration::from_secs(1)), "{:?}", st[0]);
        assert!(!st[1].is_stale(Duration::from_secs(1)));
        drop(silent);
    }
}
