//! The two gateway primitives and the [`Gateway`] they share (routes, certificates, listeners,
//! periodic name checks).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use serde_json::{Value, json};
use zos_primitive::{Health, Lifecycle, Primitive, PrimitiveError, WorkloadCtx};
use zos_types::data::{GatewayBase, WorkloadData};
use zos_types::{Workload, WorkloadType};

use crate::certs::CertStore;
use crate::proxy::Proxy;
use crate::routes::{Backend, Route, Table};
use crate::{GatewayConfig, NameOwners};

/// The node's gateway: shared by both primitives.
pub struct Gateway {
    cfg: GatewayConfig,
    names: Arc<dyn NameOwners>,
    table: Arc<RwLock<Table>>,
    certs: Arc<CertStore>,
    /// Domain and public IPs from the node's public config.
    public: RwLock<Public>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Traffic counters by workload id (kept when a route is replaced or dropped by a name
    /// check, removed with the workload).
    traffic: Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicU64>>>,
    /// Itself, for the periodic task started by [`Lifecycle::start`] (which gets `&self`).
    me: std::sync::Weak<Gateway>,
}

#[derive(Debug, Default, Clone)]
struct Public {
    domain: Option<String>,
    ips: Vec<IpAddr>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn failed(msg: impl Into<String>) -> PrimitiveError {
    PrimitiveError::Failed(msg.into())
}

/// An IP of a public config field (`"1.2.3.4/24"`, or a bare address).
fn config_ip(v: &Value) -> Option<IpAddr> {
    let s = v.as_str()?;
    s.split('/').next()?.parse().ok()
}

impl Gateway {
    /// A gateway with `cfg`, checking name contracts with `names`.
    pub fn new(cfg: GatewayConfig, names: Arc<dyn NameOwners>) -> Arc<Self> {
        let certs = Arc::new(CertStore::new(
            cfg.issuer.clone(),
            cfg.cache_dir.join("certs"),
            cfg.renew_before,
        ));
        Arc::new_cyclic(|me| Gateway {
            me: me.clone(),
            public: RwLock::new(Public {
                domain: cfg.domain.clone(),
                ips: Vec::new(),
            }),
            cfg,
            names,
            table: Arc::new(RwLock::new(Table::default())),
            certs,
            tasks: Mutex::new(Vec::new()),
            traffic: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The certificate store.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// The node domain in use.
    pub fn domain(&self) -> Option<String> {
        self.public
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .domain
            .clone()
    }

    /// The served hosts with their workload ids.
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all()
            .iter()
            .map(|r| (r.fqdn.clone(), r.workload_id.clone()))
            .collect();
        v.sort();
        v
    }

    fn backends(&self, base: &GatewayBase) -> Result<Vec<Backend>, PrimitiveError> {
        let own = self
            .public
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ips
            .clone();
        let mut out = Vec::new();
        for s in &base.backends {
            let b = Backend::parse(s, base.tls_passthrough).map_err(PrimitiveError::InvalidData)?;
            if own.contains(&b.addr.ip()) {
                return Err(PrimitiveError::InvalidData(format!(
                    "backend {s} points at this node's public IP"
                )));
            }
            out.push(b);
        }
        if out.is_empty() {
            return Err(PrimitiveError::InvalidData(
                "backends list can not be empty".into(),
            ));
        }
        Ok(out)
    }

    fn netns(
        &self,
        ctx: &WorkloadCtx,
        base: &GatewayBase,
    ) -> Result<Option<String>, PrimitiveError> {
        let Some(net) = &base.network else {
            return Ok(None);
        };
        let sib = ctx.shared(net).ok_or_else(|| {
            PrimitiveError::InvalidData(format!("network {net:?} is not one of the twin's"))
        })?;
        if !matches!(
            sib.workload_type(),
            WorkloadType::Network | WorkloadType::NetworkLight
        ) {
            return Err(PrimitiveError::InvalidData(format!(
                "workload {net:?} is not a network"
            )));
        }
        let ns = zos_network::NrNames::new(ctx.twin, net, &self.cfg.ns_prefix).namespace;
        if !std::path::Path::new("/run/netns").join(&ns).exists() {
            return Err(failed(format!(
                "network {net:?} has no resource on this node (namespace {ns})"
            )));
        }
        Ok(Some(ns))
    }

    async fn install(&self, mut route: Route) -> Result<(), PrimitiveError> {
        route.traffic = self
            .traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.workload_id.clone())
            .or_default()
            .clone();
        if let Some(cert) = &route.cert {
            match self.cfg.issuer {
                // Immediate: the route works with TLS as soon as the workload is ok.
                crate::Issuer::DevCa { .. } => {
                    self.certs
                        .ensure(cert)
                        .await
                        .map_err(PrimitiveError::failed)?;
                }
                // An ACME order takes a while and needs the route's HTTP side: in the background.
                crate::Issuer::Acme(_) => {
                    let (certs, name) = (self.certs.clone(), cert.clone());
                    tokio::spawn(async move {
                        if let Err(e) = certs.ensure(&name).await {
                            tracing::warn!(name, error = %e, "gateway certificate");
                        }
                    });
                }
            }
        }
        let fqdn = route.fqdn.clone();
        let wl = route.workload_id.clone();
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route)
            .map_err(PrimitiveError::failed)?;
        tracing::info!(fqdn, workload = wl, "gateway route");
        Ok(())
    }

