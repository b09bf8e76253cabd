//! gateway-name-proxy and gateway-fqdn-proxy, with upstream's backend rules.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::challenge::Challenge;
use crate::error::ValidationError;
use crate::gofmt::parse_ip;

/// Fields shared by both gateway types.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayBase {
    /// Pass TLS through to the backend (then backends are `ip:port`).
    pub tls_passthrough: bool,
    /// Backends: `http://ip[:port]`, or `ip:port` with TLS passthrough.
    pub backends: Vec<String>,
    /// Optional private network the backends live in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl GatewayBase {
    fn challenge(&self, c: &mut Challenge) {
        c.t(self.tls_passthrough).list(self.backends.len());
        for b in &self.backends {
            c.s(b);
        }
        c.list(usize::from(self.network.is_some()));
        if let Some(n) = &self.network {
            c.s(n);
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.backends.is_empty() {
            return Err(ValidationError::new("backends list can not be empty"));
        }
        for b in &self.backends {
            validate_backend(b, self.tls_passthrough)
                .map_err(|e| e.wrap(format!("failed to validate backend '{b}'")))?;
        }
        Ok(())
    }
}

/// Proxies `<name>.<node domain>` to the backends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayNameProxy {
    /// Shared fields.
    #[serde(flatten)]
    pub base: GatewayBase,
    /// The name under the node's domain.
    pub name: String,
}

impl GatewayNameProxy {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.s(&self.name);
        self.base.challenge(c);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        let ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ValidationError::new(format!(
                "name {} is invalid",
                self.name
            )));
        }
        self.base.validate()
    }
}

/// Proxies a user-owned domain to the backends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayFqdnProxy {
    /// Shared fields.
    #[serde(flatten)]
    pub base: GatewayBase,
    /// The fully qualified domain name.
    pub fqdn: String,
}

impl GatewayFqdnProxy {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.s(&self.fqdn);
        self.base.challenge(c);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if !fqdn_matches(&self.fqdn) {
            return Err(ValidationError::new(format!(
                "fqdn {} is invalid",
                self.fqdn
            )));
        }
        self.base.validate()
    }
}

/// Result of a name gateway: `{"fqdn": "<name>.<domain>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GatewayProxyResult {
    /// The served domain.
    pub fqdn: String,
}

/// `^([a-zA-Z0-9-_]+\.)+[a-zA-Z0-9-_]{2,}$`
fn fqdn_matches(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels[..labels.len() - 1].iter().all(|l| label_ok(l))
        && labels.last().is_some_and(|l| l.len() >= 2 && label_ok(l))
}

fn validate_backend(backend: &str, tls_passthrough: bool) -> Result<(), ValidationError> {
    if tls_passthrough {
        as_ip_port(backend).map_err(|e| {
            ValidationError::new(format!("failed to parse backend {backend} with error: {e}"))
        })?;
        return Ok(());
    }
    let host = url_hostname(backend)
        .map_err(|e| ValidationError::new(format!("failed to parse backend with error: {e}")))?;
    match host.scheme.as_str() {
        "http" => {}
        _ => return Err(ValidationError::new("scheme expected to be http")),
    }
    match parse_ip(&host.hostname) {
        Some(ip) if !is_loopback(&ip) => Ok(()),
        _ => Err(ValidationError::new(format!(
            "invalid ip address in backend: {}",
            host.hostname
        ))),
    }
}

fn is_loopback(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Upstream `asIpPort`: `net.SplitHostPort`, `net.ParseIP`, port ≤ 65535.
fn as_ip_port(a: &str) -> Result<(IpAddr, u16), String> {
    let (h, p) =
        split_host_port(a).map_err(|e| format!("failed to parse backend {a} with error: {e}"))?;
    let ip = parse_ip(h).ok_or_else(|| "invalid ip".to_string())?;
    let port: u64 = if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
        p.parse()
            .map_err(|_| format!("invalid port in backend: {p}"))?
    } else {
        return Err(format!("invalid port in backend: {p}"));
    };
    let port = u16::try_from(port).map_err(|_| format!("port '{p}' must be <= 65535"))?;
    Ok((ip, port))
}

