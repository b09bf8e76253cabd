//! The in-memory index of a namespace: where the current version of each key is.
//! User mode: a hash map keyed by [`Key`]; seq mode: a vector indexed by id.

use std::collections::HashMap;

use ahash::RandomState;

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

pub(crate) enum KeyIndex {
    // SipHash (std's default) was 10% of a GET-heavy profile; aHash with random keys is
    // several times faster on short keys and still keyed, so clients cannot aim collisions.
    User(HashMap<Key, Meta, RandomState>),
    Seq { slots: Vec<Option<Meta>>, live: u64 },
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

    pub(crate) fn get(&self, key: &[u8]) -> Option<Meta> {
        match self {
            KeyIndex::User(m) => m.get(key).copied(),
            KeyIndex::Seq { slots, .. } => *slots.get(usize::try_from(Self::seq_id(key)?).ok()?)?,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            KeyIndex::User(m) => m.len() as u64,
            KeyIndex::Seq { live, .. } => *live,
        }
    }

    /// Records a new version (or a tombstone); returns the previous live length.
    pub(crate) fn put(&mut self, key: &[u8], meta: Option<Meta>) -> Option<u32> {
        match self {
            KeyIndex::User(m) => match meta {
                Some(meta) => m.insert(key.into(), meta),
                None => m.remove(key),
            }
            .map(|o| o.length),
            KeyIndex::Seq { slots, live } => {
                let id = usize::try_from(Self::seq_id(key)?).ok()?;
                // Ids are allocated densely, so a valid entry is at most one past the end.
                if id > slots.len() {
                    tracing::warn!(id, "seq entry out of order, ignored");
                    return None;
                }
                if id == slots.len() {
                    slots.push(None);
                }
                let old = std::mem::replace(&mut slots[id], meta);
                *live = *live + u64::from(meta.is_some()) - u64::from(old.is_some());
                old.map(|o| o.length)
            }
        }
    }
}

pub(crate) struct Loader<'a> {
    pub(crate) index: &'a mut KeyIndex,
    pub(crate) live_bytes: &'a mut u64,
    pub(crate) next_id: &'a mut u64,
}

impl Replay for Loader<'_> {
    fn parent_of(&self, key: &[u8]) -> Loc {
        self.index.get(key).map_or(Loc::NONE, |m| m.idx)
    }

    fn apply(&mut self, loc: Loc, e: &IndexEntry) {
        let meta = (e.flags & FLAG_DELETED == 0).then(|| Meta::of(loc, e));
        if let Some(id) = KeyIndex::seq_id(&e.key) {
            *self.next_id = (*self.next_id).max(id + 1);
        }
        let old = self.index.put(&e.key, meta);
        *self.live_bytes = *self.live_bytes - u64::from(old.unwrap_or(0))
            + meta.map_or(0, |m| u64::from(m.length));
    }
}
