//! Errors of the ledger server and chain (the client has its own [`crate::ClientError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::state::StateError;
use crate::store::StoreError;

/// Why the ledger could not open, serve or verify.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// State could not be read or decoded.
    #[error(transparent)]
    State(#[from] StateError),
    /// An empty store and no genesis to start from.
    #[error("empty ledger and no genesis given (use --genesis FILE or --dev)")]
    NoGenesis,
    /// The given genesis is not the one the data directory was created with.
    #[error("genesis mismatch: data directory has {stored}, given {given}")]
    GenesisMismatch {
        /// Stored genesis hash.
        stored: String,
        /// Given genesis hash.
        given: String,
    },
    /// The genesis file could not be read or parsed.
    #[error("genesis file {path}: {reason}")]
    GenesisFile {
        /// File.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The stored chain is inconsistent (missing head block, …).
    #[error("corrupt ledger: {what}")]
    Corrupt {
        /// Description.
        what: String,
    },
    /// `verify` found a problem.
    #[error("verification failed at block {height}: {reason}")]
    Verify {
        /// Block height.
        height: u64,
        /// What did not check out.
        reason: String,
    },
    /// Creating the data directory failed.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
    /// The block producer stopped (it failed to commit; see the logs).
    #[error("block producer stopped")]
    ProducerGone,
}
