//! Encryption at rest for one namespace: ChaCha20-Poly1305 with a key derived by
//! HKDF-SHA256 from the secret given in `NSSET <ns> encryption-key <hex>`.
//!
//! The descriptor keeps only a random salt and a key-check value (another HKDF output), never
//! the secret, so after a restart the namespace stays *sealed* until the secret is given again.
//! Each value gets a random 96-bit nonce; the key is the associated data, so a value cannot be
//! moved to another key unnoticed. Keys and metadata (lengths, timestamps) stay in clear.
//!
//! The server may also hold an **at-rest key** (`ServerConfig::at_rest_key`; the node derives
//! it from its key root): namespaces without a user's key then store every new value sealed
//! by [`Cipher::at_rest`], bound to namespace, key and the record's place in the data files.
//! Values written before (plaintext) stay readable.

use hkdf::Hkdf;
use rand::RngCore;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

/// Nonce bytes prepended to each sealed value.
const NONCE_LEN: usize = 12;
/// Poly1305 tag bytes appended to each sealed value.
const TAG_LEN: usize = 16;

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte ChaCha20-Poly1305 key"),
    )
}

/// A namespace's value cipher.
pub struct Cipher {
    /// ChaCha20-Poly1305 (ring's: the same bytes as the RustCrypto crate this format was
    /// first written with, at a fraction of the cost per short value).
    aead: LessSafeKey,
    /// At-rest ciphers (the server's key, not a user's) bind each record to its namespace,
    /// key and place in the data files; `None` for a user's `encryption-key` cipher, which
    /// binds the key only (unchanged format).
    at_rest_ns: Option<String>,
}

/// A server's at-rest key (32 bytes; `Debug` does not show it).
#[derive(Clone, PartialEq, Eq)]
pub struct AtRestKey(pub [u8; 32]);

impl std::fmt::Debug for AtRestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRestKey(..)")
    }
}

