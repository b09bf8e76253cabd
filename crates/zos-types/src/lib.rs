//! The zos deployment wire model.
//!
//! A deployment is the contract between a user and a node: the user signs its hash, the ledger
//! stores the hash, the node re-computes it and refuses anything that differs. This crate is
//! pure (no I/O) and byte-exact with upstream Zero-OS (`zosbase/pkg/gridtypes`): the same JSON
//! keys (quirks included), the same challenge stream with Go's formatting rules, the same
//! signature rules and the same error texts, because clients and nodes compare them.
//!
//! Read first: [`Deployment`] (challenge, hash, sign, verify, validate, upgrade), then
//! [`Workload`] and [`data::WorkloadData`] for the per-type rules.
//!
//! Known difference: Go's `encoding/json` matches object keys case-insensitively; serde matches
//! them exactly. Documents produced by upstream tools use the exact keys.
#![forbid(unsafe_code)]

/// The challenge stream writer.
pub mod challenge;
/// Stable error codes of workload results.
pub mod code;
/// Twin keys (ed25519, sr25519).
pub mod crypto;
/// Typed workload data, per type.
pub mod data;
/// The deployment envelope.
pub mod deployment;
/// Errors with upstream's texts.
pub mod error;
/// Go formatting of IPs, networks and hex.
pub mod gofmt;
/// Derived identifiers (workload id, device names, MACs, IPv6).
pub mod ids;
/// The workload envelope.
pub mod workload;

mod json;
mod rfc3339;

pub use code::ErrorCode;
pub use crypto::{KeyPair, KeyType, PublicKey};
pub use data::WorkloadData;
pub use deployment::{
    Deployment, Signature, SignatureRequest, SignatureRequirement, UpgradeOp, is_valid_name,
};
pub use error::{DecodeError, ValidationError, VerifyError};
pub use ids::workload_id;
pub use workload::{Capacity, ResultState, Timestamp, Workload, WorkloadResult, WorkloadType};
