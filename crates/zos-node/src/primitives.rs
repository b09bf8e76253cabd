//! The primitive plug-in point, re-exported from `zos-primitive` (the contract lives there so
//! that primitive crates depend on it and `zos-types` only, never on the agent).
//!
//! A primitive turns one workload into something real on this host; the engine owns ordering,
//! persistence, results and retries. See the `zos-primitive` crate documentation.

pub use zos_primitive::{
    ApiCommand, Health, INSTALL_ORDER, LegacyKey, Lifecycle, NodeSecret, NodeView, PoolKind,
    PoolReporter, PoolUsage, Primitive, PrimitiveError, PrimitiveRegistry, SiblingRef, WorkloadCtx,
    install_rank,
};

use crate::model::Deployment;
use crate::store::Store;

/// The agent's [`NodeView`] for API commands of primitive crates: the stored deployments.
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a>(pub &'a Store);

impl NodeView for StoreView<'_> {
    fn deployments(&self, twin: Option<u32>) -> Result<Vec<Deployment>, String> {
        self.0
            .list(twin)
            .map(|records| records.into_iter().map(|r| r.deployment).collect())
            .map_err(|e| e.to_string())
    }
}
