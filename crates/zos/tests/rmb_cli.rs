//! Black-box: the real `zos` binary as ledger and relay, `zos twin create` with `zos rmb
//! e2e-key`, and `zos rmb call` against a twin served by an in-test `zos_rmb::Peer` that looks
//! twins up on that ledger.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Proc, TempDir};

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use zos_rmb::{CachedDirectory, LedgerDirectory, Peer, PeerConfig, Router};
use zos_types::crypto::{KeyPair, KeyType};

fn zos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("ZOS_CONFIG", "/nonexistent/zos/config.toml")
        .env_remove("ZOS_SEED")
        .env_remove("ZOS_KEY")
        .env_remove("ZOS_RELAY")
        .env_remove("ZOS_LEDGER")
        .output()
        .unwrap()
}

/// Starts `zos ARGS` and returns it with the rest of the stderr line starting with `prefix`.
fn spawn_until(args: &[&str], prefix: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Proc(child);
    let found = loop {
        let line = lines.next().expect("process exited early").unwrap();
        if let Some(i) = line.find(prefix) {
            break line[i + prefix.len()..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, found)
}

fn seed_hex(n: u8) -> String {
    hex::encode([n; 32])
}

#[test]
fn rmb_call_through_a_real_relay_and_ledger() {
    let data = TempDir::new();
    let (_ledger, ledger_url) = spawn_until(
        &[
            "ledger",
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.0.to_str().unwrap(),
        ],
        "ledger listening on ",
    );
    for n in [1u8, 2] {
        let e2e = zos(&["rmb", "e2e-key", "--seed", &seed_hex(n)]);
        assert!(e2e.status.success());
        let e2e = String::from_utf8(e2e.stdout).unwrap();
        let created = zos(&[
            "twin",
            "create",
            "--ledger",
            &ledger_url,
            "--seed",
            &seed_hex(n),
            "--relay",
            "relay.test",
            "--e2e-key",
            e2e.trim(),
        ]);
        assert!(created.status.success(), "{created:?}");
    }
    let (_relay, relay_url) = spawn_until(
        &[
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ledger",
            &ledger_url,
            "--domain",
            "relay.test",
        ],
        "listening on ",
    );
    let relay_url = relay_url.split_whitespace().next().unwrap().to_string();
    let call = |from: u8, args: &[&str]| {
        let mut a = vec!["rmb", "call"];
        a.extend_from_slice(args);
        let seed = seed_hex(from);
        a.extend([
            "--relay",
            &relay_url,
            "--ledger",
            &ledger_url,
            "--seed",
            &seed,
        ]);
        zos(&a)
    };

    // Twin 1 pings itself: the reply travels back through the relay to its CLI session.
    let out = call(1, &["1", "rmb.ping"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["twin"], json!(1));

    // Twin 2 offline: a clean timeout, exit 1.
    let out = call(1, &["2", "rmb.ping", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));

    // Twin 2 online, served by a library peer that reads the same ledger.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = rt.block_on(async {
        let dir = Arc::new(CachedDirectory::new(
            LedgerDirectory::connect(&ledger_url).unwrap(),
            Duration::from_secs(60),
        ));
        let p = Peer::connect(
            PeerConfig {
                relays: vec![relay_url.clone()],
                twin_id: 2,
                key: KeyPair::from_seed(KeyType::Ed25519, [2; 32]),
                session: None,
            },
            dir,
        )
        .await
        .unwrap();
        let mut r = Router::new();
        r.handle("add", |ctx, v: Value| async move {
            Ok(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0), "from": ctx.source}))
        });
        p.serve(r);
        p
    });
    let out = call(1, &["2", "add", r#"{"a":2,"b":3}"#]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"sum": 5, "from": 1}));

    // Unknown command: the remote error, exit 1.
    let out = call(1, &["2", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote error 404"));

    // A key with no twin on the ledger.
    let out = call(9, &["2", "rmb.ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no twin on the ledger"));

    // Bad JSON payload: refused before anything is sent.
    let out = call(1, &["2", "add", "{not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    peer.close();
}
