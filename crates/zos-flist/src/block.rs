//! Block encoding exactly as upstream rfs writes it (spec §4): a plaintext chunk `P` of at most
//! 512 KiB becomes `E = AES-256-GCM(key = BLAKE2b-256(P), nonce = key[0..12])(snappy_raw(P))`,
//! stored under `id = BLAKE2b-256(E)`. Convergent: equal chunks give equal `(id, key)`.

use std::fmt;

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest as _};

/// Chunk size of every block but a file's last (upstream `BLOB_SIZE`; the reader locates byte
/// `o` in chunk `o / CHUNK_SIZE` without consulting stored sizes).
pub const CHUNK_SIZE: usize = 512 * 1024;

/// Upper bound accepted for a decoded chunk: a hostile block must not make us allocate
/// whatever its snappy header claims.
const MAX_PLAIN: usize = CHUNK_SIZE;

/// BLAKE2b with a 32-byte digest, no key/salt/personalisation.
pub fn blake2b_256(data: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(data).into()
}

/// A block's id: BLAKE2b-256 of its encrypted bytes; the store key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

/// A block's key: BLAKE2b-256 of its plaintext; the AES-256 key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey(pub [u8; 32]);

impl BlockId {
    /// Lower-case hex, as used in store paths and URLs.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<BlockId, BlockError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| BlockError::BadHex(s.chars().take(80).collect()))?;
        Ok(BlockId(out))
    }

    /// From a database blob; upstream rejects ids whose length is not 32.
    pub fn from_slice(b: &[u8]) -> Result<BlockId, BlockError> {
        <[u8; 32]>::try_from(b)
            .map(BlockId)
            .map_err(|_| BlockError::BadLength(b.len()))
    }
}

impl BlockKey {
    /// From a database blob.
    pub fn from_slice(b: &[u8]) -> Result<BlockKey, BlockError> {
        <[u8; 32]>::try_from(b)
            .map(BlockKey)
            .map_err(|_| BlockError::BadLength(b.len()))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", self.hex())
    }
}

impl fmt::Debug for BlockKey {
    // Keys decrypt content: never print them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({}…)", hex::encode(&self.0[..4]))
    }
}

/// One block reference of a file: what a `block` row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Store key.
    pub id: BlockId,
    /// Decryption key.
    pub key: BlockKey,
}

/// Why a block could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// An id or key of the wrong length.
    #[error("block id/key must be 32 bytes, got {0}")]
    BadLength(usize),
    /// Not a 64-digit hex id.
    #[error("not a 64-digit hex block id: {0:?}")]
    BadHex(String),
    /// The stored bytes do not hash to the id they were fetched under.
    #[error("block {id}: content hashes to {actual}, not its id")]
    IdMismatch {
        /// Requested id.
        id: BlockId,
        /// BLAKE2b-256 of what the store returned.
        actual: BlockId,
    },
    /// AES-GCM authentication failed (wrong key or tampered ciphertext).
    #[error("block {0}: decryption failed (tag mismatch)")]
    Decrypt(BlockId),
    /// The decrypted bytes are not valid snappy raw data, or decode too large.
    #[error("block {0}: bad snappy data: {1}")]
    Decompress(BlockId, String),
    /// The plaintext does not hash to the key (a convergent-encryption violation).
    #[error("block {0}: plaintext does not match its key")]
    KeyMismatch(BlockId),
    /// Plaintext larger than a chunk.
    #[error("chunk of {0} bytes exceeds {CHUNK_SIZE}")]
    TooLarge(usize),
}

fn cipher(key: &BlockKey) -> Aes256Gcm {
    Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key.0))
}

/// Encodes one plaintext chunk: returns the block reference and the bytes to store.
pub fn encode(plain: &[u8]) -> Result<(Block, Vec<u8>), BlockError> {
    if plain.len() > CHUNK_SIZE {
        return Err(BlockError::TooLarge(plain.len()));
    }
    let key = BlockKey(blake2b_256(plain));
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .map_err(|e| BlockError::Decompress(BlockId([0; 32]), e.to_string()))?;
    let sealed = cipher(&key)
        .encrypt(Nonce::from_slice(&key.0[..12]), compressed.as_slice())
        // AES-GCM encryption only fails for inputs beyond 64 GiB.
        .map_err(|_| BlockError::TooLarge(plain.len()))?;
    let id = BlockId(blake2b_256(&sealed));
    Ok((Block { id, key }, sealed))
}

