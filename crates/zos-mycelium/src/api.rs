//! The HTTP API under `/api/v1` (upstream `mycelium-api`): node info, peers (list, add,
//! remove), selected / fallback / queried routes, public key by IP; and `/metrics`
//! (Prometheus text: per-peer and per-route health). No authentication, as upstream: bind it
//! to loopback.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::node::{Node, parse_endpoint};
use crate::router::RouteInfo;

/// The API router for a node.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/api/v1/admin", get(admin))
        .route("/api/v1/admin/peers", get(peers).post(add_peer))
        .route("/api/v1/admin/peers/{endpoint}", delete(remove_peer))
        .route("/api/v1/admin/routes/selected", get(selected))
        .route("/api/v1/admin/routes/fallback", get(fallback))
        .route("/api/v1/admin/routes/queried", get(queried))
        .route("/api/v1/pubkey/{ip}", get(pubkey))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// Serves the API until the listener fails.
pub async fn serve(node: Node, addr: SocketAddr) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "mycelium HTTP API listening");
    axum::serve(l, router(node)).await
}

async fn admin(State(n): State<Node>) -> Json<Value> {
    let r = n.inner().router();
    let pk = r.public_key();
    Json(json!({
        "nodeSubnet": r.subnet().to_string(),
        "nodeIp": pk.address().to_string(),
        "nodePubkey": pk.to_string(),
        "nodeStartTime": n.inner().start_time(),
    }))
}

async fn peers(State(n): State<Node>) -> Json<Value> {
    Json(Value::Array(n.inner().peer_stats()))
}

#[derive(serde::Deserialize)]
struct AddPeer {
    endpoint: String,
}

async fn add_peer(State(n): State<Node>, body: Json<AddPeer>) -> Response {
    match parse_endpoint(&body.endpoint) {
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Ok(a) if n.add_static_peer(a) => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => (StatusCode::CONFLICT, "peer exists").into_response(),
    }
}

async fn remove_peer(State(n): State<Node>, Path(endpoint): Path<String>) -> Response {
    match parse_endpoint(&endpoint) {
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Ok(a) if n.remove_static_peer(a) => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => (StatusCode::NOT_FOUND, "no such peer").into_response(),
    }
}

fn routes_json(n: &Node, routes: Vec<RouteInfo>) -> Json<Value> {
    Json(routes_value(n, routes))
}

/// Routes as upstream's API shows them.
pub(crate) fn routes_value(n: &Node, routes: Vec<RouteInfo>) -> Value {
    Value::Array(
        routes
            .into_iter()
            .map(|r| {
                json!({
                    "subnet": r.subnet.to_string(),
                    "nextHop": n.inner().link_name(r.next_hop),
                    "metric": if r.metric.is_infinite() { json!("infinite") } else { json!(r.metric.0) },
                    "seqno": r.seqno.0,
                })
            })
            .collect(),
    )
}

/// Queried subnets and the seconds until their query expires.
pub(crate) fn queried_value(n: &Node) -> Vec<(String, u64)> {
    let now = Instant::now();
    let v = n.inner().router().queried_subnets();
    v.into_iter()
        .map(|(s, e)| (s.to_string(), e.saturating_duration_since(now).as_secs()))
        .collect()
}

async fn selected(State(n): State<Node>) -> Json<Value> {
    let v = n.inner().router().selected_routes();
    routes_json(&n, v)
}

async fn fallback(State(n): State<Node>) -> Json<Value> {
    let v = n.inner().router().fallback_routes();
    routes_json(&n, v)
}

async fn queried(State(n): State<Node>) -> Json<Value> {
    Json(Value::Array(
        queried_value(&n)
            .into_iter()
            .map(|(s, e)| json!({"subnet": s, "expiration": e}))
            .collect(),
    ))
}

async fn metrics(State(n): State<Node>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&n),
    )
        .into_response()
}

/// The Prometheus exporter alone (upstream's `--metrics-api-address`): `GET /metrics`.
pub async fn serve_metrics(node: Node, addr: SocketAddr) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "mycelium metrics listening");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(node);
    axum::serve(l, app).await
}

async fn pubkey(State(n): State<Node>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.parse::<Ipv6Addr>() else {
        return (StatusCode::BAD_REQUEST, "not an IPv6 address").into_response();
    };
    match n.inner().router().public_key_for(ip) {
        Some(pk) => Json(json!({"publicKey": pk.to_string()})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
