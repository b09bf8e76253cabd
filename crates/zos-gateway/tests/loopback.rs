//! The gateway without root (backends on loopback, no namespaces): protocol upgrades
//! (WebSocket) — a backend that switches to an echo protocol, the client's bytes come back
//! through the gateway after the 101, a request without `Connection: upgrade` is not upgraded,
//! consumption counts the body; and the node domain from the public config.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zos_gateway::{DevCa, Gateway, GatewayConfig, Issuer, NameOwners, NameProxy};
use zos_primitive::{Lifecycle, NodeSecret, Primitive, WorkloadCtx};
use zos_types::{Deployment, Workload, WorkloadType};

struct Mine;

#[zos_gateway::async_trait]
impl NameOwners for Mine {
    async fn owner(&self, _: &str) -> Result<Option<u32>, String> {
        Ok(Some(1))
    }
}

async fn head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed in the head: {buf:?}"
        );
        buf.push(b[0]);
    }
    String::from_utf8(buf).unwrap().to_ascii_lowercase()
}

/// Switches to echo when asked to upgrade; else answers 200 "plain".
async fn backend(l: TcpListener) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let h = head(&mut s).await;
            if h.contains("upgrade: echo") && h.contains("connection: upgrade") {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .await
                    .unwrap();
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            } else {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nplain\n")
                    .await
                    .unwrap();
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_joined_through_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = l.local_addr().unwrap();
    tokio::spawn(backend(l));

    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let mut cfg = GatewayConfig::new(
        tmp.path().join("cache"),
        Issuer::DevCa {
            ca: DevCa::load_or_create(tmp.path()).unwrap(),
            days: 90,
        },
    );
    cfg.http_listen = free();
    cfg.https_listen = free();
    cfg.domain = Some("gw.test".into());
    let http = cfg.http_listen;
    let gw = Gateway::new(cfg, Arc::new(Mine));
    gw.start().await.unwrap();
    let w = Workload {
        name: "ws".into(),
        workload_type: WorkloadType::GatewayNameProxy,
        data: json!({"name": "ws", "backends": [format!("http://{backend_addr}")]}),
        ..Workload::default()
    };
    let d = Arc::new(Deployment {
        twin_id: 1,
        contract_id: 1,
        workloads: vec![w.clone()],
        ..Deployment::default()
    });
    let ctx = WorkloadCtx::new(1, d, "ws", NodeSecret::new([1; 32]));
    assert_eq!(
        NameProxy(gw.clone()).consumption(&ctx, &w).await.unwrap(),
        None,
        "no route yet"
    );
    NameProxy(gw.clone()).provision(&ctx, &w).await.unwrap();

    let mut c = TcpStream::connect(http).await.unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.gw.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let h = tokio::time::timeout(Duration::from_secs(10), head(&mut c))
        .await
        .unwrap();
    assert!(h.starts_with("http/1.1 101"), "{h}");
    assert!(h.contains("upgrade: echo"), "{h}");
    for msg in [&b"ping\n"[..], b"and more bytes\n"] {
        c.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }

    // Upgrade without `Connection: upgrade` is an ordinary request.
    let mut c = TcpStream::connect(http).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: ws.gw.test\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let h = head(&mut c).await;
    assert!(h.starts_with("http/1.1 200"), "{h}");
    let mut body = [0u8; 6];
    c.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"plain\n");
    // The workload's consumption: the plain body now, the upgraded stream once it ends.
    let p = NameProxy(gw.clone());
    assert_eq!(p.consumption(&ctx, &w).await.unwrap(), Some(6));
    drop(c);
    gw.shutdown().await;
}

/// The node domain comes from the public config when it has one, else from the configuration;
/// the public config's IPs are the node's own (refused as backends).
#[tokio::test]
async fn the_public_config_domain_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = GatewayConfig::new(
        tmp.path().join("cache"),
        Issuer::DevCa {
            ca: DevCa::load_or_create(tmp.path()).unwrap(),
            days: 90,
        },
    );
    cfg.domain = Some("static.test".into());
    let gw = Gateway::new(cfg, Arc::new(Mine));
    let p = NameProxy(gw.clone());
    let wl = |name: &str, backend: &str| Workload {
        name: name.into(),
        workload_type: WorkloadType::GatewayNameProxy,
        data: json!({"name": name, "backends": [backend]}),
        ..Workload::default()
    };
    let (a, b, c) = (
        wl("a", "http://10.9.0.1"),
        wl("b", "http://10.9.0.1"),
        wl("c", "http://[2001:db8::7]:80"),
    );
    let d = Arc::new(Deployment {
        twin_id: 1,
        contract_id: 1,
        workloads: vec![a.clone(), b.clone(), c.clone()],
        ..Deployment::default()
    });
    let ctx = |n: &str| WorkloadCtx::new(1, d.clone(), n, NodeSecret::new([1; 32]));
    assert_eq!(
        p.provision(&ctx("a"), &a).await.unwrap(),
        json!({"fqdn": "a.static.test"})
    );
    gw.public_config(Some(
        &json!({"ipv4": "203.0.113.9/24", "ipv6": "2001:db8::7/64", "domain": "farm.example"}),
    ))
    .await
    .unwrap();
    assert_eq!(
        p.provision(&ctx("b"), &b).await.unwrap(),
        json!({"fqdn": "b.farm.example"})
    );
    let e = p.provision(&ctx("c"), &c).await.unwrap_err().to_string();
    assert!(e.contains("this node's public IP"), "{e}");
    // The public config removed: back to the configured domain.
    gw.public_config(None).await.unwrap();
    assert_eq!(gw.domain().as_deref(), Some("static.test"));
    assert_eq!(
        gw.routes(),
        [
            ("a.static.test".to_string(), "1-1-a".to_string()),
            ("b.farm.example".to_string(), "1-1-b".to_string())
        ]
    );
}
