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
//!
//! The seed is the node's *signing* identity only. Keys that protect data at rest (zmount disk
//! passphrases, ZeroDB admin passwords) come from the **key root** ([`KeyRootSource`]): 32
//! random bytes that are never written to a data pool, so a pool taken off the node holds the
//! seed but not the key root. [`load_node_keys`] loads both and returns the [`NodeSecret`]
//! primitives derive from (the seed is added only for disks made before the key root).
//!
//! Everything here is written owner-only: files 0600, the data directory 0700; files found
//! with wider permissions are narrowed and a warning logged.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use zos_primitive::NodeSecret;
use zos_types::crypto::{KeyPair, KeyType};

/// Version tag written in front of the seed.
pub const VERSION_TAG: &[u8] = b"\"1.0.0\"";
/// The seed file name, in the data directory and in every mirror.
pub const SEED_FILE: &str = "seed.txt";
/// The key root's file name in `zos node run --data` (the default [`KeyRootSource`]).
pub const KEY_ROOT_FILE: &str = "key-root";
/// First line of a key root file.
const KEY_ROOT_MAGIC: &str = "zos-key-root 1";

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
    /// The key root would be stored on a data pool, next to what it protects.
    #[error(
        "key root {path} is inside storage pool {pool}: a stolen disk would carry its own key; \
         keep it on the boot medium (zos node run --key-root FILE)"
    )]
    KeyRootOnPool {
        /// The key root file.
        path: PathBuf,
        /// The pool directory containing it.
        pool: PathBuf,
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
        // `mode` applies only when the file is created: a leftover temp keeps its own.
        f.set_permissions(fs::Permissions::from_mode(0o600))
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
    private_dir(data_dir)?;
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
    owner_only(&primary, 0o600)?;
    for m in mirrors {
        let path = m.join(SEED_FILE);
        match read(&path) {
            Ok(Some(s)) if s == seed => {
                if let Err(e) = owner_only(&path, 0o600) {
                    tracing::error!(error = %e, "cannot narrow a mirrored seed's permissions");
                }
            }
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

/// Narrows `path` to `mode` (0600 files, 0700 directories) if it allows more, with a warning:
/// files written by older versions or with a permissive umask are fixed on the next start.
pub fn owner_only(path: &Path, mode: u32) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let current = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{current:o}"), "secret readable by others: narrowing to {mode:o}");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// Creates `dir` if missing and makes it owner-only (0700).
fn private_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    owner_only(dir, 0o700)
}

/// Where the node's key root comes from. The key root keys everything a primitive protects at
/// rest ([`NodeSecret::derive`]); it must live outside the data pools, or a stolen disk holds
/// its own key.
///
/// Only a file exists today. A TPM source would seal the 32 bytes to the host's TPM (e.g. a
/// `tpm2_create`d object bound to PCRs of the boot chain, stored as a sealed blob on the boot
/// medium) and unseal them at start: the same contract — [`KeyRootSource::load_or_create`]
/// returns 32 bytes or an error, and never writes them to a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRootSource {
    /// A file on the boot medium (`zos node run --key-root FILE`; default `--data`/`key-root`,
    /// which `zos up` keeps under its grid directory, outside the pool files and directories).
    /// Made on first start from the OS RNG; text `zos-key-root 1` + 64 hex digits; mode 0600 in
    /// a 0700 directory.
    File(PathBuf),
}

impl KeyRootSource {
    /// Loads the key root, creating it on first use. `pools`: the data pools' directories,
    /// none of which may contain it ([`IdentityError::KeyRootOnPool`]).
    pub fn load_or_create(&self, pools: &[PathBuf]) -> Result<[u8; 32], IdentityError> {
        match self {
            KeyRootSource::File(path) => load_key_root_file(path, pools),
        }
    }
}

/// Decodes a key root file.
pub fn decode_key_root(path: &Path, bytes: &[u8]) -> Result<[u8; 32], IdentityError> {
    let fmt = |reason: String| IdentityError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|_| fmt("not a key root file (not text)".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(KEY_ROOT_MAGIC) {
        return Err(fmt(format!(
            "not a key root file (expected {KEY_ROOT_MAGIC:?} first)"
        )));
    }
    let hex_line = lines.next().unwrap_or_default().trim();
    let bytes = hex::decode(hex_line).map_err(|_| fmt("key root is not hex".into()))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(fmt("trailing data after the key root".into()));
    }
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| fmt(format!("key root must be 32 bytes, got {}", bytes.len())))
}

/// Encodes a key root file.
pub fn encode_key_root(root: &[u8; 32]) -> String {
    format!("{KEY_ROOT_MAGIC}\n{}\n", hex::encode(root))
}

