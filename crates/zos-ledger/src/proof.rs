//! The state commitment in every block header, its proofs, and signed heads.
//!
//! **State root.** The state is a sorted map of byte keys to byte values (the JSON records of
//! `state.rs`). Each entry is a leaf `sha256(0x00 ‖ len(key) u32 BE ‖ key ‖ sha256(value))`,
//! in key order; leaves are paired into a binary Merkle tree (`sha256(0x01 ‖ left ‖ right)`),
//! and the last node of an odd level is carried up unchanged (never duplicated, so no two
//! different leaf lists share a root). The root in the header is
//! `sha256("zos-ledger/state/v1" ‖ count u64 BE ‖ tree root)` (tree root: 32 zeros when the
//! state is empty): binding the count fixes the shape of the tree, so a leaf's index is proven
//! along with it.
//!
//! **Proofs.** [`StateProof`] answers "what is the value of key K at this signed head": either
//! the leaf of K with its Merkle path, or (absence) the two adjacent leaves around K: both
//! paths, consecutive indices, keys on both sides of K (or one leaf at an end of the state).
//!
//! **Signed heads.** The producer signs `"zos-ledger/head/v1" ‖ genesis_hash ‖ block_hash` with
//! the ed25519 key published in genesis (`producer`); the block hash covers the state root.
//! A client that pins the producer key can therefore check any single answer without trusting
//! the connection it came over.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zos_types::crypto::{KeyPair, PublicKey};

use crate::tx::{BlockHeader, decode32};

/// Domain of the state root.
const ROOT_DOMAIN: &[u8] = b"zos-ledger/state/v1";
/// Domain of the producer's head signature.
const HEAD_DOMAIN: &[u8] = b"zos-ledger/head/v1";

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Hash of a stored value.
pub fn value_hash(value: &[u8]) -> [u8; 32] {
    sha(&[value])
}

/// The leaf of one state entry.
pub fn leaf_hash(key: &[u8], value_hash: &[u8; 32]) -> [u8; 32] {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes();
    sha(&[&[0u8], &len, key, value_hash])
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha(&[&[1u8], l, r])
}

fn root_of(count: u64, tree_root: &[u8; 32]) -> [u8; 32] {
    sha(&[ROOT_DOMAIN, &count.to_be_bytes(), tree_root])
}

/// The bytes the producer signs for a block.
pub fn head_message(genesis_hash: &[u8; 32], block_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_DOMAIN.len() + 64);
    m.extend_from_slice(HEAD_DOMAIN);
    m.extend_from_slice(genesis_hash);
    m.extend_from_slice(block_hash);
    m
}

/// Signs a block hash (hex signature).
pub fn sign_head(key: &KeyPair, genesis_hash: &[u8; 32], block_hash: &[u8; 32]) -> String {
    hex::encode(key.sign(&head_message(genesis_hash, block_hash)))
}

/// The full state as leaves, with single-key edits (tests and tools; the producer updates a
/// [`TreeSnapshot`] in place, a block's writes at a time).
#[derive(Debug, Clone)]
pub struct StateTree {
    snap: TreeSnapshot,
}

impl Default for StateTree {
    fn default() -> Self {
        StateTree {
            snap: TreeSnapshot::build(Vec::new()),
        }
    }
}

impl StateTree {
    /// A tree over `(key, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        StateTree {
            snap: TreeSnapshot::from_pairs(pairs),
        }
    }

    /// Sets (`Some`) or removes (`None`) a key; returns the previous value hash (for undo).
    pub fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<[u8; 32]> {
        let undo = self.snap.update(
            [(key.to_vec(), value.map(value_hash))]
                .into_iter()
                .collect(),
        );
        undo.into_iter().next().and_then(|(_, prev)| prev)
    }

    /// Restores a previous value hash (the undo of [`set`](Self::set)).
    pub fn restore(&mut self, key: &[u8], prev: Option<[u8; 32]>) {
        self.snap
            .update([(key.to_vec(), prev)].into_iter().collect());
    }

    /// A copy of the tree with every level built.
    pub fn snapshot(&self) -> TreeSnapshot {
        self.snap.clone()
    }
}

/// Changes to the state tree: key → new value hash (`None`: removed), in key order.
pub type TreeChanges = BTreeMap<Vec<u8>, Option<[u8; 32]>>;

