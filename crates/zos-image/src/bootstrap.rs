//! PID 1's half of A/B upgrades (the node's half installs releases and commits trials).
//!
//! Before every node start PID 1 looks at `cache/releases/state.json` on the pools, runs the
//! slot [`SlotState::to_run`] names (verified again against the pinned keys, then copied into
//! tmpfs so the pool can be unmounted), or the image's own `/init` when no release was ever
//! installed. While a slot is on trial it watches for the node's health marker; a trial that
//! exits before it is healthy, or misses its deadline, is rolled back by PID 1 itself, with the
//! reason recorded in `state.json` for the node to report. Decisions are pure functions
//! ([`decide`], [`judge`]); the mounting and copying are at the edge.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount, umount};

use crate::release::{self, PinnedKeys, Slot, SlotState};

/// Where releases live inside a pool (the cache subvolume, next to the engine store).
pub const RELEASES_IN_POOL: &str = "cache/releases";
/// The node asks PID 1 to act by writing one word here (`switch`, `reboot`).
pub const REQUEST_FILE: &str = "/run/zos/init-request";
/// The node writes the version it runs here once its health check passed.
pub const HEALTHY_FILE: &str = "/run/zos/release-healthy";
/// Pinned release keys of a site (`<network> <hex>` per line), from the image or an overlay.
pub const RELEASE_KEYS: &str = "/etc/zos/release-keys";
/// Where PID 1 mounts a pool for a moment.
const PEEK: &str = "/run/zos/peek";
/// Where the slot binary runs from (tmpfs).
const BIN_DIR: &str = "/run/zos/bin";

/// A slot on trial as PID 1 watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The version on trial.
    pub version: String,
    /// Unix seconds by which it must be healthy.
    pub deadline: u64,
    /// The health window from the trial's start (see [`trial_deadline`]).
    pub window: Option<u64>,
}

/// What to run, from the slot state and which slots verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run this slot (its version), watching it if it is on trial.
    Slot {
        /// The slot.
        slot: Slot,
        /// Its version.
        version: String,
        /// Set when this is the trial.
        trial: Option<Trial>,
    },
    /// The trial slot was refused: record the rollback, then decide again.
    Rollback(String),
    /// Run the image's own binary (no release installed, or the active slot is unusable).
    Builtin(Option<String>),
}

/// Chooses what to run. `verify(slot)` checks a slot's bundle and gives its version.
pub fn decide(st: &SlotState, verify: impl Fn(Slot) -> Result<String, String>) -> Decision {
    if let Some((slot, deadline)) = st.trial {
        return match verify(slot) {
            Ok(version) => Decision::Slot {
                slot,
                trial: Some(Trial {
                    version: version.clone(),
                    deadline,
                    window: st.trial_window,
                }),
                version,
            },
            Err(e) => Decision::Rollback(format!("refused at boot: {e}")),
        };
    }
    if !st.versions.contains_key(st.active.dir()) {
        return Decision::Builtin(None);
    }
    match verify(st.active) {
        Ok(version) => Decision::Slot {
            slot: st.active,
            version,
            trial: None,
        },
        Err(e) => Decision::Builtin(Some(format!(
            "active slot {} refused ({e}): running the image's own release",
            st.active.dir()
        ))),
    }
}

/// The deadline PID 1 holds a trial to when it starts it at `now`: the whole window from the
/// start (verifying and staging a large release on a slow machine must not eat it), but never
/// past the install's deadline plus one window, so a trial that keeps rebooting the machine
/// still runs out.
pub fn trial_deadline(deadline: u64, window: Option<u64>, now: u64) -> u64 {
    match window {
        Some(w) => deadline
            .max(now.saturating_add(w))
            .min(deadline.saturating_add(w)),
        None => deadline,
    }
}

/// How a trial stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still within its deadline.
    Waiting,
    /// The node said it is healthy on this version.
    Healthy,
    /// Roll back, for this reason.
    Failed(String),
}

