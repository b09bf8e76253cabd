//! [`LedgerDirectory`]: twin lookups against the zos ledger's JSON-RPC API.
//!
//! Wrap it in a [`crate::CachedDirectory`] (as `zos relay serve` and `zos rmb call` do): every
//! envelope needs its source's key, and the ledger is a network hop away.

use async_trait::async_trait;
use zos_ledger::{LedgerClient, Twin};

use crate::directory::{DirectoryError, TwinDirectory, TwinRecord};

/// Reads twins from a ledger.
#[derive(Debug, Clone)]
pub struct LedgerDirectory {
    client: LedgerClient,
}

impl LedgerDirectory {
    /// Uses an existing client.
    pub fn new(client: LedgerClient) -> Self {
        LedgerDirectory { client }
    }

    /// A directory for the ledger at `url` (`http://host:port`).
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
}

/// Converts a ledger twin. A malformed `e2e_key` is treated as absent (the twin can still be
/// verified as a sender, but nothing can be encrypted for it) and logged.
pub fn twin_record(t: Twin) -> TwinRecord {
    let e2e_key = t.e2e_key.as_deref().and_then(|k| {
        match zos_types::crypto::decode_hex32("e2e key", k) {
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
        let t = self
            .client
            .twin(id)
            .await
            .map_err(|e| DirectoryError::Backend {
                id,
                reason: e.to_string(),
            })?;
        Ok(t.map(twin_record))
    }
}