    /// Bytes the workload's route moved so far (`None` for a workload without a route).
    pub fn traffic(&self, workload_id: &str) -> Option<u64> {
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(workload_id)
            .map(|t| t.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn deprovision(&self, workload_id: &str) {
        self.remove(workload_id);
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workload_id);
    }

    fn remove(&self, workload_id: &str) {
        let old = self
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_workload(workload_id);
        if let Some(r) = old {
            tracing::info!(
                fqdn = r.fqdn,
                workload = workload_id,
                "gateway route removed"
            );
        }
    }

    async fn check_name(&self, twin: u32, name: &str) -> Result<(), PrimitiveError> {
        match self.names.owner(name).await {
            Ok(Some(t)) if t == twin => Ok(()),
            Ok(Some(t)) => Err(failed(format!(
                "name contract for {name:?} belongs to twin {t}, not {twin}"
            ))),
            Ok(None) => Err(failed(format!("no active name contract for {name:?}"))),
            Err(e) => Err(failed(format!(
                "checking the name contract of {name:?}: {e}"
            ))),
        }
    }

    /// Checks every name route against the ledger once: routes whose name contract is gone or
    /// changed owner are removed; routes stay when the ledger cannot be asked.
    pub async fn recheck(&self) {
        let routes = self.table.read().unwrap_or_else(|p| p.into_inner()).all();
        for r in routes {
            let Some(name) = &r.name else { continue };
            match self.names.owner(name).await {
                Ok(Some(t)) if t == r.twin => {}
                Ok(owner) => {
                    tracing::warn!(
                        name,
                        ?owner,
                        twin = r.twin,
                        "name contract no longer the deployment twin's: removing the route"
                    );
                    self.remove(&r.workload_id);
                }
                Err(e) => tracing::debug!(name, error = %e, "name contract check skipped"),
            }
        }
    }

    async fn provision_name(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<Value, PrimitiveError> {
        let WorkloadData::GatewayNameProxy(d) = wl
            .typed_data()
            .map_err(|e| PrimitiveError::InvalidData(e.to_string()))?
        else {
            return Err(PrimitiveError::InvalidData(
                "not a gateway-name-proxy".into(),
            ));
        };
        let domain = self
            .domain()
            .ok_or_else(|| failed("this node has no gateway domain (public config)"))?;
        let fqdn = format!("{}.{domain}", d.name).to_ascii_lowercase();
        let backends = self.backends(&d.base)?;
        self.check_name(ctx.twin, &d.name).await?;
        let netns = self.netns(ctx, &d.base)?;
        let cert = (!d.base.tls_passthrough).then(|| self.certs.name_for(&fqdn, Some(&domain)));
        self.install(Route::new(
            ctx.workload_id.clone(),
            ctx.twin,
            fqdn.clone(),
            Some(d.name.clone()),
            d.base.tls_passthrough,
            backends,
            netns,
            cert,
        ))
        .await?;
        Ok(json!({ "fqdn": fqdn }))
    }

    async fn provision_fqdn(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<Value, PrimitiveError> {
        let WorkloadData::GatewayFqdnProxy(d) = wl
            .typed_data()
            .map_err(|e| PrimitiveError::InvalidData(e.to_string()))?
        else {
            return Err(PrimitiveError::InvalidData(
                "not a gateway-fqdn-proxy".into(),
            ));
        };
        let fqdn = d.fqdn.trim_end_matches('.').to_ascii_lowercase();
        if let Some(domain) = self.domain() {
            let domain = domain.to_ascii_lowercase();
            if fqdn == domain || fqdn.ends_with(&format!(".{domain}")) {
                return Err(PrimitiveError::InvalidData(format!(
                    "fqdn {fqdn} is under the node domain {domain}: use a name proxy"
                )));
            }
        }
        let backends = self.backends(&d.base)?;
        if self.cfg.check_fqdn_dns {
            let own = self
                .public
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .ips
                .clone();
            let resolved: Vec<IpAddr> = tokio::net::lookup_host((fqdn.as_str(), 0))
                .await
                .map_err(|e| failed(format!("fqdn {fqdn} does not resolve: {e}")))?
                .map(|a| a.ip())
                .collect();
            if !resolved.iter().any(|ip| own.contains(ip)) {
                return Err(failed(format!(
                    "fqdn {fqdn} resolves to {resolved:?}, not to this node's public IPs {own:?}"
                )));
            }
        }
        let netns = self.netns(ctx, &d.base)?;
        let cert = (!d.base.tls_passthrough).then(|| self.certs.name_for(&fqdn, None));
        self.install(Route::new(
            ctx.workload_id.clone(),
            ctx.twin,
            fqdn,
            None,
            d.base.tls_passthrough,
            backends,
            netns,
            cert,
        ))
        .await?;
        Ok(json!({}))
    }
}

#[async_trait]
impl Lifecycle for Gateway {
    fn name(&self) -> &str {
        "gateway"
    }

    async fn start(&self) -> Result<(), String> {
        let proxy = Proxy::new(self.table.clone(), self.certs.clone());
        let http = tokio::net::TcpListener::bind(self.cfg.http_listen)
            .await
            .map_err(|e| format!("gateway http listener {}: {e}", self.cfg.http_listen))?;
        let https = tokio::net::TcpListener::bind(self.cfg.https_listen)
            .await
            .map_err(|e| format!("gateway https listener {}: {e}", self.cfg.https_listen))?;
        tracing::info!(http = %self.cfg.http_listen, https = %self.cfg.https_listen, domain = ?self.domain(), "gateway listening");
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.push(tokio::spawn(proxy.clone().serve_http(http)));
        tasks.push(tokio::spawn(proxy.serve_https(https)));
        tasks.push(spawn_periodic(self.me.clone(), self.cfg.recheck));
        Ok(())
    }

    async fn health(&self) -> Health {
        if self.domain().is_none() {
            return Health::failing("no gateway domain: name proxies are refused");
        }
        Health::ok()
    }

    async fn shutdown(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    async fn public_config(&self, config: Option<&Value>) -> Result<(), String> {
        let mut p = self.public.write().unwrap_or_else(|p| p.into_inner());
        let domain = config
            .and_then(|c| c["domain"].as_str())
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        p.domain = domain.or_else(|| self.cfg.domain.clone());
        p.ips = config
            .map(|c| {
                [&c["ipv4"], &c["ipv6"]]
                    .into_iter()
                    .filter_map(config_ip)
                    .collect()
            })
            .unwrap_or_default();
        Ok(())
    }
}

/// Starts the periodic work of a started gateway: name re-checks and certificate renewal,
/// every [`GatewayConfig::recheck`]. Runs until aborted (the gateway's shutdown does).
fn spawn_periodic(
    weak: std::sync::Weak<Gateway>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            gw.recheck().await;
            gw.certs.renew_all().await;
        }
    })
}

/// `gateway-name-proxy`.
#[derive(Debug)]
pub struct NameProxy(pub Arc<Gateway>);

/// `gateway-fqdn-proxy`.
#[derive(Debug)]
pub struct FqdnProxy(pub Arc<Gateway>);

#[async_trait]
impl Primitive for NameProxy {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::GatewayNameProxy
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.0.provision_name(ctx, wl).await
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, _: &Workload) -> Result<(), PrimitiveError> {
        self.0.deprovision(&ctx.workload_id);
        Ok(())
    }

