//! The grid ledger: who owns what on a zos grid, as a tamper-evident chain of signed transactions.
//!
//! It plays TFChain's role for a self-hosted grid. Accounts (ed25519 or sr25519 public keys)
//! sign transactions ([`Call`]) with a per-account nonce; a single producer applies them
//! atomically to the state (twins, farms and their IPv4 pools, nodes, node and name contracts,
//! balances, governance), groups them into blocks that commit to their transactions, their
//! events and the previous block (sha2-256), and stores each block in one atomic, durable write.
//! Contracts are billed from their owner's balance in ledger time (wall clock plus a dev offset);
//! owners who cannot pay go through a grace period to deletion. Anyone can audit a ledger by
//! replaying it from genesis ([`verify`]).
//!
//! Read first: [`types`] (the objects), [`tx`] (calls, events, blocks, what is signed),
//! [`runtime`] (the rules), then [`client::LedgerClient`] (the API other crates use).
//!
//! Features: `server` (default) is the ledger process ([`chain`], [`server`], the redb store,
//! axum/hyper, self-signed certificates). Without it the crate is the client side only (types,
//! transactions, proofs, [`client::LedgerClient`]), which is all zos-client and RMB peers link.
//!
//! One producer at a time: on the embedded redb store one process; on etcd
//! ([`store::EtcdStore`], `--store etcd`) several servers share the chain, one of them elected
//! producer with a lease, every append conditioned on that lease (crash-fault tolerant, not
//! Byzantine). No transaction fees; `verify` on redb needs the ledger stopped (a file lock).
//! Design, trust model and differences from TFChain: `docs/ledger.md`.

#![forbid(unsafe_code)]

/// Billing: CU/SU/NU/IPv4 pricing, grace period, deletion.
pub mod billing;
/// Block production, reads and the audit replay.
#[cfg(feature = "server")]
pub mod chain;
/// The typed JSON-RPC client.
pub mod client;
/// The accept loop: connection slots, timeouts, polite refusal.
#[cfg(feature = "server")]
mod conn;
/// Dev-mode keys and genesis.
pub mod dev;
/// Server and chain errors.
pub mod error;
/// Server limits (connections, deadlines, body sizes, signature throttling).
#[cfg(feature = "server")]
pub mod limits;
/// Process counters (`ledger_metrics`).
pub mod metrics;
/// The block producer thread.
#[cfg(feature = "server")]
mod producer;
/// State root, Merkle proofs and signed heads.
pub mod proof;
/// JSON-RPC envelopes, method names and error codes.
pub mod rpc;
/// Applying calls: every rule and rejection.
pub mod runtime;
/// The ledger process (HTTP + WebSocket).
#[cfg(feature = "server")]
pub mod server;
/// State layout and the per-block write overlay.
pub mod state;
/// Persistence trait and its redb, etcd and in-memory backends.
pub mod store;
/// Bad-signature throttling per source address.
#[cfg(feature = "server")]
mod throttle;
/// TLS with a pinned certificate (server acceptor, self-signed certificates, client pinning).
pub mod tls;
/// Transactions, events and blocks.
pub mod tx;
/// State objects and genesis.
pub mod types;
/// Field checks (names, hashes, IPs).
mod validate;

#[cfg(feature = "server")]
pub use chain::{Chain, Reader, VerifyReport, verify};
pub use client::{ClientError, LedgerClient, SubscriptionStream, Trust, Verified};
pub use error::LedgerError;
#[cfg(feature = "server")]
pub use limits::{Limits, SigThrottle};
pub use proof::{ProofError, SignedHead, StateProof};
pub use runtime::TxError;
#[cfg(feature = "server")]
pub use server::{LedgerConfig, LedgerServer, load_genesis, open_store};
#[cfg(feature = "server")]
pub use store::RedbStore;
pub use store::{LedgerStore, MemStore};
pub use tx::{
    Block, BlockHeader, Call, Event, EventRecord, Receipt, SignedTransaction, TxLocation,
    rotate_account_message,
};
pub use types::*;
