//! Go's text formatting, replicated where the challenge stream depends on it.
//!
//! Upstream builds the challenge with `fmt.Fprintf`, so IP addresses print the way Go's
//! `net.IP.String()` prints them, networks the way `net.IPNet.String()` does, and hex decode
//! errors carry Go's texts. Everything here is pure and total: no input panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Formats an IP the way Go's `net.IP.String()` does: IPv4 and IPv4-mapped IPv6 addresses
/// in dotted form, other IPv6 addresses in RFC 5952 form (longest run of two or more zero
/// groups shortened to `::`, the first run on ties).
pub fn ip_string(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => ipv6_string(v6),
        },
    }
}

fn ipv6_string(ip: &Ipv6Addr) -> String {
    let groups = ip.segments();
    // Find the longest run of zero groups (length >= 2); the first wins on ties.
    let (mut best_start, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if groups[i] == 0 {
            let start = i;
            while i < 8 && groups[i] == 0 {
                i += 1;
            }
            if i - start > best_len && i - start >= 2 {
                best_start = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let mut out = String::with_capacity(39);
    let mut i = 0;
    while i < 8 {
        if i == best_start {
            out.push_str("::");
            i += best_len;
            continue;
        }
        if !out.is_empty() && !out.ends_with(':') {
            out.push(':');
        }
        out.push_str(&format!("{:x}", groups[i]));
        i += 1;
    }
    out
}

/// Parses an IP the way Go's `net.ParseIP` accepts it (dotted IPv4, IPv6 without zone).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// An IP network that keeps the host part, like upstream's `gridtypes.IPNet`
/// (`ParseIPNet` stores the parsed address, not the masked network number).
///
/// The empty value (`""` in JSON) prints `<nil>`, as Go prints an unset `IPNet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpNet(Option<(IpAddr, u8)>);

impl IpNet {
    /// A network from an address and a prefix length (checked against the family).
    pub fn new(ip: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet(Some((ip, prefix))))
    }

    /// Parses `addr/prefix` (Go's `net.ParseCIDR`); the empty string is the unset value.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        if s.is_empty() {
            return Ok(IpNet(None));
        }
        let err = || format!("invalid CIDR address: {s}");
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let ip = parse_ip(addr).ok_or_else(err)?;
        // Go accepts 1 to 3 decimal digits, no sign, no leading '+'.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        IpNet::new(ip, prefix).ok_or_else(err)
    }

    /// True when unset.
    pub fn is_nil(&self) -> bool {
        self.0.is_none()
    }

    /// The address (with its host part) and prefix length, when set.
    pub fn get(&self) -> Option<(IpAddr, u8)> {
        self.0
    }
}

impl fmt::Display for IpNet {
    /// Go's `IPNet.String()`: host IP, `/`, prefix length; `<nil>` when unset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("<nil>"),
            Some((ip, prefix)) => write!(f, "{}/{}", ip_string(&ip), prefix),
        }
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str(""),
            Some(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpNet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An optional IP (Go `net.IP`): JSON `""` is unset and prints `<nil>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GoIp(pub Option<IpAddr>);

impl fmt::Display for GoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("<nil>"),
            Some(ip) => f.write_str(&ip_string(ip)),
        }
    }
}

impl Serialize for GoIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            None => s.serialize_str(""),
            Some(ip) => s.serialize_str(&ip_string(ip)),
        }
    }
}

impl<'de> Deserialize<'de> for GoIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(GoIp(None));
        }
        parse_ip(&s)
            .map(|ip| GoIp(Some(ip)))
            .ok_or_else(|| serde::de::Error::custom(format!("invalid IP address: {s}")))
    }
}

/// Bytes carried as lowercase hex in JSON (upstream `zos.Bytes`, `EncryptionKey`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        go_hex_decode(&s)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Decodes hex exactly as Go's `hex.DecodeString`, with Go's error texts
/// (`encoding/hex: invalid byte: U+0067 'g'`, `encoding/hex: odd length hex string`).
pub fn go_hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let src = s.as_bytes();
    let nibble = |b: u8| -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(src.len() / 2);
    let mut j = 1;
    while j < src.len() {
        let (p, q) = (src[j - 1], src[j]);
        let a = nibble(p).ok_or_else(|| invalid_byte(p))?;
        let b = nibble(q).ok_or_else(|| invalid_byte(q))?;
        out.push((a << 4) | b);
        j += 2;
    }
    if src.len() % 2 == 1 {
        // Go reports an invalid last character before the odd length.
        let last = src[src.len() - 1];
        if nibble(last).is_none() {
            return Err(invalid_byte(last));
        }
        return Err("encoding/hex: odd length hex string".to_string());
    }
    Ok(out)
}

/// Go's `InvalidByteError` text: `%#U` of the byte as a rune.
fn invalid_byte(b: u8) -> String {
    let c = char::from(b);
    // strconv.IsPrint over Latin-1: graphic ASCII and space; U+00A1..U+00FF except the soft hyphen.
    let printable = (0x20..0x7f).contains(&b) || (b >= 0xa1 && b != 0xad);
    if printable {
        format!("encoding/hex: invalid byte: U+{:04X} '{}'", b, c)
    } else {
        format!("encoding/hex: invalid byte: U+{:04X}", b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_prints_like_go() {
        let cases = [
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("1:0:1:1:1:1:1:1", "1:0:1:1:1:1:1:1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("::1.2.3.4", "::102:304"),
            (
                "2a02:1802:5e:0:eccb:5bff:feec:5f85",
                "2a02:1802:5e:0:eccb:5bff:feec:5f85",
            ),
        ];
        for (input, want) in cases {
            let ip = parse_ip(input).unwrap();
            assert_eq!(ip_string(&ip), want, "{input}");
        }
    }

    #[test]
    fn ipnet_keeps_host_part_and_prints_nil_when_unset() {
        assert_eq!(
            IpNet::parse("10.20.2.5/24").unwrap().to_string(),
            "10.20.2.5/24"
        );
        assert_eq!(IpNet::parse("").unwrap().to_string(), "<nil>");
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("10.0.0.0").is_err());
        assert!(IpNet::parse("10.0.0.0/+8").is_err());
        assert_eq!(
            IpNet::parse("2a02:1802:5e::/64").unwrap().to_string(),
            "2a02:1802:5e::/64"
        );
    }

    #[test]
    fn hex_errors_match_go() {
        assert_eq!(
            go_hex_decode("zz").unwrap_err(),
            "encoding/hex: invalid byte: U+007A 'z'"
        );
        assert_eq!(
            go_hex_decode("abc").unwrap_err(),
            "encoding/hex: odd length hex string"
        );
        assert_eq!(
            go_hex_decode("abg").unwrap_err(),
            "encoding/hex: invalid byte: U+0067 'g'"
        );
        assert_eq!(
            go_hex_decode("\u{1}0").unwrap_err(),
            "encoding/hex: invalid byte: U+0001"
        );
        assert_eq!(go_hex_decode("00FF").unwrap(), vec![0, 255]);
    }
}
