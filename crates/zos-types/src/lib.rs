//! The zos deployment wire model.
//!
//! A deployment is the contract between a user and a node: the user signs its hash, the ledger
//! stores the hash, the node re-computes it and refuses anything that differs. This crate is
//! pure (no I/O) and byte-exact with upstream Zero-OS (`zosbase/pkg/gridtypes`).
//!
//! Read first: [`crypto`] (twin keys).

pub mod crypto;