/// Salt of the at-rest key derivation ([`Cipher::at_rest`]).
const AT_REST_SALT: &[u8] = b"zos-zdb-at-rest-v1";
/// Label at the start of an at-rest record's associated data.
const AT_REST_AAD: &[u8] = b"zos-zdb-record-v1";

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// Derives the value key and the key-check value from a secret.
fn derive(secret: &[u8], salt: &[u8; 16], ns: &str) -> ([u8; 32], [u8; 16]) {
    let hk = Hkdf::<Sha256>::new(Some(salt), secret);
    let mut key = [0u8; 32];
    let mut check = [0u8; 16];
    let info = format!("zos-zdb v1 value key {ns}");
    hk.expand(info.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    let info = format!("zos-zdb v1 key check {ns}");
    hk.expand(info.as_bytes(), &mut check)
        .expect("16 bytes is a valid HKDF-SHA256 length");
    (key, check)
}

impl Cipher {
    /// New encryption setup: returns the cipher plus the salt and check to persist.
    pub fn create(secret: &[u8], ns: &str) -> (Cipher, [u8; 16], [u8; 16]) {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let (key, check) = derive(secret, &salt, ns);
        (
            Cipher {
                aead: aead_key(&key),
                at_rest_ns: None,
            },
            salt,
            check,
        )
    }

    /// Unseals with a secret; `None` if it does not match the stored check value.
    pub fn open(secret: &[u8], ns: &str, salt: &[u8; 16], check: &[u8; 16]) -> Option<Cipher> {
        let (key, want) = derive(secret, salt, ns);
        // Not secret-dependent timing in a way that matters: the check is a keyed hash output.
        (want == *check).then(|| Cipher {
            aead: aead_key(&key),
            at_rest_ns: None,
        })
    }

    /// The at-rest cipher of namespace `ns` under a server key (a node derives it from its key
    /// root): HKDF-SHA256(ikm = key, salt = `zos-zdb-at-rest-v1`, info = `ns`).
    pub fn at_rest(server_key: &[u8; 32], ns: &str) -> Cipher {
        let hk = Hkdf::<Sha256>::new(Some(AT_REST_SALT), server_key);
        let mut key = [0u8; 32];
        hk.expand(ns.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Cipher {
            aead: aead_key(&key),
            at_rest_ns: Some(ns.to_owned()),
        }
    }

    /// Whether this is an at-rest (server key) cipher.
    pub fn is_at_rest(&self) -> bool {
        self.at_rest_ns.is_some()
    }

    /// The associated data of a record: the key alone for a user's cipher; for an at-rest
    /// cipher `label || u8 len ns || ns || u8 len key || key || u32 file || u32 data offset`,
    /// so a ciphertext cannot be moved to another key, namespace or place (for instance into
    /// the newest version's slot, to roll a key back to an older value).
    fn aad<'a>(&self, key: &'a [u8], at: (u32, u32), buf: &'a mut Vec<u8>) -> &'a [u8] {
        let Some(ns) = &self.at_rest_ns else {
            return key;
        };
        buf.clear();
        buf.extend_from_slice(AT_REST_AAD);
        // Namespace names and keys are at most 255 bytes (checked before any write).
        buf.push(ns.len().min(255) as u8);
        buf.extend_from_slice(ns.as_bytes());
        buf.push(key.len().min(255) as u8);
        buf.extend_from_slice(key);
        buf.extend_from_slice(&at.0.to_le_bytes());
        buf.extend_from_slice(&at.1.to_le_bytes());
        buf
    }

    /// Seals the value of the record of `key` stored at `at` = (data file id, offset).
    pub fn seal_record(&self, key: &[u8], at: (u32, u32), value: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let aad = self.aad(key, at, &mut buf).to_vec();
        self.seal(&aad, value)
    }

    /// Inverse of [`Cipher::seal_record`].
    pub fn unseal_record(&self, key: &[u8], at: (u32, u32), sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let aad = self.aad(key, at, &mut buf).to_vec();
        self.unseal(&aad, sealed)
    }

    /// `nonce || ciphertext || tag`, authenticated together with `key`.
    pub fn seal(&self, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + value.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key),
                &mut out[NONCE_LEN..],
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail below 256 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Inverse of [`Cipher::seal`]; `None` if the value was tampered with or the key differs.
    pub fn unseal(&self, key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let n = self
            .aead
            .open_in_place(nonce, Aad::from(key), &mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_tamper() {
        let (c, salt, check) = Cipher::create(b"0123456789abcdef", "ns");
        let s = c.seal(b"k", b"hello");
        assert_eq!(s.len(), 5 + 28);
        assert_eq!(c.unseal(b"k", &s).unwrap(), b"hello");
        assert!(c.unseal(b"other", &s).is_none());
        let mut t = s.clone();
        t[20] ^= 1;
        assert!(c.unseal(b"k", &t).is_none());
        let c2 = Cipher::open(b"0123456789abcdef", "ns", &salt, &check).unwrap();
        assert_eq!(c2.unseal(b"k", &s).unwrap(), b"hello");
        assert!(Cipher::open(b"wrong-secret-xxxx", "ns", &salt, &check).is_none());
        assert!(Cipher::open(b"0123456789abcdef", "other", &salt, &check).is_none());
        // A user's cipher ignores the place (format unchanged).
        assert_eq!(c.unseal_record(b"k", (3, 99), &s).unwrap(), b"hello");
    }

    /// Values sealed by the RustCrypto `chacha20poly1305` crate (the first implementation,
    /// so data on disk) open, and ours open there: the same construction.
    #[test]
    fn same_bytes_as_the_rustcrypto_aead() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = [9u8; 32];
        let rc = chacha20poly1305::ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key));
        let ours = Cipher {
            aead: aead_key(&key),
            at_rest_ns: None,
        };
        let nonce = [4u8; NONCE_LEN];
        let ct = rc
            .encrypt(
                chacha20poly1305::Nonce::from_slice(&nonce),
                Payload {
                    msg: b"value",
                    aad: b"k",
                },
            )
            .unwrap();
        let sealed = [&nonce[..], &ct].concat();
        assert_eq!(ours.unseal(b"k", &sealed).unwrap(), b"value");
        let s = ours.seal(b"k", b"value");
        let back = rc
            .decrypt(
                chacha20poly1305::Nonce::from_slice(&s[..NONCE_LEN]),
                Payload {
                    msg: &s[NONCE_LEN..],
                    aad: b"k",
                },
            )
            .unwrap();
        assert_eq!(back, b"value");
        assert!(ours.unseal(b"k", &sealed[..NONCE_LEN + 15]).is_none());
    }

    #[test]
    fn at_rest_records_are_bound_to_namespace_key_and_place() {
        let root = [7u8; 32];
        let c = Cipher::at_rest(&root, "ns");
        let s = c.seal_record(b"k", (1, 40), b"hello");
        assert_eq!(s.len(), 5 + 28);
        assert_eq!(c.unseal_record(b"k", (1, 40), &s).unwrap(), b"hello");
        // Another place (an older version's slot), key, namespace or root: refused.
        assert!(c.unseal_record(b"k", (1, 41), &s).is_none());
        assert!(c.unseal_record(b"k", (2, 40), &s).is_none());
        assert!(c.unseal_record(b"j", (1, 40), &s).is_none());
        assert!(c.unseal(b"k", &s).is_none());
        assert!(
            Cipher::at_rest(&root, "other")
                .unseal_record(b"k", (1, 40), &s)
                .is_none()
        );
        assert!(
            Cipher::at_rest(&[8; 32], "ns")
                .unseal_record(b"k", (1, 40), &s)
                .is_none()
        );
        let mut t = s.clone();
        t[20] ^= 1;
        assert!(c.unseal_record(b"k", (1, 40), &t).is_none());
    }
}