/// Go's `net.SplitHostPort`, with its error texts.
fn split_host_port(hp: &str) -> Result<(&str, &str), String> {
    let err = |why: &str| format!("address {hp}: {why}");
    let i = hp
        .rfind(':')
        .ok_or_else(|| err("missing port in address"))?;
    let (host, j, k);
    if hp.starts_with('[') {
        let end = hp.find(']').ok_or_else(|| err("missing ']' in address"))?;
        if end + 1 == hp.len() {
            return Err(err("missing port in address"));
        } else if end + 1 != i {
            if hp.as_bytes()[end + 1] == b':' {
                return Err(err("too many colons in address"));
            }
            return Err(err("missing port in address"));
        }
        host = &hp[1..end];
        (j, k) = (1, end + 1);
    } else {
        host = &hp[..i];
        if host.contains(':') {
            return Err(err("too many colons in address"));
        }
        (j, k) = (0, 0);
    }
    if hp[j..].contains('[') {
        return Err(err("unexpected '[' in address"));
    }
    if hp[k..].contains(']') {
        return Err(err("unexpected ']' in address"));
    }
    Ok((host, &hp[i + 1..]))
}

struct UrlHost {
    scheme: String,
    hostname: String,
}

/// The parts of Go's `url.Parse` + `URL.Hostname()` that backend validation depends on.
fn url_hostname(raw: &str) -> Result<UrlHost, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!(
            "parse {raw:?}: net/url: invalid control character in URL"
        ));
    }
    let rest = raw.split('#').next().unwrap_or("");
    // Scheme: a letter then letters, digits, + - . up to ':'.
    let mut scheme = String::new();
    let mut after = rest;
    if let Some(pos) = rest.find(':') {
        let cand = &rest[..pos];
        let valid = cand.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || (i > 0 && (b.is_ascii_digit() || b"+-.".contains(&b)))
        });
        if pos == 0 {
            return Err(format!("parse {raw:?}: missing protocol scheme"));
        }
        if valid {
            scheme = cand.to_ascii_lowercase();
            after = &rest[pos + 1..];
        }
    }
    let after = after.split('?').next().unwrap_or("");
    let mut hostname = String::new();
    if !scheme.is_empty() || after.starts_with("//") {
        if let Some(auth) = after.strip_prefix("//") {
            let authority = auth.split('/').next().unwrap_or("");
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            hostname = split_url_host(raw, host)?;
        }
    }
    Ok(UrlHost { scheme, hostname })
}

fn split_url_host(raw: &str, host: &str) -> Result<String, String> {
    if let Some(stripped) = host.strip_prefix('[') {
        let end = stripped
            .find(']')
            .ok_or_else(|| format!("parse {raw:?}: missing ']' in host"))?;
        let port = &stripped[end + 1..];
        if !valid_optional_port(port) {
            return Err(format!("parse {raw:?}: invalid port {port:?} after host"));
        }
        return Ok(stripped[..end].to_string());
    }
    if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(format!("parse {raw:?}: invalid port {port:?} after host"));
        }
        return Ok(host[..i].to_string());
    }
    Ok(host.to_string())
}

fn valid_optional_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_follow_upstream_rules() {
        // tls passthrough: ip:port only
        assert!(validate_backend("1.2.3.4:443", true).is_ok());
        assert!(validate_backend("[2a02::1]:443", true).is_ok());
        assert!(validate_backend("1.2.3.4:70000", true).is_err());
        assert!(validate_backend("http://1.2.3.4", true).is_err());
        assert!(validate_backend("1.2.3.4", true).is_err());
        // plain: http URL with a literal, non-loopback IP
        assert!(validate_backend("http://1.2.3.4:8080", false).is_ok());
        assert!(validate_backend("http://1.2.3.4", false).is_ok());
        assert!(validate_backend("http://[2a02::1]:80", false).is_ok());
        assert!(validate_backend("https://1.2.3.4", false).is_err());
        assert!(validate_backend("http://127.0.0.1", false).is_err());
        assert!(validate_backend("http://example.com", false).is_err());
        assert!(validate_backend("1.2.3.4:80", false).is_err());
        assert_eq!(
            validate_backend("http://1.2.3.4:x", false)
                .unwrap_err()
                .to_string(),
            "failed to parse backend with error: parse \"http://1.2.3.4:x\": invalid port \":x\" after host"
        );
    }

    #[test]
    fn fqdn_regex() {
        assert!(fqdn_matches("a.b.com"));
        assert!(fqdn_matches("x_y.io"));
        assert!(!fqdn_matches("com"));
        assert!(!fqdn_matches("a.b.c"));
        assert!(!fqdn_matches("a..com"));
    }
}
