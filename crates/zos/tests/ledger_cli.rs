//! Black-box: the ledger client commands (`zos twin|farm|contracts|balance`) against a real
//! `zos ledger serve --dev`, including a rejection's exit code and message, then
//! `zos ledger verify` after a clean stop (SIGTERM).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::TempDir;
use common::cli::{bare, ledger, term};

use std::process::{Command, Output};

/// A client command with the ledger and a hex seed from the environment (`ZOS_SEED`: `ZOS_KEY`
/// is a key file for every command) and no config file.
fn zos(url: &str, seed: &str, args: &[&str]) -> Output {
    bare()
        .args(args)
        .env("ZOS_LEDGER", url)
        .env("ZOS_SEED", seed)
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
    let dir = TempDir::new();
    let (server, url) = ledger(&dir.0, &[]);

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

    // Key rotation: the e2e key (a small-order point refused), then the signing account.
    let (old_seed, new_seed) = ("44".repeat(32), "55".repeat(32));
    json(&zos(&url, &old_seed, &["twin", "create"]));
    let weak = zos(
        &url,
        &old_seed,
        &["twin", "update", "--e2e-key", &"00".repeat(32)],
    );
    assert!(String::from_utf8_lossy(&weak.stderr).contains("small-order"));
    let e2e = format!("09{}", "00".repeat(31));
    json(&zos(
        &url,
        &old_seed,
        &["twin", "update", "--relay", "r2", "--e2e-key", &e2e],
    ));
    json(&zos(
        &url,
        &old_seed,
        &["twin", "rotate-account", "--new-seed", &new_seed],
    ));
    let t = json(&zos(&url, &new_seed, &["twin", "show"]));
    assert_eq!(
        (t["relays"][0].as_str(), t["e2e_key"].as_str()),
        (Some("r2"), Some(&*e2e))
    );
    let gone = zos(&url, &old_seed, &["twin", "show"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no such twin"));
    // A missing key is a clear usage error.
    let nokey = bare().args(["balance", "--ledger", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&nokey.stderr);
    assert!(
        err.contains("run `zos up`") && err.contains("ZOS_KEY") && err.contains("ZOS_SEED"),
        "{err}"
    );

    // ZOS_KEY is a key file here too, as for `zos deploy`: the same account as the seed.
    let key_dir = TempDir::new();
    let key_file = key_dir.0.join("key.json");
    let words = "legal winner thank year wave sausage worth useful legal winner thank yellow";
    let made = bare()
        .args(["key", "new", "--from-mnemonic", words, "--file"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let by_file = bare()
        .args(["balance", "--ledger", &url])
        .env("ZOS_KEY", &key_file)
        .output()
        .unwrap();
    let by_file = json(&by_file);
    let by_flag = bare()
        .args(["balance", "--ledger", &url, "--key"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(json(&by_flag)["account"], by_file["account"]);
    // A hex seed in ZOS_KEY is read as a file name, and the message says so.
    let seed_as_key = bare()
        .args(["balance", "--ledger", &url])
        .env("ZOS_KEY", &farmer)
        .output()
        .unwrap();
    assert_eq!(seed_as_key.status.code(), Some(1));
    let err = String::from_utf8_lossy(&seed_as_key.stderr);
    assert!(
        err.contains(&farmer) && err.contains("No such file"),
        "{err}"
    );

    // `zos contracts` finds the ledger in the config file `zos up` writes (no flag, no env).
    let cfg = key_dir.0.join("config.toml");
    std::fs::write(&cfg, format!("ledger = {url:?}\n")).unwrap();
    let listed = bare()
        .args(["contracts"])
        .env("ZOS_CONFIG", &cfg)
        .env("ZOS_SEED", &farmer)
        .output()
        .unwrap();
    assert_eq!(json(&listed), serde_json::json!([]));

    // The farmer's node commands: two machines register in farm 1 (as `zos node run` does);
    // maintenance (farmer only; `--pause` goes with `on`), then the first machine's record
    // moved to the second (its identity was lost).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ledger = zos_ledger::LedgerClient::new(&url).unwrap();
    for seed in [0x66u8, 0x77] {
        let k = zos_types::KeyPair::from_seed(zos_types::KeyType::Ed25519, [seed; 32]);
        rt.block_on(ledger.send(
            &k,
            zos_ledger::Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        ))
        .unwrap();
        rt.block_on(ledger.send(
            &k,
            zos_ledger::Call::CreateNode {
                farm_id: 1,
                resources: Default::default(),
                location: Default::default(),
                interfaces: vec![],
                public_config: None,
                features: vec![],
                version: "0".into(),
                virtualized: false,
                secure_boot: false,
                serial_number: String::new(),
            },
        ))
        .unwrap();
    }
    let on = json(&zos(&url, &farmer, &["farm", "maintenance", "1", "on"]));
    assert_eq!(
        on["events"][0]["event"]["node_maintenance_set"]["on"], true,
        "{on}"
    );
    let not_farmer = zos(&url, &new_seed, &["farm", "maintenance", "1", "off"]);
    assert_eq!(not_farmer.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&not_farmer.stderr).contains("not the owner of farm of node 1")
    );
    let bad = zos(
        &url,
        &farmer,
        &["farm", "maintenance", "1", "off", "--pause"],
    );
    assert_eq!(bad.status.code(), Some(1));
    let moved = json(&zos(&url, &farmer, &["farm", "move-node", "1", "2"]));
    assert_eq!(
        moved["events"][0]["event"]["node_moved"],
        serde_json::json!({"from": 1, "to": 2, "twin_id": 4}),
        "{moved}"
    );
    assert!(rt.block_on(ledger.node(2)).unwrap().is_none());
    let n1 = rt.block_on(ledger.node(1)).unwrap().unwrap();
    assert_eq!(n1.twin_id, 4);
    assert!(
        n1.maintenance.is_some(),
        "the kept record keeps its maintenance"
    );

    // Clean stop on SIGTERM, then the audit passes.
    term(&server);
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
    // The farmer's three, the rotation's three (create, update, rotate-account), the two
    // machines' twins and nodes, maintenance and the move.
    assert_eq!(report["transactions"], 12);
}

/// `zos ledger serve --tls-self-signed DIR`: https with a self-signed certificate kept in DIR;
/// clients need `--ledger-cert` (a pin), another certificate is refused, and the audit checks
/// the producer's signature on every block.
#[test]
fn tls_ledger_needs_the_pinned_certificate() {
    let dir = TempDir::new();
    let tls = dir.0.join("tls");
    let other = dir.0.join("other-tls");
    zos_ledger::tls::self_signed(&other, &[]).unwrap();
    let (server, url) = ledger(
        &dir.0.join("data"),
        &["--tls-self-signed", tls.to_str().unwrap()],
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let cert = tls.join(zos_ledger::tls::CERT_FILE);
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tls.join(zos_ledger::tls::KEY_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    let seed = "22".repeat(32);
    let with_cert = |c: &std::path::Path, args: &[&str]| {
        bare()
            .args(args)
            .arg("--ledger-cert")
            .arg(c)
            .env("ZOS_LEDGER", &url)
            .env("ZOS_SEED", &seed)
            .output()
            .unwrap()
    };
    json(&with_cert(
        &cert,
        &["twin", "create", "--relay", "r.example"],
    ));
    assert_eq!(
        json(&with_cert(&cert, &["twin", "show"]))["relays"][0],
        "r.example"
    );
    // No pin: refused before connecting; another certificate: the handshake fails.
    let none = zos(&url, &seed, &["balance"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("--ledger-cert"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let wrong = with_cert(&other.join(zos_ledger::tls::CERT_FILE), &["balance"]);
    assert_eq!(wrong.status.code(), Some(1));

    term(&server);
    let mut server = server;
    assert!(server.0.wait().unwrap().success());
    let v = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["ledger", "verify", "--data"])
        .arg(dir.0.join("data"))
        .output()
        .unwrap();
    assert_eq!(json(&v)["transactions"], 1);
}
