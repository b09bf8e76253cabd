//! RMB, the reliable message bus: end-to-end encrypted request/response between twins,
//! routed by relays.
//!
//! A twin (a user, a node) runs a [`Peer`]: it connects to its relays over WebSocket, logs in
//! by signing a fresh challenge with its twin key, and exchanges [`envelope::Envelope`]s. An
//! envelope has a routing header in clear (id, source, destination, timestamp, TTL) and a body
//! (command, reference, error, payload) sealed for the destination's X25519 key; the sender
//! signs both. A [`Relay`] routes by destination, holds envelopes for offline twins until their
//! TTL, forwards to federated relays and bounces what it refuses with a reason.
//!
//! Read first: `docs/rmb.md` (design, wire format, differences from upstream rmb-rs), then
//! [`envelope`] (the format), [`peer`] (the application API) and [`relay`].
//!
//! Transport: WebSocket, `wss://` with rustls ([`tls`]) for public relays, plain `ws://` on
//! loopback. Twins are looked up through [`TwinDirectory`]: [`LedgerDirectory`] for the zos
//! ledger, [`MemoryDirectory`] for tests and embedding, [`CachedDirectory`] in front of either.
//!
//! Features: `relay` (default) is the relay server (axum, the TLS acceptor); without it the
//! crate is the peer side only, which is what zos-client links.
//!
//! Limits: envelopes up to [`envelope::MAX_SEALED`] bytes (relays default to 4 MiB), TTL up to
//! one day, queues and rates per [`Limits`]. Delivery is at most once: a relay restart loses
//! what it had queued (callers see a timeout or a disconnect error, never a wrong answer).

#![forbid(unsafe_code)]

/// Bounded binary primitives for the codecs.
pub mod codec;
/// Twin lookups: the trait, a cache with single-flight, an in-memory directory.
pub mod directory;
/// X25519 → HKDF → ChaCha20-Poly1305 sealing of envelope bodies.
pub mod e2e;
/// The envelope format, signing and opening.
pub mod envelope;
/// WebSocket frames between peers and relays (login, envelopes, bounces).
pub mod frame;
/// Twin lookups against the zos ledger.
pub mod ledger;
/// Relay limits and rate limiting.
#[cfg(feature = "relay")]
pub mod limits;
/// Relay metrics in Prometheus text format.
#[cfg(feature = "relay")]
pub mod metrics;
/// The peer: `call`, `serve` and the router.
pub mod peer;
/// The relay server.
#[cfg(feature = "relay")]
pub mod relay;
/// Seen envelope ids (replay cache, duplicate filter).
mod replay;
/// rustls server and client configuration (`wss://`).
pub mod tls;
/// WebSocket client connection and login.
mod transport;

pub use directory::{CachedDirectory, DirectoryError, MemoryDirectory, TwinDirectory, TwinRecord};
pub use e2e::e2e_public_key;
pub use ledger::LedgerDirectory;
#[cfg(feature = "relay")]
pub use limits::Limits;
pub use peer::{
    HandlerError, PING_COMMAND, Peer, PeerConfig, PeerStats, RequestContext, RmbError, Router,
};
#[cfg(feature = "relay")]
pub use relay::{Relay, RelayConfig, RelayError, RelayIdentity};
pub use tls::{RelayTls, pin_relay_cert, pin_relay_cert_file, trust_ca_pem};
