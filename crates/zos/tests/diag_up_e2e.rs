//! Issue 22 through the real binary on `zos up` (the user is the farm's owner there): a
//! deployment that fails is rolled back by `zos deploy`, and `zos status C --history` still
//! shows each result with its stable code; the farmer reads the node's logs about that
//! contract and a reachability test with `zos node diag`. Then, on the same grid (a short
//! fair-billing cut-off): maintenance refuses a new contract and keeps the existing one
//! running; one of the two pools loses its identity copies and the grid is stopped for longer
//! than the cut-off; it comes back as the same node, and the contract is not billed for the
//! time the node was down.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    let (mut up, first) = Up::start(
        1,
        &["--offline-cutoff", &CUTOFF.to_string()],
        Duration::from_secs(180),
    );
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
    // disk health: SMART where smartctl is there (loop-backed pools have none: said per
    // device), else said once
    let (code, out, err) = run(&up, &["node", "diag", "1", "pools", "--json"]);
    assert_eq!(code, 0, "{err}");
    let pools: Value = serde_json::from_str(&out).unwrap();
    let smart = &pools["smart"];
    if smart["available"] == false {
        assert!(
            smart["reason"].as_str().unwrap().contains("smartctl"),
            "{smart}"
        );
    } else {
        for d in smart["devices"].as_array().unwrap() {
            assert!(
                d["passed"].is_boolean() || d["error"].is_string(),
                "{smart}"
            );
        }
    }

    maintenance_identity_and_fair_billing(&mut up, node_id(&first));
}

/// The grid's fair-billing cut-off (its node reports uptime every 5 s).
const CUTOFF: u64 = 15;

fn deploy(up: &Up, name: &str, yaml: &str) -> (i32, String, String) {
    let spec = up.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&spec, yaml).unwrap();
    run(up, &["deploy", spec.to_str().unwrap()])
}

