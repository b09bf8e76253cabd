//! The zos node agent.
//!
//! A node boots with no human: it creates (or recovers) its identity, registers its twin and
//! itself on the ledger, then turns node contracts into running workloads. Deployments arrive
//! over RMB, are checked synchronously (validity, owner, signatures, versions), written to a
//! durable per-deployment transaction log and job queue, and installed asynchronously by a
//! single worker through [`primitives::Primitive`] implementations registered by other crates.
//!
//! Read first: [`primitives`] (the plug-in trait), then [`engine`] and [`store`].
#![forbid(unsafe_code)]

/// The node API over RMB (`zos.*` commands).
pub mod api;
/// What the engine needs from the ledger (trait + test fake).
pub mod chain;
/// The provision engine: synchronous checks, job worker, capacity gate.
pub mod engine;
/// Node identity: the seed file, mirrored per pool.
pub mod identity;
/// The real ledger behind `Chain` and RMB's twin directory.
pub mod ledger;
/// Prometheus metrics on loopback.
pub mod metrics;
/// The deployment model (re-exported from `zos-types`).
pub mod model;
/// `run_node`: wiring and the worker loops.
pub mod node;
/// The primitive trait and registry.
pub mod primitives;
/// Capacity discovery, twin and node registration, uptime.
pub mod registrar;
/// Durable engine state (redb).
pub mod store;
/// Host facts from /proc and /sys.
pub mod sysinfo;
/// The ledger event watcher.
pub mod watcher;

pub use node::{NodeConfig, NodeError, Worker, run_node};
pub use primitives::{
    NodeSecret, PoolKind, PoolReporter, PoolUsage, Primitive, PrimitiveError, PrimitiveRegistry,
    WorkloadCtx,
};
