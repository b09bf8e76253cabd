//! The node's half of signed self-upgrades (docs/image.md, Upgrades): follow the ledger's
//! target version, fetch the release flist from the hub, verify it against the pinned keys,
//! install it into the inactive slot and ask PID 1 to switch; on a release on trial, commit it
//! once the node is healthy; report a rollback PID 1 recorded.
//!
//! [`decide`] is the whole policy, pure; the rest is I/O around it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zos_image::release::{self, PinnedKeys, SlotState};
use zos_ledger::ZosVersion;

/// Where the node tells PID 1 that the release on trial is healthy.
pub const DEFAULT_HEALTHY_FILE: &str = "/run/zos/release-healthy";
/// Refused bundles, remembered across restarts (`<releases>/refused.json`).
const REFUSED_FILE: &str = "refused.json";
/// The last rollback already reported to the ledger (`<releases>/rollback-reported.json`).
const REPORTED_FILE: &str = "rollback-reported.json";
/// Attempts per download, with a doubling pause between them.
const FETCH_ATTEMPTS: u32 = 3;
/// The `.fl` download's timeout, and the blocks' (all of them) per attempt.
const FL_TIMEOUT: Duration = Duration::from_secs(60);
const BLOCKS_TIMEOUT: Duration = Duration::from_secs(600);

/// `zos node run`'s release options.
#[derive(Args, Debug, Clone, Default)]
pub struct UpgradeArgs {
    /// The release version this binary runs as (PID 1 passes its slot's): registered on the
    /// ledger and compared with the ledger's target. Default: the crate version.
    #[arg(long)]
    pub release_version: Option<String>,
    /// Hub base URL releases come from; the upgrader runs only when given.
    #[arg(long)]
    pub upgrade_hub: Option<String>,
    /// The hub twin (namespace) releases are published under: `<hub>/flists/<N>/zos-<V>.fl`.
    #[arg(long)]
    pub upgrade_twin: Option<u32>,
    /// The node's network for release keys: dev, qa, test or main.
    #[arg(long, default_value = "dev")]
    pub release_network: String,
    /// An ed25519 public key (hex) pinned for the network (repeatable); releases signed by
    /// nothing pinned are refused.
    #[arg(long = "release-pin")]
    pub release_pins: Vec<String>,
    /// How often the ledger's target version is checked (jittered by up to a tenth).
    #[arg(long, default_value_t = 600)]
    pub upgrade_interval_secs: u64,
    /// How long a release on trial has to become healthy before PID 1 rolls it back.
    #[arg(long, default_value_t = 600)]
    pub upgrade_deadline_secs: u64,
    /// The file the node writes the healthy trial version to (PID 1 watches it).
    #[arg(long, env = "ZOS_RELEASE_HEALTHY")]
    pub release_healthy: Option<PathBuf>,
}

impl UpgradeArgs {
    /// The version this node runs as.
    pub fn running(&self) -> String {
        self.release_version
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }
    fn network(&self) -> &str {
        if self.release_network.is_empty() {
            "dev"
        } else {
            &self.release_network
        }
    }
}

/// What the upgrader does with the ledger's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Fetch, verify and install this version.
    Upgrade(String),
    /// Nothing to do: no target, or it is what runs.
    UpToDate,
    /// Another version is the target but not for this node now, and why.
    Hold(String),
}

/// The rollout stage gate (the ledger's staging fields): `Err(why)` when this node must not
/// take `v` yet.
fn in_stage(v: &ZosVersion, node_id: u32, farm_id: u32) -> Result<(), String> {
    if let Some(h) = &v.halted {
        return Err(format!(
            "rollout of {} halted: node {} rolled back from {}: {}",
            v.version, h.node_id, h.version, h.reason
        ));
    }
    if !v.applies_to(node_id, farm_id) {
        return Err(format!(
            "node {node_id} (farm {farm_id}) is not in the rollout stage of {}",
            v.version
        ));
    }
    Ok(())
}

