//! [`LedgerDirectory`]: twin lookups against the zos ledger's JSON-RPC API — the one adapter
//! the relay, `zos rmb`, the client and the node all use.
//!
//! With the producer key pinned in the client ([`zos_ledger::Trust::producer`]) every lookup is
//! proven against a signed head (`ledger_proof`): a swapped account or e2e key would let whoever
//! sits between this process and the ledger forge or read the twin's bus traffic, so a lookup
//! that does not verify is an error, never an answer. Without a pinned key the lookup is a plain
//! read and the trust is the channel's (a pinned TLS certificate, or a loopback ledger).
//!
//! Wrap it in a [`crate::CachedDirectory`]: every envelope needs its source's key, and the
//! ledger is a network hop away.

use async_trait::async_trait;
use zos_ledger::{LedgerClient, Twin};

use crate::directory::{DirectoryError, TwinDirectory, TwinRecord};

/// Reads twins from a ledger.
#[derive(Debug, Clone)]
pub struct LedgerDirectory {
    client: LedgerClient,
}

impl LedgerDirectory {
    /// Uses an existing client (verified lookups when it pins the producer key).
    pub fn new(client: LedgerClient) -> Self {
        LedgerDirectory { client }
    }

    /// A directory for the loopback ledger at `url` (`http://127.0.0.1:port`), nothing pinned.
    pub fn connect(url: &str) -> Result<Self, DirectoryError> {
        let client = LedgerClient::new(url).map_err(|e| DirectoryError::Backend {
            id: 0,
            reason: e.to_string(),
        })?;
        Ok(Self::new(client))
    }

    /// The underlying client.
    pub fn client(&self) -> &LedgerClient {
        &self.client
    }

    /// Whether lookups are proven against signed heads (the client pins the producer key).
    pub fn verifies(&self) -> bool {
        self.client.pins_producer()
    }
}

/// Converts a ledger twin. A malformed or small-order `e2e_key` is treated as absent (the twin
/// can still be verified as a sender, but nothing can be encrypted for it) and logged.
pub fn twin_record(t: Twin) -> TwinRecord {
    let e2e_key = t.e2e_key.as_deref().and_then(|k| {
        match zos_types::crypto::decode_hex32("e2e key", k) {
            // Older ledgers accepted small-order points; sealing to one would leak the body.
            Ok(b) if zos_types::crypto::x25519_low_order(&b) => {
                tracing::warn!(twin = t.id, "ignoring small-order e2e key on the ledger");
                None
            }
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(twin = t.id, error = %e, "ignoring malformed e2e key on the ledger");
                None
            }
        }
    });
    TwinRecord {
        id: t.id,
        account: t.account,
        e2e_key,
        relays: t.relays,
    }
}

#[async_trait]
impl TwinDirectory for LedgerDirectory {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        let backend = |e: zos_ledger::ClientError| DirectoryError::Backend {
            id,
            reason: e.to_string(),
        };
        let t = if self.verifies() {
            let t = self.client.verified_twin(id).await.map_err(backend)?.value;
            // The proof is for the key of twin `id`; a record naming another twin is corrupt.
            match t {
                Some(t) if t.id != id => {
                    return Err(DirectoryError::Invalid {
                        id,
                        reason: format!("proven record of twin {id} names twin {}", t.id),
                    });
                }
                t => t,
            }
        } else {
            self.client.twin(id).await.map_err(backend)?
        };
        Ok(t.map(twin_record))
    }
}
