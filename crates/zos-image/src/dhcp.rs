//! A DHCPv4 client (RFC 2131) for the boot: DISCOVER, OFFER, REQUEST, ACK over a UDP socket
//! bound to the interface (the broadcast flag asks the server to broadcast its answers, since
//! the interface has no address yet). Replies are parsed defensively: they come from the LAN.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// DHCP errors.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Socket setup or I/O.
    #[error("dhcp on {nic}: {source}")]
    Io {
        /// The interface.
        nic: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No usable answer in time.
    #[error("dhcp on {0}: no lease (no server answered)")]
    NoLease(String),
    /// The interface's MAC address.
    #[error("dhcp on {0}: no MAC address")]
    NoMac(String),
}

/// An acknowledged lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub addr: Ipv4Addr,
    /// Prefix length from the subnet mask (24 when absent).
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// The server that granted it.
    pub server: Ipv4Addr,
}

const COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// Builds a client message.
pub fn message(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&COOKIE);
    p.extend_from_slice(&[53, 1, kind]);
    p.extend_from_slice(&[61, 7, 1]);
    p.extend_from_slice(&mac);
    if let Some((ip, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    p.extend_from_slice(&[55, 4, 1, 3, 6, 51]);
    p.push(255);
    p
}

/// A parsed server message: (message type, lease fields). `None` for anything that is not a
/// well-formed reply to `xid`.
pub fn parse_reply(b: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if b.len() < 240 || b[0] != 2 || b.get(4..8)? != xid.to_be_bytes() || b.get(236..240)? != COOKIE
    {
        return None;
    }
    let addr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let mut kind = None;
    let mut lease = Lease {
        addr,
        prefix: 24,
        router: None,
        dns: Vec::new(),
        lease_secs: 3600,
        server: Ipv4Addr::new(b[20], b[21], b[22], b[23]),
    };
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*b.get(i + 1)?);
        let v = b.get(i + 2..i + 2 + len)?;
        let ip = |v: &[u8]| (v.len() >= 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        match code {
            53 if len == 1 => kind = Some(v[0]),
            1 => {
                if let Some(m) = ip(v) {
                    let bits = u32::from(m);
                    // Only contiguous masks are masks.
                    if bits.leading_ones() + bits.trailing_zeros() == 32 {
                        lease.prefix = u8::try_from(bits.leading_ones()).unwrap_or(24);
                    }
                }
            }
            3 => lease.router = ip(v),
            6 => {
                lease.dns = v
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect()
            }
            51 if len == 4 => lease.lease_secs = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            54 => {
                if let Some(s) = ip(v) {
                    lease.server = s;
                }
            }
            _ => {}
        }
        i += 2 + len;
    }
    Some((kind?, lease))
}

/// The MAC address of `nic` from sysfs.
pub fn mac_of(nic: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{nic}/address")).ok()?;
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    parts.try_into().ok()
}

/// Gets a lease on `nic` (which must be up), trying for `timeout`.
pub fn acquire(nic: &str, timeout: Duration) -> Result<Lease, DhcpError> {
    let e = |source| DhcpError::Io {
        nic: nic.to_string(),
        source,
    };
    let mac = mac_of(nic).ok_or_else(|| DhcpError::NoMac(nic.to_string()))?;
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(e)?;
    s.set_reuse_address(true).map_err(e)?;
    s.set_broadcast(true).map_err(e)?;
    s.bind_device(Some(nic.as_bytes())).map_err(e)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .map_err(e)?;
    let sock: std::net::UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(e)?;
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let deadline = Instant::now() + timeout;
    let xid: u32 = rand::random();
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(&message(DISCOVER, xid, mac, None), dest)
            .map_err(e)?;
        let offer = wait_for(
            &sock,
            &mut buf,
            xid,
            OFFER,
            Instant::now() + Duration::from_secs(2),
        );
        let Some(offer) = offer else { continue };
        sock.send_to(
            &message(REQUEST, xid, mac, Some((offer.addr, offer.server))),
            dest,
        )
        .map_err(e)?;
        if let Some(ack) = wait_for(
            &sock,
            &mut buf,
            xid,
            ACK,
            Instant::now() + Duration::from_secs(2),
        ) {
            return Ok(ack);
        }
    }
    Err(DhcpError::NoLease(nic.to_string()))
}

fn wait_for(
    sock: &std::net::UdpSocket,
    buf: &mut [u8],
    xid: u32,
    want: u8,
    until: Instant,
) -> Option<Lease> {
    while Instant::now() < until {
        let Ok((n, _)) = sock.recv_from(buf) else {
            continue;
        };
        match parse_reply(&buf[..n], xid) {
            Some((k, l)) if k == want => return Some(l),
            Some((NAK, _)) => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reply(kind: u8, xid: u32) -> Vec<u8> {
        let mut p = message(DISCOVER, xid, [2, 0, 0, 0, 0, 1], None);
        p.truncate(240);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&[53, 1, kind, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[
            6, 4, 10, 0, 2, 3, 51, 4, 0, 1, 81, 128, 54, 4, 10, 0, 2, 2, 255,
        ]);
        p
    }

    #[test]
    fn parses_an_ack() {
        let (k, l) = parse_reply(&reply(ACK, 42), 42).unwrap();
        assert_eq!(k, ACK);
        assert_eq!(l.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(l.lease_secs, 86400);
        assert!(parse_reply(&reply(ACK, 42), 43).is_none());
    }

    proptest::proptest! {
        #[test]
        fn replies_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut p = reply(ACK, 1);
            p.truncate(240);
            p.extend(tail);
            let _ = parse_reply(&p, 1);
        }
    }
}
