//! The user's identity: a seed file (0600), optionally made from a BIP-39 mnemonic with
//! Substrate's derivation, so the same words give the same key as Polkadot-style wallets.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pbkdf2::pbkdf2_hmac;
use serde::{Deserialize, Serialize};
use sha2::Sha512;
use zos_types::{KeyPair, KeyType};

/// Errors reading or writing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key file.
    #[error("{path}: not a zos key file: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Others can read the file.
    #[error("{path}: permissions {mode:o} are too open; run `chmod 600 {path}`")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The mnemonic is not valid BIP-39.
    #[error("invalid mnemonic: {0}")]
    Mnemonic(String),
    /// The file exists and overwriting was not asked for.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
}

/// The on-disk key file (JSON, versioned).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version, 1.
    pub version: u32,
    /// Signature scheme.
    pub key_type: KeyType,
    /// The 32-byte seed, hex.
    pub seed: String,
    /// The mnemonic the seed came from, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnemonic: Option<String>,
}

impl KeyFile {
    /// A new random key; with `mnemonic`, the seed derives from fresh BIP-39 words.
    pub fn generate(key_type: KeyType, with_mnemonic: bool) -> KeyFile {
        if with_mnemonic {
            let mut entropy = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut entropy);
            let m = bip39::Mnemonic::from_entropy(&entropy).expect("16 bytes is valid entropy");
            return KeyFile::from_mnemonic(key_type, &m.to_string())
                .expect("fresh mnemonic is valid");
        }
        let kp = KeyPair::generate(key_type);
        KeyFile {
            version: 1,
            key_type,
            seed: hex::encode(kp.seed()),
            mnemonic: None,
        }
    }

    /// Derives the seed from words (Substrate: PBKDF2-SHA512 over the entropy, 2048 rounds).
    pub fn from_mnemonic(key_type: KeyType, words: &str) -> Result<KeyFile, KeyFileError> {
        let m = bip39::Mnemonic::parse_normalized(words.trim())
            .map_err(|e| KeyFileError::Mnemonic(e.to_string()))?;
        Ok(KeyFile {
            version: 1,
            key_type,
            seed: hex::encode(substrate_mini_secret(&m.to_entropy(), "")),
            mnemonic: Some(m.to_string()),
        })
    }

    /// The key pair.
    pub fn key_pair(&self) -> Result<KeyPair, String> {
        KeyPair::from_hex_seed(self.key_type, &self.seed).map_err(|e| e.to_string())
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<KeyFile, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let kf: KeyFile = serde_json::from_str(&text).map_err(|e| KeyFileError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        kf.key_pair().map_err(|reason| KeyFileError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(kf)
    }

    /// Writes the key file with mode 0600, atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path, force: bool) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() && !force {
            return Err(KeyFileError::Exists(path.to_path_buf()));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let body = serde_json::to_vec_pretty(self).expect("key file serialises");
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Substrate's `mini_secret_from_entropy`: PBKDF2-HMAC-SHA512(entropy, "mnemonic"+password).
pub fn substrate_mini_secret(entropy: &[u8], password: &str) -> [u8; 32] {
    let mut out = [0u8; 64];
    pbkdf2_hmac::<Sha512>(
        entropy,
        format!("mnemonic{password}").as_bytes(),
        2048,
        &mut out,
    );
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&out[..32]);
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substrate_dev_phrase_gives_alice_like_seed() {
        // Substrate's well-known dev phrase; its mini secret is published in substrate-bip39.
        let kf = KeyFile::from_mnemonic(
            KeyType::Sr25519,
            "bottom drive obey lake curtain smoke basket hold race lonely fit walk",
        )
        .unwrap();
        assert_eq!(
            kf.seed,
            "fac7959dbfe72f052e5a0c3c8d6530f202b02fd8f9f5ca3580ec8deb7797479e"
        );
    }

    #[test]
    fn save_is_0600_and_load_refuses_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let kf = KeyFile::generate(KeyType::Ed25519, true);
        kf.save(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyFile::load(&path).unwrap().seed, kf.seed);
        assert!(matches!(
            kf.save(&path, false),
            Err(KeyFileError::Exists(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyFile::load(&path),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
