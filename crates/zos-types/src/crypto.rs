//! Twin keys: ed25519 and sr25519 key pairs from a 32-byte seed, and signature verification.
//!
//! One place for every signer in zos (deployment owners, ledger accounts, RMB peers, nodes).
//! sr25519 follows Substrate: the seed is a mini secret key expanded "ed25519-style", and the
//! signing context is `substrate`.

use std::fmt;

use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

/// The signing context Substrate (and so TFChain and upstream zos) uses for sr25519.
pub const SR25519_CONTEXT: &[u8] = b"substrate";

/// Which signature scheme a key uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Edwards-curve signatures (RFC 8032); deterministic.
    Ed25519,
    /// Schnorr signatures over Ristretto (schnorrkel), as used by Substrate; randomised.
    Sr25519,
}

impl KeyType {
    /// The name used on the wire (`signature_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Sr25519 => "sr25519",
        }
    }

    /// Upstream rule: `"sr25519"` means sr25519, anything else means ed25519.
    pub fn from_wire(s: &str) -> KeyType {
        if s == "sr25519" {
            KeyType::Sr25519
        } else {
            KeyType::Ed25519
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from key handling.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A seed or key was not valid hex.
    #[error("invalid hex in {what}: {reason}")]
    Hex {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A seed or key had the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        /// What was being decoded.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The bytes are not a valid point/key for the scheme.
    #[error("invalid {0} public key")]
    InvalidPublicKey(KeyType),
}

/// A public key: 32 bytes plus the scheme that interprets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey {
    /// Signature scheme.
    pub key_type: KeyType,
    /// Raw key bytes (hex in JSON).
    #[serde(with = "hex32")]
    pub bytes: [u8; 32],
}

impl PublicKey {
    /// Verifies `signature` over `message`; false on any malformed input.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        verify(self.key_type, &self.bytes, message, signature)
    }

    /// Lowercase hex of the key bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_type, self.to_hex())
    }
}

/// A signing key pair derived from a 32-byte seed.
#[derive(Clone)]
pub struct KeyPair {
    seed: [u8; 32],
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Ed25519(ed25519_dalek::SigningKey),
    Sr25519(schnorrkel::Keypair),
}

impl fmt::Debug for KeyPair {
    // Never print the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public())
    }
}

impl KeyPair {
    /// Builds the key pair of `key_type` from a 32-byte seed.
    pub fn from_seed(key_type: KeyType, seed: [u8; 32]) -> KeyPair {
        let inner = match key_type {
            KeyType::Ed25519 => Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
            KeyType::Sr25519 => {
                let mini = schnorrkel::MiniSecretKey::from_bytes(&seed)
                    .expect("a 32-byte array is always a valid mini secret key");
                Inner::Sr25519(mini.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519))
            }
        };
        KeyPair { seed, inner }
    }

    /// Parses a hex seed (with or without `0x`).
    pub fn from_hex_seed(key_type: KeyType, seed_hex: &str) -> Result<KeyPair, KeyError> {
        Ok(KeyPair::from_seed(
            key_type,
            decode_hex32("seed", seed_hex)?,
        ))
    }

    /// A fresh random key pair.
    pub fn generate(key_type: KeyType) -> KeyPair {
        let mut seed = [0u8; 32];
        getrandom_seed(&mut seed);
        KeyPair::from_seed(key_type, seed)
    }

    /// The seed this pair was derived from (secret).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The scheme of this key.
    pub fn key_type(&self) -> KeyType {
        match self.inner {
            Inner::Ed25519(_) => KeyType::Ed25519,
            Inner::Sr25519(_) => KeyType::Sr25519,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let bytes = match &self.inner {
            Inner::Ed25519(k) => k.verifying_key().to_bytes(),
            Inner::Sr25519(k) => k.public.to_bytes(),
        };
        PublicKey {
            key_type: self.key_type(),
            bytes,
        }
    }

    /// Signs `message`: 64 bytes for both schemes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match &self.inner {
            Inner::Ed25519(k) => k.sign(message).to_bytes(),
            Inner::Sr25519(k) => k
                .sign(schnorrkel::signing_context(SR25519_CONTEXT).bytes(message))
                .to_bytes(),
        }
    }
}

