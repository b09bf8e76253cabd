//! Keys for primitives. A [`NodeSecret`] wraps the node's *key root* (32 random bytes kept off
//! the data pools, see `docs/storage.md` §Threat model) and, on nodes upgraded in place, the
//! node seed for the frozen [`LegacyKey`] derivations only. It hands out derived keys: neither
//! the key root nor the seed is reachable through this crate.

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use sha2::Sha256;

/// The derivations storage used before the key root existed, frozen because data on disk
/// depends on them: an encrypted zmount disk made then opens only with its original passphrase.
/// They take the node *seed*, which is mirrored on every pool, so what they protect is readable
/// by whoever holds a pool; new data uses [`NodeSecret::derive`] (the key root) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyKey {
    /// A zmount disk's LUKS passphrase: HKDF-SHA256, salt `zos-storage-zmount-v1`,
    /// info = the workload id. Still used to open disks that have no key record.
    ZmountDiskV1,
    /// A pool's ZeroDB admin password: HKDF-SHA256, salt `zos-storage-zdb-admin-v1`,
    /// info = the pool name (24 bytes of it were used, hex-encoded). No longer used: ZeroDB
    /// never stores its admin password, so servers moved to a key-root password at once.
    ZdbAdminV1,
}

impl LegacyKey {
    fn salt(self) -> &'static [u8] {
        match self {
            LegacyKey::ZmountDiskV1 => b"zos-storage-zmount-v1",
            LegacyKey::ZdbAdminV1 => b"zos-storage-zdb-admin-v1",
        }
    }
}

/// Salt of every key derived from the key root ([`NodeSecret::derive`]).
const ROOT_SALT: &[u8] = b"zos-key-root-v1";

/// Secret material for key derivation: the key root, and optionally the legacy seed.
#[derive(Clone)]
pub struct NodeSecret {
    root: Arc<[u8; 32]>,
    legacy_seed: Option<Arc<[u8; 32]>>,
}

impl NodeSecret {
    /// Wraps a key root: 32 random bytes that must not be stored on the data pools (the node
    /// loads it from the boot medium, `zos_node::identity::KeyRootSource`). Tests may pass any
    /// constant. Without [`NodeSecret::with_legacy_seed`], legacy keys are unavailable.
    pub fn new(key_root: [u8; 32]) -> Self {
        NodeSecret {
            root: Arc::new(key_root),
            legacy_seed: None,
        }
    }

    /// Adds the node seed, used only by [`NodeSecret::derive_legacy`] to open data made before
    /// the key root existed.
    pub fn with_legacy_seed(mut self, seed: [u8; 32]) -> Self {
        self.legacy_seed = Some(Arc::new(seed));
        self
    }

    /// A 32-byte key bound to `purpose` and `subject` (HKDF-SHA256 over the key root, salt
    /// `zos-key-root-v1`, info `purpose 0x00 subject`). Stable across restarts; different for
    /// every (purpose, subject) pair and every key root.
    pub fn derive(&self, purpose: &str, subject: &str) -> [u8; 32] {
        let mut info = Vec::with_capacity(purpose.len() + 1 + subject.len());
        info.extend_from_slice(purpose.as_bytes());
        info.push(0);
        info.extend_from_slice(subject.as_bytes());
        expand(&self.root[..], ROOT_SALT, &info)
    }

    /// A public identifier of the key root (16 bytes of [`NodeSecret::derive`] with purpose
    /// `key-root-id`): safe to store next to data it keys, so that opening it under another
    /// key root fails with a clear error rather than a wrong passphrase. Reveals nothing about
    /// the root (one-way, and the root is 256 random bits).
    pub fn root_id(&self) -> [u8; 16] {
        let k = self.derive("key-root-id", "");
        let mut id = [0u8; 16];
        id.copy_from_slice(&k[..16]);
        id
    }

    /// Whether the legacy seed was given ([`NodeSecret::with_legacy_seed`]).
    pub fn has_legacy(&self) -> bool {
        self.legacy_seed.is_some()
    }