/// Every level of the state tree at one block, for the root and for answering proofs.
///
/// The producer keeps one and updates it with each block's writes ([`update`](Self::update)):
/// leaf hashes are cached, a changed value rehashes its leaf and the nodes above it, and an
/// insertion or removal (which shifts the pairing of every later leaf, as the format defines
/// the tree over positions) rehashes only the nodes from its position on, never the leaves.
#[derive(Debug, Clone)]
pub struct TreeSnapshot {
    /// Keys (shared with copies of the tree) and value hashes, in key order.
    entries: Vec<(Arc<[u8]>, [u8; 32])>,
    /// `levels[0]` are the leaves; the last level has one node (or none: empty state).
    levels: Vec<Vec<[u8; 32]>>,
}

fn parent(level: &[[u8; 32]], j: usize) -> [u8; 32] {
    match (level.get(2 * j), level.get(2 * j + 1)) {
        (Some(l), Some(r)) => node_hash(l, r),
        // The last node of an odd level is carried up unchanged.
        (Some(one), None) => *one,
        _ => [0u8; 32],
    }
}

impl TreeSnapshot {
    /// A tree over `(key, value)` pairs (any order; a repeated key keeps its last value).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let sorted: BTreeMap<&[u8], [u8; 32]> =
            pairs.into_iter().map(|(k, v)| (k, value_hash(v))).collect();
        Self::build(
            sorted
                .into_iter()
                .map(|(k, v)| (Arc::<[u8]>::from(k), v))
                .collect(),
        )
    }

    fn build(entries: Vec<(Arc<[u8]>, [u8; 32])>) -> Self {
        let leaves = entries.iter().map(|(k, v)| leaf_hash(k, v)).collect();
        let mut t = TreeSnapshot {
            entries,
            levels: vec![leaves],
        };
        t.rebuild_from(0, Vec::new());
        t
    }

    /// Recomputes the levels above the leaves: every node at or after `shifted` (leaf index)
    /// and the ancestors of the `dirty` leaves (sorted), keeping all other nodes.
    fn rebuild_from(&mut self, shifted: usize, mut dirty: Vec<usize>) {
        let mut lo = shifted;
        let mut l = 0;
        while self.levels[l].len() > 1 {
            let len = self.levels[l].len().div_ceil(2);
            lo /= 2;
            dirty = dirty
                .into_iter()
                .map(|i| i / 2)
                .filter(|&j| j < lo)
                .collect();
            dirty.dedup();
            if self.levels.len() == l + 1 {
                self.levels.push(Vec::new());
            }
            let (below, above) = self.levels.split_at_mut(l + 1);
            let (below, up) = (&below[l], &mut above[0]);
            up.truncate(len.min(lo));
            for &j in &dirty {
                up[j] = parent(below, j);
            }
            up.extend((up.len()..len).map(|j| parent(below, j)));
            l += 1;
        }
        self.levels.truncate(l + 1);
    }

    /// Applies a block's changes; returns their undo (the previous value hash of each key).
    /// Cost: a leaf hash per changed key, plus the nodes above changed leaves, plus (only if
    /// keys were added or removed) the nodes from the first added/removed position on.
    pub fn update(&mut self, changes: TreeChanges) -> TreeChanges {
        let mut undo = TreeChanges::new();
        let mut dirty = Vec::new();
        let mut structural: Vec<(Vec<u8>, Option<[u8; 32]>)> = Vec::new();
        for (key, new) in changes {
            let found = self.entries.binary_search_by(|(k, _)| (**k).cmp(&key[..]));
            match (found, new) {
                (Ok(i), Some(vh)) => {
                    undo.insert(key, Some(self.entries[i].1));
                    self.entries[i].1 = vh;
                    self.levels[0][i] = leaf_hash(&self.entries[i].0, &vh);
                    dirty.push(i);
                }
                (Ok(i), None) => {
                    undo.insert(key.clone(), Some(self.entries[i].1));
                    structural.push((key, None));
                }
                (Err(_), Some(vh)) => {
                    undo.insert(key.clone(), None);
                    structural.push((key, Some(vh)));
                }
                (Err(_), None) => {}
            }
        }
        let shifted = match structural.first() {
            None => self.entries.len(),
            Some((first, _)) => {
                let lo = self.entries.partition_point(|(k, _)| **k < first[..]);
                // Merge the tail with the insertions and removals (both in key order).
                let tail = self.entries.split_off(lo);
                let mut tail_leaves = self.levels[0].split_off(lo).into_iter();
                let mut changes = structural.into_iter().peekable();
                for (k, vh) in tail {
                    let leaf = tail_leaves.next().unwrap_or([0u8; 32]);
                    while let Some((ck, cv)) = changes.next_if(|(ck, _)| ck[..] < *k) {
                        if let Some(cv) = cv {
                            self.levels[0].push(leaf_hash(&ck, &cv));
                            self.entries.push((ck.into(), cv));
                        }
                    }
                    if changes.next_if(|(ck, _)| ck[..] == *k).is_some() {
                        continue; // removed
                    }
                    self.entries.push((k, vh));
                    self.levels[0].push(leaf);
                }
                for (ck, cv) in changes {
                    if let Some(cv) = cv {
                        self.levels[0].push(leaf_hash(&ck, &cv));
                        self.entries.push((ck.into(), cv));
                    }
                }
                lo
            }
        };
        dirty.retain(|&i| i < shifted);
        self.rebuild_from(shifted, dirty);
        undo
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether the state is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state root committed in the header.
    pub fn root(&self) -> [u8; 32] {
        let top = self
            .levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0u8; 32]);
        root_of(self.len(), &top)
    }

    /// The value hash stored for `key`, if present.
    pub fn value_hash_of(&self, key: &[u8]) -> Option<[u8; 32]> {
        self.entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| self.entries[i].1)
    }

    fn path(&self, mut index: usize) -> Vec<String> {
        let mut out = Vec::new();
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sib = index ^ 1;
            if sib < level.len() {
                out.push(hex::encode(level[sib]));
            }
            index /= 2;
        }
        out
    }

    fn leaf(&self, index: usize) -> ProvenLeaf {
        let (k, v) = &self.entries[index];
        ProvenLeaf {
            index: index as u64,
            key: hex::encode(k),
            value_hash: hex::encode(v),
            path: self.path(index),
        }
    }

    /// The leaves that prove `key`'s value or its absence (see the module doc).
    pub fn prove(&self, key: &[u8]) -> Vec<ProvenLeaf> {
        match self.entries.binary_search_by(|(k, _)| (**k).cmp(key)) {
            Ok(i) => vec![self.leaf(i)],
            Err(i) => {
                let mut out = Vec::new();
                if i > 0 {
                    out.push(self.leaf(i - 1));
                }
                if i < self.entries.len() {
                    out.push(self.leaf(i));
                }
                out
            }
        }
    }
}