fn contract(up: &Up, id: u64) -> Value {
    let (code, out, err) = run(up, &["contracts", "--id", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn newest_node_contract(up: &Up) -> u64 {
    let (code, out, err) = run(up, &["contracts"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.iter()
        .filter(|c| c["kind"]["node"].is_object())
        .map(|c| c["id"].as_u64().unwrap())
        .max()
        .unwrap()
}

/// Every identity copy (`seed.txt`) under `dir` (the grid's data: node state and pools).
fn seed_files(dir: &Path, depth: u8, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) && depth > 0 {
            seed_files(&p, depth - 1, out);
        } else if e.file_name() == "seed.txt" {
            out.push(p);
        }
    }
}

/// The node id `zos up` printed ("  node     1 in farm 1 …").
fn node_id(printed: &[String]) -> u32 {
    printed
        .iter()
        .find(|l| l.trim_start().starts_with("node ") && l.contains(" in farm "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no node line in {printed:?}"))
}

fn ledger(up: &Up) -> zos_ledger::LedgerClient {
    let cfg = zos_client::Config::load(&up.dir.path().join("config.toml")).unwrap();
    let trust = zos_ledger::Trust::default()
        .with_cert_file(cfg.ledger_cert.as_ref().unwrap())
        .unwrap();
    zos_ledger::LedgerClient::with_trust(cfg.ledger.as_ref().unwrap(), trust).unwrap()
}

fn maintenance_identity_and_fair_billing(up: &mut Up, node: u32) {
    // a deployment that stays: a 300 MiB volume on the SSD pool
    let (code, _, err) = deploy(
        up,
        "billed",
        "name: billed\nnode: 1\nworkloads:\n  data:\n    volume: { size: 300MiB }\n",
    );
    assert_eq!(code, 0, "{err}");
    let c = newest_node_contract(up);
    // fair billing: started once the node reported it up
    let end = Instant::now() + Duration::from_secs(30);
    let started = loop {
        let info = contract(up, c);
        if let Some(s) = info["billing"]["started"].as_u64() {
            break s;
        }
        assert!(Instant::now() < end, "billing never started: {info}");
        std::thread::sleep(Duration::from_millis(500));
    };

    // maintenance: the farmer (the user, on zos up) sets it; a new contract is refused
    let (code, _, err) = run(up, &["farm", "maintenance", "1", "on"]);
    assert_eq!(code, 0, "{err}");
    let (code, text, err) = run(up, &["nodes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("1 ") && l.trim_end().ends_with("maintenance")),
        "{text}"
    );
    let other =
        "name: other\nnode: 1\nworkloads:\n  kv:\n    zdb: { size: 64MiB, password: pw3 }\n";
    let (code, _, err) = deploy(up, "other", other);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("node 1 is in maintenance"), "{err}");
    // the node knows it too (its health says so to the farmer)
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, err) = run(up, &["node", "diag", "1", "health", "--json"]);
        assert_eq!(code, 0, "{err}");
        let h: Value = serde_json::from_str(&out).unwrap();
        if h["maintenance"].is_object() {
            assert_eq!(h["maintenance"]["pause"], false, "{h}");
            break;
        }
        assert!(Instant::now() < end, "health shows no maintenance: {h}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // … while the existing deployment keeps running
    let (code, out, err) = run(up, &["status", &c.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["workloads"][0]["result"]["state"], "ok", "{out}");
    assert_eq!(contract(up, c)["state"], "created");
    // leaving maintenance restores service
    let (code, _, err) = run(up, &["farm", "maintenance", "1", "off"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = deploy(up, "other", other);
    assert_eq!(code, 0, "after maintenance: {err}");

    // identity: a copy on every pool; the SSD pool loses its copies (the node's state lives
    // on it too), the HDD pool keeps its one
    let data = up.data();
    let mut seeds = Vec::new();
    seed_files(&data, 8, &mut seeds);
    let (ssd, hdd): (Vec<PathBuf>, Vec<PathBuf>) = seeds
        .iter()
        .cloned()
        .partition(|p| !p.to_string_lossy().contains("hdd"));
    assert!(!ssd.is_empty() && !hdd.is_empty(), "copies: {seeds:?}");
    let before = std::fs::read(&hdd[0]).unwrap();
    for p in &ssd {
        std::fs::remove_file(p).unwrap();
    }

    // down for longer than the cut-off
    up.stop(Duration::from_secs(60));
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(2 * CUTOFF));
    let down = stopped.elapsed().as_secs();
    let printed = up.restart(
        1,
        &["--offline-cutoff", &CUTOFF.to_string()],
        Duration::from_secs(180),
    );
    assert_eq!(
        node_id(&printed),
        node,
        "same node id after losing one pool's copies: {printed:?}"
    );
    for p in &ssd {
        assert_eq!(
            std::fs::read(p).unwrap(),
            before,
            "{} restored",
            p.display()
        );
    }
    let (code, out, err) = run(up, &["nodes", "--json"]);
    assert_eq!(code, 0, "{err}");
    let nodes: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes.len(), 1, "no second node registered: {out}");

    // the node's first report after the restart records the silence past the cut-off
    let end = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = contract(up, c);
        if info["billing"]["offline_secs"].as_u64().unwrap_or(0) > 0 {
            break info;
        }
        assert!(Instant::now() < end, "no gap recorded: {info}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let offline = info["billing"]["offline_secs"].as_u64().unwrap();
    assert!(
        offline + CUTOFF + 1 >= down,
        "gap {offline} s for {down} s down (cut-off {CUTOFF} s): {info}"
    );
    let gap = &info["billing"]["gaps"][0];
    assert!(gap["from"].as_u64().unwrap() > started, "{info}");

    // price storage high enough that seconds show, then cancel: what is settled is the time
    // the node served, to the unit
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = ledger(up);
    rt.block_on(l.send(
        &zos_ledger::dev::council_key(),
        zos_ledger::Call::SetPricingPolicy {
            policy: zos_ledger::PricingPolicy {
                su_per_hour: 3_600_000_000,
                ..Default::default()
            },
        },
    ))
    .unwrap();
    let (code, _, err) = run(up, &["cancel", &c.to_string()]);
    assert_eq!(code, 0, "{err}");
    let done: zos_ledger::Contract = rt.block_on(l.contract(c)).unwrap().unwrap();
    let policy = rt.block_on(l.pricing_policy()).unwrap();
    let b = &done.billing;
    let hourly = (zos_ledger::billing::cu_milli(&b.used) * u128::from(policy.cu_per_hour)
        + zos_ledger::billing::su_milli(&b.used) * u128::from(policy.su_per_hour))
        / 1000;
    assert!(hourly >= 3_600_000, "the volume is priced: {b:?}");
    let served = b.last_billed - started - b.offline_secs;
    assert_eq!(
        u128::from(b.total_billed),
        hourly * u128::from(served) / 3600,
        "{b:?}"
    );
    let full = hourly * u128::from(b.last_billed - started) / 3600;
    eprintln!(
        "fair billing: down {down} s, gap {offline} s, served {served} s billed {} (the full \
         time would cost {full})",
        b.total_billed
    );
    assert!(
        full - u128::from(b.total_billed) >= hourly * u128::from(down - CUTOFF - 1) / 3600,
        "the down time is not billed: {b:?}"
    );
}