    /// Request and response bytes through the gateway (upstream's gateway NRU).
    async fn consumption(
        &self,
        ctx: &WorkloadCtx,
        _: &Workload,
    ) -> Result<Option<u64>, PrimitiveError> {
        Ok(self.0.traffic(&ctx.workload_id))
    }
}

#[async_trait]
impl Primitive for FqdnProxy {
    fn workload_type(&self) -> WorkloadType {
        WorkloadType::GatewayFqdnProxy
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.0.provision_fqdn(ctx, wl).await
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, _: &Workload) -> Result<(), PrimitiveError> {
        self.0.deprovision(&ctx.workload_id);
        Ok(())
    }

    /// Request and response bytes through the gateway (upstream's gateway NRU).
    async fn consumption(
        &self,
        ctx: &WorkloadCtx,
        _: &Workload,
    ) -> Result<Option<u64>, PrimitiveError> {
        Ok(self.0.traffic(&ctx.workload_id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct NoNames;

    #[async_trait]
    impl NameOwners for NoNames {
        async fn owner(&self, _: &str) -> Result<Option<u32>, String> {
            Ok(None)
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x.gw.test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The HTTP listener answers ACME HTTP-01 challenges of a running order (any host), and
    /// only those.
    #[tokio::test]
    async fn http_listener_answers_acme_challenges() {
        let tmp = tempfile::tempdir().unwrap();
        let acme = crate::acme::AcmeConfig {
            directory: "https://127.0.0.1:9/unused".into(),
            email: "x@example.org".into(),
            account_file: tmp.path().join("acme.json"),
        };
        let mut cfg = GatewayConfig::new(tmp.path().to_path_buf(), crate::Issuer::Acme(acme));
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        cfg.http_listen = free();
        cfg.https_listen = free();
        let gw = Gateway::new(cfg.clone(), Arc::new(NoNames));
        gw.start().await.unwrap();
        gw.certs()
            .challenges
            .lock()
            .unwrap()
            .insert("tok-1".into(), "tok-1.thumbprint".into());
        let r = get(cfg.http_listen, "/.well-known/acme-challenge/tok-1").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("\r\n\r\ntok-1.thumbprint"), "{r}");
        let r = get(cfg.http_listen, "/.well-known/acme-challenge/other").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        gw.shutdown().await;
    }
}
