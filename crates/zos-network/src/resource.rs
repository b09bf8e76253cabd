//! The `network` primitive: one network resource (NR) per network workload.
//!
//! Made per resource, with `netid = NetworkID(twin, name)` (upstream names):
//! - namespace `n-<netid>` (prefixed by [`NetConfig::ns_prefix`] when several nodes share a
//!   machine), with `lo` up;
//! - bridge `b-<netid>` in the node's namespace (VM taps join it), and a veth pair `v-<netid>`
//!   (on the bridge) ↔ `n-<netid>` (inside the NR) holding the gateway `<subnet>.1` and its ULA
//!   `Convert4to6(netid, gateway)/64`;
//! - WireGuard `w-<netid>` inside the NR, with `wgIP(subnet)/16` and a route per peer allowed
//!   IP; its UDP socket listens on the workload's port in the node's namespace;
//! - with `mycelium.hex_key`, a Mycelium instance inside the NR ([`crate::mycelium`]).
//!
//! `network-light` ([`NetworksLight`], zos-light's network) is the same without WireGuard:
//! namespace, bridge, veth with the gateway, ndmz, and its (mandatory) Mycelium instance.
//!
//! Everything is derived from the workload: the kernel holds no state we need. Provision is
//! idempotent (it converges what exists), a restarted node provisions again from its stored
//! deployments, and deprovision removes all of it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;
use zos_primitive::{Primitive, PrimitiveError, WorkloadCtx};
use zos_types::data::{Network, NetworkLight, WorkloadData};
use zos_types::ids::{convert_4to6, network_id};
use zos_types::{Workload, WorkloadType};

use crate::ip::{self, ip};
use crate::mycelium::{self as myc, MyceliumPlan, NrMycelium};
use crate::wg::{self, Device, DeviceConfig, PeerConfig};

/// Where a node's network plane lives.
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    /// The node's network namespace (its public side: WireGuard sockets, bridges), when it is
    /// not the process's own (several nodes on one machine, tests).
    pub node_netns: Option<String>,
    /// Prefix of the NR namespace names (`<prefix>n-<netid>`), so that nodes sharing a
    /// machine do not share namespaces. Empty on a real node (upstream names).
    pub ns_prefix: String,
}

/// The names a node derives for a network (upstream `Unique`-style names, §6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NrNames {
    /// `NetworkID(twin, name)`.
    pub netid: String,
    /// Namespace (with the node's prefix).
    pub namespace: String,
    /// Bridge `b-<netid>` in the node's namespace.
    pub bridge: String,
    /// WireGuard interface `w-<netid>` in the namespace.
    pub wireguard: String,
    /// The NR's leg on the bridge, `n-<netid>` inside the namespace.
    pub nr_link: String,
    /// Its peer on the bridge, `v-<netid>`.
    pub bridge_port: String,
}

impl NrNames {
    /// Names for network `name` of `twin`.
    pub fn new(twin: u32, name: &str, ns_prefix: &str) -> Self {
        let netid = network_id(twin, name);
        NrNames {
            namespace: format!("{ns_prefix}n-{netid}"),
            bridge: format!("b-{netid}"),
            wireguard: format!("w-{netid}"),
            nr_link: format!("n-{netid}"),
            bridge_port: format!("v-{netid}"),
            netid,
        }
    }
}

/// Upstream `wgIP(subnet)`: `100.64.<second octet>.<third octet>` (`10.3.1.0/16` →
/// `100.64.3.1`), the resource's address in the WireGuard /16.
pub fn wg_ip(subnet: Ipv4Addr) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(100, 64, o[1], o[2])
}

/// The gateway of an IPv4 subnet: its `.1`.
pub fn gateway(subnet: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from((u32::from(subnet) & mask) + 1)
}

/// A network workload, checked and decoded into what the node applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Names.
    pub names: NrNames,
    /// The network range.
    pub ip_range: (Ipv4Addr, u8),
    /// This node's subnet.
    pub subnet: (Ipv4Addr, u8),
    /// UDP port.
    pub port: u16,
    /// WireGuard configuration.
    pub device: DeviceConfig,
    /// The network's Mycelium instance, if it has a key.
    pub mycelium: Option<MyceliumPlan>,
}

