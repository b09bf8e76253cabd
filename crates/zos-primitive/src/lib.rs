//! The contract between the zos node agent and its primitives.
//!
//! A *primitive* turns one workload type into something real on the host (a subvolume, a
//! ZeroDB namespace, a VM, a network resource). The agent (`zos-node`) owns ordering,
//! persistence, results and retries and knows no workload type; each primitive crate
//! (`zos-storage`, later `zos-network`, `zos-vm`, `zos-gateway`) depends on this crate and
//! `zos-types` only, and the binary composes them into one [`PrimitiveRegistry`].
//!
//! What a primitive crate may contribute:
//! - [`Primitive`]s, one per workload type, called with a [`WorkloadCtx`] that gives typed
//!   access to sibling workloads and their results, and keys derived from the node's key root
//!   ([`NodeSecret`]: neither the key root nor the node seed is reachable through this contract);
//! - a [`PoolReporter`] (storage capacity), extra node features, [`ApiCommand`]s (node API
//!   calls that read stored deployments through a [`NodeView`]);
//! - a [`Lifecycle`]: `start` before reconciliation, `health`, `shutdown` after the agent.
//!
//! **Read first:** [`Primitive`], then [`WorkloadCtx`], then [`PrimitiveRegistry`].
#![forbid(unsafe_code)]

mod api;
mod ctx;
mod lifecycle;
mod pools;
mod primitive;
pub mod process;
mod registry;
mod secret;

pub use api::{ApiCommand, NodeView};
pub use ctx::{SiblingRef, WorkloadCtx};
pub use lifecycle::{Health, Lifecycle};
pub use pools::{PoolKind, PoolReporter, PoolUsage, UnknownPoolKind};
pub use primitive::{INSTALL_ORDER, Primitive, PrimitiveError, install_rank};
pub use registry::PrimitiveRegistry;
pub use secret::{LegacyKey, NodeSecret};
