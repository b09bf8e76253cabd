//! Signed releases and A/B slots.
//!
//! A **bundle** is a directory (published as an flist on the hub) with `release.json`:
//! `{version, network, files: {name: sha256}, content_hash, signatures: [{key, sig}]}`.
//! `content_hash` is sha256 over the canonical listing (`name\0sha256\n`, names sorted), and
//! each signature is ed25519 over `zos-release-v1\0<network>\0<version>\0<content_hash>`. A
//! node accepts a bundle only if a key pinned for its network (dev/qa/test/main, compiled into
//! the image: [`PinnedKeys`]) signed it and every file matches its hash — a bad signature or a
//! changed byte is refused before anything is installed or run.
//!
//! **Slots**: `releases/{a,b}` on the cache pool, and `releases/state.json`
//! ([`SlotState`]): the active slot, the one on trial, and the last rollback's reason. An
//! upgrade installs into the inactive slot and marks it `trial` with a deadline; the bootstrap
//! runs the trial slot; if the health check (registered, API answering, workloads reconciled)
//! does not pass before the deadline, or the trial binary exits, the bootstrap switches back
//! and records why ([`SlotState::rollback`]), which the node reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Release errors.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// I/O on the bundle or the slots.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `release.json` does not parse.
    #[error("release manifest: {0}")]
    Manifest(String),
    /// No pinned key of this network signed it (or a signature is invalid).
    #[error("release {version}: no valid signature by a key pinned for network {network}")]
    BadSignature {
        /// The bundle's version.
        version: String,
        /// The node's network.
        network: String,
    },
    /// A file's bytes do not match the manifest, or the listing does not match content_hash.
    #[error("release {version}: {what}")]
    Tampered {
        /// The bundle's version.
        version: String,
        /// What did not match.
        what: String,
    },
    /// Built for another network.
    #[error("release {version} is for network {bundle}, this node is on {node}")]
    WrongNetwork {
        /// The bundle's version.
        version: String,
        /// Its network.
        bundle: String,
        /// Ours.
        node: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One signature in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseSignature {
    /// Signer's ed25519 public key, hex.
    pub key: String,
    /// Signature, hex.
    pub sig: String,
}

/// `release.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Version, e.g. `v2`.
    pub version: String,
    /// dev, qa, test, main.
    pub network: String,
    /// File name → sha256 hex.
    pub files: BTreeMap<String, String>,
    /// sha256 hex of the canonical listing.
    pub content_hash: String,
    /// Signatures over [`signed_message`].
    pub signatures: Vec<ReleaseSignature>,
}