/// Verifies a signature with a raw 32-byte public key; false on any malformed input.
pub fn verify(key_type: KeyType, public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    match key_type {
        KeyType::Ed25519 => {
            let (Ok(pk), Ok(sig)) = (
                <[u8; 32]>::try_from(public),
                <[u8; 64]>::try_from(signature),
            ) else {
                return false;
            };
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
                return false;
            };
            vk.verify(message, &ed25519_dalek::Signature::from_bytes(&sig))
                .is_ok()
        }
        KeyType::Sr25519 => {
            let (Ok(pk), Ok(sig)) = (
                schnorrkel::PublicKey::from_bytes(public),
                schnorrkel::Signature::from_bytes(signature),
            ) else {
                return false;
            };
            pk.verify_simple(SR25519_CONTEXT, message, &sig).is_ok()
        }
    }
}

/// Decodes exactly 32 bytes of hex (optional `0x` prefix).
pub fn decode_hex32(what: &'static str, s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let bytes = hex::decode(s).map_err(|e| KeyError::Hex {
        what,
        reason: e.to_string(),
    })?;
    let got = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Length {
        what,
        expected: 32,
        got,
    })
}

fn getrandom_seed(seed: &mut [u8; 32]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(seed);
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::decode_hex32("public key", &s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn ed25519_public_key_matches_upstream_vector() {
        let kp = KeyPair::from_seed(KeyType::Ed25519, seed());
        assert_eq!(
            kp.public().to_hex(),
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        );
    }

    #[test]
    fn both_schemes_sign_and_verify() {
        for kt in [KeyType::Ed25519, KeyType::Sr25519] {
            let kp = KeyPair::from_seed(kt, seed());
            let sig = kp.sign(b"hello");
            assert!(kp.public().verify(b"hello", &sig), "{kt}");
            assert!(!kp.public().verify(b"hellO", &sig), "{kt}");
            assert!(!kp.public().verify(b"hello", &sig[..63]), "{kt}");
        }
    }

    #[test]
    fn schemes_do_not_cross_verify() {
        let ed = KeyPair::from_seed(KeyType::Ed25519, seed());
        let sig = ed.sign(b"m");
        assert!(!verify(KeyType::Sr25519, &ed.public().bytes, b"m", &sig));
    }

    #[test]
    fn public_key_json_round_trip() {
        let pk = KeyPair::from_seed(KeyType::Sr25519, seed()).public();
        let js = serde_json::to_string(&pk).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&js).unwrap(), pk);
    }

    #[test]
    fn hex_seed_errors_are_precise() {
        assert!(matches!(
            KeyPair::from_hex_seed(KeyType::Ed25519, "zz"),
            Err(KeyError::Hex { .. })
        ));
        assert_eq!(
            KeyPair::from_hex_seed(KeyType::Ed25519, "00ff").unwrap_err(),
            KeyError::Length {
                what: "seed",
                expected: 32,
                got: 2
            }
        );
    }
}

/// Whether `key` is an X25519 public key of small order (one of the points of order 1, 2, 4
/// or 8, in any encoding): every Diffie-Hellman with it gives the all-zero secret, so anything
/// "encrypted" to it is readable by all. Checked with a fixed clamped scalar: clamping clears
/// the cofactor, so the product is the identity exactly when the point has no prime-order part.
pub fn x25519_low_order(key: &[u8; 32]) -> bool {
    let probe = x25519_dalek::StaticSecret::from([0x5au8; 32]);
    !probe
        .diffie_hellman(&x25519_dalek::PublicKey::from(*key))
        .was_contributory()
}

#[cfg(test)]
mod x25519_tests {
    use super::x25519_low_order;

    /// The small-order u-coordinates (RFC 7748 §6 and libsodium's blocklist), including the
    /// non-canonical encodings of 0, 1 and the order-2 point.
    fn low_order_points() -> Vec<[u8; 32]> {
        let hex_points = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        hex_points
            .iter()
            .map(|h| {
                let v = hex::decode(h).unwrap();
                <[u8; 32]>::try_from(v.as_slice()).unwrap()
            })
            .collect()
    }

    #[test]
    fn small_order_points_are_refused_and_real_keys_pass() {
        for p in low_order_points() {
            assert!(x25519_low_order(&p), "{} not flagged", hex::encode(p));
        }
        for seed in 1u8..20 {
            let sk = x25519_dalek::StaticSecret::from([seed; 32]);
            let pk = x25519_dalek::PublicKey::from(&sk).to_bytes();
            assert!(!x25519_low_order(&pk));
        }
    }
}
