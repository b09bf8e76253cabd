//! The in-memory index of a namespace: where the current version of each key is.
//! User mode: a hash map keyed by [`Key`]; seq mode: a vector indexed by id.

use std::collections::HashMap;

use ahash::RandomState;
use triomphe::ThinArc;

use crate::Mode;
use crate::format::{FLAG_DELETED, IndexEntry, Loc};
use crate::key::Key;
use crate::store::Replay;

/// What the in-memory index knows about the current version of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) idx: Loc,
    pub(crate) data_off: u32,
    pub(crate) length: u32,
    pub(crate) timestamp: u32,
    pub(crate) value_crc: u32,
    pub(crate) flags: u8,
}

impl Meta {
    pub(crate) fn of(loc: Loc, e: &IndexEntry) -> Meta {
        Meta {
            idx: loc,
            data_off: e.data_off,
            length: e.length,
            timestamp: e.timestamp,
            value_crc: e.value_crc,
            flags: e.flags,
        }
    }
}

/// A cached stored value: count, length and bytes in one allocation behind a thin pointer,
/// so it costs an index slot 8 bytes (a `Arc<[u8]>` costs 16, `Bytes` 32) and a hit touches
/// one allocation.
#[derive(Clone)]
pub(crate) struct CachedValue(ThinArc<(), u8>);

impl CachedValue {
    pub(crate) fn new(bytes: &[u8]) -> CachedValue {
        CachedValue(ThinArc::from_header_and_slice((), bytes))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0.slice
    }
}

impl AsRef<[u8]> for CachedValue {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for CachedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedValue({} bytes)", self.as_slice().len())
    }
}

/// One live key: where its current version is and, when the read cache holds it, the stored
/// value. Keeping the value here makes a cached `GET` one hash lookup (a separate cache keyed
/// by location cost three more cache misses per hit, 20% of a GET profile).
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) meta: Meta,
    /// The stored value (sealed when encrypted).
    pub(crate) cached: Option<CachedValue>,
    /// Read since the cache's clock hand last passed (second chance).
    pub(crate) hot: bool,
}

impl Slot {
    fn new(meta: Meta) -> Slot {
        Slot {
            meta,
            cached: None,
            hot: false,
        }
    }
}

/// What the clock hand found at one cached entry (see `cache`).
pub(crate) enum ClockVisit {
    /// The version is gone (overwritten, deleted) or no longer cached: drop the ring entry.
    Stale,
    /// Read since the last pass: spared once, its mark cleared.
    Spared,
    /// Evicted; the stored length it held.
    Evicted(usize),
}

pub(crate) enum KeyIndex {
    // SipHash (std's default) was 10% of a GET-heavy profile; aHash with random keys is
    // several times faster on short keys and still keyed, so clients cannot aim collisions.
    User(HashMap<Key, Slot, RandomState>),
    Seq { slots: Vec<Option<Slot>>, live: u64 },
}

impl KeyIndex {
    pub(crate) fn new(mode: Mode) -> KeyIndex {
        match mode {
            Mode::User => KeyIndex::User(HashMap::default()),
            Mode::Seq => KeyIndex::Seq {
                slots: Vec::new(),
                live: 0,
            },
        }
    }

