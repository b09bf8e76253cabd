//! A gateway and its backends for scripts/bench-gateway.sh: a plain HTTP backend and a TLS
//! backend (hyper, one fixed 13-byte page), and the real gateway (dev CA) with a name proxy
//! to the first (`web.gw.bench`, TLS terminated) and a passthrough name proxy to the second
//! (`pass.gw.bench`). Prints the addresses as `key=value` lines, then serves until killed.
//!
//! The backends listen on loopback, which upstream's validation refuses for real
//! deployments (the engine applies it before a primitive runs; this example calls the
//! primitive directly).
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use zos_gateway::{DevCa, Gateway, GatewayConfig, Issuer, NameOwners, NameProxy};
use zos_primitive::{Lifecycle, NodeSecret, Primitive, WorkloadCtx};
use zos_types::{Deployment, Workload, WorkloadType};

struct AllMine;

#[zos_gateway::async_trait]
impl NameOwners for AllMine {
    async fn owner(&self, _: &str) -> Result<Option<u32>, String> {
        Ok(Some(1))
    }
}

async fn page(
    _: hyper::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"hello, bench\n",
    ))))
}

fn serve<S>(s: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), hyper::service::service_fn(page))
            .await;
    });
}

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("zos-bench-gateway"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = DevCa::load_or_create(&dir).unwrap();

    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = plain.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            serve(s);
        }
    });

    let (chain, key) = ca.issue(&["pass.gw.bench".to_string()], 2).unwrap();
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let tls_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = tls.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let a = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(t) = a.accept(s).await {
                    serve(t);
                }
            });
        }
    });

    let mut cfg = GatewayConfig::new(
        dir.join("cache"),
        Issuer::DevCa {
            ca: ca.clone(),
            days: 90,
        },
    );
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    cfg.http_listen = free();
    cfg.https_listen = free();
    cfg.domain = Some("gw.bench".into());
    cfg.check_fqdn_dns = false;
    let (http, https) = (cfg.http_listen, cfg.https_listen);
    let gw = Gateway::new(cfg, Arc::new(AllMine));
    gw.start().await.unwrap();
    let p = NameProxy(gw.clone());
    let wl = |name: &str, data| Workload {
        name: name.into(),
        workload_type: WorkloadType::GatewayNameProxy,
        data,
        ..Workload::default()
    };
    let web = wl(
        "web",
        json!({"name": "web", "backends": [format!("http://{plain_addr}")]}),
    );
    let pass = wl(
        "pass",
        json!({"name": "pass", "tls_passthrough": true, "backends": [tls_addr.to_string()]}),
    );
    let d = Arc::new(Deployment {
        twin_id: 1,
        contract_id: 1,
        workloads: vec![web.clone(), pass.clone()],
        ..Deployment::default()
    });
    for w in [&web, &pass] {
        let ctx = WorkloadCtx::new(1, d.clone(), &w.name, NodeSecret::new([1; 32]));
        p.provision(&ctx, w).await.unwrap();
    }
    println!("backend_http={plain_addr}");
    println!("backend_https={tls_addr}");
    println!("gateway_http={http}");
    println!("gateway_https={https}");
    println!("ca={}", ca.cert.display());
    println!("ready");
    std::future::pending::<()>().await;
}
