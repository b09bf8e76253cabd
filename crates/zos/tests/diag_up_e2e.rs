//! Issue 22 through the real binary on `zos up` (the user is the farm's owner there): a
//! deployment that fails is rolled back by `zos deploy`, and `zos status C --history` still
//! shows each result with its stable code; the farmer reads the node's logs about that
//! contract and a reachability test with `zos node diag`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[path = "common/up.rs"]
mod up;

use up::{Up, grid_namespaces, is_root, local_grid_running};

fn run(up: &Up, args: &[&str]) -> (i32, String, String) {
    let o = up.client(args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn rolled_back_history_and_farmer_diagnostics_on_zos_up() {
    if !is_root() {
        eprintln!(
            "SKIP rolled_back_history_and_farmer_diagnostics_on_zos_up: needs root (zos up --nodes)"
        );
        return;
    }
    if !grid_namespaces().is_empty() {
        if local_grid_running() {
            eprintln!(
                "SKIP rolled_back_history_and_farmer_diagnostics_on_zos_up: another local grid is running"
            );
            return;
        }
        for ns in grid_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    let (up, _) = Up::start(1, &[], Duration::from_secs(180));
    // `node: 1` skips the client's capacity check: the node's gate refuses "big".
    let spec = up.dir.path().join("fail.yaml");
    std::fs::write(
        &spec,
        "name: fail\nnode: 1\nworkloads:\n  small:\n    zdb: { size: 64MiB, password: pw1 }\n  \
         big:\n    zdb: { size: 100TiB, password: pw2 }\n",
    )
    .unwrap();
    let (code, _, err) = run(&up, &["deploy", spec.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("canceled"), "rolled back: {err}");
    let (code, out, err) = run(&up, &["contracts"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    let c = all
        .iter()
        .filter(|c| c["kind"]["node"].is_object())
        .map(|c| c["id"].as_u64().unwrap())
        .max()
        .unwrap_or_else(|| panic!("no node contract: {out}"));

    // the evidence survives the rollback, with its stable code
    let (code, out, err) = run(&up, &["status", &c.to_string(), "--history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let h: Vec<Value> = serde_json::from_str(&out).unwrap();
    let big_err: Vec<&Value> = h
        .iter()
        .filter(|e| e["name"] == "big" && e["state"] == "error")
        .collect();
    assert_eq!(big_err.len(), 1, "{out}");
    assert_eq!(big_err[0]["code"], "capacity", "{out}");
    assert!(
        h.iter()
            .any(|e| e["name"] == "small" && e["state"] == "deleted"),
        "the rollback is in the history: {out}"
    );
    let (code, text, _) = run(&up, &["status", &c.to_string(), "--history"]);
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.contains("big") && l.contains("error") && l.contains("capacity")),
        "{text}"
    );

    // the farmer (the user owns the farm on zos up) reads the node's logs about it
    let (code, out, err) = run(
        &up,
        &[
            "node",
            "diag",
            "1",
            "logs",
            "--contract",
            &c.to_string(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let logs: Value = serde_json::from_str(&out).unwrap();
    assert!(
        logs["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"] == "workload failed"
                && e["fields"]["name"] == "big"
                && e["fields"]["code"] == "capacity"),
        "{out}"
    );
    // … and a reachability test from the node (the grid's own relay port answers; a port
    // nobody listens on does not)
    let cfg = std::fs::read_to_string(up.dir.path().join("config.toml")).unwrap();
    let relay_port = cfg
        .lines()
        .find(|l| l.starts_with("relay"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| {
            p.trim_matches(|c: char| !c.is_ascii_digit())
                .parse::<u16>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no relay port in {cfg}"));
    let (code, out, err) = run(
        &up,
        &[
            "node",
            "diag",
            "1",
            "reach",
            &format!("127.0.0.1:{relay_port}"),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reachable"], true, "{out}");
    let (code, text, err) = run(&up, &["node", "diag", "1", "health"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("status: "), "{text}");
}
