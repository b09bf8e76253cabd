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

/// True if two `host[:port]` names are the same relay: case-insensitive, and a default port
/// (`:443`, `:80`) on either side is ignored.
pub fn same_host(a: &str, b: &str) -> bool {
    fn norm(h: &str) -> String {
        let h = h.trim().to_ascii_lowercase();
        for p in [":443", ":80"] {
            if let Some(s) = h.strip_suffix(p) {
                return s.to_owned();
            }
        }
        h
    }
    norm(relay_domain(a)) == norm(relay_domain(b))
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

    /// Asks for a fresh record of `id` on the next lookup (after a failed signature check:
    /// the key may have rotated). Returns true if the next lookup will go to the backend.
    /// A cache honours this at most once per refresh interval per twin, so bad signatures
    /// cannot buy backend round trips; uncached directories always go to the backend.
    fn invalidate(&self, _id: u32) -> bool {
        true
    }
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

/// Caches another directory's answers: found twins for `ttl`, unknown twins (negative
/// answers) for `negative_ttl`. Errors are not cached. Concurrent lookups of one id wait for a
/// single backend request. [`TwinDirectory::invalidate`] forces a re-fetch only if the cached
/// answer is at least `min_refresh` old: whatever arrives with bad signatures, each twin costs
/// at most one backend lookup per `min_refresh`.
pub struct CachedDirectory<D> {
    inner: D,
    ttl: Duration,
    negative_ttl: Duration,
    min_refresh: Duration,
    slots: Mutex<HashMap<u32, Slot>>,
    /// Sweep expired slots when the map grows past this (doubles after each sweep, so a
    /// large live cache is not rescanned on every lookup).
    next_sweep: std::sync::atomic::AtomicUsize,
}

impl<D: TwinDirectory> CachedDirectory<D> {
    /// Caches found twins for `ttl`, unknown ones for `min(ttl, 10 s)`, and re-fetches on
    /// request at most every `min(ttl, 10 s)`.
    pub fn new(inner: D, ttl: Duration) -> Self {
        CachedDirectory {
            inner,
            ttl,
            negative_ttl: ttl.min(Duration::from_secs(10)),
            min_refresh: ttl.min(Duration::from_secs(10)),
            slots: Mutex::new(HashMap::new()),
            next_sweep: std::sync::atomic::AtomicUsize::new(SWEEP_ABOVE),
        }
    }

    /// Sets how long an unknown twin is remembered as unknown.
    pub fn with_negative_ttl(mut self, d: Duration) -> Self {
        self.negative_ttl = d;
        self
    }

    /// Sets the shortest interval between forced re-fetches of one twin.
    pub fn with_min_refresh(mut self, d: Duration) -> Self {
        self.min_refresh = d;
        self
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
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            if slots.len() > self.next_sweep.load(relaxed) {
                let ttl = self.ttl;
                slots.retain(|_, s| match s.try_lock() {
                    Ok(g) => g.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl),
                    Err(_) => true, // a lookup is in flight
                });
                self.next_sweep
                    .store((2 * slots.len()).max(SWEEP_ABOVE), relaxed);
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

    fn invalidate(&self, id: u32) -> bool {
        let slot = match lock(&self.slots).get(&id) {
            Some(s) => s.clone(),
            None => return true,
        };
        // A lookup in flight will be fresh anyway.
        let Ok(mut g) = slot.try_lock() else {
            return false;
        };
        match g.as_ref() {
            Some((at, _)) if at.elapsed() < self.min_refresh => false,
            _ => {
                *g = None;
                self.inner.invalidate(id);
                true
            }
        }
    }
}

#[async_trait]
impl<T: TwinDirectory + ?Sized> TwinDirectory for Arc<T> {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        (**self).twin(id).await
    }

    fn invalidate(&self, id: u32) -> bool {
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
        // A fresh answer is not re-fetched however often it is invalidated...
        for _ in 0..100 {
            assert!(!cache.invalidate(1));
            cache.twin(1).await.unwrap();
        }
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_refreshes_at_most_once_per_interval() {
        let c = Counting {
            calls: AtomicUsize::new(0),
            mem: MemoryDirectory::new(),
        };
        let cache = CachedDirectory::new(c, Duration::from_secs(60))
            .with_min_refresh(Duration::from_millis(50));
        // Negative answers are cached too.
        for _ in 0..50 {
            assert_eq!(cache.twin(9).await.unwrap(), None);
            cache.invalidate(9);
        }
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.invalidate(9));
        cache.inner().mem.insert(rec(9));
        assert_eq!(cache.twin(9).await.unwrap().unwrap().id, 9);
        assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn relay_entries_compare_by_domain() {
        assert_eq!(relay_domain("relay.example"), "relay.example");
        assert_eq!(relay_domain("wss://relay.example/"), "relay.example");
        assert_eq!(relay_domain("ws://127.0.0.1:8080"), "127.0.0.1:8080");
        assert!(same_host("wss://Relay.example", "relay.example:443"));
        assert!(same_host("127.0.0.1:8080", "ws://127.0.0.1:8080/"));
        assert!(!same_host("127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!same_host("relay-a.example", "relay-b.example"));
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
