//! Identifiers and addresses derived from names: workload ids, device names, MACs, IPv6.

use std::net::{IpAddr, Ipv6Addr};

use md5::{Digest, Md5};

use crate::gofmt::parse_ip;

/// `"<twin>-<contract>-<name>"`.
pub fn workload_id(twin: u32, contract: u64, name: &str) -> String {
    format!("{twin}-{contract}-{name}")
}

fn base58_13(digest: &[u8]) -> String {
    let mut s = bs58::encode(digest).into_string();
    s.truncate(13);
    s
}

/// Upstream `WorkloadID.Unique(n)`: a 13-character name for devices (taps, bridges).
pub fn unique(workload_id: &str, n: &str) -> String {
    base58_13(&Md5::digest(format!("{workload_id}:{n}")))
}

/// Upstream `NetworkID(twin, name)`.
pub fn network_id(twin: u32, name: &str) -> String {
    base58_13(&Md5::digest(format!("{twin}:{name}")))
}

const MAC_LEN: usize = 6;
const MAX_HASH_OFFSET: usize = 16 - MAC_LEN;

/// Upstream `HardwareAddrFromInputBytes`: a locally administered unicast MAC from an MD5,
/// sliding over the digest (and re-hashing) until it lands in a usable range.
pub fn hardware_addr(input: &[u8]) -> [u8; 6] {
    let mut b = input.to_vec();
    loop {
        // The Go code mutates the digest array in place through the slice it takes.
        let mut hs: [u8; 16] = Md5::digest(&b).into();
        let mut offset = 0;
        loop {
            hs[offset] = (hs[offset] | 2) & 0xfe;
            let addr: [u8; 6] = hs[offset..offset + MAC_LEN]
                .try_into()
                .expect("slice of MAC_LEN bytes");
            if mac_in_valid_range(&addr) {
                return addr;
            }
            if offset < MAX_HASH_OFFSET {
                offset += 1;
            } else {
                b = hs.to_vec();
                break;
            }
        }
    }
}

fn mac_in_valid_range(a: &[u8; 6]) -> bool {
    // Ranges exactly as upstream compares them (the upper bounds on the last three bytes).
    if a[3..] <= [0x00, 0x51, 0xff][..] {
        return [0x00, 0x03][..] <= a[..2];
    }
    if a[3..] <= [0x90, 0x00, 0xff][..] {
        return [0x00, 0x54][..] <= a[..2] && a[..2] != [0x33, 0x33];
    }
    a[..] <= [0xff, 0xff, 0xff, 0xff, 0xff, 0xfe][..] && [0x90, 0x02][..] <= a[..2]
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Upstream `IPv6SuffixFromInputBytesAsHex(b, n)` (n clamped to 0..=16).
pub fn ipv6_suffix_hex(input: &[u8], n: usize) -> String {
    let n = n.min(16);
    let hs: [u8; 16] = Md5::digest(input).into();
    let mut out = String::new();
    let mut gs = usize::from(n % 2 == 1);
    for o in &hs[..n] {
        out.push_str(&format!("{o:02x}"));
        gs += 1;
        if gs == 2 {
            out.push(':');
            gs = 0;
        }
    }
    out.trim_end_matches(':').to_string()
}

/// Upstream `Convert4to6(netID, ip)`: the VM's ULA IPv6 in a network. The quirk is kept:
/// `md5.New().Sum(netID)` appends a digest to the netID, so the prefix bytes are the ASCII of
/// the netID, printed with `%x` and no zero padding.
pub fn convert_4to6(net_id: &str, ip: IpAddr) -> Option<Ipv6Addr> {
    let id = net_id.as_bytes();
    let byte = |i: usize| {
        id.get(i)
            .copied()
            .unwrap_or_else(|| Md5::digest([])[i - id.len()])
    };
    let (second_last, last) = match ip {
        IpAddr::V4(v4) => (v4.octets()[2], v4.octets()[3]),
        IpAddr::V6(v6) => (v6.octets()[14], v6.octets()[15]),
    };
    let text = format!(
        "fd{:x}:{:x}{:x}:{:x}{:x}:{:x}::{:x}",
        byte(0),
        byte(1),
        byte(2),
        byte(3),
        byte(4),
        second_last,
        last
    );
    match parse_ip(&text)? {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    }
}