/// The policy: upgrade to the ledger's `target` when it differs from what runs, the council
/// marked it safe, the rollout stage includes this node and has not halted, no trial is under
/// way, this node did not roll back from it, and it was not refused before.
pub fn decide(
    target: &ZosVersion,
    running: &str,
    node_id: u32,
    farm_id: u32,
    slots: &SlotState,
    refused: &BTreeMap<String, String>,
) -> Decision {
    let v = target.version.as_str();
    if v.is_empty() || v == running {
        return Decision::UpToDate;
    }
    if let Some((slot, _)) = slots.trial {
        let tv = slots.versions.get(slot.dir()).map_or("?", String::as_str);
        return Decision::Hold(format!("release {tv} is on trial in slot {}", slot.dir()));
    }
    if !target.safe_to_upgrade {
        return Decision::Hold(format!("{v} is not marked safe to upgrade"));
    }
    if let Err(why) = in_stage(target, node_id, farm_id) {
        return Decision::Hold(why);
    }
    if let Some((rv, reason)) = &slots.last_rollback
        && rv == v
    {
        return Decision::Hold(format!("this node rolled back from {v}: {reason}"));
    }
    if let Some(reason) = refused.get(v) {
        return Decision::Hold(format!("{v} was refused: {reason}"));
    }
    if !safe_version(v) {
        return Decision::Hold(format!("{v:?} is not a usable version name"));
    }
    Decision::Upgrade(v.to_string())
}

/// A version names files and a hub path: letters, digits, `.`, `_`, `-`, `+`, not starting with
/// a dot, at most 64 bytes.
fn safe_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Refused bundles: version → reason, in refusal order for "the last one".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Refused {
    /// (version, reason), oldest first.
    pub list: Vec<(String, String)>,
}

impl Refused {
    fn load(releases: &Path) -> Refused {
        std::fs::read(releases.join(REFUSED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn map(&self) -> BTreeMap<String, String> {
        self.list.iter().cloned().collect()
    }
    fn add(&mut self, releases: &Path, version: &str, reason: &str) {
        self.list.retain(|(v, _)| v != version);
        self.list.push((version.to_string(), reason.to_string()));
        // Bounded: a hostile hub cannot grow the file.
        let excess = self.list.len().saturating_sub(32);
        self.list.drain(..excess);
        if let Err(e) = write_atomic(
            &releases.join(REFUSED_FILE),
            &serde_json::to_vec(self).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, "cannot remember the refused release");
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Everything the node's release tasks need.
#[derive(Debug, Clone)]
pub struct Upgrader {
    /// `<cache>/releases`.
    pub releases: PathBuf,
    /// The version that runs.
    pub running: String,
    /// The node's farm.
    pub farm_id: u32,
    /// The options.
    pub args: UpgradeArgs,
    /// PID 1's request file (`None`: no supervisor).
    pub init_request: Option<PathBuf>,
    /// The node run's milestones and diag section.
    pub progress: zos_node::progress::Progress,
}

impl Upgrader {
    fn healthy_file(&self) -> PathBuf {
        self.args
            .release_healthy
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HEALTHY_FILE))
    }

    fn pins(&self) -> Result<PinnedKeys, String> {
        let mut keys = PinnedKeys::default();
        for p in &self.args.release_pins {
            keys.pin_hex(self.args.network(), p)
                .map_err(|e| format!("--release-pin: {e}"))?;
        }
        Ok(keys)
    }

    /// The `upgrade` section of `zos node diag`: what runs, the slots, the trial, the last
    /// rollback and the last refused release.
    pub fn publish_status(&self, note: &str) {
        // No state.json yet: the image's own binary runs, no slot holds anything.
        let st = self
            .releases
            .join("state.json")
            .is_file()
            .then(|| SlotState::load(&self.releases).ok())
            .flatten();
        let refused = Refused::load(&self.releases);
        let v = json!({
            "running": self.running,
            "network": self.args.network(),
            "hub": self.args.upgrade_hub,
            "active": st.as_ref().map(|s| s.active.dir()),
            "slots": st.as_ref().map(|s| s.versions.clone()),
            "trial": st.as_ref().and_then(|s| s.trial).map(|(slot, deadline)| json!({
                "slot": slot.dir(),
                "version": st.as_ref().and_then(|s| s.versions.get(slot.dir()).cloned()),
                "deadline": deadline,
            })),
            "last_rollback": st.as_ref().and_then(|s| s.last_rollback.clone())
                .map(|(version, reason)| json!({"version": version, "reason": reason})),
            "last_refused": refused.list.last()
                .map(|(version, reason)| json!({"version": version, "reason": reason})),
            "status": note,
        });
        self.progress.set_upgrade(v);
    }

    /// The release tasks of one node run: the health gate and the rollback report, then (with
    /// a hub) the upgrade loop. Runs until the node stops (the task is dropped).
    pub async fn run(self) {
        self.publish_status("starting");
        let mut m = self.progress.subscribe();
        // Everything below wants the node registered.
        while m.borrow_and_update().node_id == 0 {
            if m.changed().await.is_err() {
                return;
            }
        }
        // Side by side: a trial's deadline runs while the report retries. Both end with the
        // task (aborted when the node stops).
        let rest = async {
            self.report_rollback().await;
            if self.args.upgrade_hub.is_some() {
                self.upgrade_loop().await;
            } else {
                self.publish_status("no --upgrade-hub: upgrades off");
            }
        };
        tokio::join!(self.health_gate(), rest);
    }

    /// A release on trial that is what runs: commit it once registered, the API answered over
    /// the relay and the first reconcile pass finished; then tell PID 1.
    async fn health_gate(&self) {
        let st = match SlotState::load(&self.releases) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "release state unreadable");
                return;
            }
        };
        let Some((slot, deadline)) = st.trial else {
            return;
        };
        if st.versions.get(slot.dir()) != Some(&self.running) {
            tracing::warn!(
                slot = slot.dir(),
                running = %self.running,
                "the release on trial is not the one running: not judging it"
            );
            return;
        }
        tracing::info!(version = %self.running, deadline, "release on trial: waiting for health");
        self.publish_status("on trial: waiting for health");
        let mut m = self.progress.subscribe();
        loop {
            let now = m.borrow_and_update().clone();
            if now.node_id != 0
                && now.reconciled
                && now.api_version.as_deref() == Some(self.running.as_str())
            {
                break;
            }
            // Said every 10 s while waiting: which of the three is missing.
            match tokio::time::timeout(Duration::from_secs(10), m.changed()).await {
                Ok(Err(_)) => return,
                Ok(Ok(())) => {}
                Err(_) => tracing::info!(
                    registered = now.node_id != 0,
                    reconciled = now.reconciled,
                    api_answered = ?now.api_version,
                    "release on trial: still waiting for health"
                ),
            }
        }
        let committed = (|| -> Result<(), String> {
            // Read again: PID 1 may have rolled back in between.
            let mut st = SlotState::load(&self.releases).map_err(|e| e.to_string())?;
            if st.trial.map(|(s, _)| s) != Some(slot) {
                return Err("the trial ended before the node was healthy".into());
            }
            st.commit();
            st.save(&self.releases).map_err(|e| e.to_string())?;
            let healthy = self.healthy_file();
            write_atomic(&healthy, self.running.as_bytes())
                .map_err(|e| format!("{}: {e}", healthy.display()))
        })();
        match committed {
            Ok(()) => {
                tracing::info!(version = %self.running, slot = slot.dir(), "release healthy: committed");
                self.publish_status("committed");
            }
            Err(e) => tracing::warn!(error = %e, "release on trial not committed"),
        }
    }

