//! Lifecycle hooks of a primitive set (servers a primitive crate runs next to its primitives,
//! like storage's ZeroDB servers).

use async_trait::async_trait;
use serde::Serialize;

/// How a primitive set is doing, for `zos.system.diagnostics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// False when the set cannot serve its workloads right now.
    pub ok: bool,
    /// Why not, or a short status; empty when there is nothing to say.
    pub message: String,
}

impl Health {
    /// Healthy, nothing to say.
    pub fn ok() -> Self {
        Health {
            ok: true,
            message: String::new(),
        }
    }

    /// Unhealthy because of `why`.
    pub fn failing(why: impl Into<String>) -> Self {
        Health {
            ok: false,
            message: why.into(),
        }
    }
}

/// Start, health and shutdown of a primitive set. The binary calls `start` on every set
/// before the agent reconciles stored deployments, and `shutdown` (in reverse order) after
/// the agent has stopped.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// A short name for logs and diagnostics (`storage`).
    fn name(&self) -> &str;

    /// Brings up what the primitives need (idempotent). An error stops the node from starting.
    async fn start(&self) -> Result<(), String> {
        Ok(())
    }

    /// Current health. Default: healthy.
    async fn health(&self) -> Health {
        Health::ok()
    }

    /// Stops what `start` brought up, also after a `start` that failed halfway; best effort,
    /// logs its own failures. Data stays.
    async fn shutdown(&self) {}

    /// The node's public config on the ledger changed (or was read at start): upstream's
    /// `{type, ipv4, gw4, ipv6, gw6, domain}` JSON, `None` when removed. Apply it in place,
    /// without a restart and without disturbing running workloads (idempotent: it may be
    /// called again with the same config). Default: nothing depends on it.
    async fn public_config(&self, config: Option<&serde_json::Value>) -> Result<(), String> {
        let _ = config;
        Ok(())
    }
}
