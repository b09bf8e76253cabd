//! Errors of the ledger server and chain, and transaction rejections (the client has its own
//! [`crate::ClientError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use zos_types::crypto::PublicKey;

use crate::state::StateError;
use crate::store::StoreError;
use crate::types::Balance;

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
    /// A limit or option is out of range.
    #[error("bad ledger configuration: {0}")]
    Config(String),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
    /// The block producer stopped (it failed to commit; see the logs).
    #[error("block producer stopped")]
    ProducerGone,
}

/// Why a transaction was rejected (the text is what the submitter sees).
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The signature does not verify for this ledger.
    #[error("bad signature")]
    BadSignature,
    /// The nonce was already used.
    #[error("stale nonce {got}: account nonce is {expected}")]
    StaleNonce {
        /// Account nonce.
        expected: u64,
        /// Transaction nonce.
        got: u64,
    },
    /// The nonce skips ahead.
    #[error("future nonce {got}: account nonce is {expected}")]
    FutureNonce {
        /// Account nonce.
        expected: u64,
        /// Transaction nonce.
        got: u64,
    },
    /// The account has no twin but the call needs one.
    #[error("account {0} has no twin")]
    NoTwin(PublicKey),
    /// The caller is not allowed to act on the object.
    #[error("not the owner of {0}")]
    NotOwner(String),
    /// The caller is not the council.
    #[error("only the council may call {0}")]
    NotCouncil(&'static str),
    /// Something unique exists already.
    #[error("{0} already exists")]
    Duplicate(String),
    /// Twin not found.
    #[error("unknown twin {0}")]
    UnknownTwin(u32),
    /// Farm not found.
    #[error("unknown farm {0}")]
    UnknownFarm(u32),
    /// Node not found.
    #[error("unknown node {0}")]
    UnknownNode(u32),
    /// Contract not found.
    #[error("unknown contract {0}")]
    UnknownContract(u64),
    /// The node's farmer put it in maintenance: it takes no new contracts.
    #[error("node {0} is in maintenance: it takes no new contracts until its farmer ends it")]
    NodeInMaintenance(u32),
    /// Not enough free IPs in the farm's pool.
    #[error("farm {farm_id} IP pool exhausted: {requested} requested, {free} free")]
    IpPoolExhausted {
        /// Farm.
        farm_id: u32,
        /// Requested.
        requested: u32,
        /// Free.
        free: u32,
    },
    /// Balance too low.
    #[error("insufficient funds: {needed} needed, {available} available")]
    InsufficientFunds {
        /// Needed.
        needed: Balance,
        /// Available.
        available: Balance,
    },
    /// The contract is not in a state that allows this.
    #[error("contract {id} is {state}")]
    BadContractState {
        /// Contract.
        id: u64,
        /// Its state.
        state: String,
    },
    /// A field is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading state failed (not the submitter's fault; the block is abandoned).
    #[error("internal: {0}")]
    State(#[from] StateError),
}