/// Judges a trial at `now` from the health marker's content and the node's exit (if it exited).
pub fn judge(t: &Trial, now: u64, healthy: Option<&str>, exited: Option<&str>) -> Verdict {
    if healthy.map(str::trim) == Some(t.version.as_str()) {
        return Verdict::Healthy;
    }
    if let Some(status) = exited {
        return Verdict::Failed(format!(
            "{} exited ({status}) before it was healthy",
            t.version
        ));
    }
    if now > t.deadline {
        return Verdict::Failed(format!(
            "{} was not healthy by its deadline (registered, API answering, workloads reconciled)",
            t.version
        ));
    }
    Verdict::Waiting
}

/// Reads the pinned keys of `network` from [`RELEASE_KEYS`]-style text. Bad lines are returned
/// as warnings.
pub fn parse_pins(text: &str, network: &str) -> (PinnedKeys, Vec<String>, Vec<String>) {
    let (mut keys, mut hexes, mut warnings) = (PinnedKeys::default(), Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = line.split_ascii_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some(net), Some(key), None) => {
                if net != network {
                    continue;
                }
                match keys.pin_hex(net, key) {
                    Ok(()) => hexes.push(key.to_string()),
                    Err(e) => warnings.push(format!("release key {key:?}: {e}")),
                }
            }
            _ => warnings.push(format!("release keys: bad line {line:?}")),
        }
    }
    (keys, hexes, warnings)
}

/// What PID 1 starts.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The binary.
    pub exe: PathBuf,
    /// The version it runs as.
    pub version: String,
    /// Set when it is on trial.
    pub trial: Option<Trial>,
    /// Things to say on the console.
    pub notes: Vec<String>,
}

/// `zos-*` btrfs pools by device path, from `blkid -o export` (blkid probes the disks itself:
/// the image runs no udev, so lsblk would know no labels).
pub fn pools_in_blkid(export: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in export.split("\n\n") {
        let get = |k: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
        };
        if get("TYPE") == "btrfs" && get("LABEL").starts_with("zos-") && !get("DEVNAME").is_empty()
        {
            out.push(get("DEVNAME").to_string());
        }
    }
    out
}

fn pools() -> Vec<String> {
    match std::process::Command::new(crate::init::tool("blkid"))
        .args(["-o", "export"])
        .output()
    {
        Ok(o) => pools_in_blkid(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            crate::init::say(&format!("blkid: {e}"));
            Vec::new()
        }
    }
}

/// Mounts `dev` at [`PEEK`] (read-only unless `rw`), runs `f` on its releases dir, unmounts.
fn on_pool<T>(dev: &str, rw: bool, f: impl FnOnce(&Path) -> T) -> Result<T, String> {
    std::fs::create_dir_all(PEEK).map_err(|e| format!("{PEEK}: {e}"))?;
    let flags = if rw {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    } else {
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    };
    mount(Some(dev), PEEK, Some("btrfs"), flags, None::<&str>)
        .map_err(|e| format!("mount {dev}: {e}"))?;
    let out = f(&Path::new(PEEK).join(RELEASES_IN_POOL));
    if let Err(e) = umount(PEEK) {
        crate::init::say(&format!("umount {PEEK}: {e}"));
    }
    Ok(out)
}

/// The pool holding `cache/releases/state.json`, if any.
fn releases_pool() -> Option<String> {
    pools().into_iter().find(
        |dev| match on_pool(dev, false, |r| r.join("state.json").is_file()) {
            Ok(found) => found,
            Err(e) => {
                crate::init::say(&format!("looking for releases: {e}"));
                false
            }
        },
    )
}

