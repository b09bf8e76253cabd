//! The read cache: values recently written or read, held in the key index itself and bounded
//! in bytes for the whole server.
//!
//! Why: 0-db reads every `GET` from its data files. That costs a `pread` and a CRC check per
//! hit even when the page cache has the data, and a disk wait when it does not; Redis answers
//! from RAM. A cached value lives in its key's index slot, so a hit is the one hash lookup a
//! `GET` needs anyway. An overwrite or `DEL` replaces the slot and drops the old value with it;
//! `FLUSH` drops the whole index. Values are cached as stored (sealed for encrypted
//! namespaces), so the cache never holds plaintext that is encrypted at rest.
//!
//! Eviction is CLOCK (second chance): each namespace keeps a ring of the (key, version) pairs
//! it cached, in insertion order; its hand evicts entries not read since the hand last passed
//! and spares the others once. When the server's budget is exceeded, the namespaces take
//! turns (round robin over a window of up to 8 that moves one step per eviction, the one
//! inserting included, and its own hand as the last resort): in the first round each
//! hand makes at most one pass, so a namespace whose values are all being read gives nothing
//! and the next one, whose values are cold, gives instead; a second round evicts what the
//! first spared. Other namespaces are locked with `try_lock` (a busy one is skipped), so two
//! evicting namespaces cannot deadlock. An idle namespace's values are cold, so they are the
//! first to go: it cannot keep the budget from an active one. The budget is checked before
//! each insert without a lock, so inserts racing on several workers may overshoot it by one
//! value each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::format::Loc;
use crate::index::{CachedValue, ClockVisit, KeyIndex};
use crate::key::Key;
use crate::namespace::Namespace;

static NEXT_NS_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes counted per entry on top of the value: ring entry, `ThinArc` header, allocator slack.
pub const ENTRY_OVERHEAD: u64 = 64;
/// Larger values are not cached: one of them would evict thousands of small hot ones.
pub const MAX_CACHED_VALUE: usize = 1 << 20;
/// Namespaces asked in one eviction round.
const EVICTION_WINDOW: usize = 8;
/// Default cache budget of an embedded server (the node sizes its own).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Share of the usable memory that `--cache-size auto` gives the cache. The rest is for the
/// key index (about 140 bytes a key), connections, and the page cache under the data files.
pub const AUTO_CACHE_DIVISOR: u64 = 4;

/// The budget `--cache-size auto` picks: a quarter of the memory this process may use (RAM or
/// its cgroup limit), [`DEFAULT_CACHE_BYTES`] when that is unknown.
pub fn auto_cache_bytes(limit: Option<&crate::memlimit::MemoryLimit>) -> u64 {
    limit.map_or(DEFAULT_CACHE_BYTES, |l| l.bytes / AUTO_CACHE_DIVISOR)
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

/// The server-wide budget and counters, shared by every namespace's [`NsCache`].
pub struct CacheBudget {
    capacity: u64,
    used: AtomicU64,
    entries: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Every namespace (with its cache id), for evicting across namespaces.
    members: Mutex<Vec<(u64, Weak<Namespace>)>>,
    /// Length of `members` (deleted namespaces included until the next `register`), read
    /// without the lock so that a server with one namespace skips the turn order entirely.
    member_count: AtomicUsize,
    /// Where the next cross-namespace eviction starts (round robin).
    next_member: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `capacity` bytes (0: no cache).
    pub fn new(capacity: u64) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            capacity,
            used: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
            member_count: AtomicUsize::new(0),
            next_member: AtomicUsize::new(0),
        })
    }

    /// Whether caching is on.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            capacity: self.capacity,
            used: self.used.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Makes `ns` a candidate for evictions requested by other namespaces.
    pub fn register(&self, ns: &Arc<Namespace>) {
        let id = ns.lock().cache_id();
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|(_, w)| w.strong_count() > 0);
        members.push((id, Arc::downgrade(ns)));
        self.member_count.store(members.len(), Ordering::Relaxed);
    }

    pub(crate) fn count_read(&self, hit: bool) {
        if self.enabled() {
            let counter = if hit { &self.hits } else { &self.misses };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes over budget if `extra` more were added.
    fn excess(&self, extra: u64) -> u64 {
        (self.used.load(Ordering::Relaxed) + extra).saturating_sub(self.capacity)
    }

    /// The next few namespaces in turn to evict from (a bounded window that moves one step
    /// per call, so a server with thousands of namespaces does not visit them all per insert).
    fn turn_order(&self) -> Vec<(u64, Arc<Namespace>)> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let n = members.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next_member.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .filter_map(|i| {
                let (id, w) = &members[(start + i) % n];
                Some((*id, w.upgrade()?))
            })
            .take(EVICTION_WINDOW)
            .collect()
    }
}