fn v4(what: &str, n: &zos_types::gofmt::IpNet) -> Result<(Ipv4Addr, u8), String> {
    match n.get() {
        Some((IpAddr::V4(a), len)) => Ok((a, len)),
        Some((IpAddr::V6(_), _)) => Err(format!("{what} must be IPv4, got {n}")),
        None => Err(format!("{what} is not set")),
    }
}

fn overlaps(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    let len = a.1.min(b.1);
    wg::contains(a.0, len, b.0)
}

/// Checks a network workload (upstream `Valid()` plus what the node needs: decodable keys,
/// IPv4 subnets inside the range, no overlapping subnets, endpoints that parse).
pub fn plan(twin: u32, name: &str, n: &Network, ns_prefix: &str) -> Result<Plan, String> {
    let ip_range = v4("ip_range", &n.ip_range)?;
    let subnet = v4("subnet", &n.subnet)?;
    if ip_range.1 > subnet.1 || !wg::contains(ip_range.0.into(), ip_range.1, subnet.0.into()) {
        return Err(format!(
            "subnet {} is not inside ip_range {}",
            n.subnet, n.ip_range
        ));
    }
    if subnet.1 > 30 {
        return Err(format!("subnet {} is too small for a gateway", n.subnet));
    }
    if n.wireguard_private_key.is_empty() {
        return Err("network private key is empty".into());
    }
    let private_key = wg::decode_key("wireguard_private_key", &n.wireguard_private_key)?;
    let mut peers = Vec::with_capacity(n.peers.len());
    let mut subnets: Vec<(IpAddr, u8, String)> = vec![(
        subnet.0.into(),
        subnet.1,
        format!("this node's subnet {}", n.subnet),
    )];
    for (i, p) in n.peers.iter().enumerate() {
        let what = format!("peer {i}");
        let psub = v4(&format!("{what} subnet"), &p.subnet)?;
        if p.allowed_ips.is_empty() {
            return Err(format!("{what} ({}) has no allowed IPs", p.subnet));
        }
        if p.wireguard_public_key.is_empty() {
            return Err(format!("{what} ({}) has no public key", p.subnet));
        }
        let public_key = wg::decode_key(&format!("{what} public key"), &p.wireguard_public_key)?;
        if public_key == *x25519_public(&private_key).as_bytes() {
            return Err(format!("{what} ({}) has this node's own key", p.subnet));
        }
        if peers
            .iter()
            .any(|q: &PeerConfig| q.public_key == public_key)
        {
            return Err(format!("{what} ({}) repeats another peer's key", p.subnet));
        }
        for (net, len, who) in &subnets {
            if overlaps((*net, *len), (psub.0.into(), psub.1)) {
                return Err(format!(
                    "overlapping subnets: {what} subnet {} overlaps {who}",
                    p.subnet
                ));
            }
        }
        subnets.push((
            psub.0.into(),
            psub.1,
            format!("peer {i} subnet {}", p.subnet),
        ));
        let mut allowed = Vec::with_capacity(p.allowed_ips.len());
        for a in &p.allowed_ips {
            let (ip, len) = a
                .get()
                .ok_or_else(|| format!("{what} has an empty allowed IP"))?;
            allowed.push((ip, len));
        }
        let endpoint = if p.endpoint.is_empty() {
            None
        } else {
            Some(
                p.endpoint
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{what} endpoint {:?} is not ip:port: {e}", p.endpoint))?,
            )
        };
        peers.push(PeerConfig {
            public_key,
            allowed_ips: allowed,
            endpoint,
        });
    }
    let mycelium = match &n.mycelium {
        Some(m) => Some(MyceliumPlan::new(&m.hex_key.0, &m.peers)?),
        None => None,
    };
    Ok(Plan {
        names: NrNames::new(twin, name, ns_prefix),
        ip_range,
        subnet,
        port: n.wireguard_listen_port,
        device: DeviceConfig { private_key, peers },
        mycelium,
    })
}

fn x25519_public(k: &[u8; 32]) -> boringtun::x25519::PublicKey {
    boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(*k))
}

struct Running {
    plan: Plan,
    device: Device,
    mycelium: Option<NrMycelium>,
}

