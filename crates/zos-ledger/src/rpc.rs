//! The JSON-RPC 2.0 wire shared by server and client: envelopes, method names, error codes.
//!
//! Transport: HTTP `POST /` (one request per body; a batch, i.e. a JSON array, is refused with
//! [`codes::INVALID_REQUEST`]) and WebSocket `GET /ws` (the same methods plus subscriptions).
//! Params are positional arrays, e.g.
//! `{"jsonrpc":"2.0","id":1,"method":"ledger_twin","params":[1]}`.
//! Subscriptions answer with a subscription id, then send notifications
//! `{"jsonrpc":"2.0","method":"ledger_event","params":{"subscription":7,"result":<EventRecord>}}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Method names (see `docs/ledger.md` for params and results).
pub mod methods {
    /// `[]` → `LedgerInfo`.
    pub const INFO: &str = "ledger_info";
    /// `[]` → head height.
    pub const HEAD: &str = "ledger_head";
    /// `[height]` → `Block | null`.
    pub const BLOCK: &str = "ledger_block";
    /// `[height]` → `[EventRecord]`.
    pub const EVENTS: &str = "ledger_events";
    /// `[hex tx hash]` → `TxLocation | null`.
    pub const TX: &str = "ledger_tx";
    /// `[account]` → `Account` (balance, nonce).
    pub const ACCOUNT: &str = "ledger_account";
    /// `[twin id]` → `Twin | null`.
    pub const TWIN: &str = "ledger_twin";
    /// `[account]` → `Twin | null`.
    pub const TWIN_BY_ACCOUNT: &str = "ledger_twinByAccount";
    /// `[farm id]` → `Farm | null`.
    pub const FARM: &str = "ledger_farm";
    /// `[name]` → `Farm | null`.
    pub const FARM_BY_NAME: &str = "ledger_farmByName";
    /// `[node id]` → `Node | null`.
    pub const NODE: &str = "ledger_node";
    /// `[twin id]` → `Node | null`.
    pub const NODE_BY_TWIN: &str = "ledger_nodeByTwin";
    /// `[contract id]` → `Contract | null`.
    pub const CONTRACT: &str = "ledger_contract";
    /// `[node id]` → `[Contract]` (active only).
    pub const NODE_CONTRACTS: &str = "ledger_nodeContracts";
    /// `[twin id]` → `[Contract]` (all states).
    pub const TWIN_CONTRACTS: &str = "ledger_twinContracts";
    /// `[name]` → `Contract | null` (active only).
    pub const NAME_CONTRACT: &str = "ledger_nameContract";
    /// `[hex state key]` → `StateProof` (value or absence at the latest signed head).
    pub const PROOF: &str = "ledger_proof";
    /// `[]` → `PricingPolicy`.
    pub const PRICING: &str = "ledger_pricingPolicy";
    /// `[]` → `MetricsSnapshot` (counters of this ledger process).
    pub const METRICS: &str = "ledger_metrics";
    /// `[]` → `ZosVersion`.
    pub const ZOS_VERSION: &str = "ledger_zosVersion";
    /// `[]` → `ClusterStatus` of an etcd-backed server (`null` on an embedded store).
    pub const CLUSTER: &str = "ledger_cluster";
    /// `[SignedTransaction]` → `Receipt` once durable, or error [`super::codes::REJECTED`].
    pub const SUBMIT: &str = "ledger_submit";
    /// WebSocket: `[from_height]` → subscription id; notifications [`EVENT_NOTIFICATION`].
    pub const SUBSCRIBE_EVENTS: &str = "ledger_subscribeEvents";
    /// WebSocket: `[from_height]` → subscription id; notifications [`BLOCK_NOTIFICATION`].
    pub const SUBSCRIBE_BLOCKS: &str = "ledger_subscribeBlocks";
    /// WebSocket: `[subscription id]` → bool.
    pub const UNSUBSCRIBE: &str = "ledger_unsubscribe";
    /// Notification carrying an `EventRecord`.
    pub const EVENT_NOTIFICATION: &str = "ledger_event";
    /// Notification carrying a `BlockHeader`.
    pub const BLOCK_NOTIFICATION: &str = "ledger_block";
    /// Dev only: `[seconds]` → new head height (an empty block at the new time, billing run).
    pub const DEV_ADVANCE_TIME: &str = "dev_advanceTime";
    /// Dev only: `[account, amount]` → `Receipt` of a transfer from the faucet.
    pub const DEV_FUND: &str = "dev_fund";
}

/// Error codes.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Params do not decode.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Server-side failure.
    pub const INTERNAL: i64 = -32603;
    /// The transaction was rejected; the message is the reason.
    pub const REJECTED: i64 = -32000;
    /// A dev method on a non-dev ledger.
    pub const DEV_ONLY: i64 = -32001;
    /// The method needs a WebSocket.
    pub const WS_ONLY: i64 = -32002;
    /// The source address is banned for too many bad signatures (HTTP 429); the message says
    /// for how long.
    pub const BANNED: i64 = -32003;
    /// The server is at a limit (connections, memory for request bodies, subscriptions per
    /// connection); retry later (HTTP 503).
    pub const BUSY: i64 = -32004;
}

/// A request (or, without `id`, a notification).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Request id (absent for notifications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Method name.
    pub method: String,
    /// Positional params.
    #[serde(default)]
    pub params: Value,
}

/// An error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`codes`].
    pub code: i64,
    /// Human-readable reason.
    pub message: String,
}

impl RpcError {
    /// Builds an error.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id.
    pub id: Value,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    /// A response from a handler's outcome.
    pub fn from_result(id: Value, r: Result<Value, RpcError>) -> Self {
        let (result, error) = match r {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Response {
            jsonrpc: "2.0".into(),
            id,
            result,
            error,
        }
    }
}

/// The params of a subscription notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationParams {
    /// Subscription id.
    pub subscription: u64,
    /// Payload.
    pub result: Value,
}