/// One namespace's part of the cache: the clock ring of what it cached.
pub(crate) struct NsCache {
    budget: Arc<CacheBudget>,
    /// Tells this namespace apart in the budget's member list.
    id: u64,
    ring: VecDeque<(Key, Loc)>,
    /// Bytes (with overhead) and values this namespace holds in the cache.
    bytes: u64,
    entries: u64,
    /// Ring entries known to be dead (their version overwritten or deleted while cached).
    stale: usize,
}

impl NsCache {
    pub(crate) fn new(budget: Arc<CacheBudget>) -> NsCache {
        NsCache {
            budget,
            id: NEXT_NS_ID.fetch_add(1, Ordering::Relaxed),
            ring: VecDeque::new(),
            bytes: 0,
            entries: 0,
            stale: 0,
        }
    }

    pub(crate) fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Values this namespace holds in the cache.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Caches `stored` as the value of the version of `key` at `loc` (if it is still current),
    /// evicting to stay within the budget; a value that cannot fit is simply not cached.
    pub(crate) fn put(&mut self, index: &mut KeyIndex, key: &[u8], loc: Loc, stored: &[u8]) {
        if !self.budget.enabled() || stored.len() > MAX_CACHED_VALUE {
            return;
        }
        let weight = stored.len() as u64 + ENTRY_OVERHEAD;
        let excess = self.budget.excess(weight);
        if excess > 0 && self.make_room(index, excess) < excess {
            return;
        }
        if !index.cache_value(key, loc, CachedValue::new(stored)) {
            return;
        }
        self.ring.push_back((Key::from(key), loc));
        self.bytes += weight;
        self.entries += 1;
        self.budget.used.fetch_add(weight, Ordering::Relaxed);
        self.budget.entries.fetch_add(1, Ordering::Relaxed);
        self.compact(index);
    }

    /// Accounts for a cached value dropped with its index slot (overwrite, `DEL`).
    pub(crate) fn dropped(&mut self, value: &[u8]) {
        self.release(value.len() as u64 + ENTRY_OVERHEAD, 1);
        self.stale += 1;
    }

    /// Forgets everything (`FLUSH`: the caller drops the index and its values).
    pub(crate) fn clear(&mut self) {
        self.release(self.bytes, self.entries);
        self.ring.clear();
        self.stale = 0;
    }

    /// Frees `want` bytes, namespaces taking turns (see the module doc). Returns the bytes freed.
    fn make_room(&mut self, index: &mut KeyIndex, want: u64) -> u64 {
        // A full cache makes room on every insert: with one namespace, no lock, no list.
        let order = if self.budget.member_count.load(Ordering::Relaxed) > 1 {
            self.budget.turn_order()
        } else {
            Vec::new()
        };
        if order.len() <= 1 {
            // Alone (or not registered, in unit tests): nobody else to ask.
            return self.evict(index, want, 2);
        }
        let mut freed = 0;
        for passes in [1, 2] {
            for (id, ns) in &order {
                if freed >= want {
                    return freed;
                }
                freed += if *id == self.id {
                    self.evict(index, want - freed, passes)
                } else if let Some(mut st) = ns.try_lock() {
                    st.evict_cached(want - freed, passes)
                } else {
                    0
                };
            }
        }
        if freed < want {
            // Outside this round's window, or the others were busy: our own hand still can.
            freed += self.evict(index, want - freed, 2);
        }
        freed
    }

