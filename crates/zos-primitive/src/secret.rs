//! Keys derived from the node seed. Primitives get a [`NodeSecret`], which only ever hands out
//! derived keys: the seed itself is not reachable through this crate.

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use sha2::Sha256;

/// The derivations storage used before this contract existed, frozen because data on disk
/// depends on them (an encrypted zmount disk opens only with its original passphrase, a ZeroDB
/// server's namespaces were created under its admin password). New primitives use
/// [`NodeSecret::derive`]; these exist only so that a node upgraded in place keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyKey {
    /// A zmount disk's LUKS passphrase: HKDF-SHA256, salt `zos-storage-zmount-v1`,
    /// info = the workload id.
    ZmountDiskV1,
    /// A pool's ZeroDB admin password: HKDF-SHA256, salt `zos-storage-zdb-admin-v1`,
    /// info = the pool name (24 bytes of it were used, hex-encoded).
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

/// Secret material for key derivation: the node seed, never exposed directly.
#[derive(Clone)]
pub struct NodeSecret(Arc<[u8; 32]>);

impl NodeSecret {
    /// Wraps the node's ed25519 seed (the agent does this once at start).
    pub fn new(seed: [u8; 32]) -> Self {
        NodeSecret(Arc::new(seed))
    }

    /// A 32-byte key bound to `purpose` and `subject` (HKDF-SHA256 over the node seed, salt
    /// `zos-node-key-v1`, info `purpose 0x00 subject`). Stable across restarts; different for
    /// every (purpose, subject) pair and every node.
    pub fn derive(&self, purpose: &str, subject: &str) -> [u8; 32] {
        let mut info = Vec::with_capacity(purpose.len() + 1 + subject.len());
        info.extend_from_slice(purpose.as_bytes());
        info.push(0);
        info.extend_from_slice(subject.as_bytes());
        self.expand(b"zos-node-key-v1", &info)
    }

    /// A key of one of the frozen [`LegacyKey`] derivations for `subject`. HKDF output is a
    /// prefix stream, so a user of fewer bytes (the ZeroDB admin password: 24) takes a prefix.
    pub fn derive_legacy(&self, kind: LegacyKey, subject: &str) -> [u8; 32] {
        self.expand(kind.salt(), subject.as_bytes())
    }

    fn expand(&self, salt: &[u8], info: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0[..]);
        let mut out = [0u8; 32];
        hk.expand(info, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

impl From<[u8; 32]> for NodeSecret {
    fn from(seed: [u8; 32]) -> Self {
        NodeSecret::new(seed)
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
        let s = NodeSecret::new([7u8; 32]);
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

    /// The bytes every derivation produced before this crate existed, for seed 0x5a×32: the
    /// zmount and zdb values were printed by the previous `zos-storage` (`DiskKey::derive`,
    /// `admin_password`) and cross-checked against RFC 5869 in Python; the node key by the
    /// previous `zos_node::NodeSecret::derive`. If one of these changes, upgraded nodes lose
    /// their encrypted disks or their ZeroDB namespaces.
    #[test]
    fn derivations_match_the_previous_version() {
        let s = NodeSecret::new([0x5a; 32]);
        assert_eq!(
            hex(&s.derive_legacy(LegacyKey::ZmountDiskV1, "7-42-disk")),
            "8bf146026f481b9ed67bf943c25041bd0ebc983980c9e6374d6ef7349a971e8b"
        );
        assert_eq!(
            hex(&s.derive_legacy(LegacyKey::ZdbAdminV1, "hdd")[..24]),
            "e467a08b56ad69126cbf5278704fde0eafd2e29954b9e77d"
        );
        assert_eq!(
            hex(&s.derive("zmount-luks", "7-42-disk")),
            "ac2afe3789d62db59ee207c1383b3baec61ea61b3ebe8db8d30797029cbe1044"
        );
    }
}
