//! The zos node agent.
//!
//! A node boots with no human: it creates (or recovers) its identity, registers its twin and
//! itself on the ledger, then turns node contracts into running workloads. Deployments arrive
//! over RMB, are checked synchronously (validity, owner, signatures, versions), written to a
//! durable per-deployment transaction log and job queue, and installed asynchronously by a
//! single worker through [`primitives::Primitive`] implementations registered by other crates.
//!
//! **Design.** Everything the node must not forget lives in one redb file: the current view
//! of each deployment, its append-only transaction log, and the job queue; every state change
//! is one fsynced transaction. Jobs are peeked, processed and only then acknowledged, primitives
//! are idempotent, and a result identical to the stored one is not logged again, so a crash at
//! any moment is followed by a retry that converges without loss or duplicates. On start every
//! stored deployment is re-provisioned (reconciliation); a watcher follows ledger events from
//! a persisted height and a periodic full sync catches anything missed.
//!
//! **Limits.** One job worker (FIFO). No KYC check; `set_public_nic` is refused. See
//! `docs/node.md`.
//!
//! **Read first:** [`primitives`] (the plug-in trait), then [`engine`] and [`store`], then
//! [`node::run_node`] for the wiring.
#![forbid(unsafe_code)]

/// The node API over RMB (`zos.*` commands).
pub mod api;
/// What the engine needs from the ledger (trait + test fake).
pub mod chain;
/// Read-only diagnostics for the farm's twin: log ring, probes, self-check.
pub mod diag;
/// The provision engine: synchronous checks, job worker, capacity gate.
pub mod engine;
/// Node identity: the seed file, mirrored per pool.
pub mod identity;
/// Requests to the image's PID 1 (`/run/zos/init-request`: reboot, switch).
pub mod init_request;
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
/// Milestones of a node run shared with its embedder (the upgrader's health gate).
pub mod progress;
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
    ApiCommand, NodeSecret, PoolKind, PoolReporter, PoolUsage, Primitive, PrimitiveError,
    PrimitiveRegistry, WorkloadCtx,
};
