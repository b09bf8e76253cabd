//! Black-box: `zos farm reboot --node N` against a real `zos ledger serve --dev`, `zos relay
//! serve` and `zos node run`. A twin that is not the farmer is refused and nothing is written;
//! the farmer's call on a node started as zos PID 1 starts it (`ZOS_INIT=1`) writes `reboot` to
//! PID 1's request file (`ZOS_INIT_REQUEST`, a temp path here); a node running as a host process
//! refuses with the reason.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::cli::{ledger_and_relay, ok, wait, zos};
use common::{Proc, TempDir};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `zos node run` for farm 1; `init_request`: as a child of zos PID 1 with that request file.
fn node(ledger: &str, relay: &str, data: &Path, init_request: Option<&Path>) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
    c.args(["node", "run", "--ledger", ledger, "--relay", relay])
        .args(["--relay-domain", "local", "--farm", "1", "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .env_remove("ZOS_INIT")
        .env_remove("ZOS_INIT_REQUEST")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = init_request {
        c.env("ZOS_INIT", "1").env("ZOS_INIT_REQUEST", p);
    }
    Proc(c.spawn().unwrap())
}

fn stop(p: &mut Proc) {
    let pid = p.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = p.0.wait();
}

#[test]
fn farmer_reboots_a_node_under_pid1_others_cannot() {
    let dir = TempDir::new();
    let grid = ledger_and_relay(&dir.0.join("ledger"));
    let (url, ws) = (grid.url.clone(), grid.ws.clone());

    // Twin 1 + farm 1: the farmer; twin 2: another user. Both reachable through "local".
    let env_of = |seed: &str| {
        [
            ("ZOS_LEDGER", url.clone()),
            ("ZOS_SEED", seed.to_string()),
            ("ZOS_RELAY", ws.clone()),
        ]
    };
    let farmer_seed = "11".repeat(32);
    let user_seed = "22".repeat(32);
    let (farmer, user) = (env_of(&farmer_seed), env_of(&user_seed));
    let run = |e: &[(&str, String)], args: &[&str]| {
        let r: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        zos(&r, args)
    };
    for (env, seed) in [(&farmer[..], &farmer_seed), (&user[..], &user_seed)] {
        let e2e = ok(zos(&[], &["rmb", "e2e-key", "--seed", seed]))
            .trim()
            .to_string();
        ok(run(
            env,
            &["twin", "create", "--relay", "local", "--e2e-key", &e2e],
        ));
    }
    ok(run(&farmer, &["farm", "create", "farm-one"]));

    // The node as zos PID 1 starts it: ZOS_INIT=1, the request file in a temp "/run/zos".
    let run_zos = dir.0.join("run-zos");
    std::fs::create_dir_all(&run_zos).unwrap();
    let request = run_zos.join("init-request");
    let data = dir.0.join("node");
    let mut n = node(&url, &ws, &data, Some(&request));
    wait("node answers", Duration::from_secs(60), || {
        let o = run(&user, &["rmb", "call", "3", "zos.system.version"]);
        o.status.success().then_some(())
    });

    // Another twin is refused, and nothing reaches PID 1.
    let o = run(&user, &["farm", "reboot", "--node", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a non-farmer rebooted the node");
    assert!(err.contains("unauthorized"), "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !request.exists(),
        "a refused call wrote {}",
        request.display()
    );

    // The farmer's call is answered, then the request appears, atomically (no temp file left).
    let out = ok(run(&farmer, &["farm", "reboot", "--node", "1"]));
    assert!(out.contains("node 1 is rebooting"), "{out}");
    let word = wait("the reboot request", Duration::from_secs(10), || {
        std::fs::read_to_string(&request).ok()
    });
    assert_eq!(word, "reboot");
    let names: Vec<String> = std::fs::read_dir(&run_zos)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["init-request"], "only the request file is left");
    stop(&mut n);

    // The same node as a host process: no PID 1 to ask, and it says so.
    std::fs::remove_file(&request).unwrap();
    let mut n = node(&url, &ws, &data, None);
    wait("node answers again", Duration::from_secs(60), || {
        let o = run(&user, &["rmb", "call", "3", "zos.system.version"]);
        o.status.success().then_some(())
    });
    let o = run(&farmer, &["farm", "reboot", "--node", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a host process cannot reboot");
    assert!(
        err.contains("reboot needs the zos image's PID 1: this node runs as a host process"),
        "{err}"
    );
    assert!(!request.exists());
    stop(&mut n);
}
