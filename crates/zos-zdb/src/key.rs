//! Compact keys for the user-mode index: keys of up to 22 bytes live inside the hash table
//! entry itself (no allocation, no pointer to follow on lookup), longer ones on the heap.
//! Hashing and equality are those of the byte slice, so lookups take `&[u8]`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

const INLINE: usize = 22;

/// A key as stored in the index map (24 bytes).
#[derive(Clone)]
pub enum Key {
    /// Short key stored inline.
    Inline {
        /// Used bytes of `buf`.
        len: u8,
        /// The key, zero padded.
        buf: [u8; INLINE],
    },
    /// Longer key.
    Heap(Box<[u8]>),
}

impl Key {
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, buf } => &buf[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Key {
        if k.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..k.len()].copy_from_slice(k);
            Key::Inline {
                len: k.len() as u8,
                buf,
            }
        } else {
            Key::Heap(k.into())
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must match `<[u8] as Hash>` for `Borrow<[u8]>` lookups to work.
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", hex::encode(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn small_and_large_keys_behave_as_slices() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        let mut m: HashMap<Key, u32> = HashMap::new();
        let keys: Vec<Vec<u8>> = (0..60).map(|n| vec![b'k'; n]).collect();
        for (i, k) in keys.iter().enumerate() {
            m.insert(Key::from(&k[..]), i as u32);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(&k[..]), Some(&(i as u32)));
            assert!(matches!(Key::from(&k[..]), Key::Inline { .. }) == (k.len() <= INLINE));
        }
        assert_eq!(m.get(&b"absent"[..]), None);
        assert_eq!(m.remove(&keys[30][..]), Some(30));
    }
}