    pub(crate) fn seq_id(key: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(key.try_into().ok()?))
    }

    fn slot(&self, key: &[u8]) -> Option<&Slot> {
        match self {
            KeyIndex::User(m) => m.get(key),
            KeyIndex::Seq { slots, .. } => slots
                .get(usize::try_from(Self::seq_id(key)?).ok()?)?
                .as_ref(),
        }
    }

    fn slot_mut(&mut self, key: &[u8]) -> Option<&mut Slot> {
        match self {
            KeyIndex::User(m) => m.get_mut(key),
            KeyIndex::Seq { slots, .. } => slots
                .get_mut(usize::try_from(Self::seq_id(key)?).ok()?)?
                .as_mut(),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Meta> {
        self.slot(key).map(|s| s.meta)
    }

    /// For a read: the current version and its cached value, marked as recently read.
    pub(crate) fn get_for_read(&mut self, key: &[u8]) -> Option<(Meta, Option<CachedValue>)> {
        let slot = self.slot_mut(key)?;
        if slot.cached.is_some() && !slot.hot {
            slot.hot = true;
        }
        Some((slot.meta, slot.cached.clone()))
    }

    /// Caches `stored` for the version at `loc` if it is still the current one and not
    /// cached yet; false otherwise.
    pub(crate) fn cache_value(&mut self, key: &[u8], loc: Loc, stored: CachedValue) -> bool {
        match self.slot_mut(key) {
            Some(slot) if slot.meta.idx == loc && slot.cached.is_none() => {
                slot.cached = Some(stored);
                slot.hot = false;
                true
            }
            _ => false,
        }
    }

    /// Whether the version at `loc` is current and cached.
    pub(crate) fn is_cached(&self, key: &[u8], loc: Loc) -> bool {
        self.slot(key)
            .is_some_and(|s| s.meta.idx == loc && s.cached.is_some())
    }

    /// One step of the cache's clock at the entry for (`key`, `loc`).
    pub(crate) fn clock_visit(&mut self, key: &[u8], loc: Loc) -> ClockVisit {
        match self.slot_mut(key) {
            Some(slot) if slot.meta.idx == loc && slot.cached.is_some() => {
                if slot.hot {
                    slot.hot = false;
                    ClockVisit::Spared
                } else {
                    let len = slot.cached.take().map_or(0, |v| v.as_slice().len());
                    ClockVisit::Evicted(len)
                }
            }
            _ => ClockVisit::Stale,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            KeyIndex::User(m) => m.len() as u64,
            KeyIndex::Seq { live, .. } => *live,
        }
    }

    /// Records a new version (or a tombstone); returns the previous version's slot (whose
    /// cached value, if any, the caller must account for).
    pub(crate) fn put(&mut self, key: &[u8], meta: Option<Meta>) -> Option<Slot> {
        match self {
            KeyIndex::User(m) => match meta {
                Some(meta) => m.insert(key.into(), Slot::new(meta)),
                None => m.remove(key),
            },
            KeyIndex::Seq { slots, live } => {
                let id = usize::try_from(Self::seq_id(key)?).ok()?;
                // Ids an update consumed stay empty (callers bound `id` by the next id, so a
                // damaged entry cannot make this allocate without limit).
                if id >= slots.len() {
                    slots.resize(id + 1, None);
                }
                let old = std::mem::replace(&mut slots[id], meta.map(Slot::new));
                *live = *live + u64::from(meta.is_some()) - u64::from(old.is_some());
                old
            }
        }
    }
}

pub(crate) struct Loader<'a> {
    pub(crate) index: &'a mut KeyIndex,
    pub(crate) live_bytes: &'a mut u64,
    pub(crate) next_id: &'a mut u64,
    /// Every entry replayed (a mirror's position).
    pub(crate) entries: &'a mut u64,
}

impl Replay for Loader<'_> {
    fn parent_of(&self, key: &[u8]) -> Loc {
        self.index.get(key).map_or(Loc::NONE, |m| m.idx)
    }

    fn apply(&mut self, loc: Loc, e: &IndexEntry) {
        *self.entries += 1;
        let meta = (e.flags & FLAG_DELETED == 0).then(|| Meta::of(loc, e));
        if let Some(id) = KeyIndex::seq_id(&e.key) {
            if matches!(self.index, KeyIndex::Seq { .. }) {
                // Every written version took one id (an update too); a tombstone none. A new
                // id is always the next one: anything beyond cannot come from this server.
                if id > *self.next_id {
                    tracing::warn!(
                        id,
                        next = *self.next_id,
                        "seq entry beyond the next id, ignored"
                    );
                    return;
                }
                if meta.is_some() {
                    *self.next_id = (*self.next_id + 1).max(id + 1);
                }
            } else {
                *self.next_id = (*self.next_id).max(id + 1);
            }
        }
        let old = self.index.put(&e.key, meta);
        *self.live_bytes = *self.live_bytes - old.map_or(0, |o| u64::from(o.meta.length))
            + meta.map_or(0, |m| u64::from(m.length));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index is most of a server's memory: keep a slot (and a seq-mode id) small.
    #[test]
    fn slots_stay_small() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert!(
            std::mem::size_of::<Slot>() <= 40,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Slot>>(),
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn cached_value_round_trips() {
        let v = CachedValue::new(b"value");
        assert_eq!(v.clone().as_ref(), b"value");
        assert_eq!(CachedValue::new(b"").as_slice(), b"");
    }
}