fn load_key_root_file(path: &Path, pools: &[PathBuf]) -> Result<[u8; 32], IdentityError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| IdentityError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
    }
    let canon = dir.canonicalize().map_err(io(&dir))?;
    for pool in pools {
        if let Ok(p) = pool.canonicalize() {
            if canon.starts_with(&p) {
                return Err(IdentityError::KeyRootOnPool {
                    path: path.to_path_buf(),
                    pool: pool.clone(),
                });
            }
        }
    }
    match fs::read(path) {
        Ok(bytes) => {
            let root = decode_key_root(path, &bytes)?;
            owner_only(path, 0o600)?;
            return Ok(root);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let mut root = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut root);
    // create_new: two nodes racing for one path never overwrite each other's root.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(encode_key_root(&root).as_bytes())
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::hard_link(&tmp, path).map_err(io(path))?;
    let _ = fs::remove_file(&tmp);
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    tracing::warn!(path = %path.display(),
        "generated a new key root: disks and namespaces made from now on cannot be opened without this file; back it up off the node");
    Ok(root)
}

/// The node's keys: its signing identity and the secret primitives derive keys from.
pub struct NodeKeys {
    /// The node's ed25519 key (from the seed).
    pub key: KeyPair,
    /// Key root, plus the seed for the legacy derivations of data made before the key root.
    pub secret: NodeSecret,
}

/// Loads (or creates) the identity ([`load_or_create`], mirrored to `mirrors`, the pools) and
/// the key root (from `key_root`, refused inside any of `mirrors`).
pub fn load_node_keys(
    data_dir: &Path,
    mirrors: &[PathBuf],
    key_root: &KeyRootSource,
) -> Result<NodeKeys, IdentityError> {
    let key = load_or_create(data_dir, mirrors)?;
    let root = key_root.load_or_create(mirrors)?;
    let secret = NodeSecret::new(root).with_legacy_seed(*key.seed());
    Ok(NodeKeys { key, secret })
}

