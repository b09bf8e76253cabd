//! Twin lookups: the ledger's view of a twin (signing key, X25519 key, relays), behind a trait.
//!
//! [`CachedDirectory`] adds expiry and single-flight (concurrent lookups of one twin share one
//! backend request). [`MemoryDirectory`] is a real in-process directory for tests and embedding;
//! [`crate::ledger::LedgerDirectory`] reads the zos ledger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use zos_types::crypto::PublicKey;

/// What RMB needs to know about a twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinRecord {
    /// Twin id.
    pub id: u32,
    /// The twin's signing key (relay login and envelope signatures).
    pub account: PublicKey,
    /// The twin's X25519 public key for end-to-end encryption, if published.
    pub e2e_key: Option<[u8; 32]>,
    /// Relay domains the twin is reachable through.
    pub relays: Vec<String>,
}

/// The domain of a `Twin.relays` entry: entries are domains (`relay.example:443`), but a
/// `ws://`/`wss://` URL is accepted too and compares by its `host[:port]`.
pub fn relay_domain(entry: &str) -> &str {
    let e = entry.trim();
    let e = ["wss://", "ws://", "https://", "http://"]
        .iter()
        .find_map(|p| e.strip_prefix(p))
        .unwrap_or(e);
    e.split('/').next().unwrap_or(e)
}

/// A lookup failed (as opposed to "no such twin", which is `Ok(None)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The backend could not be reached or answered with an error.
    #[error("twin {id} lookup failed: {reason}")]
    Backend {
        /// The twin being looked up.
        id: u32,
        /// The backend's message.
        reason: String,
    },
    /// The backend returned a record RMB cannot use.
    #[error("twin {id} has an invalid record: {reason}")]
    Invalid {
        /// The twin being looked up.
        id: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Source of twin records.
#[async_trait]
pub trait TwinDirectory: Send + Sync + 'static {
    /// The twin's record, `Ok(None)` if it does not exist.
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError>;

    /// Forgets any cached record of `id` (after a failed signature check: the key may have
    /// rotated). Uncached directories ignore it.
    fn invalidate(&self, _id: u32) {}
}

/// An in-memory directory.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    twins: Mutex<HashMap<u32, TwinRecord>>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a twin.
    pub fn insert(&self, rec: TwinRecord) {
        lock(&self.twins).insert(rec.id, rec);
    }

    /// Removes a twin.
    pub fn remove(&self, id: u32) -> Option<TwinRecord> {
        lock(&self.twins).remove(&id)
    }
}

#[async_trait]
impl TwinDirectory for MemoryDirectory {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        Ok(lock(&self.twins).get(&id).cloned())
    }
}

/// Locks a std mutex, recovering from poisoning (the maps stay consistent: every critical
/// section is a single insert/remove/get).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Option<TwinRecord>)>>>;

/// Caches another directory's answers: found twins for `ttl`, unknown twins for `negative_ttl`.
/// Errors are not cached. Concurrent lookups of one id wait for a single backend request.
pub struct CachedDirectory<D> {
    inner: D,
    ttl: Duration,
    negative_ttl: Duration,
    slots: Mutex<HashMap<u32, Slot>>,
}

impl<D: TwinDirectory> CachedDirectory<D> {
    /// Caches found twins for `ttl` and unknown ones for `min(ttl, 5 s)`.
    pub fn new(inner: D, ttl: Duration) -> Self {
        CachedDirectory {
            inner,
            ttl,
            negative_ttl: ttl.min(Duration::from_secs(5)),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The wrapped directory.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

/// Above this many cached ids, a lookup first drops expired slots.
const SWEEP_ABOVE: usize = 4096;

#[async_trait]
impl<D: TwinDirectory> TwinDirectory for CachedDirectory<D> {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        let slot = {
            let mut slots = lock(&self.slots);
            if slots.len() > SWEEP_ABOVE {
                let ttl = self.ttl;
                slots.retain(|_, s| match s.try_lock() {
                    Ok(g) => g.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl),
                    Err(_) => true, // a lookup is in flight
                });
            }
            slots.entry(id).or_default().clone()
        };
        // Holding the slot's lock across the backend call is the single-flight.
        let mut guard = slot.lock().await;
        if let Some((at, rec)) = guard.as_ref() {
            let ttl = if rec.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
            if at.elapsed() < ttl {
                return Ok(rec.clone());
            }
        }
        let rec = self.inner.twin(id).await?;
        *guard = Some((Instant::now(), rec.clone()));
        Ok(rec)
    }

    fn invalidate(&self, id: u32) {
        lock(&self.slots).remove(&id);
        self.inner.invalidate(id);
    }
}

#[async_trait]
impl<T: TwinDirectory + ?Sized> TwinDirectory for Arc<T> {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        (**self).twin(id).await
    }

    fn invalidate(&self, id: u32) {
        (**self).invalidate(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use zos_types::crypto::{KeyPair, KeyType};

    struct Counting {
        calls: AtomicUsize,
        mem: MemoryDirectory,
    }

    #[async_trait]
    impl TwinDirectory for Counting {
        async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.mem.twin(id).await
        }
    }

    fn rec(id: u32) -> TwinRecord {
        TwinRecord {
            id,
            account: KeyPair::from_seed(KeyType::Ed25519, [id as u8; 32]).public(),
            e2e_key: None,
            relays: vec![],
        }
    }

    #[tokio::test]
    async fn single_flight_and_invalidate() {
        let c = Counting {
            calls: AtomicUsize::new(0),
            mem: MemoryDirectory::new(),
        };
        c.mem.insert(rec(1));
        let cache = Arc::new(CachedDirectory::new(c, Duration::from_secs(60)));
        let lookups: Vec<_> = (0..16)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.twin(1).await })
            })
            .collect();
        for l in lookups {
            assert_eq!(l.await.unwrap().unwrap().unwrap().id, 1);
        }
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 1);
        cache.invalidate(1);
        cache.twin(1).await.unwrap();
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn relay_entries_compare_by_domain() {
        assert_eq!(relay_domain("relay.example"), "relay.example");
        assert_eq!(relay_domain("wss://relay.example/"), "relay.example");
        assert_eq!(relay_domain("ws://127.0.0.1:8080"), "127.0.0.1:8080");
    }

    #[tokio::test]
    async fn expiry_refetches() {
        let c = Counting {
            calls: AtomicUsize::new(0),
            mem: MemoryDirectory::new(),
        };
        let cache = CachedDirectory::new(c, Duration::ZERO);
        assert_eq!(cache.twin(5).await.unwrap(), None);
        cache.inner().mem.insert(rec(5));
        assert_eq!(cache.twin(5).await.unwrap().unwrap().id, 5);
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 2);
    }
}