/// The network primitive and its port manager.
pub struct Networks {
    cfg: NetConfig,
    /// Running resources by netid. One lock: network changes are rare and must not interleave
    /// (port reservations, shared names).
    running: Mutex<BTreeMap<String, Running>>,
    /// The node's public IPv4 from its public config (checked to be on the node's plane).
    public: std::sync::Mutex<Option<Ipv4Addr>>,
    /// Running `network-light` resources by netid: their Mycelium instance (locked after
    /// `running`).
    light: Mutex<BTreeMap<String, NrMycelium>>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks").field("cfg", &self.cfg).finish()
    }
}

fn failed(e: impl std::fmt::Display) -> PrimitiveError {
    PrimitiveError::Failed(e.to_string())
}

impl Networks {
    /// A primitive for a node whose network plane is described by `cfg`.
    pub fn new(cfg: NetConfig) -> Arc<Self> {
        Arc::new(Networks {
            cfg,
            running: Mutex::new(BTreeMap::new()),
            public: std::sync::Mutex::new(None),
            light: Mutex::new(BTreeMap::new()),
        })
    }

    fn node_ns(&self) -> Option<&str> {
        self.cfg.node_netns.as_deref()
    }

    fn decode(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Plan, PrimitiveError> {
        let n = match wl.typed_data() {
            Ok(WorkloadData::Network(n)) => n,
            Ok(_) => return Err(PrimitiveError::InvalidData("not a network workload".into())),
            Err(e) => return Err(PrimitiveError::InvalidData(e.to_string())),
        };
        plan(ctx.twin, &wl.name, &n, &self.cfg.ns_prefix).map_err(PrimitiveError::InvalidData)
    }

    /// The public IPv4 NR traffic leaves with (`None`: masqueraded).
    pub fn public_ipv4(&self) -> Option<Ipv4Addr> {
        *self.public.lock().expect("public config lock")
    }

    /// Applies the node's public config in place (no restart, running NRs untouched): the
    /// ndmz's outgoing NAT uses its IPv4 when the node's plane holds that address, else stays
    /// masquerading (and says why). A config that does not parse changes nothing.
    pub async fn set_public_config(&self, config: Option<&Value>) -> Result<(), String> {
        let wanted = crate::ndmz::public_ipv4(config)?;
        let mut why = None;
        let public = match wanted {
            Some(a) => match crate::ndmz::plane_has(&self.cfg, a).await {
                Ok(true) => Some(a),
                // A public node's public namespace holds it (made first, see
                // `public::register_public_ips`): NR traffic keeps leaving masqueraded.
                Ok(false) if ip::netns_exists(&crate::public::namespace(&self.cfg)) => {
                    tracing::info!(%a, "public ipv4 is the public namespace's; network resources stay masqueraded");
                    None
                }
                Ok(false) => {
                    why = Some(format!(
                        "public ipv4 {a} is not an address of the node's network plane; network resources stay masqueraded"
                    ));
                    None
                }
                Err(e) => return Err(e.to_string()),
            },
            None => None,
        };
        // Serialised with provisions: an ndmz being made sees the new value or is converged here.
        let _running = self.running.lock().await;
        *self.public.lock().expect("public config lock") = public;
        crate::ndmz::apply_public(&self.cfg, public)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(public = ?public, "network public side applied");
        why.map_or(Ok(()), Err)
    }

    /// The UDP ports held by running resources.
    pub async fn ports(&self) -> Vec<(String, u16)> {
        self.running
            .lock()
            .await
            .iter()
            .map(|(id, r)| (id.clone(), r.device.listen_port()))
            .collect()
    }

    /// Peer status of a running resource (tests, diagnostics).
    pub async fn peer_status(
        &self,
        netid: &str,
    ) -> Option<Vec<([u8; 32], Option<SocketAddr>, Option<std::time::Duration>)>> {
        self.running
            .lock()
            .await
            .get(netid)
            .map(|r| r.device.peer_status())
    }

    /// `zos.admin.diag.wg`: every running resource's WireGuard device, its listen port and
    /// peers: public key, endpoint (now and as configured), allowed IPs, rx/tx bytes and the
    /// last completed handshake (`handshake`: `never` or `N s ago`; `handshake_age_secs`:
    /// `null` when none completed since the device started), `stale` per [`STALE_HANDSHAKE`].
    pub async fn wg_status(&self) -> Value {
        use base64::Engine as _;
        let running = self.running.lock().await;
        let list: Vec<Value> = running
            .iter()
            .map(|(netid, r)| {
                let peers: Vec<Value> = r
                    .device
                    .peers()
                    .into_iter()
                    .map(|p| {
                        let allowed: Vec<String> = p
                            .allowed_ips
                            .iter()
                            .map(|(ip, len)| format!("{ip}/{len}"))
                            .collect();
                        serde_json::json!({
                            "public_key": base64::engine::general_purpose::STANDARD.encode(p.public_key),
                            "endpoint": p.endpoint.map(|e| e.to_string()),
                            "configured_endpoint": p.configured_endpoint.map(|e| e.to_string()),
                            "allowed_ips": allowed,
                            "handshake_age_secs": p.last_handshake.map(|a| a.as_secs()),
                            "handshake": handshake_text(p.last_handshake),
                            "stale": p.is_stale(STALE_HANDSHAKE),
                            "rx_bytes": p.rx_bytes,
                            "tx_bytes": p.tx_bytes,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "netid": netid,
                    "listen_port": r.device.listen_port(),
                    "peers": peers,
                })
            })
            .collect();
        serde_json::json!({ "networks": list })
    }

    /// Peers that handshook once and have not for longer than `limit`, as `network NETID: peer
    /// KEY at ENDPOINT: last handshake N s ago` (the self-check's reasons).
    pub async fn stale_peers(&self, limit: std::time::Duration) -> Vec<String> {
        use base64::Engine as _;
        let running = self.running.lock().await;
        let mut out = Vec::new();
        for (netid, r) in running.iter() {
            for p in r.device.peers().into_iter().filter(|p| p.is_stale(limit)) {
                out.push(format!(
                    "network {netid}: WireGuard peer {} at {} {}",
                    base64::engine::general_purpose::STANDARD.encode(p.public_key),
                    p.endpoint
                        .or(p.configured_endpoint)
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    handshake_text(p.last_handshake),
                ));
            }
        }
        out
    }

    /// Creates or converges the resource for `p`.
    async fn apply(&self, p: Plan) -> Result<(), PrimitiveError> {
        let mut running = self.running.lock().await;
        let id = p.names.netid.clone();
        if self.light.lock().await.contains_key(&id) {
            return Err(failed(format!(
                "network {id} runs as a network-light resource on this node"
            )));
        }
        // Port manager: a port belongs to one resource of this node.
        if p.port != 0 {
            if let Some((other, _)) = running
                .iter()
                .find(|(o, r)| **o != id && r.device.listen_port() == p.port)
            {
                return Err(failed(format!(
                    "wireguard listen port {} is already used by network {other} on this node",
                    p.port
                )));
            }
        }
        let restart = match running.get(&id) {
            Some(r) => r.plan.port != p.port,
            None => true,
        };
        if restart {
            // Stop the old device first so its port is free again; the TUN goes with it.
            if let Some(m) = running.remove(&id).and_then(|r| r.mycelium) {
                myc::stop(m).await;
            }
            let (udp, tun) =
                wg::open(self.node_ns(), &p.names.wireguard, p.port).map_err(failed)?;
            // Nothing was made before the socket was bound: a port in use leaves no trace.
            let made = self.links(&p.names, p.subnet).await;
            if let Err(e) = made {
                drop((udp, tun));
                self.remove(&p.names).await;
                return Err(failed(e));
            }
            let device = Device::start(udp, tun, &p.device).map_err(failed)?;
            if let Err(e) = self.wireguard_link(&p).await {
                drop(device);
                self.remove(&p.names).await;
                return Err(failed(e));
            }
            let mycelium = match converge_mycelium(&p.names, p.mycelium.as_ref(), None).await {
                Ok(m) => m,
                Err(e) => {
                    drop(device);
                    self.remove(&p.names).await;
                    return Err(failed(e));
                }
            };
            running.insert(
                id,
                Running {
                    plan: p,
                    device,
                    mycelium,
                },
            );
        } else if let Some(r) = running.get_mut(&id) {
            r.device.reconfigure(&p.device);
            self.links(&p.names, p.subnet).await.map_err(failed)?;
            self.routes(&p).await.map_err(failed)?;
            r.mycelium = converge_mycelium(&p.names, p.mycelium.as_ref(), r.mycelium.take())
                .await
                .map_err(failed)?;
            r.plan = p;
        }
        Ok(())
    }

    /// Namespace, bridge, veth and the gateway addresses (idempotent).
    async fn links(&self, n: &NrNames, subnet: (Ipv4Addr, u8)) -> Result<(), ip::IpError> {
        let node = self.node_ns();
        let ns = Some(n.namespace.as_str());
        ip::netns_ensure(&n.namespace).await?;
        ip(ns, &["link", "set", "lo", "up"]).await?;
        // The NR routes: between its bridge and WireGuard, and for peers behind this node
        // (access peers of `zos network access`) between WireGuard peers.
        ip(
            None,
            &[
                "netns",
                "exec",
                &n.namespace,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .await?;
        if !ip::link_exists(node, &n.bridge).await {
            ip::bridge_add(node, &n.bridge).await?;
        }
        ip(node, &["link", "set", &n.bridge, "up"]).await?;
        if !ip::link_exists(ns, &n.nr_link).await {
            ip::link_delete(node, &n.bridge_port).await?;
            ip(
                node,
                &[
                    "link",
                    "add",
                    &n.bridge_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &n.nr_link,
                    "netns",
                    &n.namespace,
                ],
            )
            .await?;
        }
        ip(
            node,
            &["link", "set", &n.bridge_port, "master", &n.bridge, "up"],
        )
        .await?;
        let gw = gateway(subnet.0, subnet.1);
        let gw4 = format!("{gw}/{}", subnet.1);
        ip(ns, &["addr", "replace", &gw4, "dev", &n.nr_link]).await?;
        if let Some(v6) = convert_4to6(&n.netid, gw.into()) {
            ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "replace",
                    &format!("{v6}/64"),
                    "dev",
                    &n.nr_link,
                    "nodad",
                ],
            )
            .await?;
        }
        ip(ns, &["link", "set", &n.nr_link, "up"]).await?;
        // Out of the node through the NAT namespace.
        crate::ndmz::ensure(&self.cfg, self.public_ipv4()).await?;
        crate::ndmz::attach(&self.cfg, n).await?;
        Ok(())
    }

    /// Moves the TUN into the namespace, addresses it and routes the peers' allowed IPs.
    async fn wireguard_link(&self, p: &Plan) -> Result<(), ip::IpError> {
        let n = &p.names;
        let ns = Some(n.namespace.as_str());
        // A TUN left by an earlier run of this node is gone with its process; anything else by
        // that name in the namespace is ours to replace.
        ip::link_delete(ns, &n.wireguard).await?;
        ip(
            self.node_ns(),
            &["link", "set", &n.wireguard, "netns", &n.namespace],
        )
        .await?;
        let wgip = format!("{}/16", wg_ip(p.subnet.0));
        ip(ns, &["addr", "replace", &wgip, "dev", &n.wireguard]).await?;
        ip(
            ns,
            &[
                "link",
                "set",
                &n.wireguard,
                "mtu",
                &wg::MTU.to_string(),
                "up",
            ],
        )
        .await?;
        self.routes(p).await
    }

    /// Exactly one route per peer allowed IP through the WireGuard link, plus the whole range
    /// (so traffic to a subnet without a peer yet fails fast instead of leaving the NR).
    async fn routes(&self, p: &Plan) -> Result<(), ip::IpError> {
        let n = &p.names;
        let ns = Some(n.namespace.as_str());
        let mut want: Vec<String> = Vec::new();
        for peer in &p.device.peers {
            for (ip, len) in &peer.allowed_ips {
                if ip.is_ipv4() {
                    // `ip` prints host routes without /32.
                    let net = network_of(*ip, *len);
                    want.push(if *len == 32 {
                        net
                    } else {
                        format!("{net}/{len}")
                    });
                }
            }
        }
        want.sort();
        want.dedup();
        let have = ip::static_routes(ns, &n.wireguard, false).await?;
        for r in have.iter().filter(|r| !want.contains(r)) {
            ip(ns, &["route", "del", r, "dev", &n.wireguard]).await?;
        }
        for r in &want {
            ip(
                ns,
                &[
                    "route",
                    "replace",
                    r,
                    "dev",
                    &n.wireguard,
                    "proto",
                    "static",
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Removes everything a resource made (best effort; absent parts are fine).
    async fn remove(&self, n: &NrNames) {
        let node = self.node_ns();
        if let Err(e) = ip::netns_delete(&n.namespace).await {
            tracing::warn!(error = %e, "removing network namespace");
        }
        for link in [&n.bridge_port, &n.bridge] {
            if let Err(e) = ip::link_delete(node, link).await {
                tracing::warn!(error = %e, "removing network link");
            }
        }
    }
}

/// Keeps, restarts, starts or stops the NR's Mycelium instance to match `p`, and puts its
/// gateway on the NR's bridge leg.
async fn converge_mycelium(
    names: &NrNames,
    want: Option<&MyceliumPlan>,
    have: Option<NrMycelium>,
) -> Result<Option<NrMycelium>, String> {
    let keep = match (have, want) {
        (Some(h), Some(w)) if h.plan == *w => Some(h),
        (Some(h), _) => {
            myc::stop(h).await;
            None
        }
        (None, _) => None,
    };
    myc::address_bridge(&names.namespace, &names.nr_link, want)
        .await
        .map_err(|e| e.to_string())?;
    match (keep, want) {
        (Some(h), _) => Ok(Some(h)),
        (None, Some(w)) => myc::start(&names.namespace, w).await.map(Some),
        (None, None) => Ok(None),
    }
}

/// The `network-light` primitive (zos-light's network resource): the NR without WireGuard,
/// with its mandatory Mycelium instance. Shares the node's [`Networks`] (names, ndmz, lock).
#[derive(Debug)]
pub struct NetworksLight(pub Arc<Networks>);

impl NetworksLight {
    fn decode(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<(NrNames, (Ipv4Addr, u8), MyceliumPlan), PrimitiveError> {
        let n: NetworkLight = match wl.typed_data() {
            Ok(WorkloadData::NetworkLight(n)) => n,
            Ok(_) => {
                return Err(PrimitiveError::InvalidData(
                    "not a network-light workload".into(),
                ));
            }
            Err(e) => return Err(PrimitiveError::InvalidData(e.to_string())),
        };
        let subnet = v4("subnet", &n.subnet).map_err(PrimitiveError::InvalidData)?;
        if subnet.1 > 30 {
            return Err(PrimitiveError::InvalidData(format!(
                "subnet {} is too small for a gateway",
                n.subnet
            )));
        }
        let m = MyceliumPlan::new(&n.mycelium.hex_key.0, &n.mycelium.peers)
            .map_err(PrimitiveError::InvalidData)?;
        Ok((
            NrNames::new(ctx.twin, &wl.name, &self.0.cfg.ns_prefix),
            subnet,
            m,
        ))
    }
}

#[async_trait]
impl Primitive for NetworksLight {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::NetworkLight
    }

    fn supports_update(&self) -> bool {
        true
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let (names, subnet, m) = self.decode(ctx, wl)?;
        tracing::info!(netid = %names.netid, wl = %ctx.workload_id, "network-light resource");
        let running = self.0.running.lock().await;
        if running.contains_key(&names.netid) {
            return Err(failed(format!(
                "a network named {:?} already runs on this node",
                wl.name
            )));
        }
        let mut light = self.0.light.lock().await;
        let fresh = !light.contains_key(&names.netid);
        if let Err(e) = self.0.links(&names, subnet).await {
            if fresh {
                self.0.remove(&names).await;
            }
            return Err(failed(e));
        }
        let have = light.remove(&names.netid);
        match converge_mycelium(&names, Some(&m), have).await {
            Ok(Some(r)) => {
                light.insert(names.netid.clone(), r);
                Ok(Value::Null)
            }
            Ok(None) => Err(failed("mycelium instance missing")),
            Err(e) => {
                if fresh {
                    self.0.remove(&names).await;
                }
                Err(failed(e))
            }
        }
    }

    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.provision(ctx, wl).await
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let names = NrNames::new(ctx.twin, &wl.name, &self.0.cfg.ns_prefix);
        let running = self.0.running.lock().await;
        if running.contains_key(&names.netid) {
            // The name is a `network` resource's: not ours to remove.
            return Ok(());
        }
        if let Some(m) = self.0.light.lock().await.remove(&names.netid) {
            myc::stop(m).await;
        }
        self.0.remove(&names).await;
        if let Err(e) = crate::ndmz::remove_if_unused(&self.0.cfg).await {
            tracing::warn!(error = %e, "removing the unused ndmz");
        }
        drop(running);
        Ok(())
    }
}

fn network_of(ip: IpAddr, len: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            Ipv4Addr::from(u32::from(a) & mask).to_string()
        }
        IpAddr::V6(a) => a.to_string(),
    }
}

/// Σ rx + tx bytes of the links named `links` in `ip -s -j link show` output (links absent
/// count 0).
pub fn traffic_of(ip_json: &str, links: &[&str]) -> Result<u64, String> {
    let v: Value = serde_json::from_str(ip_json).map_err(|e| format!("ip -s -j link show: {e}"))?;
    let list = v
        .as_array()
        .ok_or("ip -s -j link show: not a list of links")?;
    let mut total: u64 = 0;
    for l in list {
        if !links.contains(&l["ifname"].as_str().unwrap_or_default()) {
            continue;
        }
        for dir in ["rx", "tx"] {
            let b = l["stats64"][dir]["bytes"]
                .as_u64()
                .ok_or_else(|| format!("link {}: no {dir} byte counter", l["ifname"]))?;
            total = total.saturating_add(b);
        }
    }
    Ok(total)
}

#[async_trait]
impl Primitive for Networks {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::Network
    }

    fn supports_update(&self) -> bool {
        true
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let p = self.decode(ctx, wl)?;
        tracing::info!(netid = %p.names.netid, wl = %ctx.workload_id, "network resource");
        self.apply(p).await?;
        Ok(Value::Null)
    }

    async fn update(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.provision(ctx, wl).await
    }

    /// Bytes the NR moved through the node's uplink: received + sent on its WireGuard link
    /// (the mesh, carried encrypted by the node's uplink) and on its `public` link (NATed out
    /// through the ndmz). Kernel counters, so they restart at 0 with a re-created link; a
    /// missing NR (not made yet, or being re-created) reports no counter this round.
    async fn consumption(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<Option<u64>, PrimitiveError> {
        let names = NrNames::new(ctx.twin, &wl.name, &self.cfg.ns_prefix);
        if !ip::netns_exists(&names.namespace) {
            return Ok(None);
        }
        let out = ip(Some(&names.namespace), &["-s", "-j", "link", "show"])
            .await
            .map_err(failed)?;
        traffic_of(&out, &[names.wireguard.as_str(), "public"])
            .map(Some)
            .map_err(failed)
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let names = NrNames::new(ctx.twin, &wl.name, &self.cfg.ns_prefix);
        let mut running = self.running.lock().await;
        if let Some(m) = running.remove(&names.netid).and_then(|r| r.mycelium) {
            myc::stop(m).await;
        }
        self.remove(&names).await;
        // Under the lock: a resource provisioned meanwhile cannot lose its ndmz.
        if let Err(e) = crate::ndmz::remove_if_unused(&self.cfg).await {
            tracing::warn!(error = %e, "removing the unused ndmz");
        }
        Ok(())
    }
}

/// A peer with an endpoint whose last handshake is older than this makes the node degraded:
/// sessions are renewed every 2 min while keepalives (25 s) flow, so 3 min means the peer
/// (or the path to it) is gone.
pub const STALE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(180);

/// `never`, or `N s ago`.
pub fn handshake_text(age: Option<std::time::Duration>) -> String {
    match age {
        None => "never".into(),
        Some(a) => format!("{} s ago", a.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn net(v: Value) -> Network {
        serde_json::from_value(v).expect("network json")
    }

    #[test]
    fn names_and_addresses_follow_upstream() {
        let n = NrNames::new(1, "net1", "");
        assert_eq!(n.netid, "HFzUQHtqE2iA5");
        assert_eq!(n.namespace, "n-HFzUQHtqE2iA5");
        assert_eq!(n.bridge, "b-HFzUQHtqE2iA5");
        assert_eq!(n.wireguard, "w-HFzUQHtqE2iA5");
        // zosbase net_resource_test.go: wgIP(10.3.1.0/16) = 100.64.3.1
        assert_eq!(
            wg_ip(Ipv4Addr::new(10, 3, 1, 0)),
            Ipv4Addr::new(100, 64, 3, 1)
        );
        assert_eq!(
            gateway(Ipv4Addr::new(10, 20, 2, 0), 24),
            Ipv4Addr::new(10, 20, 2, 1)
        );
    }

    #[test]
    fn traffic_sums_both_directions_of_the_wireguard_and_public_links_only() {
        let out = r#"[
          {"ifname":"lo","stats64":{"rx":{"bytes":999},"tx":{"bytes":999}}},
          {"ifname":"w-abc","stats64":{"rx":{"bytes":100},"tx":{"bytes":20}}},
          {"ifname":"n-abc","stats64":{"rx":{"bytes":5000},"tx":{"bytes":5000}}},
          {"ifname":"public","stats64":{"rx":{"bytes":3},"tx":{"bytes":4}}}]"#;
        assert_eq!(traffic_of(out, &["w-abc", "public"]), Ok(127));
        assert_eq!(traffic_of("[]", &["w-abc", "public"]), Ok(0));
        assert!(traffic_of("{", &["w"]).is_err());
        let no_stats = r#"[{"ifname":"public"}]"#;
        assert!(
            traffic_of(no_stats, &["public"])
                .unwrap_err()
                .contains("no rx byte counter")
        );
    }

    #[test]
    fn bad_networks_get_clear_errors() {
        let k = wg::generate_private_key();
        let pk = wg::public_key_of(&wg::generate_private_key()).expect("pub");
        let base = |peers: Value| {
            net(json!({"ip_range": "10.1.0.0/16", "subnet": "10.1.1.0/24",
                "wireguard_private_key": k, "wireguard_listen_port": 3011, "peers": peers}))
        };
        let ok = base(json!([{"subnet": "10.1.2.0/24", "wireguard_public_key": pk,
            "allowed_ips": ["10.1.2.0/24", "100.64.1.2/32"], "endpoint": "10.0.0.2:3011"}]));
        let p = plan(1, "n", &ok, "").expect("valid");
        assert_eq!(p.device.peers[0].allowed_ips.len(), 2);
        let err = |n: Network| plan(1, "n", &n, "").expect_err("refused");
        let e = err(base(
            json!([{"subnet": "10.1.1.0/24", "wireguard_public_key": pk,
            "allowed_ips": ["10.1.1.0/24"]}]),
        ));
        assert!(e.contains("overlapping subnets"), "{e}");
        let e = err(base(
            json!([{"subnet": "10.1.2.0/24", "wireguard_public_key": pk,
            "allowed_ips": []}]),
        ));
        assert!(e.contains("has no allowed IPs"), "{e}");
        let e = err(base(
            json!([{"subnet": "10.1.2.0/24", "wireguard_public_key": "nope",
            "allowed_ips": ["10.1.2.0/24"]}]),
        ));
        assert!(e.contains("peer 0 public key"), "{e}");
        let e = err(base(
            json!([{"subnet": "10.1.2.0/24", "wireguard_public_key": pk,
            "allowed_ips": ["10.1.2.0/24"], "endpoint": "somewhere"}]),
        ));
        assert!(e.contains("endpoint"), "{e}");
        let mut bad_key = base(json!([]));
        bad_key.wireguard_private_key = "short".into();
        assert!(err(bad_key).contains("wireguard_private_key"));
        let mut outside = base(json!([]));
        outside.subnet = zos_types::gofmt::IpNet::parse("10.2.1.0/24").expect("net");
        assert!(err(outside).contains("not inside ip_range"));
    }
}