    /// Runs the clock hand until `want` bytes are freed or `passes` turns are done (a second
    /// turn evicts what the first spared). Returns the bytes freed.
    pub(crate) fn evict(&mut self, index: &mut KeyIndex, want: u64, passes: usize) -> u64 {
        let mut freed = 0;
        let mut steps = passes * self.ring.len();
        while freed < want && steps > 0 {
            steps -= 1;
            let Some((key, loc)) = self.ring.pop_front() else {
                break;
            };
            match index.clock_visit(key.as_bytes(), loc) {
                ClockVisit::Stale => self.stale = self.stale.saturating_sub(1),
                ClockVisit::Spared => self.ring.push_back((key, loc)),
                ClockVisit::Evicted(len) => {
                    let w = len as u64 + ENTRY_OVERHEAD;
                    self.release(w, 1);
                    freed += w;
                }
            }
        }
        freed
    }

    fn release(&mut self, bytes: u64, entries: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.entries = self.entries.saturating_sub(entries);
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.entries.fetch_sub(entries, Ordering::Relaxed);
    }

    /// Drops dead ring entries once they are the majority, so a namespace whose cache never
    /// fills (no eviction to skip them) does not grow its ring with every overwrite.
    fn compact(&mut self, index: &KeyIndex) {
        if self.stale > 1024 && self.stale > self.ring.len() / 2 {
            self.ring
                .retain(|(key, loc)| index.is_cached(key.as_bytes(), *loc));
            self.stale = 0;
        }
    }
}

