//! The zos node agent.
//!
//! A node boots with no human: it creates (or recovers) its identity, registers its twin and
//! itself on the ledger, then turns node contracts into running workloads. Deployments arrive
//! over RMB, are checked synchronously (validity, owner, signatures, versions), written to a
//! durable per-deployment transaction log and job queue, and installed asynchronously by a
//! single worker through [`primitives::Primitive`] implementations registered by other crates.
//!
//! Read first: [`primitives`] (the plug-in trait), then the engine.
#![forbid(unsafe_code)]

pub mod model;
pub mod primitives;
pub mod store;

pub use primitives::{
    NodeSecret, PoolKind, PoolReporter, PoolUsage, Primitive, PrimitiveError, PrimitiveRegistry,
    WorkloadCtx,
};
