//! The Mycelium instance of a network resource (upstream §12 of the mycelium reference): a
//! `network` workload with `mycelium.hex_key` runs one instance inside the NR namespace,
//! keyed with the user's 32 bytes as-is, so the network owns the `/64` derived from that key
//! wherever it is deployed.
//!
//! - TUN `my` inside the NR namespace (upstream's name; names are per namespace), holding the
//!   instance's address with prefix length 7, so `400::/7` is routed into the overlay;
//! - `<NR /64>::1/64` on the NR's leg on its bridge (`n-<netid>`), so VMs on the bridge
//!   (their private tap) get addresses of that /64 and `400::/7` via `::1`; the instance
//!   delivers the whole /64 to its TUN and the namespace routes it to the bridge;
//! - one static peer: the node's host instance, at the node's end of the ndmz uplink
//!   (`tcp://100.126.0.1:9651`, reached through the NR's default route; upstream dials the
//!   node's public IPv4 instead). The host instances link nodes together, so NR instances of
//!   one network on different nodes reach each other through them. Discovery and QUIC are
//!   off: the NR's links are its VMs' bridge and the ndmz, where no other instance belongs.
//!
//! The instance runs on its own thread inside the namespace ([`NsNode`]) for as long as the
//! resource runs in this process; a restarted node provisions again and starts it again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zos_mycelium::netns::NsNode;
use zos_mycelium::node::{Config, Endpoint};
use zos_mycelium::{SecretKey, Subnet};

use crate::ip::{self, ip};

/// The TUN of an NR instance, inside the NR namespace.
pub const TUN: &str = "my";
/// The port of the node's host instance (upstream's default TCP port).
pub const HOST_PORT: u16 = 9651;
/// Where an NR reaches its node's host instance: the node's end of the ndmz uplink.
pub const HOST_PEER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 126, 0, 1)), HOST_PORT);

/// What the node runs for a network's mycelium settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyceliumPlan {
    /// The X25519 secret, as given.
    pub key: [u8; 32],
    /// Extra peers from the workload (`network` refuses any; kept for `network-light`).
    pub peers: Vec<Endpoint>,
}

impl MyceliumPlan {
    /// Checks `hex_key` and the peers.
    pub fn new(key: &[u8], peers: &[String]) -> Result<Self, String> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| format!("mycelium key must be 32 bytes, got {}", key.len()))?;
        let peers = peers
            .iter()
            .map(|p| zos_mycelium::node::parse_endpoint(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { key, peers })
    }

    /// The network's mycelium /64.
    pub fn subnet(&self) -> Subnet {
        SecretKey::from_bytes(self.key).public_key().subnet()
    }

    /// The gateway `<subnet>::1` on the NR's bridge leg.
    pub fn gateway(&self) -> Ipv6Addr {
        zos_mycelium::crypto::gateway(&self.subnet())
    }
}

/// A running NR instance (stopped on drop: its thread ends and its TUN goes).
pub struct NrMycelium {
    /// What it was started with.
    pub plan: MyceliumPlan,
    node: NsNode,
}

impl std::fmt::Debug for NrMycelium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NrMycelium")
            .field("subnet", &self.plan.subnet())
            .finish_non_exhaustive()
    }
}

impl NrMycelium {
    /// The instance (views: peers, routes).
    pub fn node(&self) -> &NsNode {
        &self.node
    }
}

/// Starts the instance of `plan` inside `namespace` (whose TUN `my` must not exist: a TUN
/// dies with the process that made it, so one left there is not ours and is replaced).
pub async fn start(namespace: &str, plan: &MyceliumPlan) -> Result<NrMycelium, String> {
    ip::link_delete(Some(namespace), TUN)
        .await
        .map_err(|e| e.to_string())?;
    let mut peers = vec![Endpoint::tcp(HOST_PEER)];
    peers.extend(plan.peers.iter().copied());
    let cfg = Config {
        key: SecretKey::from_bytes(plan.key),
        peers,
        tcp_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, HOST_PORT)),
        quic_listen: None,
        tun_name: Some(TUN.into()),
        timer_divisor: 1,
        discovery: None,
    };
    let ns = namespace.to_string();
    // Starting waits for the node's thread (TUN and listener made): off the async workers.
    let node = tokio::task::spawn_blocking(move || NsNode::start(cfg, Some(&ns), None))
        .await
        .map_err(|e| format!("mycelium start: {e}"))?
        .map_err(|e| format!("mycelium in {namespace}: {e}"))?;
    tracing::info!(namespace, subnet = %plan.subnet(), "network mycelium instance running");
    Ok(NrMycelium {
        plan: plan.clone(),
        node,
    })
}

/// Stops an instance off the async workers (stopping joins its thread).
pub async fn stop(m: NrMycelium) {
    let _ = tokio::task::spawn_blocking(move || m.node.stop()).await;
}

/// Puts `<subnet>::1/64` on the NR's bridge leg `link` and removes any other overlay
/// (`400::/7`) address there (a key changed by an update, or none wanted any more).
pub async fn address_bridge(
    namespace: &str,
    link: &str,
    want: Option<&MyceliumPlan>,
) -> Result<(), ip::IpError> {
    let ns = Some(namespace);
    let wanted = want.map(|p| format!("{}/64", p.gateway()));
    let out = ip(ns, &["-6", "-o", "addr", "show", "dev", link]).await?;
    for have in overlay_addresses(&out) {
        if Some(&have) != wanted.as_ref() {
            ip(ns, &["-6", "addr", "del", &have, "dev", link]).await?;
        }
    }
    if let Some(w) = &wanted {
        ip(ns, &["-6", "addr", "replace", w, "dev", link, "nodad"]).await?;
    }
    Ok(())
}

/// The `400::/7` addresses (`addr/len`) in `ip -6 -o addr show` output.
pub fn overlay_addresses(ip_o: &str) -> Vec<String> {
    ip_o.lines()
        .filter_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
            let a: Ipv6Addr = cidr.split('/').next()?.parse().ok()?;
            (a.octets()[0] & 0xfe == 0x04).then(|| cidr.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_gives_the_keys_subnet_and_gateway() {
        let key: Vec<u8> = (0xa0..=0xbf).collect();
        let p = MyceliumPlan::new(&key, &[]).expect("plan");
        let s = p.subnet();
        assert_eq!(s.prefix_len(), 64);
        let g = p.gateway();
        assert!(s.contains_ip(g));
        assert_eq!(g.octets()[15], 1);
        assert_eq!(g.octets()[..8], s.address().octets()[..8]);
        assert!(MyceliumPlan::new(&key[..31], &[]).is_err());
        assert!(MyceliumPlan::new(&key, &["nope".into()]).is_err());
        let q = MyceliumPlan::new(&key, &["tcp://10.0.0.1:9651".into()]).expect("peers");
        assert_eq!(q.peers.len(), 1);
    }

    #[test]
    fn only_overlay_addresses_are_listed() {
        let out = "5: n-x    inet6 fd12::1/64 scope global \\       valid_lft forever\n\
                   5: n-x    inet6 45a:1:2:3::1/64 scope global nodad \\       valid_lft forever\n\
                   5: n-x    inet6 fe80::1/64 scope link \\       valid_lft forever\n\
                   5: n-x    inet6 5ff::1/64 scope global \\       valid_lft forever\n";
        assert_eq!(
            overlay_addresses(out),
            vec!["45a:1:2:3::1/64".to_string(), "5ff::1/64".to_string()]
        );
    }
}
