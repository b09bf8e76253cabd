//! The read cache: values recently written or read, shared by every namespace of an engine
//! and bounded in bytes.
//!
//! Why: 0-db reads every `GET` from its data files. That costs a `pread` and a CRC check per
//! hit even when the page cache has the data, and a disk wait when it does not; Redis answers
//! from RAM. Entries are keyed by `(generation, index location)`. A location names one
//! immutable version of one key, so an entry never needs updating. A namespace takes a new
//! generation when it is opened, flushed or deleted, so a location reused after `FLUSH`
//! can never hit an old value: stale entries just age out. Values are cached as stored (sealed
//! for encrypted namespaces), so the cache never holds plaintext that is encrypted at rest.
//! Eviction is quick_cache's CLOCK-PRO-like policy, which keeps one large scan from flushing
//! the hot set.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::format::Loc;

/// Bytes counted per entry on top of the value: key, hash slot, `Bytes` header, policy state.
const ENTRY_OVERHEAD: u64 = 64;
/// Larger values are not cached: one of them would evict thousands of small hot ones.
pub const MAX_CACHED_VALUE: usize = 1 << 20;
/// Default cache budget of an embedded server (the node sizes its own).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Share of the usable memory that `--cache-size auto` gives the cache. The rest is for the
/// key index (about 120 bytes a key), connections, and the page cache under the data files.
pub const AUTO_CACHE_DIVISOR: u64 = 4;

/// The budget `--cache-size auto` picks: a quarter of the memory this process may use (RAM or
/// its cgroup limit), [`DEFAULT_CACHE_BYTES`] when that is unknown.
pub fn auto_cache_bytes(limit: Option<&crate::memlimit::MemoryLimit>) -> u64 {
    limit.map_or(DEFAULT_CACHE_BYTES, |l| l.bytes / AUTO_CACHE_DIVISOR)
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation number never handed out before in this process.
pub(crate) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

type CacheKey = (u64, Loc);

#[derive(Clone)]
struct ByteWeight;

impl Weighter<CacheKey, Bytes> for ByteWeight {
    fn weight(&self, _key: &CacheKey, value: &Bytes) -> u64 {
        value.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Counters shown by `INFO`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Budget in bytes (0: disabled).
    pub capacity: u64,
    /// Bytes held, with the per-entry overhead.
    pub used: u64,
    /// Values held.
    pub entries: u64,
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the data files.
    pub misses: u64,
}

/// A byte-bounded cache of stored values; a budget of 0 disables it.
pub struct ValueCache {
    inner: Option<Cache<CacheKey, Bytes, ByteWeight>>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ValueCache {
    /// A cache holding at most `capacity` bytes (0: no cache).
    pub fn new(capacity: u64) -> ValueCache {
        let inner = (capacity > 0).then(|| {
            // The estimate only sizes the initial tables; they grow with use.
            let estimated = usize::try_from(capacity / 1024).unwrap_or(usize::MAX);
            Cache::with_weighter(estimated.clamp(64, 1 << 20), capacity, ByteWeight)
        });
        ValueCache {
            inner,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The stored value of the version at `loc`, if cached.
    pub fn get(&self, generation: u64, loc: Loc) -> Option<Bytes> {
        let cache = self.inner.as_ref()?;
        let found = cache.get(&(generation, loc));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers the stored value of the version at `loc` (if small enough).
    pub fn insert(&self, generation: u64, loc: Loc, stored: Bytes) {
        if let Some(cache) = &self.inner
            && stored.len() <= MAX_CACHED_VALUE
        {
            cache.insert((generation, loc), stored);
        }
    }

    /// Forgets a version that can no longer be read (overwritten or deleted).
    pub fn remove(&self, generation: u64, loc: Loc) {
        if let Some(cache) = &self.inner {
            cache.remove(&(generation, loc));
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            capacity: self.capacity,
            used: self.inner.as_ref().map_or(0, Cache::weight),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(off: u32) -> Loc {
        Loc { file: 1, off }
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let c = ValueCache::new(0);
        c.insert(1, loc(10), Bytes::from_static(b"v"));
        assert_eq!(c.get(1, loc(10)), None);
        assert_eq!(c.stats(), CacheStats::default());
    }

    #[test]
    fn generations_and_locations_do_not_mix() {
        let c = ValueCache::new(1 << 20);
        c.insert(1, loc(10), Bytes::from_static(b"one"));
        c.insert(2, loc(10), Bytes::from_static(b"two"));
        assert_eq!(c.get(1, loc(10)).as_deref(), Some(&b"one"[..]));
        assert_eq!(c.get(2, loc(10)).as_deref(), Some(&b"two"[..]));
        assert_eq!(c.get(1, loc(11)), None);
        c.remove(1, loc(10));
        assert_eq!(c.get(1, loc(10)), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (2, 2, 1));
    }

    #[test]
    fn stays_within_its_budget() {
        let c = ValueCache::new(64 << 10);
        for off in 0..10_000 {
            c.insert(1, loc(off), Bytes::from(vec![0u8; 100]));
        }
        let s = c.stats();
        assert!(s.used <= 64 << 10, "{s:?}");
        assert!(s.entries > 100, "{s:?}");
    }

    #[test]
    fn oversized_values_are_not_cached() {
        let c = ValueCache::new(64 << 20);
        c.insert(1, loc(1), Bytes::from(vec![0u8; MAX_CACHED_VALUE + 1]));
        assert_eq!(c.get(1, loc(1)), None);
    }
}
