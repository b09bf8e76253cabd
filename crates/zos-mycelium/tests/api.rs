//! The management APIs on two real nodes linked over loopback TCP (no TUN, no root): REST,
//! JSON-RPC (upstream's method names, parameters by position or name, error codes) and the
//! Prometheus metrics with per-peer health.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zos_mycelium::SecretKey;
use zos_mycelium::node::{Config, Endpoint, Node};

async fn node(seed: u8, peers: Vec<Endpoint>) -> (Node, SocketAddr) {
    // Bind to learn a free port, then let the node bind it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let n = Node::start(Config {
        key: SecretKey::from_bytes([seed; 32]),
        peers,
        tcp_listen: addr,
        quic_listen: None,
        tun_name: None,
        timer_divisor: 1,
        discovery: None,
    })
    .await
    .expect("node starts");
    (n, addr)
}

async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    a
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

async fn rpc(addr: SocketAddr, req: Value) -> Value {
    let (status, body) = http(addr, "POST", "/", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON-RPC answer")
}

#[tokio::test]
async fn rest_json_rpc_and_metrics_on_linked_nodes() {
    let (b, b_addr) = node(2, vec![]).await;
    let (a, _) = node(1, vec![Endpoint::tcp(b_addr)]).await;
    let rest = serve(zos_mycelium::api::router(a.clone())).await;
    let jrpc = serve(zos_mycelium::rpc::router(a.clone())).await;

    // The link comes up: the peer is alive and has a link cost.
    let t0 = Instant::now();
    loop {
        let (_, body) = http(rest, "GET", "/api/v1/admin/peers", "").await;
        let v: Value = serde_json::from_str(&body).expect("peers JSON");
        if v[0]["connectionState"] == "alive" {
            assert_eq!(v[0]["type"], "static");
            assert_eq!(
                v[0]["endpoint"],
                json!({"proto": "tcp", "addr": {"socket": b_addr.to_string()}})
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no link: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pk_a = SecretKey::from_bytes([1; 32]).public_key();
    let info = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 1, "method": "getInfo"}),
    )
    .await;
    assert_eq!(info["id"], 1);
    assert_eq!(info["result"]["nodePubkey"], pk_a.to_string());
    assert_eq!(info["result"]["nodeSubnet"], pk_a.subnet().to_string());

    // Our own address resolves to our key; an unknown one is upstream's -32008, junk -32007.
    let own = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 2, "method": "getPublicKeyFromIp", "params": [pk_a.address().to_string()]}),
    )
    .await;
    assert_eq!(own["result"], pk_a.to_string());
    let unknown = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 3, "method": "getPublicKeyFromIp", "params": {"ip": "400::1"}}),
    )
    .await;
    assert_eq!(unknown["error"]["code"], -32008);
    let junk = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 4, "method": "getPublicKeyFromIp", "params": ["nope"]}),
    )
    .await;
    assert_eq!(junk["error"]["code"], -32007);

    // Peers: add (by name), duplicate -32010, bad endpoint -32009, delete, unknown -32011.
    let ep = "tcp://127.0.0.1:9";
    let added = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 5, "method": "addPeer", "params": {"endpoint": ep}}),
    )
    .await;
    assert_eq!(added["result"], true);
    let dup = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 6, "method": "addPeer", "params": [ep]}),
    )
    .await;
    assert_eq!(dup["error"]["code"], -32010);
    let bad = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 7, "method": "addPeer", "params": ["udp://x"]}),
    )
    .await;
    assert_eq!(bad["error"]["code"], -32009);
    let peers = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 8, "method": "getPeers"}),
    )
    .await;
    assert_eq!(peers["result"].as_array().map(Vec::len), Some(2));
    let del = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 9, "method": "deletePeer", "params": [ep]}),
    )
    .await;
    assert_eq!(del["result"], true);
    let gone = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 10, "method": "deletePeer", "params": [ep]}),
    )
    .await;
    assert_eq!(gone["error"]["code"], -32011);

    // Batches, unknown methods, notifications (no answer), parse errors.
    let batch = rpc(
        jrpc,
        json!([
            {"jsonrpc": "2.0", "id": 11, "method": "getSelectedRoutes"},
            {"jsonrpc": "2.0", "id": 12, "method": "popMessage"},
            {"jsonrpc": "2.0", "method": "getInfo"},
        ]),
    )
    .await;
    let batch = batch.as_array().expect("batch answer");
    assert_eq!(batch.len(), 2);
    assert!(batch[0]["result"].is_array());
    assert_eq!(batch[1]["error"]["code"], -32601);
    let (_, body) = http(jrpc, "POST", "/", "{not json").await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["error"]["code"], -32700);
    let disc = rpc(
        jrpc,
        json!({"jsonrpc": "2.0", "id": 13, "method": "rpc.discover"}),
    )
    .await;
    assert!(
        disc["result"]["methods"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "addPeer"))
    );

    // Metrics: the live link's health.
    let (status, text) = http(rest, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let peer = format!("tcp://{b_addr}");
    assert!(
        text.contains(&format!(
            "mycelium_peer_up{{endpoint=\"{peer}\",type=\"static\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("mycelium_peer_link_cost{{endpoint=\"{peer}\"}} "))),
        "{text}"
    );
    assert!(text.contains("mycelium_packets_total{what=\"sent\"} 0"));

    a.shutdown();
    b.shutdown();
}
