//! Encryption at rest for one namespace: ChaCha20-Poly1305 with a key derived by
//! HKDF-SHA256 from the secret given in `NSSET <ns> encryption-key <hex>`.
//!
//! The descriptor keeps only a random salt and a key-check value (another HKDF output), never
//! the secret, so after a restart the namespace stays *sealed* until the secret is given again.
//! Each value gets a random 96-bit nonce; the key is the associated data, so a value cannot be
//! moved to another key unnoticed. Keys and metadata (lengths, timestamps) stay in clear.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

/// Nonce bytes prepended to each sealed value.
const NONCE_LEN: usize = 12;

/// A namespace's value cipher.
pub struct Cipher {
    aead: ChaCha20Poly1305,
}

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
                aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
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
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// `nonce || ciphertext || tag`, authenticated together with `key`.
    pub fn seal(&self, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: key,
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail below 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Inverse of [`Cipher::seal`]; `None` if the value was tampered with or the key differs.
    pub fn unseal(&self, key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: key })
            .ok()
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
    }
}
