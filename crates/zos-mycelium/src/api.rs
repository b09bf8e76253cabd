//! The HTTP API under `/api/v1` (upstream `mycelium-api`): node info, peers (list, add,
//! remove), selected / fallback / queried routes, public key by IP. No authentication, as
//! upstream: bind it to loopback.

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
    Json(Value::Array(
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
    ))
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
    let now = Instant::now();
    let v = n.inner().router().queried_subnets();
    Json(Value::Array(
        v.into_iter()
            .map(|(s, e)| {
                json!({"subnet": s.to_string(), "expiration": e.saturating_duration_since(now).as_secs()})
            })
            .collect(),
    ))
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
