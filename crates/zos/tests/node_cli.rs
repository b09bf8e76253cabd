//! Black-box: `zos node run` against a real `zos ledger serve --dev` and `zos relay serve`,
//! driven with `zos twin|farm` and queried with `zos rmb call`; a node without a farm idles,
//! registers once the farm exists, answers over RMB, stops on SIGTERM with exit code 0, and
//! keeps its identity across a restart.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::cli::{ledger_and_relay, ok, term, wait, zos};
use common::{Proc, TempDir};

use std::process::{Command, Stdio};
use std::time::Duration;

fn node(ledger: &str, relay: &str, data: &std::path::Path) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_zos"))
            .args([
                "node",
                "run",
                "--ledger",
                ledger,
                "--relay",
                relay,
                "--relay-domain",
                "local",
            ])
            .args(["--farm", "1", "--metrics", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn call(env: &[(&str, &str)], twin: &str, cmd: &str) -> Option<serde_json::Value> {
    let out = zos(env, &["rmb", "call", twin, cmd]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    term(p);
    p.0.wait().unwrap()
}

#[test]
fn node_run_registers_serves_and_stops() {
    let dir = TempDir::new();
    let grid = ledger_and_relay(&dir.0.join("ledger"));
    let (url, ws) = (grid.url.clone(), grid.ws.clone());

    // Twin 1: the user (with its e2e key, reachable through "local").
    let user = "22".repeat(32);
    let uenv = grid.user_twin(&user);

    // The node starts before its farm exists: it idles (twin 2 is not created yet).
    let data = dir.0.join("node");
    let mut n = node(&url, &ws, &data);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        n.0.try_wait().unwrap().is_none(),
        "an idle node keeps running"
    );
    // Twin 2 + farm 1: the farmer.
    grid.farmer(&"11".repeat(32));

    // The node registers (twin 3, node 1) and answers over RMB.
    let v = wait("node answers", Duration::from_secs(60), || {
        call(&uenv, "3", "zos.system.version")
    });
    assert_eq!(v["zos"], serde_json::json!(env!("CARGO_PKG_VERSION")));
    // Features follow the primitives this host can run (networks need root and TUN, VMs need
    // QEMU), so the list varies by host; each entry must be one the node knows, once.
    let features = call(&uenv, "3", "zos.system.node_features_get").unwrap();
    let features: Vec<&str> = features
        .as_array()
        .expect("features are a list")
        .iter()
        .map(|f| f.as_str().expect("a feature is a string"))
        .collect();
    // Upstream's advertised names (zos-reference §2.3).
    let known = [
        "zmount",
        "zdb",
        "volume",
        "network",
        "network-light",
        "zmachine",
        "zmachine-light",
        "ipv4",
        "ip",
        "gateway-name-proxy",
        "gateway-fqdn-proxy",
        "wireguard",
        "mycelium",
    ];
    for f in &features {
        assert!(known.contains(f), "unknown feature {f:?} in {features:?}");
    }
    let mut unique = features.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        features.len(),
        "features listed once: {features:?}"
    );
    assert_eq!(
        call(&uenv, "3", "zos.deployment.list").unwrap(),
        serde_json::json!([])
    );
    let err = zos(&uenv, &["rmb", "call", "3", "zos.deployment.delete", "{}"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("please cancel your contract instead"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    assert!(sigterm(&mut n).success(), "SIGTERM is a clean stop");

    // Restart: same identity, same twin, still node 1.
    let seed = std::fs::read(data.join("seed.txt")).unwrap();
    assert_eq!(&seed[..7], b"\"1.0.0\"");
    let mut n = node(&url, &ws, &data);
    wait(
        "node answers after restart",
        Duration::from_secs(60),
        || call(&uenv, "3", "zos.system.version"),
    );
    assert_eq!(std::fs::read(data.join("seed.txt")).unwrap(), seed);
    let contracts = ok(zos(&uenv, &["contracts", "--node", "1"]));
    assert!(contracts.trim_start().starts_with('['), "{contracts}");
    assert!(sigterm(&mut n).success());
}
