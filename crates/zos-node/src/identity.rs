//! The node identity: an ed25519 seed created on first start and kept on persistent storage.
//!
//! File format (upstream `pkg/versioned`, version 1.0.0): the JSON string `"1.0.0"` (7 bytes,
//! quotes included) immediately followed by the 32 raw seed bytes; 39 bytes in all. Other
//! versions (upstream 1.1.0 holds a BIP-39 mnemonic) are refused with a clear error.
//!
//! The seed is written to the primary path (`<data>/seed.txt`) and mirrored to `seed.txt` in
//! every mirror directory (one per storage pool), each by write-to-temp + fsync + rename, mode
//! 0600. On start the primary is read; if it is missing or unreadable, the first valid mirror
//! is used and the primary restored from it; if none exists a new seed is generated. A mirror
//! that holds a *different* valid seed is never overwritten (that would destroy another
//! identity): it is reported and left alone.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use zos_types::crypto::{KeyPair, KeyType};

/// Version tag written in front of the seed.
pub const VERSION_TAG: &[u8] = b"\"1.0.0\"";
/// The seed file name, in the data directory and in every mirror.
pub const SEED_FILE: &str = "seed.txt";

/// Identity errors.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a seed file failed.
    #[error("seed file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a version 1.0.0 seed file.
    #[error("seed file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes a seed file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<[u8; 32], IdentityError> {
    let fmt = |reason: String| IdentityError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let Some(rest) = bytes.strip_prefix(VERSION_TAG) else {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(12)]).into_owned();
        return Err(fmt(format!(
            "unsupported seed file version (starts with {shown:?}, expected \"1.0.0\")"
        )));
    };
    <[u8; 32]>::try_from(rest)
        .map_err(|_| fmt(format!("seed must be 32 bytes, got {}", rest.len())))
}

/// Encodes a seed file.
pub fn encode(seed: &[u8; 32]) -> Vec<u8> {
    let mut v = VERSION_TAG.to_vec();
    v.extend_from_slice(seed);
    v
}

fn read(path: &Path) -> Result<Option<[u8; 32]>, IdentityError> {
    match fs::read(path) {
        Ok(b) => decode(path, &b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_atomic(path: &Path, seed: &[u8; 32]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&encode(seed)).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Loads the node key from `data_dir/seed.txt` (or a mirror), creating it on first start,
/// and makes sure every mirror holds it.
pub fn load_or_create(data_dir: &Path, mirrors: &[PathBuf]) -> Result<KeyPair, IdentityError> {
    let primary = data_dir.join(SEED_FILE);
    let mut seed = match read(&primary) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "primary seed unreadable, trying mirrors");
            None
        }
    };
    if seed.is_none() {
        for m in mirrors {
            match read(&m.join(SEED_FILE)) {
                Ok(Some(s)) => {
                    tracing::warn!(mirror = %m.display(), "identity recovered from mirror");
                    seed = Some(s);
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "mirror seed unreadable"),
            }
        }
    }
    let seed = match seed {
        Some(s) => s,
        None => {
            tracing::info!("no identity found: generating a new node seed");
            *KeyPair::generate(KeyType::Ed25519).seed()
        }
    };
    if read(&primary).ok().flatten() != Some(seed) {
        write_atomic(&primary, &seed)?;
    }
    for m in mirrors {
        let path = m.join(SEED_FILE);
        match read(&path) {
            Ok(Some(s)) if s == seed => {}
            Ok(Some(_)) => {
                tracing::error!(mirror = %path.display(), "mirror holds another identity; left untouched")
            }
            _ => {
                if let Err(e) = write_atomic(&path, &seed) {
                    tracing::error!(error = %e, "cannot mirror the seed");
                }
            }
        }
    }
    Ok(KeyPair::from_seed(KeyType::Ed25519, seed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn format_is_upstream_versioned_1_0_0() {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let b = encode(&seed);
        assert_eq!(&b[..7], b"\"1.0.0\"");
        assert_eq!(b.len(), 39);
        assert_eq!(decode(Path::new("x"), &b).unwrap(), seed);
        let e = decode(Path::new("x"), b"\"1.1.0\"{\"mnemonic\":\"a b\"}").unwrap_err();
        assert!(
            e.to_string().contains("unsupported seed file version"),
            "{e}"
        );
        assert!(decode(Path::new("x"), &b[..38]).is_err());
    }

    #[test]
    fn created_once_mirrored_and_recovered() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let m1 = d.path().join("pool1");
        let m2 = d.path().join("pool2");
        let k1 = load_or_create(&data, &[m1.clone(), m2.clone()]).unwrap();
        assert_eq!(fs::read(m1.join(SEED_FILE)).unwrap(), encode(k1.seed()));
        // same key on restart
        let k2 = load_or_create(&data, &[m1.clone(), m2.clone()]).unwrap();
        assert_eq!(k1.public(), k2.public());
        // primary disk lost: recovered from a mirror, primary restored
        fs::remove_dir_all(&data).unwrap();
        fs::remove_file(m1.join(SEED_FILE)).unwrap();
        let k3 = load_or_create(&data, &[m1.clone(), m2.clone()]).unwrap();
        assert_eq!(k1.public(), k3.public());
        assert!(data.join(SEED_FILE).exists());
        assert!(m1.join(SEED_FILE).exists());
        // corrupt primary: mirror wins
        fs::write(data.join(SEED_FILE), b"garbage").unwrap();
        let k4 = load_or_create(&data, &[m1]).unwrap();
        assert_eq!(k1.public(), k4.public());
    }

    proptest::proptest! {
        /// Untrusted seed files never panic the decoder.
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let r = decode(Path::new("x"), &b);
            proptest::prop_assert_eq!(r.is_ok(), b.len() == 39 && b.starts_with(VERSION_TAG));
        }
    }
}
