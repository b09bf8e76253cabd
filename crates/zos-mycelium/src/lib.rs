//! Mycelium, the end-to-end encrypted IPv6 overlay, wire-compatible with upstream mycelium
//! v0.7 (see `docs/mycelium.md` and the reference in `shared/spec/mycelium-reference.md`).
//!
//! Layers, bottom up: [`crypto`] (identity, addresses, E2E encryption), [`subnet`],
//! [`packet`] (pure link codecs), [`replay`] (receive replay window, a zos addition).

pub mod api;
pub mod crypto;
pub mod discovery;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod packet;
pub mod quic;
pub mod replay;
pub mod router;
pub mod rpc;
pub mod subnet;

pub use crypto::{PublicKey, SecretKey, SharedSecret};
pub use subnet::Subnet;
