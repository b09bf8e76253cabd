//! The [`Primitive`] trait, its error, and the install order.
//!
//! Result mapping done by the engine (upstream `buildResult`):
//! `Ok(data)` → state `ok` with `data`; `Err(Unchanged(why))` → `unchanged` (logged, the previous
//! definition stays current); `Err(NoActionNeeded)` → no new transaction at all; any other error →
//! `error` with the error text as message.

use std::fmt;

use async_trait::async_trait;
use zos_types::{Workload, WorkloadType};

use crate::ctx::WorkloadCtx;

/// The fixed install order of workload types (upstream `WithStartupOrder`, completed with the
/// types upstream leaves in random map order). Deprovision and pause walk it in reverse.
pub const INSTALL_ORDER: [&str; 13] = [
    "zmount",
    "volume",
    "qsfs",
    "network",
    "network-light",
    "ipv4",
    "ip",
    "zdb",
    "zmachine",
    "zmachine-light",
    "zlogs",
    "gateway-name-proxy",
    "gateway-fqdn-proxy",
];

/// Position of a type in [`INSTALL_ORDER`] (unknown names sort last).
pub fn install_rank(t: &WorkloadType) -> usize {
    rank_of(t.as_str())
}

pub(crate) fn rank_of(name: &str) -> usize {
    INSTALL_ORDER
        .iter()
        .position(|n| *n == name)
        .unwrap_or(INSTALL_ORDER.len())
}

/// What a primitive call failed with.
#[derive(Debug, thiserror::Error)]
pub enum PrimitiveError {
    /// The type cannot be updated in place (engine rejects such updates synchronously when
    /// [`Primitive::supports_update`] is false; this is the runtime fallback).
    #[error("workload '{0}' does not support upgrade")]
    Unsupported(String),
    /// Nothing to do: the engine records no new result.
    #[error("no action needed")]
    NoActionNeeded,
    /// The update was refused without harm (e.g. a shrink): the previous definition stays.
    #[error("{0}")]
    Unchanged(String),
    /// The workload data does not decode or is not acceptable on this host.
    #[error("invalid workload data: {0}")]
    InvalidData(String),
    /// The operation failed; the message goes into the workload result.
    #[error("{0}")]
    Failed(String),
}

impl PrimitiveError {
    /// A failure from anything printable.
    pub fn failed(e: impl fmt::Display) -> Self {
        PrimitiveError::Failed(e.to_string())
    }

    /// The stable code a result of this error carries in the deployment history.
    pub fn code(&self) -> Option<zos_types::ErrorCode> {
        use zos_types::ErrorCode;
        match self {
            PrimitiveError::Unsupported(_) => Some(ErrorCode::Unsupported),
            PrimitiveError::NoActionNeeded => None,
            PrimitiveError::Unchanged(_) | PrimitiveError::InvalidData(_) => {
                Some(ErrorCode::InvalidInput)
            }
            PrimitiveError::Failed(_) => Some(ErrorCode::Backend),
        }
    }
}

/// One workload type's implementation.
///
/// A primitive must be **idempotent**: `provision` may be called again for a workload that
/// already exists (after a crash, after a reboot, on reconciliation) and must then converge to
/// the same state and return the same result data, never create a second copy.
#[async_trait]
pub trait Primitive: Send + Sync {
    /// The type this primitive handles.
    fn workload_type(&self) -> WorkloadType;

    /// Whether [`Primitive::update`] is implemented; when false, a deployment update that
    /// changes a workload of this type is refused at `zos.deployment.update` time.
    fn supports_update(&self) -> bool {
        false
    }

    /// Creates the workload, or converges an existing one (idempotent). Returns result data.
    async fn provision(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError>;

    /// Applies a new definition of an existing workload. Returns result data.
    async fn update(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<serde_json::Value, PrimitiveError> {
        let _ = (ctx, wl);
        Err(PrimitiveError::Unsupported(
            self.workload_type().as_str().to_string(),
        ))
    }

    /// Removes the workload and everything it owns (idempotent: absent is success).
    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError>;

    /// Suspends the workload (contract in grace period). Default: nothing to suspend.
    async fn pause(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let _ = (ctx, wl);
        Ok(())
    }

    /// Undoes [`Primitive::pause`]. Default: nothing to resume.
    async fn resume(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        let _ = (ctx, wl);
        Ok(())
    }

    /// Network consumption (NRU) of an ok/paused workload: a **cumulative** byte counter of the
    /// traffic its resource moved through the node's uplink, sampled by the agent, which reports
    /// the increase per contract to the ledger (`add_nru_reports`). The counter may start again
    /// from 0 when the resource is re-created (the agent then counts the new value). `None`
    /// (the default): the type consumes no network units.
    async fn consumption(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
    ) -> Result<Option<u64>, PrimitiveError> {
        let _ = (ctx, wl);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_order_has_every_upstream_type_once() {
        let mut v = INSTALL_ORDER.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 13);
        assert!(rank_of("zmount") < rank_of("zmachine"));
        assert_eq!(
            install_rank(&WorkloadType::parse("nope")),
            INSTALL_ORDER.len()
        );
        for t in WorkloadType::ALL {
            assert!(install_rank(&t) < INSTALL_ORDER.len(), "{t} has a rank");
        }
    }
}