    /// A key of one of the frozen [`LegacyKey`] derivations for `subject`, or `None` when this
    /// secret has no legacy seed. HKDF output is a prefix stream, so a user of fewer bytes (the
    /// ZeroDB admin password: 24) takes a prefix.
    pub fn derive_legacy(&self, kind: LegacyKey, subject: &str) -> Option<[u8; 32]> {
        self.legacy_seed
            .as_ref()
            .map(|seed| expand(&seed[..], kind.salt(), subject.as_bytes()))
    }
}

fn expand(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; 32];
    hk.expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl From<[u8; 32]> for NodeSecret {
    fn from(key_root: [u8; 32]) -> Self {
        NodeSecret::new(key_root)
    }
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let s = NodeSecret::new([7u8; 32]).with_legacy_seed([7u8; 32]);
        assert_eq!(s.derive("a", "1-2-x"), s.derive("a", "1-2-x"));
        assert_ne!(s.derive("a", "1-2-x"), s.derive("b", "1-2-x"));
        assert_ne!(s.derive("a", "1-2-x"), s.derive("a", "1-2-y"));
        // The separator keeps ("a", "b-c") and ("a-b", "c")-style splits apart.
        assert_ne!(s.derive("ab", "c"), s.derive("a", "bc"));
        assert_ne!(
            s.derive("a", "1-2-x"),
            NodeSecret::new([8u8; 32]).derive("a", "1-2-x")
        );
        assert_ne!(
            s.derive_legacy(LegacyKey::ZmountDiskV1, "x"),
            s.derive_legacy(LegacyKey::ZdbAdminV1, "x")
        );
        assert_eq!(format!("{s:?}"), "NodeSecret(..)");
    }

    /// The key root, not the seed, keys new data: with root = seed the new derivation still
    /// differs from the legacy one (other salt and info), and the legacy seed changes nothing
    /// derived from the root.
    #[test]
    fn root_keys_are_independent_of_the_legacy_seed() {
        let root = NodeSecret::new([1; 32]);
        let with_seed = NodeSecret::new([1; 32]).with_legacy_seed([2; 32]);
        assert_eq!(
            root.derive("zmount-luks", "1-1-d"),
            with_seed.derive("zmount-luks", "1-1-d")
        );
        assert_eq!(root.root_id(), with_seed.root_id());
        assert_ne!(root.root_id(), NodeSecret::new([3; 32]).root_id());
        assert!(!root.has_legacy() && with_seed.has_legacy());
        assert_eq!(root.derive_legacy(LegacyKey::ZmountDiskV1, "1-1-d"), None);
        let same = NodeSecret::new([2; 32]).with_legacy_seed([2; 32]);
        assert_ne!(
            Some(same.derive("zmount-luks", "1-1-d")),
            same.derive_legacy(LegacyKey::ZmountDiskV1, "1-1-d")
        );
    }

    /// The legacy bytes every derivation produced before the key root existed, for seed
    /// 0x5a×32: printed by the previous `zos-storage` (`DiskKey::derive`, `admin_password`) and
    /// cross-checked against RFC 5869 in Python. If one changes, upgraded nodes lose their
    /// encrypted disks. The key-root derivation is pinned too: disks made from now on depend
    /// on it (computed with Python's `hmac`/`hashlib` HKDF, RFC 5869).
    #[test]
    fn derivations_are_pinned() {
        let s = NodeSecret::new([0x5a; 32]).with_legacy_seed([0x5a; 32]);
        assert_eq!(
            hex(&s
                .derive_legacy(LegacyKey::ZmountDiskV1, "7-42-disk")
                .unwrap()),
            "8bf146026f481b9ed67bf943c25041bd0ebc983980c9e6374d6ef7349a971e8b"
        );
        assert_eq!(
            hex(&s.derive_legacy(LegacyKey::ZdbAdminV1, "hdd").unwrap()[..24]),
            "e467a08b56ad69126cbf5278704fde0eafd2e29954b9e77d"
        );
        assert_eq!(hex(&s.derive("zmount-luks", "7-42-disk")), ROOT_PIN);
    }

    const ROOT_PIN: &str = "648f2b383a6162c7518dd8ca40eaab5d3870d461b99bc24c5ecef9132ae2111b";
}
