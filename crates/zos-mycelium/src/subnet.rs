//! IPv6 prefixes (the overlay only carries IPv6; IPv4 prefixes in TLVs are skipped, as every
//! upstream filter rejects them anyway).

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// The whole overlay: `400::/7`.
pub const GLOBAL_SUBNET: Subnet = Subnet {
    octets: [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    plen: 7,
};

/// A prefix length above 128, or an unparsable prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid IPv6 subnet: {0}")]
pub struct SubnetError(pub String);

/// An IPv6 prefix; the address is always masked to the prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    // Octets rather than `Ipv6Addr` so prefix bytes can be borrowed for encoding.
    octets: [u8; 16],
    plen: u8,
}

impl Subnet {
    /// The prefix `addr/plen`, host bits cleared.
    pub fn new(addr: Ipv6Addr, plen: u8) -> Result<Self, SubnetError> {
        if plen > 128 {
            return Err(SubnetError(format!("{addr}/{plen}")));
        }
        Ok(Self {
            octets: (u128::from(addr) & mask(plen)).to_be_bytes(),
            plen,
        })
    }

    /// The network address.
    pub fn address(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.octets)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.plen
    }

    /// Whether `ip` lies in the prefix.
    pub fn contains_ip(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.plen) == u128::from_be_bytes(self.octets)
    }

    /// Whether `other` lies entirely in this prefix.
    pub fn contains_subnet(&self, other: &Subnet) -> bool {
        other.plen >= self.plen && self.contains_ip(other.address())
    }

    /// The `ceil(plen/8)` leading address bytes, as TLVs carry a prefix.
    pub fn prefix_bytes(&self) -> &[u8] {
        // plen ≤ 128, so at most 16 bytes.
        &self.octets[..usize::from(self.plen).div_ceil(8)]
    }
}

fn mask(plen: u8) -> u128 {
    if plen == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(plen))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address(), self.plen)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;
    fn from_str(s: &str) -> Result<Self, SubnetError> {
        let (a, p) = s.split_once('/').ok_or_else(|| SubnetError(s.into()))?;
        let addr: Ipv6Addr = a.parse().map_err(|_| SubnetError(s.into()))?;
        let plen: u8 = p.parse().map_err(|_| SubnetError(s.into()))?;
        Self::new(addr, plen)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