impl Drop for NsCache {
    /// A deleted namespace (`NSDEL`) gives its share back.
    fn drop(&mut self) {
        self.release(self.bytes, self.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;
    use crate::engine::{Engine, EngineConfig};
    use crate::index::Meta;

    fn loc(off: u32) -> Loc {
        Loc { file: 1, off }
    }

    /// An index with `key` at `loc(off)`.
    fn put(index: &mut KeyIndex, key: &[u8], off: u32) -> Option<CachedValue> {
        let meta = Meta {
            idx: loc(off),
            data_off: off,
            length: 0,
            timestamp: 0,
            value_crc: 0,
            flags: 0,
        };
        index.put(key, Some(meta)).and_then(|s| s.cached)
    }

    fn cached(index: &mut KeyIndex, key: &[u8]) -> Option<Vec<u8>> {
        index.get_for_read(key)?.1.map(|v| v.as_slice().to_vec())
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let mut index = KeyIndex::new(Mode::User);
        let mut c = NsCache::new(CacheBudget::new(0));
        put(&mut index, b"k", 10);
        c.put(&mut index, b"k", loc(10), b"v");
        assert_eq!(cached(&mut index, b"k"), None);
        assert_eq!(c.budget().stats(), CacheStats::default());
    }

    #[test]
    fn only_the_current_version_is_cached_and_replacing_it_gives_its_bytes_back() {
        let mut index = KeyIndex::new(Mode::User);
        let mut c = NsCache::new(CacheBudget::new(1 << 20));
        put(&mut index, b"k", 10);
        c.put(&mut index, b"k", loc(9), b"older version");
        assert_eq!(cached(&mut index, b"k"), None);
        c.put(&mut index, b"k", loc(10), b"one");
        assert_eq!(cached(&mut index, b"k").as_deref(), Some(&b"one"[..]));
        assert_eq!(c.budget().stats().used, 3 + ENTRY_OVERHEAD);
        // Overwrite: the index drops the old value, the caller reports it.
        let old = put(&mut index, b"k", 20).expect("old value handed back");
        c.dropped(old.as_slice());
        assert_eq!(cached(&mut index, b"k"), None);
        let s = c.budget().stats();
        assert_eq!((s.used, s.entries), (0, 0));
        c.put(&mut index, b"k", loc(20), b"two");
        assert_eq!(cached(&mut index, b"k").as_deref(), Some(&b"two"[..]));
        drop(c);
    }

    #[test]
    fn stays_within_its_budget_and_spares_what_is_read() {
        let mut index = KeyIndex::new(Mode::User);
        let budget = CacheBudget::new(64 << 10);
        let mut c = NsCache::new(budget.clone());
        put(&mut index, b"hot", 1);
        c.put(&mut index, b"hot", loc(1), &[7u8; 100]);
        for off in 2..10_000u32 {
            let key = off.to_le_bytes();
            put(&mut index, &key, off);
            c.put(&mut index, &key, loc(off), &[0u8; 100]);
            // Read often enough to be marked again between two passes of the hand.
            if off % 64 == 0 {
                assert!(
                    cached(&mut index, b"hot").is_some(),
                    "hot value evicted at {off}"
                );
            }
        }
        let s = budget.stats();
        assert!(s.used <= 64 << 10, "{s:?}");
        assert!(s.entries > 300, "{s:?}");
        assert_eq!(s.used, s.entries * (100 + ENTRY_OVERHEAD));
        c.clear();
        assert_eq!(budget.stats().used, 0);
    }

    #[test]
    fn oversized_values_are_not_cached() {
        let mut index = KeyIndex::new(Mode::User);
        let mut c = NsCache::new(CacheBudget::new(64 << 20));
        put(&mut index, b"k", 1);
        c.put(&mut index, b"k", loc(1), &vec![0u8; MAX_CACHED_VALUE + 1]);
        assert_eq!(cached(&mut index, b"k"), None);
    }

    #[test]
    fn overwrites_do_not_grow_the_ring_without_bound() {
        let mut index = KeyIndex::new(Mode::Seq);
        let mut c = NsCache::new(CacheBudget::new(1 << 30));
        let key = 0u64.to_le_bytes();
        for off in 1..100_000u32 {
            if let Some(old) = put(&mut index, &key, off) {
                c.dropped(old.as_slice());
            }
            c.put(&mut index, &key, loc(off), b"value");
        }
        assert!(c.ring.len() < 4096, "ring holds {} entries", c.ring.len());
        assert_eq!(c.budget().stats().entries, 1);
    }

    #[test]
    fn a_busy_namespace_takes_the_budget_from_an_idle_one_and_nsdel_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().join("data"),
            index_dir: dir.path().join("index"),
            mode: None,
            sync: false,
            datasize: 1 << 20,
            cache_bytes: 32 << 10,
            strict_index: false,
            at_rest_key: None,
        })
        .unwrap();
        engine.create("idle").unwrap();
        engine.create("busy").unwrap();
        let idle = engine.get("idle").unwrap();
        let busy = engine.get("busy").unwrap();
        for i in 0..100u32 {
            idle.lock()
                .set(format!("k{i}").as_bytes(), &[1u8; 200], None)
                .unwrap();
        }
        let full = engine.cache_stats();
        assert!(full.used > 24 << 10, "{full:?}");
        let idle_before = idle.lock().cached_entries();
        for i in 0..100u32 {
            let key = format!("k{i}");
            let mut st = busy.lock();
            st.set(key.as_bytes(), &[2u8; 200], None).unwrap();
            assert!(st.get(key.as_bytes()).unwrap().is_some());
        }
        // Values being read win over values nobody reads: the busy namespace holds most of
        // the cache now, at the idle one's expense.
        let (idle_after, busy_after) = (idle.lock().cached_entries(), busy.lock().cached_entries());
        assert!(
            busy_after > idle_after && idle_after < idle_before / 2,
            "idle {idle_before} -> {idle_after}, busy {busy_after}"
        );
        let before = engine.cache_stats();
        assert_eq!(
            busy.lock().get(b"k99").unwrap().as_deref(),
            Some(&[2u8; 200][..])
        );
        assert_eq!(engine.cache_stats().hits, before.hits + 1);
        assert!(engine.cache_stats().used <= 32 << 10);
        // Values evicted from the idle namespace still read from disk.
        assert_eq!(
            idle.lock().get(b"k0").unwrap().as_deref(),
            Some(&[1u8; 200][..])
        );
        drop((idle, busy));
        assert!(engine.delete("busy").unwrap());
        assert!(engine.delete("idle").unwrap());
        let s = engine.cache_stats();
        assert_eq!((s.used, s.entries), (0, 0), "{s:?}");
    }

    /// Several workers on several namespaces with a small budget, reading as the server does
    /// (plan under the lock, file read and cache insert after it): every read matches what was
    /// written, the budget holds within one value per worker, nothing deadlocks, and deleting
    /// the namespaces gives every byte back.
    #[test]
    fn concurrent_namespaces_keep_the_books_straight() {
        use crate::namespace::ValueRead;
        use std::collections::HashMap;

        const BUDGET: u64 = 16 << 10;
        const WORKERS: u64 = 4;
        const MAX_VALUE: u64 = 450;
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(
            Engine::open(EngineConfig {
                data_dir: dir.path().join("data"),
                index_dir: dir.path().join("index"),
                mode: None,
                sync: false,
                datasize: 64 << 10,
                cache_bytes: BUDGET,
                strict_index: false,
                at_rest_key: None,
            })
            .unwrap(),
        );
        let names = ["a", "b", "c"];
        for n in names {
            engine.create(n).unwrap();
        }
        let disk_reads = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..WORKERS)
            .map(|t| {
                let engine = engine.clone();
                let disk_reads = disk_reads.clone();
                std::thread::spawn(move || {
                    let mut model: HashMap<(usize, Vec<u8>), Vec<u8>> = HashMap::new();
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    for i in 0..3000u64 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let n = (rng % 3) as usize;
                        let ns = engine.get(names[n]).unwrap();
                        let key = format!("t{t}k{}", (rng >> 8) % 50).into_bytes();
                        match (rng >> 16) % 4 {
                            0 | 1 => {
                                let len = 50 + ((rng >> 24) % (MAX_VALUE - 50)) as usize;
                                let v = vec![(i % 251) as u8; len];
                                ns.lock().set(&key, &v, None).unwrap();
                                model.insert((n, key), v);
                            }
                            2 => {
                                let plan = ns.lock().get_plan(&key).unwrap();
                                let got = match plan {
                                    ValueRead::Done(v) => v,
                                    ValueRead::Disk(r) => {
                                        disk_reads.fetch_add(1, Ordering::Relaxed);
                                        Some(r.cache_in(ns.clone()).run().unwrap())
                                    }
                                };
                                assert_eq!(got.as_deref(), model.get(&(n, key)).map(|v| &v[..]));
                            }
                            _ => {
                                if model.remove(&(n, key.clone())).is_some() {
                                    ns.lock().del(&key, None).unwrap();
                                }
                            }
                        }
                        if i % 50 == 0 {
                            engine.flush(&ns).unwrap();
                        }
                        let s = engine.cache_stats();
                        assert!(
                            s.used <= BUDGET + WORKERS * (MAX_VALUE + ENTRY_OVERHEAD),
                            "{s:?}"
                        );
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        // Both paths ran: values served from the cache and values read back from the files.
        assert!(engine.cache_stats().hits > 0);
        assert!(disk_reads.load(Ordering::Relaxed) > 0);
        for n in names {
            assert!(engine.delete(n).unwrap());
        }
        let s = engine.cache_stats();
        assert_eq!((s.used, s.entries), (0, 0), "{s:?}");
    }
}