/// The canonical listing's hash.
pub fn content_hash(files: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, sum) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(sum.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// What a release key signs: domain-separated, so a signature over anything else never
/// counts.
pub fn signed_message(network: &str, version: &str, content_hash: &str) -> Vec<u8> {
    format!("zos-release-v1\0{network}\0{version}\0{content_hash}").into_bytes()
}

/// Keys pinned per network.
#[derive(Debug, Clone, Default)]
pub struct PinnedKeys(BTreeMap<String, Vec<VerifyingKey>>);

/// A new release signing key's 32-byte seed, from the OS RNG.
pub fn generate_seed() -> [u8; 32] {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

/// The public key (hex) of a seed: what networks pin.
pub fn public_key_hex(seed: &[u8; 32]) -> String {
    hex::encode(SigningKey::from_bytes(seed).verifying_key().to_bytes())
}

/// The signing key of a seed.
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

impl PinnedKeys {
    /// Pins a hex public key for `network`.
    pub fn pin_hex(&mut self, network: &str, key: &str) -> Result<(), ReleaseError> {
        let bad = || ReleaseError::Manifest(format!("pinned key {key:?} is not an ed25519 key"));
        let b = hex::decode(key.trim()).map_err(|_| bad())?;
        let b = <[u8; 32]>::try_from(b).map_err(|_| bad())?;
        let vk = VerifyingKey::from_bytes(&b).map_err(|_| bad())?;
        self.pin(network, vk);
        Ok(())
    }
    /// Pins `key` for `network`.
    pub fn pin(&mut self, network: &str, key: VerifyingKey) {
        self.0.entry(network.to_string()).or_default().push(key);
    }
    fn get(&self, network: &str) -> &[VerifyingKey] {
        self.0.get(network).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> Result<String, ReleaseError> {
    let b = std::fs::read(p).map_err(io(p))?;
    Ok(hex::encode(Sha256::digest(&b)))
}

/// Signs the files of `dir` (every regular file but `release.json`) as `version` for
/// `network`, writing `dir/release.json`.
pub fn sign_bundle(
    dir: &Path,
    version: &str,
    network: &str,
    key: &SigningKey,
) -> Result<Manifest, ReleaseError> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "release.json" || !e.file_type().map_err(io(dir))?.is_file() {
            continue;
        }
        files.insert(name, sha256_file(&e.path())?);
    }
    let ch = content_hash(&files);
    let sig = key.sign(&signed_message(network, version, &ch));
    let m = Manifest {
        version: version.to_string(),
        network: network.to_string(),
        files,
        content_hash: ch,
        signatures: vec![ReleaseSignature {
            key: hex::encode(key.verifying_key().to_bytes()),
            sig: hex::encode(sig.to_bytes()),
        }],
    };
    let p = dir.join("release.json");
    let json = serde_json::to_vec_pretty(&m).map_err(|e| ReleaseError::Manifest(e.to_string()))?;
    std::fs::write(&p, json).map_err(io(&p))?;
    Ok(m)
}

/// Verifies a bundle for a node on `network`: manifest, signature by a pinned key, listing
/// hash, every file's bytes. Nothing is run or installed before this passes.
pub fn verify_bundle(
    dir: &Path,
    network: &str,
    keys: &PinnedKeys,
) -> Result<Manifest, ReleaseError> {
    let p = dir.join("release.json");
    let raw = std::fs::read(&p).map_err(io(&p))?;
    let m: Manifest =
        serde_json::from_slice(&raw).map_err(|e| ReleaseError::Manifest(e.to_string()))?;
    if m.network != network {
        return Err(ReleaseError::WrongNetwork {
            version: m.version,
            bundle: m.network,
            node: network.to_string(),
        });
    }
    let msg = signed_message(&m.network, &m.version, &m.content_hash);
    let signed = m.signatures.iter().any(|s| {
        let (Ok(k), Ok(sig)) = (hex::decode(&s.key), hex::decode(&s.sig)) else {
            return false;
        };
        let (Ok(k), Ok(sig)) = (<[u8; 32]>::try_from(k), <[u8; 64]>::try_from(sig)) else {
            return false;
        };
        let Ok(vk) = VerifyingKey::from_bytes(&k) else {
            return false;
        };
        keys.get(network).contains(&vk) && vk.verify(&msg, &Signature::from_bytes(&sig)).is_ok()
    });
    if !signed {
        return Err(ReleaseError::BadSignature {
            version: m.version,
            network: network.to_string(),
        });
    }
    if content_hash(&m.files) != m.content_hash {
        return Err(ReleaseError::Tampered {
            version: m.version,
            what: "file list does not match content_hash".into(),
        });
    }
    for (name, sum) in &m.files {
        if name.contains('/') || name.starts_with('.') {
            return Err(ReleaseError::Tampered {
                version: m.version.clone(),
                what: format!("bad file name {name:?}"),
            });
        }
        if &sha256_file(&dir.join(name))? != sum {
            return Err(ReleaseError::Tampered {
                version: m.version.clone(),
                what: format!("{name} does not match its hash"),
            });
        }
    }
    Ok(m)
}

/// A/B slot names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `releases/a`.
    A,
    /// `releases/b`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// Directory name.
    pub fn dir(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// `releases/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotState {
    /// The slot known good.
    pub active: Slot,
    /// Version in each slot.
    pub versions: BTreeMap<String, String>,
    /// A slot being tried, with the unix time by which it must be healthy.
    pub trial: Option<(Slot, u64)>,
    /// The last rollback: (version, reason).
    pub last_rollback: Option<(String, String)>,
    /// How long the trial may take from the moment it starts running (seconds): the deadline
    /// is set at install, and verifying and staging a large release can eat most of it on a
    /// slow machine before the node even starts. Absent in older state files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_window: Option<u64>,
}

impl SlotState {
    /// The slot the bootstrap should run now.
    pub fn to_run(&self) -> Slot {
        self.trial.map_or(self.active, |(s, _)| s)
    }
    /// A verified release was installed into the inactive slot: try it until `deadline`.
    pub fn start_trial(&mut self, version: &str, deadline: u64) -> Slot {
        let s = self.active.other();
        self.versions.insert(s.dir().into(), version.to_string());
        self.trial = Some((s, deadline));
        s
    }
    /// The trial passed its health check: it becomes the active slot.
    pub fn commit(&mut self) {
        if let Some((s, _)) = self.trial.take() {
            self.active = s;
        }
    }
    /// The trial failed (`reason`): back to the active slot, remembering why.
    pub fn rollback(&mut self, reason: &str) {
        if let Some((s, _)) = self.trial.take() {
            let v = self.versions.get(s.dir()).cloned().unwrap_or_default();
            self.last_rollback = Some((v, reason.to_string()));
        }
    }
    /// Whether the trial is past its deadline at `now`.
    pub fn overdue(&self, now: u64) -> bool {
        self.trial.is_some_and(|(_, d)| now > d)
    }
    /// Loads `releases/state.json` (a fresh state on slot A when absent).
    pub fn load(releases: &Path) -> Result<SlotState, ReleaseError> {
        let p = releases.join("state.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ReleaseError::Manifest(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotState {
                active: Slot::A,
                versions: BTreeMap::new(),
                trial: None,
                last_rollback: None,
                trial_window: None,
            }),
            Err(e) => Err(io(&p)(e)),
        }
    }
    /// Saves atomically (temp file, fsync, rename): a power loss leaves the old or the new.
    pub fn save(&self, releases: &Path) -> Result<(), ReleaseError> {
        use std::io::Write as _;
        let p = releases.join("state.json");
        let tmp = releases.join("state.json.tmp");
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| ReleaseError::Manifest(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }
}

/// Installs a verified bundle into the inactive slot under `releases` and starts its trial.
/// The bundle is verified again from the slot's copy (what will run is what was checked).
pub fn install(
    bundle: &Path,
    releases: &Path,
    network: &str,
    keys: &PinnedKeys,
    deadline: u64,
) -> Result<(Slot, Manifest), ReleaseError> {
    verify_bundle(bundle, network, keys)?;
    let mut st = SlotState::load(releases)?;
    let slot = st.active.other();
    let dir = releases.join(slot.dir());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for e in std::fs::read_dir(bundle).map_err(io(bundle))? {
        let e = e.map_err(io(bundle))?;
        if e.file_type().map_err(io(bundle))?.is_file() {
            let to = dir.join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(io(&to))?;
        }
    }
    let m = verify_bundle(&dir, network, keys)?;
    st.start_trial(&m.version, deadline);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    st.trial_window = Some(deadline.saturating_sub(now));
    st.save(releases)?;
    Ok((slot, m))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn bundle(dir: &Path, body: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("zos"), body).unwrap();
    }

    #[test]
    fn signed_bundles_install_and_bad_ones_never_do() {
        let t = tempfile::tempdir().unwrap();
        let (b2, releases) = (t.path().join("v2"), t.path().join("releases"));
        std::fs::create_dir_all(&releases).unwrap();
        bundle(&b2, b"zos v2");
        sign_bundle(&b2, "v2", "dev", &key(1)).unwrap();
        let mut keys = PinnedKeys::default();
        keys.pin("dev", key(1).verifying_key());
        // Pinned for dev only: main refuses it even with the same key.
        let mut main = PinnedKeys::default();
        main.pin("main", key(1).verifying_key());
        assert!(matches!(
            verify_bundle(&b2, "main", &main),
            Err(ReleaseError::WrongNetwork { .. })
        ));

        let (slot, m) = install(&b2, &releases, "dev", &keys, 100).unwrap();
        assert_eq!((slot, m.version.as_str()), (Slot::B, "v2"));
        let st = SlotState::load(&releases).unwrap();
        assert_eq!(st.to_run(), Slot::B);
        assert!(st.overdue(101) && !st.overdue(99));

        // Signed by an unpinned key: refused, nothing installed.
        let b3 = t.path().join("v3");
        bundle(&b3, b"zos v3");
        sign_bundle(&b3, "v3", "dev", &key(2)).unwrap();
        assert!(matches!(
            install(&b3, &releases, "dev", &keys, 100),
            Err(ReleaseError::BadSignature { .. })
        ));
        // A changed byte after signing: refused.
        let b4 = t.path().join("v4");
        bundle(&b4, b"zos v4");
        sign_bundle(&b4, "v4", "dev", &key(1)).unwrap();
        std::fs::write(b4.join("zos"), b"zos v4!").unwrap();
        assert!(matches!(
            verify_bundle(&b4, "dev", &keys),
            Err(ReleaseError::Tampered { .. })
        ));
        // A signature over another version: refused.
        let mut m4: Manifest =
            serde_json::from_slice(&std::fs::read(b4.join("release.json")).unwrap()).unwrap();
        std::fs::write(b4.join("zos"), b"zos v4").unwrap();
        m4.version = "v9".into();
        std::fs::write(b4.join("release.json"), serde_json::to_vec(&m4).unwrap()).unwrap();
        assert!(matches!(
            verify_bundle(&b4, "dev", &keys),
            Err(ReleaseError::BadSignature { .. })
        ));
        assert_eq!(
            SlotState::load(&releases)
                .unwrap()
                .versions
                .get("b")
                .unwrap(),
            "v2"
        );
    }

    #[test]
    fn trial_commits_or_rolls_back_with_its_reason() {
        let mut st = SlotState::load(Path::new("/nonexistent")).unwrap();
        assert_eq!(st.to_run(), Slot::A);
        st.start_trial("v2", 10);
        st.commit();
        assert_eq!((st.active, st.to_run()), (Slot::B, Slot::B));
        st.start_trial("v3", 20);
        assert_eq!(st.to_run(), Slot::A);
        st.rollback("not registered within 300 s");
        assert_eq!(st.to_run(), Slot::B);
        assert_eq!(
            st.last_rollback,
            Some(("v3".into(), "not registered within 300 s".into()))
        );
    }
}