/// One leaf with its Merkle path (siblings from the leaf up; a carried-up node has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenLeaf {
    /// Position among all entries, in key order.
    pub index: u64,
    /// Hex key.
    pub key: String,
    /// Hex sha256 of the value.
    pub value_hash: String,
    /// Hex sibling hashes, leaf level first.
    pub path: Vec<String>,
}

/// A block header with its hash and the producer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// The header (carries the state root).
    pub header: BlockHeader,
    /// Hex block hash.
    pub hash: String,
    /// Hex ed25519 signature of [`head_message`].
    pub signature: String,
}

/// The answer of `ledger_proof`: a value (or its absence) at a signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateProof {
    /// The head the proof is against.
    pub head: SignedHead,
    /// Hex key asked for.
    pub key: String,
    /// The stored value (JSON text), `None` when the key is absent.
    pub value: Option<String>,
    /// Number of entries in the state at that head.
    pub count: u64,
    /// The key's leaf, or the neighbours that prove its absence.
    pub leaves: Vec<ProvenLeaf>,
}

/// Why a proof or a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The head is not signed by the pinned producer for this ledger.
    #[error("head {height}: {reason}")]
    Head {
        /// Height claimed.
        height: u64,
        /// What failed.
        reason: String,
    },
    /// The proof does not lead to the head's state root.
    #[error("state proof for key {key}: {reason}")]
    Proof {
        /// Hex key.
        key: String,
        /// What failed.
        reason: String,
    },
}

impl SignedHead {
    /// Checks the hash and the producer's signature. Returns the state root.
    pub fn verify(
        &self,
        producer: &PublicKey,
        genesis_hash: &[u8; 32],
    ) -> Result<[u8; 32], ProofError> {
        let bad = |reason: &str| ProofError::Head {
            height: self.header.height,
            reason: reason.to_string(),
        };
        let hash = self.header.hash().ok_or_else(|| bad("malformed header"))?;
        if decode32(&self.hash) != Some(hash) {
            return Err(bad("hash does not match the header"));
        }
        let sig = hex::decode(&self.signature).map_err(|_| bad("signature is not hex"))?;
        if sig.len() != 64 || !producer.verify(&head_message(genesis_hash, &hash), &sig) {
            return Err(bad("not signed by the pinned producer key for this ledger"));
        }
        decode32(&self.header.state_root).ok_or_else(|| bad("malformed state root"))
    }
}