/// Copies a verified slot's binary into tmpfs and checks the copy against the manifest (what
/// runs is what was verified, even if the pool changed in between).
fn stage(releases: &Path, slot: Slot, m: &release::Manifest) -> Result<PathBuf, String> {
    let sum = m
        .files
        .get("zos")
        .ok_or_else(|| format!("release {} has no zos binary", m.version))?;
    std::fs::create_dir_all(BIN_DIR).map_err(|e| format!("{BIN_DIR}: {e}"))?;
    let to = Path::new(BIN_DIR).join(format!("zos-{}", slot.dir()));
    let _ = std::fs::remove_file(&to);
    std::fs::copy(releases.join(slot.dir()).join("zos"), &to)
        .map_err(|e| format!("copying slot {}: {e}", slot.dir()))?;
    if &release::sha256_file(&to).map_err(|e| e.to_string())? != sum {
        return Err(format!("slot {} changed while it was copied", slot.dir()));
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(to)
}

/// Picks what to start now. `builtin` is the image's own binary and version.
pub fn choose(keys: &PinnedKeys, network: &str, builtin: (&Path, &str)) -> Choice {
    let mut notes = Vec::new();
    let fallback = |notes: Vec<String>| Choice {
        exe: builtin.0.to_path_buf(),
        version: builtin.1.to_string(),
        trial: None,
        notes,
    };
    let Some(dev) = releases_pool() else {
        return fallback(notes);
    };
    // At most two rounds: a refused trial is rolled back, then the active slot is chosen.
    for _ in 0..2 {
        let r = on_pool(
            &dev,
            false,
            |releases| -> Result<Result<Choice, Decision>, String> {
                let st = SlotState::load(releases).map_err(|e| e.to_string())?;
                // Each slot is hashed once (a release is tens of MiB, slow to hash under TCG).
                let verified = std::cell::RefCell::new(Vec::new());
                let verify = |s: Slot| {
                    let m = release::verify_bundle(&releases.join(s.dir()), network, keys)
                        .map_err(|e| e.to_string())?;
                    let v = m.version.clone();
                    verified.borrow_mut().push((s, m));
                    Ok(v)
                };
                match decide(&st, verify) {
                    Decision::Slot {
                        slot,
                        version,
                        trial,
                    } => {
                        let m = verified
                            .borrow()
                            .iter()
                            .find(|(s, _)| *s == slot)
                            .map(|(_, m)| m.clone())
                            .ok_or("slot chosen without verification")?;
                        let exe = stage(releases, slot, &m)?;
                        Ok(Ok(Choice {
                            exe,
                            version,
                            trial,
                            notes: vec![],
                        }))
                    }
                    other => Ok(Err(other)),
                }
            },
        );
        match r.and_then(|x| x) {
            Ok(Ok(mut c)) => {
                c.notes = notes;
                return c;
            }
            Ok(Err(Decision::Rollback(why))) => {
                notes.push(format!("trial release {why}: rolling back"));
                if let Err(e) = record_rollback(&why) {
                    notes.push(format!("recording the rollback: {e}"));
                    return fallback(notes);
                }
            }
            Ok(Err(Decision::Builtin(why))) => {
                notes.extend(why);
                return fallback(notes);
            }
            Ok(Err(Decision::Slot { .. })) => return fallback(notes),
            Err(e) => {
                notes.push(format!(
                    "releases on {dev}: {e}: running the image's own release"
                ));
                return fallback(notes);
            }
        }
    }
    fallback(notes)
}

/// Records a failed trial in `state.json` (the active slot runs next). Only when the node is
/// stopped: the pool is mounted read-write for a moment.
pub fn record_rollback(reason: &str) -> Result<(), String> {
    let dev = releases_pool().ok_or("no pool holds releases")?;
    on_pool(&dev, true, |releases| {
        let mut st = SlotState::load(releases).map_err(|e| e.to_string())?;
        st.rollback(reason);
        st.save(releases).map_err(|e| e.to_string())?;
        nix::unistd::sync();
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn st(active: Slot, versions: &[(&str, &str)], trial: Option<(Slot, u64)>) -> SlotState {
        SlotState {
            active,
            versions: versions
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>(),
            trial,
            last_rollback: None,
            trial_window: None,
        }
    }

    #[test]
    fn fresh_state_runs_the_image_and_a_trial_runs_when_it_verifies() {
        let ok = |s: Slot| Ok(if s == Slot::A { "v1" } else { "v2" }.to_string());
        assert_eq!(decide(&st(Slot::A, &[], None), ok), Decision::Builtin(None));
        assert_eq!(
            decide(
                &st(Slot::A, &[("a", "v1"), ("b", "v2")], Some((Slot::B, 50))),
                ok
            ),
            Decision::Slot {
                slot: Slot::B,
                version: "v2".into(),
                trial: Some(Trial {
                    version: "v2".into(),
                    deadline: 50,
                    window: None
                })
            }
        );
        assert_eq!(
            decide(&st(Slot::B, &[("a", "v1"), ("b", "v2")], None), ok),
            Decision::Slot {
                slot: Slot::B,
                version: "v2".into(),
                trial: None
            }
        );
    }

    #[test]
    fn a_refused_trial_rolls_back_and_a_refused_active_slot_falls_back_to_the_image() {
        let bad_b = |s: Slot| {
            if s == Slot::B {
                Err("no valid signature".to_string())
            } else {
                Ok("v1".to_string())
            }
        };
        assert!(matches!(
            decide(&st(Slot::A, &[("a", "v1"), ("b", "v3")], Some((Slot::B, 9))), bad_b),
            Decision::Rollback(r) if r.contains("no valid signature")
        ));
        assert!(matches!(
            decide(&st(Slot::B, &[("b", "v3")], None), bad_b),
            Decision::Builtin(Some(r)) if r.contains("slot b refused")
        ));
    }

    #[test]
    fn trials_pass_on_their_marker_and_fail_on_exit_or_deadline() {
        let t = Trial {
            version: "v3".into(),
            deadline: 100,
            window: None,
        };
        assert_eq!(judge(&t, 50, None, None), Verdict::Waiting);
        assert_eq!(judge(&t, 50, Some("v3\n"), None), Verdict::Healthy);
        // A marker left by another version proves nothing.
        assert_eq!(judge(&t, 50, Some("v2"), None), Verdict::Waiting);
        assert!(matches!(judge(&t, 50, Some("v2"), Some("exit status 1")),
            Verdict::Failed(r) if r.contains("exited (exit status 1)")));
        assert!(matches!(judge(&t, 101, None, None),
            Verdict::Failed(r) if r.contains("deadline")));
        // Healthy just in time wins over a deadline passed since.
        assert_eq!(judge(&t, 101, Some("v3"), None), Verdict::Healthy);
    }

    #[test]
    fn a_trial_gets_its_window_from_its_start_within_bounds() {
        // Installed at 100 with a 120 s window (deadline 220); staging ended at 200.
        assert_eq!(trial_deadline(220, Some(120), 200), 320);
        // Started quickly: the install's deadline stands.
        assert_eq!(trial_deadline(220, Some(120), 101), 221);
        // Started very late (reboots): never past deadline + window.
        assert_eq!(trial_deadline(220, Some(120), 1_000), 340);
        // Older state files: the deadline as written.
        assert_eq!(trial_deadline(220, None, 1_000), 220);
    }

    #[test]
    fn pins_and_pools_parse() {
        let k = hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes(),
        );
        let (_, hexes, warn) =
            parse_pins(&format!("# site\ndev {k}\nmain {k}\ndev zz\nbad\n"), "dev");
        assert_eq!(hexes, [k]);
        assert_eq!(warn.len(), 2, "{warn:?}");
        let export = "DEVNAME=/dev/sda\nLABEL=zos-sda\nUUID=1\nTYPE=btrfs\n\n\
                      DEVNAME=/dev/sdb\nLABEL=home\nTYPE=btrfs\n\n\
                      DEVNAME=/dev/vda\nLABEL=ZOSBOOT\nTYPE=vfat\n\n\
                      DEVNAME=/dev/sdc1\nLABEL=zos-sdc1\nTYPE=btrfs\n";
        assert_eq!(pools_in_blkid(export), ["/dev/sda", "/dev/sdc1"]);
        assert!(pools_in_blkid("garbage\n\n=\n").is_empty());
    }
}
