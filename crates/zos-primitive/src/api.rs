//! Node API commands contributed by primitive crates.

use async_trait::async_trait;
use zos_types::Deployment;

/// What the node lets an [`ApiCommand`] read: the stored deployments, each with the latest
/// result of every workload. Implemented by the agent over its store.
pub trait NodeView: Send + Sync {
    /// Deployments of `twin`, or of every twin when `None`. The error is the store's,
    /// as text (the command reports it to the caller).
    fn deployments(&self, twin: Option<u32>) -> Result<Vec<Deployment>, String>;
}

/// An extra node API command contributed by a primitive crate (volume snapshots, network
/// views, VM consoles…), so the node's API grows with its primitives without depending on them.
#[async_trait]
pub trait ApiCommand: Send + Sync {
    /// Handles `payload` from `source_twin` (already authenticated by RMB). Implementations must
    /// only reveal the caller's own workloads unless the upstream call is node-wide; an error
    /// goes back to the caller as a 400.
    async fn call(
        &self,
        node: &dyn NodeView,
        source_twin: u32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String>;
}