/// Recomputes the tree root from one leaf and its path (see [`TreeSnapshot::path`]).
fn fold_path(leaf: &ProvenLeaf, count: u64) -> Option<[u8; 32]> {
    if leaf.index >= count {
        return None;
    }
    let key = hex::decode(&leaf.key).ok()?;
    let mut acc = leaf_hash(&key, &decode32(&leaf.value_hash)?);
    let (mut i, mut width) = (leaf.index, count);
    let mut sibs = leaf.path.iter();
    while width > 1 {
        if i % 2 == 1 {
            acc = node_hash(&decode32(sibs.next()?)?, &acc);
        } else if i + 1 < width {
            acc = node_hash(&acc, &decode32(sibs.next()?)?);
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    if sibs.next().is_some() {
        return None;
    }
    Some(acc)
}

impl StateProof {
    /// Verifies the head (signature by `producer` for `genesis_hash`) and that `value` is what
    /// the state holds for `key` there. Returns the verified value bytes (`None`: proven absent).
    pub fn verify(
        &self,
        producer: &PublicKey,
        genesis_hash: &[u8; 32],
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ProofError> {
        let root = self.head.verify(producer, genesis_hash)?;
        let bad = |reason: &str| ProofError::Proof {
            key: hex::encode(key),
            reason: reason.to_string(),
        };
        if hex::decode(&self.key).ok().as_deref() != Some(key) {
            return Err(bad("answers another key"));
        }
        let mut tree_root = None;
        for l in &self.leaves {
            let r = fold_path(l, self.count).ok_or_else(|| bad("malformed Merkle path"))?;
            if tree_root.is_some_and(|t| t != r) {
                return Err(bad("leaves lead to different roots"));
            }
            tree_root = Some(r);
        }
        let top = match (tree_root, self.count) {
            (Some(t), _) => t,
            (None, 0) => [0u8; 32],
            (None, _) => return Err(bad("no leaf given")),
        };
        if root_of(self.count, &top) != root {
            return Err(bad("does not lead to the signed state root"));
        }
        let keys: Vec<Vec<u8>> = self
            .leaves
            .iter()
            .map(|l| hex::decode(&l.key).unwrap_or_default())
            .collect();
        match &self.value {
            Some(v) => {
                let [leaf] = self.leaves.as_slice() else {
                    return Err(bad("a present value needs exactly its own leaf"));
                };
                if keys[0] != key {
                    return Err(bad("the leaf is for another key"));
                }
                if decode32(&leaf.value_hash) != Some(value_hash(v.as_bytes())) {
                    return Err(bad("value does not match its leaf"));
                }
                Ok(Some(v.as_bytes().to_vec()))
            }
            None => {
                let ok = match (self.leaves.as_slice(), keys.as_slice()) {
                    ([], []) => self.count == 0,
                    ([l], [k]) if k.as_slice() < key => l.index + 1 == self.count,
                    ([l], [k]) if k.as_slice() > key => l.index == 0,
                    ([a, b], [ka, kb]) => {
                        a.index + 1 == b.index && ka.as_slice() < key && key < kb.as_slice()
                    }
                    _ => false,
                };
                if !ok {
                    return Err(bad("absence not proven by adjacent neighbours"));
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use zos_types::crypto::KeyType;

    fn signed(tree: &StateTree, key: &KeyPair, gh: &[u8; 32]) -> SignedHead {
        let header = BlockHeader {
            height: 3,
            parent_hash: hex::encode([7u8; 32]),
            timestamp: 10,
            tx_hashes: vec![],
            events_hash: hex::encode([0u8; 32]),
            state_root: hex::encode(tree.snapshot().root()),
        };
        let h = header.hash().unwrap();
        SignedHead {
            header,
            hash: hex::encode(h),
            signature: sign_head(key, gh, &h),
        }
    }

    fn answer(tree: &StateTree, head: &SignedHead, key: &[u8], value: Option<&str>) -> StateProof {
        let snap = tree.snapshot();
        StateProof {
            head: head.clone(),
            key: hex::encode(key),
            value: value.map(str::to_string),
            count: snap.len(),
            leaves: snap.prove(key),
        }
    }

    #[test]
    fn every_key_and_every_gap_proves_for_every_size() {
        let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
        let gh = [9u8; 32];
        for n in 0..=17u8 {
            let pairs: Vec<(Vec<u8>, String)> = (0..n)
                .map(|i| (vec![b'k', i * 2 + 1], format!("\"v{i}\"")))
                .collect();
            let tree =
                StateTree::from_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_bytes())));
            let head = signed(&tree, &key, &gh);
            for (k, v) in &pairs {
                let p = answer(&tree, &head, k, Some(v));
                assert_eq!(
                    p.verify(&key.public(), &gh, k).unwrap().unwrap(),
                    v.as_bytes()
                );
                // The same leaf cannot vouch for another value or for absence.
                let forged = answer(&tree, &head, k, Some("\"x\""));
                assert!(forged.verify(&key.public(), &gh, k).is_err());
                let mut absent = answer(&tree, &head, k, None);
                assert!(absent.verify(&key.public(), &gh, k).is_err());
                absent.leaves.clear();
                assert!(absent.verify(&key.public(), &gh, k).is_err());
            }
            for gap in 0..=n {
                let k = vec![b'k', gap * 2];
                let p = answer(&tree, &head, &k, None);
                assert_eq!(p.verify(&key.public(), &gh, &k).unwrap(), None, "n={n}");
            }
        }
    }

    #[test]
    fn absence_needs_adjacent_neighbours() {
        let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
        let gh = [9u8; 32];
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (1..=5u8)
            .map(|i| (vec![i * 2], b"\"v\"".to_vec()))
            .collect();
        let tree = StateTree::from_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let head = signed(&tree, &key, &gh);
        // Hide key 6 behind leaves 4 and 8, which are genuine but not adjacent.
        let snap = tree.snapshot();
        let p = StateProof {
            head: head.clone(),
            key: hex::encode([6u8]),
            value: None,
            count: snap.len(),
            leaves: vec![snap.leaf(1), snap.leaf(3)],
        };
        assert!(p.verify(&key.public(), &gh, &[6]).is_err());
        // A wrong count changes the root.
        let mut p = answer(&tree, &head, &[7], None);
        p.count += 1;
        assert!(p.verify(&key.public(), &gh, &[7]).is_err());
    }

    #[test]
    fn heads_from_another_key_or_ledger_or_with_edits_are_refused() {
        let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
        let other = KeyPair::from_seed(KeyType::Ed25519, [2; 32]);
        let gh = [9u8; 32];
        let tree = StateTree::from_pairs([(b"a".as_slice(), b"1".as_slice())]);
        let head = signed(&tree, &key, &gh);
        assert!(head.verify(&key.public(), &gh).is_ok());
        assert!(head.verify(&other.public(), &gh).is_err());
        assert!(head.verify(&key.public(), &[8u8; 32]).is_err());
        let forged = signed(&tree, &other, &gh);
        assert!(forged.verify(&key.public(), &gh).is_err());
        let mut edited = head.clone();
        edited.header.state_root = hex::encode([0u8; 32]);
        assert!(edited.verify(&key.public(), &gh).is_err());
        let mut rehashed = edited.clone();
        rehashed.hash = hex::encode(rehashed.header.hash().unwrap());
        assert!(rehashed.verify(&key.public(), &gh).is_err());
    }

    /// The incremental update gives the same tree (every level, so every proof) as building
    /// from scratch, over random blocks of updates, insertions and removals, and its undo
    /// restores the previous tree.
    #[test]
    fn incremental_update_equals_rebuild() {
        use proptest::prelude::*;
        let block = proptest::collection::btree_map(
            proptest::collection::vec(0u8..6, 1..3),
            proptest::option::weighted(0.7, any::<u8>()),
            0..12,
        );
        let blocks = proptest::collection::vec(block, 1..8);
        proptest!(ProptestConfig::with_cases(300), |(start in 0usize..40, blocks in blocks)| {
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = (0..start)
                .map(|i| (vec![(i % 6) as u8, (i / 6) as u8], vec![i as u8]))
                .collect();
            let mut tree = TreeSnapshot::from_pairs(
                model.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            );
            for b in blocks {
                let before = tree.clone();
                let changes: TreeChanges = b
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map(|v| value_hash(&[v]))))
                    .collect();
                let undo = tree.update(changes.clone());
                let mut undone = tree.clone();
                undone.update(undo);
                prop_assert_eq!(&undone.levels, &before.levels);
                prop_assert_eq!(&undone.entries, &before.entries);
                for (k, v) in b {
                    match v {
                        Some(v) => model.insert(k, vec![v]),
                        None => model.remove(&k),
                    };
                }
                let fresh = TreeSnapshot::from_pairs(
                    model.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                );
                prop_assert_eq!(&tree.entries, &fresh.entries);
                prop_assert_eq!(&tree.levels, &fresh.levels);
                prop_assert_eq!(tree.root(), fresh.root());
            }
        });
    }
}
