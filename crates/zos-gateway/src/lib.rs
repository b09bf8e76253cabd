//! Web gateways: the `gateway-name-proxy` and `gateway-fqdn-proxy` primitives on an in-node
//! reverse proxy (docs/gateway.md).
//!
//! - **Name proxy**: serves `<name>.<node domain>`; the node domain comes from the farm's public
//!   config of the node (or a static one, `zos up`); the twin must own the name contract for
//!   `<name>` on the ledger, checked at provision and every [`GatewayConfig::recheck`] (a name
//!   contract gone or owned by another twin removes the route).
//! - **FQDN proxy**: serves a user's domain, which must not be under the node domain (and, when
//!   [`GatewayConfig::check_fqdn_dns`], must resolve to one of the node's public addresses).
//! - Backends: `http://ip[:port]` (TLS terminated here) or `ip:port` with `tls_passthrough`
//!   (routed by SNI, never decrypted); never the node's own public IPs. With `network`, the
//!   backends are reached from inside the user's network resource namespace.
//! - One workload per domain: a second one asking for a served domain is refused.
//! - Certificates: a dev CA (wildcard for the node domain) or ACME HTTP-01, cached in
//!   [`GatewayConfig::cache_dir`], renewed [`GatewayConfig::renew_before`] their expiry.
#![forbid(unsafe_code)]

pub mod acme;
pub mod certs;
pub mod netns;
pub mod proxy;
pub mod routes;
pub mod sni;

mod primitive;

/// The attribute [`NameOwners`] implementations need (re-exported so that they need no
/// dependency of their own).
pub use async_trait::async_trait;
pub use certs::{CertStore, DevCa, Issuer};
pub use primitive::{FqdnProxy, Gateway, NameProxy};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zos_primitive::PrimitiveRegistry;

/// Who owns the active name contracts: the ledger, seen through the node's client.
#[async_trait]
pub trait NameOwners: Send + Sync {
    /// The twin owning an active (created or in grace period) name contract for `name`,
    /// `None` when there is none. `Err` when the ledger could not be asked (routes then stay).
    async fn owner(&self, name: &str) -> Result<Option<u32>, String>;
}

/// What a gateway node is configured with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The plain HTTP listener (upstream: port 80 of the public namespace).
    pub http_listen: SocketAddr,
    /// The TLS listener (upstream: port 443).
    pub https_listen: SocketAddr,
    /// The node domain when the node's public config has none (a dev grid); the public
    /// config's domain wins.
    pub domain: Option<String>,
    /// Where certificates (and the ACME account) are kept.
    pub cache_dir: PathBuf,
    /// Where certificates come from.
    pub issuer: Issuer,
    /// How often name contracts are checked again (upstream: hourly), and certificates looked
    /// at for renewal.
    pub recheck: Duration,
    /// Renew a certificate when it has less than this left.
    pub renew_before: Duration,
    /// Prefix of network resource namespaces (`<prefix>n-<netid>`), as the network primitive.
    pub ns_prefix: String,
    /// Require an FQDN to resolve to one of the node's public IPs (upstream does; a dev grid
    /// without DNS does not).
    pub check_fqdn_dns: bool,
}

impl GatewayConfig {
    /// Defaults for a node: ports 80/443 on all addresses, hourly checks, renew 30 days ahead.
    pub fn new(cache_dir: PathBuf, issuer: Issuer) -> Self {
        GatewayConfig {
            http_listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            https_listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            domain: None,
            cache_dir,
            issuer,
            recheck: Duration::from_secs(3600),
            renew_before: Duration::from_secs(30 * 86400),
            ns_prefix: String::new(),
            check_fqdn_dns: true,
        }
    }
}

/// Registers both gateway primitives and the gateway's lifecycle (listeners, re-checks).
pub fn register(registry: &mut PrimitiveRegistry, gw: Arc<Gateway>) {
    registry.register(Arc::new(NameProxy(gw.clone())));
    registry.register(Arc::new(FqdnProxy(gw.clone())));
    registry.add_lifecycle(gw);
}
