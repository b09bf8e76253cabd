//! The routing table: one route per served domain, owned by one workload.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;

use crate::proxy::NsConnector;

/// A backend, parsed from the workload's (already validated) string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
}

impl Backend {
    /// Parses `http://ip[:port][/…]` (HTTP) or `ip:port` (TLS passthrough).
    pub fn parse(s: &str, passthrough: bool) -> Result<Backend, String> {
        if passthrough {
            return s
                .parse::<SocketAddr>()
                .map(|addr| Backend { addr })
                .map_err(|e| format!("backend {s:?}: {e}"));
        }
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("backend {s:?}: not an http:// URL"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let addr = if let Ok(a) = authority.parse::<SocketAddr>() {
            a
        } else {
            let host = authority.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = host
                .parse()
                .map_err(|_| format!("backend {s:?}: the host is not an IP address"))?;
            SocketAddr::new(ip, 80)
        };
        Ok(Backend { addr })
    }
}

/// One served domain.
pub struct Route {
    /// The workload that owns it (`twin-contract-name`).
    pub workload_id: String,
    /// Owner twin.
    pub twin: u32,
    /// The served host (lowercase).
    pub fqdn: String,
    /// For a name proxy, the name whose contract must stay the owner's.
    pub name: Option<String>,
    /// TLS passthrough (by SNI) instead of termination.
    pub passthrough: bool,
    /// Backends, used in turn.
    pub backends: Vec<Backend>,
    /// The network resource namespace the backends live in.
    pub netns: Option<String>,
    /// Certificate name serving this host (terminated routes).
    pub cert: Option<String>,
    next: AtomicUsize,
    /// Request and response body bytes (passthrough: all bytes both ways), the workload's
    /// network consumption; shared with the gateway so that it outlives a replaced route.
    pub traffic: Arc<AtomicU64>,
    /// Pooled keep-alive connections to the backends (from the right namespace).
    pub(crate) client: Client<NsConnector, BoxBody<bytes::Bytes, hyper::Error>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("workload_id", &self.workload_id)
            .field("fqdn", &self.fqdn)
            .field("passthrough", &self.passthrough)
            .field("backends", &self.backends)
            .field("netns", &self.netns)
            .finish()
    }
}

impl Route {
    /// A route; its client pool connects from `netns`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workload_id: String,
        twin: u32,
        fqdn: String,
        name: Option<String>,
        passthrough: bool,
        backends: Vec<Backend>,
        netns: Option<String>,
        cert: Option<String>,
    ) -> Self {
        let client = crate::proxy::client(NsConnector {
            netns: netns.clone(),
        });
        Route {
            workload_id,
            twin,
            fqdn,
            name,
            passthrough,
            backends,
            netns,
            cert,
            next: AtomicUsize::new(0),
            traffic: Arc::new(AtomicU64::new(0)),
            client,
        }
    }

    /// The next backend (round robin).
    pub fn pick(&self) -> Option<Backend> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i).copied()
    }
}

/// Why a route was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Another workload serves the domain.
    #[error("domain {fqdn} is already used by another gateway workload")]
    Duplicate {
        /// The domain.
        fqdn: String,
    },
}

/// Routes by host.
#[derive(Debug, Default)]
pub struct Table {
    by_host: HashMap<String, Arc<Route>>,
}

impl Table {
    /// Adds or replaces the route of its workload; refuses a domain another workload serves.
    /// Returns the route it replaced.
    pub fn insert(&mut self, r: Route) -> Result<Option<Arc<Route>>, RouteError> {
        if let Some(old) = self.by_host.get(&r.fqdn) {
            if old.workload_id != r.workload_id {
                return Err(RouteError::Duplicate { fqdn: r.fqdn });
            }
        }
        let prev = self.remove_workload(&r.workload_id);
        self.by_host.insert(r.fqdn.clone(), Arc::new(r));
        Ok(prev)
    }

    /// Removes the route of `workload_id`; returns it.
    pub fn remove_workload(&mut self, workload_id: &str) -> Option<Arc<Route>> {
        let host = self
            .by_host
            .iter()
            .find(|(_, r)| r.workload_id == workload_id)
            .map(|(h, _)| h.clone())?;
        self.by_host.remove(&host)
    }

    /// The route for `host`.
    pub fn get(&self, host: &str) -> Option<Arc<Route>> {
        self.by_host.get(host).cloned()
    }

    /// Every route.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.by_host.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(wl: &str, fqdn: &str) -> Route {
        Route::new(
            wl.into(),
            1,
            fqdn.into(),
            None,
            false,
            vec![Backend::parse("http://10.0.0.1:8080", false).unwrap()],
            None,
            None,
        )
    }

    #[test]
    fn backends_parse() {
        let b = |s, p| Backend::parse(s, p).map(|b| b.addr.to_string());
        assert_eq!(b("http://10.1.2.3", false).unwrap(), "10.1.2.3:80");
        assert_eq!(b("http://10.1.2.3:81/x?y", false).unwrap(), "10.1.2.3:81");
        assert_eq!(b("http://[fd00::1]:82", false).unwrap(), "[fd00::1]:82");
        assert_eq!(b("http://[fd00::1]", false).unwrap(), "[fd00::1]:80");
        assert_eq!(b("10.1.2.3:443", true).unwrap(), "10.1.2.3:443");
        assert!(b("http://example.org", false).is_err());
        assert!(b("10.1.2.3", true).is_err());
    }

    #[tokio::test]
    async fn one_workload_per_domain() {
        let mut t = Table::default();
        t.insert(route("1-1-a", "a.gw.test")).unwrap();
        assert_eq!(
            t.insert(route("1-2-b", "a.gw.test")).unwrap_err(),
            RouteError::Duplicate {
                fqdn: "a.gw.test".into()
            }
        );
        // The same workload may move to another domain (an update).
        t.insert(route("1-1-a", "b.gw.test")).unwrap();
        assert!(t.get("a.gw.test").is_none());
        assert_eq!(t.get("b.gw.test").unwrap().workload_id, "1-1-a");
        assert!(t.remove_workload("1-1-a").is_some());
        assert!(t.all().is_empty());
    }

    #[tokio::test]
    async fn backends_are_used_in_turn() {
        let mut r = route("1-1-a", "a.gw.test");
        r.backends
            .push(Backend::parse("http://10.0.0.2", false).unwrap());
        let picks: Vec<String> = (0..4).map(|_| r.pick().unwrap().addr.to_string()).collect();
        assert_eq!(
            picks,
            [
                "10.0.0.1:8080",
                "10.0.0.2:80",
                "10.0.0.1:8080",
                "10.0.0.2:80"
            ]
        );
    }
}
