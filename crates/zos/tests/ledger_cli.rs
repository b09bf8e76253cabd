//! Black-box: the ledger client commands (`zos twin|farm|contracts|balance`) against a real
//! `zos ledger serve --dev`, including a rejection's exit code and message, then
//! `zos ledger verify` after a clean stop (SIGTERM).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Proc as Server, TempDir};

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

fn zos(url: &str, seed: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("ZOS_LEDGER", url)
        .env("ZOS_KEY", seed)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn client_commands_against_a_real_ledger() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = TempDir(std::env::temp_dir().join(format!("zos-ledger-cli-{nanos}")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args([
            "ledger",
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&dir.0)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(u) = line.strip_prefix("ledger listening on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let server = Server(child);

    let farmer = "11".repeat(32);
    let r = json(&zos(
        &url,
        &farmer,
        &["twin", "create", "--relay", "relay.example"],
    ));
    assert_eq!(r["events"][0]["event"]["twin_stored"]["twin"]["id"], 1);
    let t = json(&zos(&url, &farmer, &["twin", "show"]));
    assert_eq!(t["relays"][0], "relay.example");
    json(&zos(&url, &farmer, &["farm", "create", "farm-one"]));
    json(&zos(
        &url,
        &farmer,
        &["farm", "add-ip", "1", "185.69.166.10/24", "185.69.166.1"],
    ));
    let f = json(&zos(&url, &farmer, &["farm", "show", "farm-one"]));
    assert_eq!(f["public_ips"][0]["ip"], "185.69.166.10/24");
    assert_eq!(
        json(&zos(&url, &farmer, &["farm", "show", "1"]))["name"],
        "farm-one"
    );
    let b = json(&zos(&url, &farmer, &["balance"]));
    assert_eq!(
        (b["balance"].as_u64(), b["nonce"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(
        json(&zos(&url, &farmer, &["contracts"])),
        serde_json::json!([])
    );

    // A rejection: exit code 1, the ledger's reason on stderr, nothing on stdout.
    let dup = zos(&url, &"22".repeat(32), &["farm", "create", "farm-one"]);
    assert_eq!(dup.status.code(), Some(1));
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(err.contains("has no twin"), "{err}");
    let dup = zos(&url, &farmer, &["farm", "create", "farm-one"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("farm name \"farm-one\" already exists"));
    // A missing key is a clear usage error.
    let nokey = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["balance", "--ledger", &url])
        .env_remove("ZOS_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nokey.stderr).contains("--seed HEX or ZOS_KEY"));

    // Clean stop on SIGTERM, then the audit passes.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut server = server;
    assert!(
        server.0.wait().unwrap().success(),
        "serve exits 0 on SIGTERM"
    );
    let v = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["ledger", "verify", "--data"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let report = json(&v);
    assert_eq!(report["transactions"], 3);
}
