//! Field checks for calls: names, hashes, IPs, twin fields. Each returns the precise rejection.

use std::net::Ipv4Addr;

use crate::runtime::{MAX_DEPLOYMENT_DATA, TxError, invalid};

pub(crate) fn check_twin_fields(
    relays: &[String],
    e2e_key: &Option<String>,
) -> Result<(), TxError> {
    if relays.len() > 8 || relays.iter().any(|r| r.is_empty() || r.len() > 255) {
        return Err(invalid(
            "relays",
            "at most 8 non-empty entries of ≤ 255 bytes",
        ));
    }
    if let Some(k) = e2e_key {
        if k.len() > 128 || hex::decode(k).is_err() {
            return Err(invalid("e2e_key", "must be hex, at most 128 characters"));
        }
    }
    Ok(())
}

/// Names: 1..=max of `[a-z0-9-]` (plus `_` and upper case for farms).
pub(crate) fn check_name(
    field: &'static str,
    name: &str,
    max: usize,
    farm: bool,
) -> Result<(), TxError> {
    let ok_char = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (farm && (c == '_' || c.is_ascii_uppercase()))
    };
    if name.is_empty() || name.len() > max || !name.chars().all(ok_char) {
        return Err(invalid(
            field,
            format!("{name:?} must be 1..={max} characters of a-z, 0-9, -"),
        ));
    }
    Ok(())
}

pub(crate) fn check_hash(h: &str) -> Result<(), TxError> {
    // 32 hex characters: MD5 (upstream); 64: SHA-256 (zos deployment hash v2).
    if !(h.len() == 32 || h.len() == 64)
        || !h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            "deployment_hash",
            "must be 32 (MD5) or 64 (SHA-256) lowercase hex characters",
        ));
    }
    Ok(())
}

pub(crate) fn check_data(d: &str) -> Result<(), TxError> {
    if d.len() > MAX_DEPLOYMENT_DATA {
        return Err(invalid(
            "deployment_data",
            format!("{} bytes, at most {MAX_DEPLOYMENT_DATA}", d.len()),
        ));
    }
    Ok(())
}

/// `ip` must be IPv4 CIDR and `gateway` an IPv4 address inside it.
pub(crate) fn check_ip(ip: &str, gateway: &str) -> Result<(), TxError> {
    let (addr, prefix) = ip
        .split_once('/')
        .ok_or_else(|| invalid("ip", format!("{ip:?} is not address/prefix")))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| invalid("ip", format!("{ip:?} is not an IPv4 address")))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| invalid("ip", format!("{ip:?} has a bad prefix length")))?;
    let gw: Ipv4Addr = gateway
        .parse()
        .map_err(|_| invalid("gateway", format!("{gateway:?} is not an IPv4 address")))?;
    let mask = u32::MAX << (32 - prefix);
    if u32::from(addr) & mask != u32::from(gw) & mask || addr == gw {
        return Err(invalid(
            "gateway",
            format!("{gateway} is not another address in {ip}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_checks() {
        assert!(check_ip("185.69.166.10/24", "185.69.166.1").is_ok());
        assert!(check_ip("185.69.166.10/24", "185.69.167.1").is_err());
        assert!(check_ip("185.69.166.10", "185.69.166.1").is_err());
        assert!(check_ip("185.69.166.10/33", "185.69.166.1").is_err());
        assert!(check_ip("::1/64", "::2").is_err());
        assert!(check_ip("10.0.0.1/24", "10.0.0.1").is_err());
    }

    #[test]
    fn hash_checks() {
        assert!(check_hash("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_hash("0123456789ABCDEF0123456789abcdef").is_err());
        assert!(check_hash("abc").is_err());
    }
}