    /// A rollback PID 1 recorded goes to the ledger once (halting the rollout when it was the
    /// target).
    async fn report_rollback(&self) {
        let Ok(st) = SlotState::load(&self.releases) else {
            return;
        };
        let Some((version, reason)) = st.last_rollback else {
            return;
        };
        tracing::warn!(%version, %reason, "this node rolled back from a release");
        let marker = self.releases.join(REPORTED_FILE);
        let this = serde_json::to_vec(&(&version, &reason)).unwrap_or_default();
        if std::fs::read(&marker).ok().as_deref() == Some(this.as_slice()) {
            return;
        }
        let Some(ledger) = self.progress.ledger() else {
            return;
        };
        let node_id = self.progress.get().node_id;
        let mut pause = Duration::from_secs(2);
        for _ in 0..5 {
            match ledger
                .send(
                    "report_rollback",
                    zos_ledger::Call::report_rollback(node_id, &version, &reason),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(%version, "rollback reported to the ledger");
                    if let Err(e) = write_atomic(&marker, &this) {
                        tracing::warn!(error = %e, "cannot remember the rollback report");
                    }
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "rollback report failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    async fn upgrade_loop(&self) {
        let every = Duration::from_secs(self.args.upgrade_interval_secs.max(1));
        let mut last_note = String::new();
        loop {
            let note = match self.check_once().await {
                Ok(n) => n,
                Err(e) => format!("error: {e}"),
            };
            if note != last_note {
                tracing::info!(status = %note, "upgrader");
                last_note = note.clone();
            }
            self.publish_status(&note);
            // Jitter: a whole grid does not hit the hub in the same second.
            let jitter = rand_jitter(every / 10);
            tokio::time::sleep(every + jitter).await;
        }
    }

    /// One pass: read the target, decide, and upgrade when told. Returns the status line.
    pub async fn check_once(&self) -> Result<String, String> {
        let m = self.progress.get();
        let ledger = self.progress.ledger().ok_or("not registered")?;
        let target = verified_zos_version(ledger.client()).await?;
        let st = SlotState::load(&self.releases).map_err(|e| e.to_string())?;
        let mut refused = Refused::load(&self.releases);
        let v = match decide(
            &target,
            &self.running,
            m.node_id,
            self.farm_id,
            &st,
            &refused.map(),
        ) {
            Decision::UpToDate => return Ok(format!("up to date ({})", self.running)),
            Decision::Hold(why) => return Ok(format!("holding: {why}")),
            Decision::Upgrade(v) => v,
        };
        let Some(request) = &self.init_request else {
            // Installing would leave a trial nobody starts (and whose deadline runs out).
            tracing::error!(
                version = %v,
                "release {v} is the target, but this node has no supervisor to switch to it \
                 (ZOS_INIT=1: the image's PID 1); it keeps running {}",
                self.running
            );
            return Ok(format!(
                "{v} available; no supervisor (ZOS_INIT=1) to switch: not installed"
            ));
        };
        tracing::info!(from = %self.running, to = %v, "upgrading");
        let pins = self.pins()?;
        let bundle = self.fetch(&v).await?;
        let net = self.args.network();
        // Check before installing: a refusal is remembered (never retried every loop) and the
        // bundle never reaches a slot.
        match release::verify_bundle(&bundle, net, &pins) {
            Ok(m) if m.version == v => {}
            Ok(m) => {
                let why = format!("the bundle published as {v} says it is {}", m.version);
                return Ok(self.refuse(&mut refused, &v, &why, &bundle));
            }
            Err(e) => return Ok(self.refuse(&mut refused, &v, &e.to_string(), &bundle)),
        }
        let deadline = unix_now() + self.args.upgrade_deadline_secs;
        let (slot, _) = release::install(&bundle, &self.releases, net, &pins, deadline)
            .map_err(|e| format!("installing {v}: {e}"))?;
        tracing::info!(version = %v, slot = slot.dir(), deadline, "release installed; trial starts at the switch");
        // The slot holds its own copy: the download (blocks included) is not needed any more.
        let _ = std::fs::remove_dir_all(self.releases.join("download"));
        zos_node::init_request::write(request, "switch")
            .map_err(|e| format!("switch request {}: {e}", request.display()))?;
        tracing::warn!(version = %v, "asked PID 1 to switch to the new release");
        Ok(format!(
            "installed {v} in slot {}; switch requested",
            slot.dir()
        ))
    }

    /// A bundle that failed verification: logged with the reason, remembered (not fetched
    /// again every loop), its download removed. It never reaches a slot.
    fn refuse(&self, refused: &mut Refused, v: &str, why: &str, bundle: &Path) -> String {
        tracing::error!(version = %v, reason = %why, "release refused");
        refused.add(&self.releases, v, why);
        let _ = std::fs::remove_dir_all(bundle);
        format!("refused {v}: {why}")
    }

    /// Downloads release `v` into `<releases>/download/<v>` (blocks cached under
    /// `download/blocks`, so another attempt fetches only what is missing).
    async fn fetch(&self, v: &str) -> Result<PathBuf, String> {
        let hub = self
            .args
            .upgrade_hub
            .as_deref()
            .ok_or("no --upgrade-hub")?
            .trim_end_matches('/');
        let twin = self.args.upgrade_twin.ok_or("no --upgrade-twin")?;
        let url = format!("{hub}/flists/{twin}/zos-{v}.fl");
        let download = self.releases.join("download");
        let target = download.join(v);
        let mut pause = Duration::from_secs(2);
        let mut last = String::new();
        for attempt in 1..=FETCH_ATTEMPTS {
            match fetch_once(hub, &url, &download, &target).await {
                Ok(()) => return Ok(target),
                Err(e) => {
                    tracing::warn!(%url, attempt, error = %e, "release download failed");
                    last = e;
                }
            }
            if attempt < FETCH_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        Err(format!("{url}: {last}"))
    }
}

async fn fetch_once(hub: &str, url: &str, download: &Path, target: &Path) -> Result<(), String> {
    let fl = tokio::time::timeout(FL_TIMEOUT, zos_flist::fetch(url, &download.join("flists")))
        .await
        .map_err(|_| format!("no answer within {} s", FL_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    // Blocks come from the hub the node was given, whatever routes the file names.
    let router =
        zos_flist::Router::from_specs(&[format!("{hub}/blocks")]).map_err(|e| e.to_string())?;
    let flist = zos_flist::Flist::open_with(&fl, router).map_err(|e| e.to_string())?;
    let cache = zos_flist::BlockCache::new(download.join("blocks"));
    let _ = std::fs::remove_dir_all(target);
    // On a thread of its own: the unpack future is not provably Send, and the node's task is.
    let (rt, to) = (tokio::runtime::Handle::current(), target.to_path_buf());
    let r = tokio::task::spawn_blocking(move || {
        rt.block_on(tokio::time::timeout(
            BLOCKS_TIMEOUT,
            zos_flist::unpack::unpack(
                &flist.reader,
                &cache,
                &flist.router,
                &to,
                &zos_flist::unpack::UnpackOptions::default(),
            ),
        ))
    })
    .await
    .map_err(|e| format!("unpack task: {e}"))?;
    let _ = std::fs::remove_file(&fl);
    r.map_err(|_| format!("blocks not fetched within {} s", BLOCKS_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())
}

/// `zos image publish DIR`: a signed release bundle onto a hub as `zos-<version>.fl`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The bundle directory (`zos image sign` wrote its release.json).
    pub dir: PathBuf,
    /// Hub base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "ZOS_HUB")]
    pub hub: String,
    /// Your twin id on the hub (the namespace nodes fetch from: `--upgrade-twin`).
    #[arg(long, env = "ZOS_TWIN")]
    pub twin: u32,
    /// Key file (default: the config directory's key.json).
    #[arg(long, env = "ZOS_KEY", conflicts_with = "seed")]
    pub key: Option<PathBuf>,
    /// Hex ed25519 seed instead of a key file.
    #[arg(long, env = "ZOS_SEED", hide_env_values = true)]
    pub seed: Option<String>,
}

/// Checks the bundle is signed and whole (by the keys it names: the publisher does not know
/// every network's pins), packs it as an flist and pushes it. Prints the published path.
pub fn publish(a: PublishArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let raw = std::fs::read(a.dir.join("release.json"))
        .with_context(|| format!("{}: not a signed bundle", a.dir.display()))?;
    let m: release::Manifest = serde_json::from_slice(&raw).context("release.json")?;
    let mut keys = PinnedKeys::default();
    for s in &m.signatures {
        // A key that does not parse cannot have signed: verify_bundle then refuses.
        let _ = keys.pin_hex(&m.network, &s.key);
    }
    let m = release::verify_bundle(&a.dir, &m.network, &keys)
        .with_context(|| format!("{} is not a whole signed bundle", a.dir.display()))?;
    anyhow::ensure!(
        safe_version(&m.version),
        "version {:?} cannot name a release file",
        m.version
    );
    let pair = match &a.seed {
        Some(s) => {
            zos_types::KeyPair::from_hex_seed(zos_types::KeyType::Ed25519, s).context("--seed")?
        }
        None => {
            let path = a.key.clone().unwrap_or_else(super::key::default_key_path);
            zos_client::KeyFile::load(&path)?
                .key_pair()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    // Blocks go to a scratch store first; push copies them to the hub and rewrites the routes.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch = std::env::temp_dir().join(format!("zos-publish-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("{}", scratch.display()))?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(scratch.clone());
    let name = format!("zos-{}.fl", m.version);
    let fl = scratch.join(&name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let router =
        zos_flist::Router::from_specs(&[format!("dir://{}", scratch.join("blocks").display())])?;
    let opts = zos_flist::pack::PackOptions {
        tags: vec![
            ("version".into(), m.version.clone()),
            ("network".into(), m.network.clone()),
        ],
        ..Default::default()
    };
    rt.block_on(zos_flist::pack::pack(&a.dir, &fl, &router, &opts))
        .context("packing the bundle")?;
    let flist = zos_flist::Flist::open(&fl)?;
    let client = zos_flist::hub::HubClient::new(&a.hub, a.twin, pair);
    let (uploaded, path) = rt
        .block_on(zos_flist::hub::push(&flist, &client, &name, 8))
        .map_err(|e| anyhow::anyhow!("pushing to {}: {e}", a.hub))?;
    println!(
        "release {} ({}) published: {}{path} ({uploaded} blocks uploaded)",
        m.version,
        m.network,
        a.hub.trim_end_matches('/')
    );
    Ok(())
}

/// The ledger's target version, proven against a signed head.
pub async fn verified_zos_version(c: &zos_ledger::LedgerClient) -> Result<ZosVersion, String> {
    let raw = c
        .verified_raw(zos_ledger::state::keys::ZOS_VERSION)
        .await
        .map_err(|e| format!("ledger version: {e}"))?;
    match raw.value {
        None => Ok(ZosVersion::default()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| format!("ledger version record: {e}")),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rand_jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    // The clock's nanoseconds are random enough to spread nodes out.
    let n = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    );
    Duration::from_millis(n % ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_image::release::Slot;

    fn target(v: &str, safe: bool) -> ZosVersion {
        ZosVersion {
            version: v.into(),
            safe_to_upgrade: safe,
            ..Default::default()
        }
    }

    fn fresh() -> SlotState {
        SlotState::load(Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn upgrades_only_to_a_safe_new_version_for_this_node() {
        let none = BTreeMap::new();
        let st = fresh();
        assert_eq!(
            decide(&target("v2", true), "v1", 7, 1, &st, &none),
            Decision::Upgrade("v2".into())
        );
        assert_eq!(
            decide(&target("v1", true), "v1", 7, 1, &st, &none),
            Decision::UpToDate
        );
        assert_eq!(
            decide(&target("", true), "v1", 7, 1, &st, &none),
            Decision::UpToDate
        );
        assert!(matches!(
            decide(&target("v2", false), "v1", 7, 1, &st, &none),
            Decision::Hold(w) if w.contains("not marked safe")
        ));
        // A hostile version name never becomes a path.
        assert!(matches!(
            decide(&target("../../etc", true), "v1", 7, 1, &st, &none),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn stages_and_halts_hold_the_upgrade() {
        let none = BTreeMap::new();
        let st = fresh();
        let mut t = target("v2", true);
        t.farms = vec![2];
        assert!(matches!(
            decide(&t, "v1", 7, 1, &st, &none),
            Decision::Hold(w) if w.contains("rollout stage")
        ));
        assert_eq!(
            decide(&t, "v1", 7, 2, &st, &none),
            Decision::Upgrade("v2".into())
        );
        t.farms.clear();
        t.share_percent = Some(0);
        assert!(matches!(
            decide(&t, "v1", 7, 2, &st, &none),
            Decision::Hold(_)
        ));
        t.share_percent = Some(100);
        assert_eq!(
            decide(&t, "v1", 7, 2, &st, &none),
            Decision::Upgrade("v2".into())
        );
        t.halted = Some(zos_ledger::RolloutHalt {
            node_id: 9,
            version: "v2".into(),
            reason: "not healthy by its deadline".into(),
        });
        assert!(matches!(
            decide(&t, "v1", 7, 2, &st, &none),
            Decision::Hold(w) if w.contains("halted") && w.contains("not healthy")
        ));
    }

    #[test]
    fn trials_rollbacks_and_refusals_are_not_retried() {
        let none = BTreeMap::new();
        let t = target("v3", true);
        let mut st = fresh();
        st.start_trial("v3", 100);
        assert!(matches!(
            decide(&t, "v2", 7, 1, &st, &none),
            Decision::Hold(w) if w.contains("on trial in slot b")
        ));
        st.rollback("exited before it was healthy");
        assert!(matches!(
            decide(&t, "v2", 7, 1, &st, &none),
            Decision::Hold(w) if w.contains("rolled back from v3: exited")
        ));
        // A newer target is taken again after a rollback from an older one.
        assert_eq!(
            decide(&target("v4", true), "v2", 7, 1, &st, &none),
            Decision::Upgrade("v4".into())
        );
        let refused = BTreeMap::from([("v4".to_string(), "no valid signature".to_string())]);
        assert!(matches!(
            decide(&target("v4", true), "v2", 7, 1, &st, &refused),
            Decision::Hold(w) if w.contains("refused: no valid signature")
        ));
        assert_eq!(st.to_run(), Slot::A);
    }

    #[test]
    fn refusals_are_remembered_bounded_and_last_is_last() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Refused::load(d.path());
        for i in 0..40 {
            r.add(d.path(), &format!("v{i}"), "bad");
        }
        r.add(d.path(), "v5", "again");
        let r = Refused::load(d.path());
        assert_eq!(r.list.len(), 32);
        assert_eq!(r.list.last().unwrap(), &("v5".into(), "again".into()));
        assert_eq!(r.map().len(), 32);
    }
}
