//! JSON-RPC 2.0 over HTTP (upstream's `--jsonrpc-addr`, default `127.0.0.1:8990`): the same
//! views as the REST API under upstream's method names and error codes. Parameters may be
//! given by position (`["tcp://…"]`) or by name (`{"endpoint": "tcp://…"}`), as upstream's
//! server accepts both. Proxy and message methods are not implemented (`-32601`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api;
use crate::node::{Node, parse_endpoint};

/// Upstream's application error codes.
const BAD_IP: i64 = -32007;
const NO_PUBKEY: i64 = -32008;
const ADD_BAD_ENDPOINT: i64 = -32009;
const PEER_EXISTS: i64 = -32010;
const PEER_NOT_FOUND: i64 = -32011;
const DELETE_BAD_ENDPOINT: i64 = -32012;
/// JSON-RPC 2.0 codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// Methods this server answers and their parameters (for `rpc.discover`).
pub const METHODS: [(&str, &[&str]); 9] = [
    ("getInfo", &[]),
    ("getPublicKeyFromIp", &["ip"]),
    ("getPeers", &[]),
    ("addPeer", &["endpoint"]),
    ("deletePeer", &["endpoint"]),
    ("getSelectedRoutes", &[]),
    ("getFallbackRoutes", &[]),
    ("getQueriedSubnets", &[]),
    ("rpc.discover", &[]),
];

/// The JSON-RPC router for a node (POST `/`).
pub fn router(node: Node) -> Router {
    Router::new().route("/", post(handle)).with_state(node)
}

/// Serves JSON-RPC until the listener fails.
pub async fn serve(node: Node, addr: SocketAddr) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "mycelium JSON-RPC listening");
    axum::serve(l, router(node)).await
}

async fn handle(State(n): State<Node>, body: axum::body::Bytes) -> Json<Value> {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return Json(error(Value::Null, PARSE_ERROR, "parse error"));
    };
    Json(match req {
        Value::Array(calls) if !calls.is_empty() => {
            Value::Array(calls.iter().filter_map(|c| one(&n, c)).collect())
        }
        other => one(&n, &other).unwrap_or(Value::Null),
    })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// One call; `None` for a notification (no id), which gets no answer.
fn one(n: &Node, req: &Value) -> Option<Value> {
    let id = req.get("id").cloned();
    let (Some(method), Some("2.0")) = (
        req.get("method").and_then(Value::as_str),
        req.get("jsonrpc").and_then(Value::as_str),
    ) else {
        return Some(error(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "invalid request",
        ));
    };
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let result = call(n, method, &params);
    let id = id?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err((code, msg)) => error(id, code, &msg),
    })
}

/// The single string parameter `name`, by position or by name.
fn string_param(params: &Value, name: &str) -> Result<String, (i64, String)> {
    let v = match params {
        Value::Array(a) => a.first(),
        Value::Object(o) => o.get(name),
        _ => None,
    };
    v.and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            (
                INVALID_PARAMS,
                format!("expected a string parameter {name:?}"),
            )
        })
}

fn call(n: &Node, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    match method {
        "getInfo" => {
            let r = n.inner().router();
            Ok(
                json!({"nodeSubnet": r.subnet().to_string(), "nodePubkey": r.public_key().to_string()}),
            )
        }
        "getPublicKeyFromIp" => {
            let ip: IpAddr = string_param(params, "ip")?
                .parse()
                .map_err(|_| (BAD_IP, "not an IP address".to_string()))?;
            let IpAddr::V6(ip) = ip else {
                return Err((NO_PUBKEY, "no public key for this IP".into()));
            };
            n.inner()
                .router()
                .public_key_for(ip)
                .map(|pk| json!(pk.to_string()))
                .ok_or((NO_PUBKEY, "no public key for this IP".into()))
        }
        "getPeers" => Ok(Value::Array(n.inner().peer_stats())),
        "addPeer" => {
            let a = parse_endpoint(&string_param(params, "endpoint")?)
                .map_err(|e| (ADD_BAD_ENDPOINT, e.to_string()))?;
            if n.add_static_peer(a) {
                Ok(json!(true))
            } else {
                Err((PEER_EXISTS, "peer exists".into()))
            }
        }
        "deletePeer" => {
            let a = parse_endpoint(&string_param(params, "endpoint")?)
                .map_err(|e| (DELETE_BAD_ENDPOINT, e.to_string()))?;
            if n.remove_static_peer(a) {
                Ok(json!(true))
            } else {
                Err((PEER_NOT_FOUND, "no such peer".into()))
            }
        }
        "getSelectedRoutes" => Ok(api::routes_value(n, n.inner().router().selected_routes())),
        "getFallbackRoutes" => Ok(api::routes_value(n, n.inner().router().fallback_routes())),
        // Upstream writes the expiration as a string here (a number in the REST API).
        "getQueriedSubnets" => Ok(Value::Array(
            api::queried_value(n)
                .into_iter()
                .map(|(s, e)| json!({"subnet": s, "expiration": e.to_string()}))
                .collect(),
        )),
        "rpc.discover" => Ok(json!({
            "openrpc": "1.2.6",
            "info": {"title": "zos mycelium JSON-RPC", "version": env!("CARGO_PKG_VERSION")},
            "methods": METHODS
                .iter()
                .map(|(m, ps)| json!({
                    "name": m,
                    "params": ps.iter().map(|p| json!({"name": p, "required": true, "schema": {"type": "string"}})).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        })),
        _ => Err((METHOD_NOT_FOUND, format!("method {method:?} not found"))),
    }
}
