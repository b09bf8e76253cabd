//! Node identity, overlay addresses and the end-to-end encryption of data packets, exactly as
//! upstream mycelium v0.7 (`mycelium/src/crypto.rs`): an X25519 static key, the address is
//! BLAKE3 of the public key folded into `400::/7`, and payloads are AES-256-GCM under the raw
//! X25519 shared secret with a random nonce appended to the ciphertext.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;
use std::str::FromStr;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use sha2::Digest;

use crate::subnet::Subnet;

/// Bytes added to a plaintext by [`SharedSecret::encrypt`]: GCM tag (16) + nonce (12).
pub const AES_OVERHEAD: usize = 16 + 12;
/// Length of the GCM tag.
const TAG_LEN: usize = 16;
/// Length of the random nonce.
pub const NONCE_LEN: usize = 12;

/// Identity and key-file errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A public key string is not 64 hex characters.
    #[error("public key must be 64 hex characters (32 bytes): {0}")]
    BadPublicKey(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file does not hold exactly 32 bytes.
    #[error("key file {path}: expected 32 raw bytes, found {len}")]
    BadKeyFile {
        /// The key file.
        path: String,
        /// How many bytes it held.
        len: usize,
    },
}

/// A node's X25519 static secret, stored raw and unclamped like upstream (clamping happens
/// inside the scalar multiplication).
#[derive(Clone)]
pub struct SecretKey(x25519_dalek::StaticSecret);

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self::from_bytes(b)
    }

    /// The key from its 32 raw bytes (upstream key files and zos `hex_key`s are used as-is).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(b))
    }

    /// The raw 32 bytes (what a key file holds).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Zero-OS's host instance key: the node's ed25519 seed converted to X25519 the way
    /// zosbase's `EdPrivateKeyToX25519` does (SHA-512 of the seed, first 32 bytes, clamped).
    pub fn from_ed25519_seed(seed: &[u8; 32]) -> Self {
        let h = sha2::Sha512::digest(seed);
        let mut b = [0u8; 32];
        b.copy_from_slice(&h[..32]);
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Self::from_bytes(b)
    }

    /// X25519(secret, basepoint).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// `X25519(own secret, peer public)`, used directly as the AES-256 key (upstream has no KDF).
    pub fn shared_secret(&self, other: &PublicKey) -> SharedSecret {
        let k = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(other.0))
            .to_bytes();
        SharedSecret::new(k)
    }

    /// Reads a 32-byte raw key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let data = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let b: [u8; 32] = data
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadKeyFile {
                path: path.display().to_string(),
                len: data.len(),
            })?;
        Ok(Self::from_bytes(b))
    }

    /// Writes the raw key with mode 0640 (as upstream), creating parent directories.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(path)
            .map_err(err)?;
        f.write_all(&self.to_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// Loads the key file, or generates and writes one if it does not exist (upstream's daemon
    /// behaviour).
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            let k = Self::generate();
            k.save(path)?;
            Ok(k)
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public_key())
    }
}

/// An X25519 public key; its text form is 64 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The node's overlay address: BLAKE3(pubkey) first 16 bytes, byte 0 replaced by
    /// `0x04 | (popcount(h[0]) mod 2)`.
    pub fn address(&self) -> Ipv6Addr {
        let h = blake3::hash(&self.0);
        let mut a = [0u8; 16];
        a.copy_from_slice(&h.as_bytes()[..16]);
        let lsb = (a[0].count_ones() % 2) as u8;
        a[0] = 0x04 | lsb;
        Ipv6Addr::from(a)
    }

    /// The /64 the node owns and announces.
    pub fn subnet(&self) -> Subnet {
        Subnet::new(self.address(), 64).unwrap_or_else(|_| unreachable!("64 is a valid length"))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| KeyError::BadPublicKey(s.into()))?;
        Ok(Self(b))
    }
}

/// The address of a VM behind a network resource: the NR's /64 prefix ‖ `ff0f` ‖ 6-byte seed
/// (zos-reference §6.2). `None` for the reserved all-zero / all-ff seeds.
pub fn vm_address(nr_subnet: &Subnet, seed: [u8; 6]) -> Option<Ipv6Addr> {
    if seed == [0; 6] || seed == [0xff; 6] {
        return None;
    }
    let mut a = nr_subnet.address().octets();
    a[8] = 0xff;
    a[9] = 0x0f;
    a[10..].copy_from_slice(&seed);
    Some(Ipv6Addr::from(a))
}

/// The gateway (`<subnet>::1`) Zero-OS gives the namespace side of a mycelium /64.
pub fn gateway(subnet: &Subnet) -> Ipv6Addr {
    let mut a = subnet.address().octets();
    a[15] = 1;
    Ipv6Addr::from(a)
}

/// The end-to-end key between two nodes: the raw X25519 output as an AES-256-GCM key.
#[derive(Clone)]
pub struct SharedSecret {
    raw: [u8; 32],
    cipher: Aes256Gcm,
}

/// Decryption failed (too short, or the tag did not verify).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot decrypt data packet body")]
pub struct DecryptError;

impl SharedSecret {
    fn new(raw: [u8; 32]) -> Self {
        let cipher = Aes256Gcm::new(&raw.into());
        Self { raw, cipher }
    }

    /// The raw 32 bytes (for tests and vectors).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Encrypts `buf` in place with a random nonce and appends `tag ‖ nonce` (upstream layout).
    pub fn encrypt(&self, buf: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.encrypt_with_nonce(buf, nonce);
    }

    /// As [`encrypt`](Self::encrypt) with a given nonce (vectors; never reuse a nonce).
    pub fn encrypt_with_nonce(&self, buf: &mut Vec<u8>, nonce: [u8; NONCE_LEN]) {
        buf.reserve(AES_OVERHEAD);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], buf.as_mut_slice())
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any buffer under 64 GiB"));
        buf.extend_from_slice(&tag);
        buf.extend_from_slice(&nonce);
    }

    /// Decrypts `ciphertext ‖ tag ‖ nonce` in place; on success `buf` holds the plaintext.
    /// Returns the nonce (for the replay window).
    pub fn decrypt(&self, buf: &mut Vec<u8>) -> Result<[u8; NONCE_LEN], DecryptError> {
        let (n, nonce) = self.decrypt_in_place(buf)?;
        buf.truncate(n);
        Ok(nonce)
    }

    /// Decrypts `ciphertext ‖ tag ‖ nonce` in place without allocating; the plaintext is
    /// `buf[..len]`. Returns `(len, nonce)`.
    pub fn decrypt_in_place(
        &self,
        buf: &mut [u8],
    ) -> Result<(usize, [u8; NONCE_LEN]), DecryptError> {
        let n = buf.len();
        if n < AES_OVERHEAD {
            return Err(DecryptError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[n - NONCE_LEN..]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[n - AES_OVERHEAD..n - NONCE_LEN]);
        let len = n - AES_OVERHEAD;
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &[],
                &mut buf[..len],
                Tag::from_slice(&tag),
            )
            .map_err(|_| DecryptError)?;
        Ok((len, nonce))
    }

    /// Encrypts `buf` in place with a random nonce; returns the `tag ‖ nonce` trailer the
    /// caller appends (lets the data path build a frame in one buffer).
    pub fn encrypt_detached(&self, buf: &mut [u8]) -> [u8; AES_OVERHEAD] {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], buf)
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any buffer under 64 GiB"));
        let mut t = [0u8; AES_OVERHEAD];
        t[..TAG_LEN].copy_from_slice(&tag);
        t[TAG_LEN..].copy_from_slice(&nonce);
        t
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}
