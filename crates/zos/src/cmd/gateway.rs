//! The node's web gateway options (`zos node run --gateway-…`) and its ledger-backed name
//! contract check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

/// Web gateway options of a node (docs/gateway.md).
#[derive(Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Run the web gateway (gateway-name-proxy, gateway-fqdn-proxy) with its TLS listener here,
    /// e.g. `0.0.0.0:443`; needs --gateway-http too.
    #[arg(long = "gateway-https", requires = "gateway_http")]
    pub gateway_https: Option<SocketAddr>,
    /// The gateway's plain HTTP listener (Host routing, ACME HTTP-01), e.g. `0.0.0.0:80`.
    #[arg(long = "gateway-http", requires = "gateway_https")]
    pub gateway_http: Option<SocketAddr>,
    /// The gateway domain when the node's public config on the ledger has none.
    #[arg(long = "gateway-domain")]
    pub gateway_domain: Option<String>,
    /// Issue certificates with the dev CA in this directory (`gateway-ca.pem`, made when
    /// missing) instead of ACME.
    #[arg(long = "gateway-dev-ca")]
    pub gateway_dev_ca: Option<PathBuf>,
    /// ACME directory URL (default Let's Encrypt).
    #[arg(long = "gateway-acme-directory", default_value = zos_gateway::acme::LETS_ENCRYPT)]
    pub gateway_acme_directory: String,
    /// ACME account e-mail.
    #[arg(
        long = "gateway-acme-email",
        default_value = "letsencrypt@threefold.tech"
    )]
    pub gateway_acme_email: String,
    /// Seconds between checks of name contracts (and certificate renewals).
    #[arg(long = "gateway-recheck-secs", default_value_t = 3600)]
    pub gateway_recheck_secs: u64,
    /// Do not require FQDNs to resolve to the node (a grid without DNS).
    #[arg(long = "gateway-no-dns-check")]
    pub gateway_no_dns_check: bool,
}

/// Name contract owners, proven against heads the ledger's producer signed (removing a route
/// is a destructive decision: a lying ledger endpoint must not cause it).
struct LedgerNames(zos_ledger::LedgerClient);

#[zos_gateway::async_trait]
impl zos_gateway::NameOwners for LedgerNames {
    async fn owner(&self, name: &str) -> Result<Option<u32>, String> {
        let key = zos_ledger::state::keys::name_contract(name);
        let raw = self.0.verified_raw(&key).await.map_err(|e| e.to_string())?;
        let Some(bytes) = raw.value else {
            return Ok(None);
        };
        let id: u64 = serde_json::from_slice(&bytes)
            .map_err(|e| format!("name contract index of {name:?}: {e}"))?;
        let c = self
            .0
            .verified_contract(id)
            .await
            .map_err(|e| e.to_string())?
            .value;
        Ok(c.filter(|c| c.state.is_active()).map(|c| c.twin_id))
    }
}

/// Adds the gateway primitives when the node has listeners for them.
pub fn register(
    registry: &mut zos_node::PrimitiveRegistry,
    g: &GatewayArgs,
    ledger: &str,
    ledger_cert: Option<&Path>,
    ledger_producer: Option<&str>,
    cache: &Path,
    ns_prefix: &str,
) -> anyhow::Result<()> {
    let (Some(http), Some(https)) = (g.gateway_http, g.gateway_https) else {
        return Ok(());
    };
    let dir = cache.join("gateway");
    let issuer = match &g.gateway_dev_ca {
        Some(ca_dir) => zos_gateway::Issuer::DevCa {
            ca: zos_gateway::DevCa::load_or_create(ca_dir).context("--gateway-dev-ca")?,
            days: 90,
        },
        None => zos_gateway::Issuer::Acme(zos_gateway::acme::AcmeConfig {
            directory: g.gateway_acme_directory.clone(),
            email: g.gateway_acme_email.clone(),
            account_file: dir.join("acme-account.json"),
        }),
    };
    let mut trust = zos_ledger::Trust::default();
    if let Some(hex) = ledger_producer {
        trust.producer = Some(zos_types::crypto::PublicKey {
            key_type: zos_types::crypto::KeyType::Ed25519,
            bytes: zos_types::crypto::decode_hex32("--ledger-producer", hex)?,
        });
    }
    if let Some(c) = ledger_cert {
        trust = trust.with_cert_file(c)?;
    }
    let client = zos_ledger::LedgerClient::with_trust(ledger, trust)?;
    let mut cfg = zos_gateway::GatewayConfig::new(dir, issuer);
    cfg.http_listen = http;
    cfg.https_listen = https;
    cfg.domain = g.gateway_domain.clone();
    cfg.recheck = Duration::from_secs(g.gateway_recheck_secs.max(1));
    cfg.ns_prefix = ns_prefix.to_string();
    cfg.check_fqdn_dns = !g.gateway_no_dns_check;
    let gw = zos_gateway::Gateway::new(cfg, Arc::new(LedgerNames(client)));
    zos_gateway::register(registry, gw);
    Ok(())
}
