//! Black-box, without QEMU: the node's half of signed self-upgrades against a real
//! `zos ledger serve --dev`, `zos relay serve` and `zos hub serve`.
//!
//! A signed v2 bundle is published with `zos image publish`, the council sets v2 on the ledger;
//! `zos node run --release-version v1 --upgrade-hub …` (as under PID 1: `ZOS_INIT=1`, the
//! request file moved to the test's directory) fetches, verifies and installs it: state.json
//! has v2 on trial in slot b and the request file says `switch`. The node started again as v2
//! (what PID 1 does) passes its health gate: the trial is committed, the healthy file says v2 and
//! the ledger's node record says v2. A v3 signed by an unpinned key is refused with its reason
//! (`zos node diag`), never installed. A rollback PID 1 recorded is reported once to the
//! ledger, which halts the rollout.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::cli::{ledger_and_relay, ok, term, wait, zos};
use common::{Proc, TempDir};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zos_image::release::{self, SlotState};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sigterm(p: &mut Proc) {
    term(p);
    let end = Instant::now() + Duration::from_secs(30);
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Grid {
    dir: std::path::PathBuf,
    ledger: String,
    relay: String,
    hub: String,
    pin: String,
}

impl Grid {
    /// `zos node run` as `version`, under a pretend PID 1.
    fn node(&self, version: &str, log: &str) -> Proc {
        self.node_with(version, log, true)
    }

    fn node_with(&self, version: &str, log: &str, supervised: bool) -> Proc {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
        if !supervised {
            c.env_remove("ZOS_INIT");
        }
        Proc(
            c.args([
                "node",
                "run",
                "--ledger",
                &self.ledger,
                "--relay",
                &self.relay,
            ])
            .args([
                "--relay-domain",
                "local",
                "--farm",
                "1",
                "--admin-twin",
                "1",
            ])
            .args(["--metrics", "127.0.0.1:0", "--data"])
            .arg(self.dir.join("node"))
            .args(["--release-version", version, "--upgrade-hub", &self.hub])
            .args(["--upgrade-twin", "1", "--release-network", "dev"])
            .args(["--release-pin", &self.pin, "--upgrade-interval-secs", "1"])
            .args(["--upgrade-deadline-secs", "300"])
            .env("RUST_LOG", "info")
            .env("ZOS_INIT", if supervised { "1" } else { "0" })
            .env("ZOS_INIT_REQUEST", self.dir.join("init-request"))
            .env("ZOS_RELEASE_HEALTHY", self.dir.join("release-healthy"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        )
    }

    fn releases(&self) -> std::path::PathBuf {
        self.dir.join("node/releases")
    }

    /// A bundle for `version` signed with `seed`, published on the hub.
    fn publish(&self, version: &str, seed: u8) {
        let b = self.dir.join(format!("bundle-{version}"));
        std::fs::create_dir_all(&b).unwrap();
        // Nothing runs it here: any bytes will do.
        std::fs::write(b.join("zos"), format!("zos {version}")).unwrap();
        release::sign_bundle(&b, version, "dev", &release::signing_key(&[seed; 32])).unwrap();
        let out = ok(zos(
            &[],
            &[
                "image",
                "publish",
                b.to_str().unwrap(),
                "--hub",
                &self.hub,
                "--twin",
                "1",
                "--seed",
                &"33".repeat(32),
            ],
        ));
        assert!(
            out.contains(&format!("/flists/1/zos-{version}.fl")),
            "{out}"
        );
    }

    fn set_version(&self, rt: &tokio::runtime::Runtime, version: &str) {
        let c = zos_ledger::LedgerClient::new(&self.ledger).unwrap();
        rt.block_on(c.send(
            &zos_ledger::dev::council_key(),
            zos_ledger::Call::SetZosVersion {
                version: version.into(),
                safe_to_upgrade: true,
                farms: vec![],
                share_percent: None,
            },
        ))
        .unwrap();
    }
}

fn state(releases: &Path) -> Option<SlotState> {
    releases
        .join("state.json")
        .is_file()
        .then(|| SlotState::load(releases).unwrap())
}

#[test]
fn node_installs_a_signed_release_commits_it_healthy_and_refuses_an_unpinned_one() {
    let started = Instant::now();
    let dir = TempDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grid = ledger_and_relay(&dir.0.join("ledger"));
    let (url, ws) = (grid.url.clone(), grid.ws.clone());
    // The hub: twin 1 of the hub may upload (the release publisher's key).
    let publisher =
        zos_types::KeyPair::from_hex_seed(zos_types::KeyType::Ed25519, &"33".repeat(32)).unwrap();
    let hub_addr = format!("127.0.0.1:{}", free_port());
    let _hub = Proc(
        Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(["hub", "serve", "--listen", &hub_addr, "--data"])
            .arg(dir.0.join("hub"))
            .arg("--twin")
            .arg(format!(
                "1=ed25519:{}",
                hex::encode(publisher.public().bytes)
            ))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    wait("the hub listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&hub_addr).ok()
    });
    let g = Grid {
        dir: dir.0.clone(),
        ledger: url.clone(),
        relay: ws.clone(),
        hub: format!("http://{hub_addr}"),
        pin: release::public_key_hex(&[1; 32]),
    };

    // Twin 1: the admin reading diagnostics (with its e2e key); twin 2 + farm 1: the farmer.
    let user = "22".repeat(32);
    let uenv = grid.user_twin(&user);
    grid.farmer(&"11".repeat(32));

    // v2, signed by the pinned key, is the target.
    g.publish("v2", 1);
    g.set_version(&rt, "v2");
    let releases = g.releases();
    // Without a supervisor nothing would start the new release: not even installed.
    let mut n = g.node_with("v1", "node-v1-alone.log", false);
    wait("no supervisor said", Duration::from_secs(60), || {
        let out = zos(&uenv, &["node", "diag", "1", "health", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = v["upgrade"]["status"].as_str()?.to_string();
        s.contains("no supervisor").then_some(())
    });
    assert!(state(&releases).is_none() && !releases.join("b").exists());
    assert!(!dir.0.join("init-request").exists());
    sigterm(&mut n);

    let mut n = g.node("v1", "node-v1.log");
    let st = wait("v2 installed on trial", Duration::from_secs(60), || {
        state(&releases).filter(|s| s.trial.is_some())
    });
    let (slot, deadline) = st.trial.unwrap();
    assert_eq!(slot, release::Slot::B);
    assert_eq!(st.versions.get("b").map(String::as_str), Some("v2"));
    assert!(deadline > 0);
    assert_eq!(std::fs::read(releases.join("b/zos")).unwrap(), b"zos v2");
    let req = wait("the switch request", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.0.join("init-request")).ok()
    });
    assert_eq!(req, "switch");
    sigterm(&mut n);

    // PID 1 switched: the node runs as v2 and must prove itself healthy.
    std::fs::remove_file(dir.0.join("init-request")).unwrap();
    let mut n = g.node("v2", "node-v2.log");
    let healthy = wait("the healthy file", Duration::from_secs(60), || {
        std::fs::read_to_string(dir.0.join("release-healthy")).ok()
    });
    assert_eq!(healthy, "v2");
    let st = state(&releases).unwrap();
    assert_eq!((st.active, st.trial), (release::Slot::B, None));
    let node = rt
        .block_on(zos_ledger::LedgerClient::new(&url).unwrap().node(1))
        .unwrap()
        .unwrap();
    assert_eq!(node.version, "v2", "the node registers the release it runs");

    // v3 signed by a key nobody pinned: refused, remembered, never installed, no switch.
    g.publish("v3", 2);
    g.set_version(&rt, "v3");
    let diag = wait("v3 refused", Duration::from_secs(60), || {
        let out = zos(&uenv, &["node", "diag", "1", "health", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["upgrade"]["last_refused"]["version"] == "v3").then_some(v)
    });
    let reason = diag["upgrade"]["last_refused"]["reason"].as_str().unwrap();
    assert!(reason.contains("no valid signature"), "{reason}");
    assert_eq!(diag["upgrade"]["running"], "v2");
    assert_eq!(diag["upgrade"]["active"], "b");
    let text = ok(zos(&uenv, &["node", "diag", "1", "health"]));
    assert!(text.contains("last refused release: v3: "), "{text}");
    std::thread::sleep(Duration::from_secs(2)); // a few more loops: still not retried
    let st = state(&releases).unwrap();
    assert_eq!(st.trial, None);
    assert!(!st.versions.values().any(|v| v == "v3"));
    assert!(
        !releases.join("a").exists(),
        "a refused bundle reaches no slot"
    );
    assert!(!dir.0.join("init-request").exists());
    let log = std::fs::read_to_string(dir.0.join("node-v2.log")).unwrap();
    assert_eq!(
        log.matches("release refused").count(),
        1,
        "a refusal is not retried every loop"
    );
    sigterm(&mut n);

    // PID 1 rolled a trial of v3 back (as if it had been installed): the node reports it once
    // and the ledger halts the rollout of v3.
    let mut st = state(&releases).unwrap();
    st.last_rollback = Some((
        "v3".into(),
        "v3 exited (status 1) before it was healthy".into(),
    ));
    st.save(&releases).unwrap();
    let mut n = g.node("v2", "node-v2b.log");
    let client = zos_ledger::LedgerClient::new(&url).unwrap();
    let halted = wait("the rollout halted", Duration::from_secs(60), || {
        rt.block_on(client.zos_version()).unwrap().halted
    });
    assert_eq!((halted.node_id, halted.version.as_str()), (1, "v3"));
    assert!(halted.reason.contains("before it was healthy"));
    sigterm(&mut n);
    eprintln!("upgrade_node: {:?}", started.elapsed());
}
