//! Link-local peer discovery as upstream (reference §10): a UDP socket on `[::]:9650` joins
//! `ff02::cafe` on every interface that is up, multicast-capable, not loopback, TUN or
//! point-to-point and has an `fe80::/64` address, and sends a 50-byte beacon (`"mycelium"`,
//! TCP port, router id) there every 60 s. A beacon from an `fe80::/64` source with another
//! router id makes its sender a peer at `tcp://[fe80::…%scope]:port`.
//!
//! Interfaces are read with getifaddrs and rescanned at every beacon, so that links that
//! appear later are joined too.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::packet::{self, RouterId};

/// Upstream's discovery port.
pub const DISCOVERY_PORT: u16 = 9650;
/// Upstream's multicast group (link-local scope).
pub const MULTICAST_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xcafe);
/// Upstream's beacon period.
pub const BEACON_INTERVAL: Duration = Duration::from_secs(60);

/// An interface discovery may use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    /// Kernel index (the scope id of its link-local addresses).
    pub index: u32,
    /// Name.
    pub name: String,
}

/// Interfaces with an `fe80::/64` address that are up, multicast-capable and neither
/// loopback nor point-to-point (TUNs are point-to-point); `only` restricts them to those names
/// (if not empty). Read with getifaddrs (netlink), so a node running on a thread inside
/// another namespace sees that namespace's interfaces (`/sys/class/net` would show the
/// mounter's).
pub fn interfaces(only: &[String]) -> Vec<Interface> {
    use nix::net::if_::InterfaceFlags as F;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for a in addrs {
        let Some(v6) = a.address.as_ref().and_then(|s| s.as_sockaddr_in6()) else {
            continue;
        };
        if v6.ip().segments()[..4] != [0xfe80, 0, 0, 0] {
            continue;
        }
        if !only.is_empty() && !only.contains(&a.interface_name) {
            continue;
        }
        if !a.flags.contains(F::IFF_UP | F::IFF_MULTICAST)
            || a.flags.intersects(F::IFF_LOOPBACK | F::IFF_POINTOPOINT)
        {
            continue;
        }
        out.insert(Interface {
            index: v6.scope_id(),
            name: a.interface_name,
        });
    }
    out.into_iter().collect()
}

/// What a valid beacon announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovered {
    /// The sender's TCP peer endpoint (link-local, with its scope).
    pub endpoint: SocketAddr,
    /// The sender's router id.
    pub router_id: RouterId,
}

/// Checks a received datagram: an `fe80::/64` source, a well-formed beacon, not our own.
pub fn accept_beacon(from: SocketAddr, data: &[u8], own: &RouterId) -> Option<Discovered> {
    let SocketAddr::V6(from) = from else {
        return None;
    };
    if from.ip().segments()[..4] != [0xfe80, 0, 0, 0] {
        return None;
    }
    let (port, router_id) = packet::decode_beacon(data)?;
    if router_id == *own || port == 0 {
        return None;
    }
    Some(Discovered {
        endpoint: SocketAddr::V6(SocketAddrV6::new(*from.ip(), port, 0, from.scope_id())),
        router_id,
    })
}

/// The discovery socket: bound, multicast loop off (our own beacons are not read back).
pub async fn bind(port: u16) -> std::io::Result<Arc<UdpSocket>> {
    let s = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await?;
    s.set_multicast_loop_v6(false)?;
    Ok(Arc::new(s))
}

/// Joins the group on interfaces not joined yet and sends one beacon on each usable one.
pub async fn beacon_round(
    sock: &UdpSocket,
    joined: &mut BTreeSet<u32>,
    only: &[String],
    beacon: &[u8],
    port: u16,
) {
    let ifs = interfaces(only);
    // Interfaces that went away lose their membership with them.
    joined.retain(|i| ifs.iter().any(|f| f.index == *i));
    for f in &ifs {
        if !joined.contains(&f.index) {
            match sock.join_multicast_v6(&MULTICAST_GROUP, f.index) {
                Ok(()) => {
                    tracing::info!(interface = %f.name, "link-local discovery joined");
                    joined.insert(f.index);
                }
                Err(e) if e.raw_os_error() == Some(98) => {
                    // EADDRINUSE: already a member (joined before a rescan forgot it).
                    joined.insert(f.index);
                }
                Err(e) => {
                    tracing::debug!(interface = %f.name, "joining {MULTICAST_GROUP}: {e}");
                    continue;
                }
            }
        }
        let to = SocketAddrV6::new(MULTICAST_GROUP, port, 0, f.index);
        if let Err(e) = sock.send_to(beacon, to).await {
            tracing::debug!(interface = %f.name, "beacon: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn beacons_are_checked() {
        let own = RouterId::new(SecretKey::from_bytes([1; 32]).public_key(), [0; 6]);
        let other = RouterId::new(SecretKey::from_bytes([2; 32]).public_key(), [0; 6]);
        let b = packet::encode_beacon(9651, &other);
        let ll: SocketAddr = "[fe80::1%3]:9650".parse().expect("addr");
        let d = accept_beacon(ll, &b, &own).expect("accepted");
        assert_eq!(
            d.endpoint,
            "[fe80::1%3]:9651".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(d.router_id, other);
        // Not link-local, our own, truncated, port 0: refused.
        assert!(accept_beacon("[2001:db8::1]:9650".parse().expect("a"), &b, &own).is_none());
        assert!(accept_beacon("10.0.0.1:9650".parse().expect("a"), &b, &own).is_none());
        assert!(accept_beacon(ll, &packet::encode_beacon(9651, &own), &own).is_none());
        assert!(accept_beacon(ll, &b[..49], &own).is_none());
        assert!(accept_beacon(ll, &packet::encode_beacon(0, &other), &own).is_none());
    }
}
