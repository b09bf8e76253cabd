//! Link-local peer discovery as upstream (reference §10): a UDP socket on `[::]:9650` joins
//! `ff02::cafe` on every interface that is up, multicast-capable, not loopback, TUN or
//! point-to-point and has an `fe80::/64` address, and sends a 50-byte beacon (`"mycelium"`,
//! TCP port, router id) there every 60 s. A beacon from an `fe80::/64` source with another
//! router id makes its sender a peer at `tcp://[fe80::…%scope]:port`.
//!
//! Interfaces are read from `/proc/net/if_inet6` and `/sys/class/net/*/{flags,type}` (no
//! netlink dependency); they are rescanned at every beacon so that links that appear later are
//! joined too.

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

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_POINTOPOINT: u32 = 0x10;
const IFF_MULTICAST: u32 = 0x1000;
/// `ARPHRD_NONE`: what a TUN device reports as its type.
const ARPHRD_NONE: u32 = 65534;

/// An interface discovery may use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    /// Kernel index (the scope id of its link-local addresses).
    pub index: u32,
    /// Name.
    pub name: String,
}

fn sysfs_u32(name: &str, attr: &str) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}")).ok()?;
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Interfaces with an `fe80::/64` address that are up, multicast-capable and neither
/// loopback, point-to-point nor a TUN; `only` restricts them to those names (if not empty).
pub fn interfaces(only: &[String]) -> Vec<Interface> {
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for line in table.lines() {
        // address ifindex prefixlen scope flags name
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[0].starts_with("fe80000000000000") {
            continue;
        }
        let (Ok(index), name) = (u32::from_str_radix(f[1], 16), f[5]) else {
            continue;
        };
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let (Some(flags), Some(kind)) = (sysfs_u32(name, "flags"), sysfs_u32(name, "type")) else {
            continue;
        };
        if flags & IFF_UP == 0
            || flags & IFF_MULTICAST == 0
            || flags & (IFF_LOOPBACK | IFF_POINTOPOINT) != 0
            || kind == ARPHRD_NONE
        {
            continue;
        }
        out.insert(Interface {
            index,
            name: name.to_string(),
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