/// [`load_node_keys`] with one more copy of the identity on the boot medium (`boot`, the key
/// root's directory on a real node): the seed is mirrored there too, so a node that lost every
/// pool keeps its id; the key root is still checked against the pools only. A `boot` inside a
/// pool adds nothing.
pub fn load_node_keys_with_boot(
    data_dir: &Path,
    pools: &[PathBuf],
    boot: Option<&Path>,
    key_root: &KeyRootSource,
) -> Result<NodeKeys, IdentityError> {
    let mut mirrors = pools.to_vec();
    if let Some(b) = boot.filter(|b| !pools.iter().any(|p| b.starts_with(p))) {
        mirrors.push(b.to_path_buf());
    }
    let key = load_or_create(data_dir, &mirrors)?;
    let root = key_root.load_or_create(pools)?;
    let secret = NodeSecret::new(root).with_legacy_seed(*key.seed());
    Ok(NodeKeys { key, secret })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_boot_medium_keeps_an_identity_copy_when_every_pool_is_lost() {
        let d = tempfile::tempdir().unwrap();
        let (pool1, pool2, boot) = (
            d.path().join("p1"),
            d.path().join("p2"),
            d.path().join("boot"),
        );
        let data = pool1.join("cache");
        for p in [&pool1, &pool2, &boot] {
            fs::create_dir_all(p).unwrap();
        }
        let pools = vec![pool1.clone(), pool2.clone()];
        let root = KeyRootSource::File(boot.join(KEY_ROOT_FILE));
        let first = load_node_keys_with_boot(&data, &pools, Some(&boot), &root).unwrap();
        for p in [&data, &pool1, &pool2, &boot] {
            assert!(p.join(SEED_FILE).exists(), "{}", p.display());
        }
        // one pool's copies gone (the primary lives on it): same identity from the other pool
        fs::remove_file(data.join(SEED_FILE)).unwrap();
        fs::remove_file(pool1.join(SEED_FILE)).unwrap();
        let again = load_node_keys_with_boot(&data, &pools, Some(&boot), &root).unwrap();
        assert_eq!(again.key.public(), first.key.public());
        // every pool lost (new disks): the boot medium's copy keeps the identity
        fs::remove_dir_all(&pool1).unwrap();
        fs::remove_dir_all(&pool2).unwrap();
        fs::create_dir_all(&pool1).unwrap();
        fs::create_dir_all(&pool2).unwrap();
        let after = load_node_keys_with_boot(&data, &pools, Some(&boot), &root).unwrap();
        assert_eq!(after.key.public(), first.key.public());
        assert!(
            pool2.join(SEED_FILE).exists(),
            "new pools get the copy back"
        );
        // without the boot copy, losing every pool is a new identity
        let d2 = tempfile::tempdir().unwrap();
        let lone = d2.path().join("p");
        fs::create_dir_all(&lone).unwrap();
        let root2 = KeyRootSource::File(d2.path().join("boot").join(KEY_ROOT_FILE));
        let a = load_node_keys_with_boot(
            &lone.join("cache"),
            std::slice::from_ref(&lone),
            None,
            &root2,
        )
        .unwrap();
        fs::remove_dir_all(&lone).unwrap();
        fs::create_dir_all(&lone).unwrap();
        let b = load_node_keys_with_boot(
            &lone.join("cache"),
            std::slice::from_ref(&lone),
            None,
            &root2,
        )
        .unwrap();
        assert_ne!(a.key.public(), b.key.public());
        // a boot directory inside a pool is no extra copy, and the key root stays refused there
        let inside = pool1.join("boot");
        let e = load_node_keys_with_boot(
            &data,
            &pools,
            Some(&inside),
            &KeyRootSource::File(inside.join(KEY_ROOT_FILE)),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(e, IdentityError::KeyRootOnPool { .. }), "{e}");
    }

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

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seed_files_and_data_dir_are_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let m1 = d.path().join("pool1");
        load_or_create(&data, std::slice::from_ref(&m1)).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(SEED_FILE)), 0o600);
        assert_eq!(mode(&m1.join(SEED_FILE)), 0o600);
        // Left readable (older version, umask, restore from backup): narrowed on start.
        fs::set_permissions(data.join(SEED_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(m1.join(SEED_FILE), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        load_or_create(&data, std::slice::from_ref(&m1)).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(SEED_FILE)), 0o600);
        assert_eq!(mode(&m1.join(SEED_FILE)), 0o600);
    }

    #[test]
    fn key_root_is_created_once_owner_only_and_not_the_seed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("boot/zos/key-root");
        let src = KeyRootSource::File(path.clone());
        let root = src.load_or_create(&[]).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700, "created directory");
        assert_eq!(src.load_or_create(&[]).unwrap(), root, "stable");
        assert!(!path.with_extension("tmp").exists());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(src.load_or_create(&[]).unwrap(), root);
        assert_eq!(mode(&path), 0o600, "narrowed");
        // Another path, another root (random, not derived from anything on the node).
        let other = KeyRootSource::File(d.path().join("k2"));
        assert_ne!(other.load_or_create(&[]).unwrap(), root);

        let data = d.path().join("data");
        let pool = d.path().join("pool");
        let keys = load_node_keys(&data, std::slice::from_ref(&pool), &src).unwrap();
        let plain = zos_primitive::NodeSecret::new(root);
        assert_eq!(keys.secret.derive("p", "s"), plain.derive("p", "s"));
        let seed_secret = zos_primitive::NodeSecret::new(*keys.key.seed());
        assert_ne!(keys.secret.derive("p", "s"), seed_secret.derive("p", "s"));
        assert!(keys.secret.has_legacy());
    }

    #[test]
    fn key_root_on_a_pool_is_refused_and_bad_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let pool = d.path().join("pool");
        fs::create_dir_all(pool.join("cache")).unwrap();
        for inside in [pool.join("key-root"), pool.join("cache/sub/key-root")] {
            let e = KeyRootSource::File(inside.clone())
                .load_or_create(std::slice::from_ref(&pool))
                .unwrap_err();
            assert!(matches!(e, IdentityError::KeyRootOnPool { .. }), "{e}");
            assert!(!inside.exists(), "nothing written on the pool");
        }
        let bad = d.path().join("bad");
        fs::write(&bad, "zos-key-root 1\nabcd\n").unwrap();
        let e = KeyRootSource::File(bad.clone())
            .load_or_create(&[])
            .unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
        assert_eq!(
            fs::read(&bad).unwrap(),
            b"zos-key-root 1\nabcd\n",
            "left alone"
        );
        let root = [7u8; 32];
        assert_eq!(
            decode_key_root(&bad, encode_key_root(&root).as_bytes()).unwrap(),
            root
        );
    }

    proptest::proptest! {
        /// Untrusted key root files never panic the decoder.
        #[test]
        fn key_root_decode_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let _ = decode_key_root(Path::new("x"), &b);
        }

        /// Untrusted seed files never panic the decoder.
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let r = decode(Path::new("x"), &b);
            proptest::prop_assert_eq!(r.is_ok(), b.len() == 39 && b.starts_with(VERSION_TAG));
        }
    }
}