/// Decodes stored bytes into the plaintext chunk, checking everything that can be checked:
/// the bytes hash to `id`, the AES-GCM tag, snappy validity and size, and that the plaintext
/// hashes to `key`. A block that fails any check never yields bytes.
pub fn decode(block: &Block, stored: &[u8]) -> Result<Vec<u8>, BlockError> {
    let actual = BlockId(blake2b_256(stored));
    if actual != block.id {
        return Err(BlockError::IdMismatch {
            id: block.id,
            actual,
        });
    }
    let compressed = cipher(&block.key)
        .decrypt(Nonce::from_slice(&block.key.0[..12]), stored)
        .map_err(|_| BlockError::Decrypt(block.id))?;
    let len = snap::raw::decompress_len(&compressed)
        .map_err(|e| BlockError::Decompress(block.id, e.to_string()))?;
    if len > MAX_PLAIN {
        return Err(BlockError::Decompress(
            block.id,
            format!("claims {len} bytes"),
        ));
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .map_err(|e| BlockError::Decompress(block.id, e.to_string()))?;
    if blake2b_256(&plain) != block.key.0 {
        return Err(BlockError::KeyMismatch(block.id));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("hex")
    }

    /// Spec §12 V1, every intermediate value.
    #[test]
    fn vector_v1() {
        let plain = b"hello world\n";
        assert_eq!(plain.to_vec(), h("68656c6c6f20776f726c640a"));
        let (b, enc) = encode(plain).expect("encode");
        assert_eq!(
            b.key.0.to_vec(),
            h("c71b05fd1d1c7bf7e928ff18e58db5193e9316416cc26ba9cc9094da80d7011e")
        );
        let snappy = snap::raw::Encoder::new()
            .compress_vec(plain)
            .expect("snappy");
        assert_eq!(snappy, h("0c2c68656c6c6f20776f726c640a"));
        assert_eq!(
            enc,
            h("e565e4a3ac6198a15bf18a61f66ca364542240205ab53f72e221a7bc1837")
        );
        assert_eq!(
            b.id.hex(),
            "d139c46e6cc65acfa2eef1d0cd7abf014667fdc9a5ca75d9184671f97301a0db"
        );
        assert_eq!(b.id.0[0], 0xd1);
        assert_eq!(decode(&b, &enc).expect("decode"), plain.to_vec());
    }

    #[test]
    fn empty_and_full_chunks_round_trip() {
        for len in [0usize, 1, 15, 4096, CHUNK_SIZE] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (b, enc) = encode(&plain).expect("encode");
            assert_eq!(decode(&b, &enc).expect("decode"), plain);
        }
        assert_eq!(
            encode(&vec![0; CHUNK_SIZE + 1]),
            Err(BlockError::TooLarge(CHUNK_SIZE + 1))
        );
    }

    #[test]
    fn corruption_is_detected() {
        let (b, mut enc) =
            encode(b"some content that is long enough to compress compress compress")
                .expect("encode");
        enc[3] ^= 1;
        assert!(matches!(
            decode(&b, &enc),
            Err(BlockError::IdMismatch { .. })
        ));
        // Bytes that hash to the id but under the wrong key: the tag check refuses them.
        let (b2, enc2) = encode(b"other").expect("encode");
        let wrong = Block {
            id: b2.id,
            key: b.key,
        };
        assert_eq!(decode(&wrong, &enc2), Err(BlockError::Decrypt(b2.id)));
        // Garbage of every short length never panics.
        for n in 0..64 {
            let junk = vec![0xA5u8; n];
            let id = BlockId(blake2b_256(&junk));
            assert!(decode(&Block { id, key: b.key }, &junk).is_err());
        }
    }
}
