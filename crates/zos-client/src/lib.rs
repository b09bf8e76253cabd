//! The zos client: the user's identity and configuration, the human deployment spec, and the
//! deploy flow (contract on the ledger, signed deployment over RMB, wait for results).
//!
//! Read first: [`spec`] (what users write), then [`config`] and [`keys`].
#![forbid(unsafe_code)]

/// Client configuration (file, environment, flags).
pub mod config;
/// A connected client and the deploy flow.
pub mod grid;
/// The user's key file (seed, optional BIP-39 mnemonic).
pub mod keys;
/// The WireGuard mesh of a private network.
pub mod mesh;
/// Human sizes (`10GiB`).
pub mod size;
/// The YAML deployment spec and its translation to the wire model.
pub mod spec;

pub use config::{Config, ConfigError, IdentityError, Overrides};
pub use keys::{KeyFile, KeyFileError};
pub use spec::{NodeSelector, Spec, SpecError, SpecInput};
