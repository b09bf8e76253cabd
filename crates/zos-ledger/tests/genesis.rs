//! Genesis from a file: accounts funded, council and billing parameters applied, unknown fields
//! refused, and a data directory cannot be reopened with a different genesis.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use zos_ledger::{
    Call, ClientError, Genesis, LedgerClient, LedgerConfig, LedgerError, LedgerServer, load_genesis,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesis_file_sets_up_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, council) = (common::key(1), common::key(2));
    let text = serde_json::json!({
        "chain_name": "test-grid",
        "timestamp": common::T0,
        "accounts": [{"account": alice.public(), "balance": 5000}],
        "council": council.public(),
        "billing_interval_secs": 60,
    })
    .to_string();
    let path = dir.path().join("genesis.json");
    std::fs::write(&path, &text).unwrap();
    let genesis: Genesis = load_genesis(&path).unwrap();
    assert_eq!(genesis.grace_period_secs, 14 * 24 * 3600, "default applies");

    let cfg = LedgerConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        dev: false,
        genesis: Some(genesis.clone()),
        block_interval: std::time::Duration::from_millis(20),
        limits: Default::default(),
        tls: None,
        etcd: None,
        advertise: None,
    };
    let server = LedgerServer::bind(cfg.clone()).await.unwrap();
    let c = LedgerClient::new(&format!("http://{}", server.local_addr())).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let info = c.info().await.unwrap();
    assert_eq!(
        (
            info.chain_name.as_str(),
            info.billing_interval_secs,
            info.dev
        ),
        ("test-grid", 60, false)
    );
    // The ledger completes the file with a random chain nonce and its producer key.
    let stored = {
        let mut g = genesis.clone();
        g.producer = info.producer;
        g
    };
    assert!(info.producer.is_some());
    assert_ne!(info.genesis_hash, hex::encode(stored.hash()), "nonce added");
    assert_eq!(c.balance(&alice.public()).await.unwrap(), 5000);
    let set = Call::SetZosVersion {
        version: "9.9.9".into(),
        safe_to_upgrade: false,
        farms: vec![],
        share_percent: None,
    };
    assert!(matches!(
        c.send(&alice, set.clone()).await,
        Err(ClientError::Rejected(_))
    ));
    c.send(&council, set).await.unwrap();
    assert_eq!(c.zos_version().await.unwrap().version, "9.9.9");
    tx.send(()).unwrap();
    h.await.unwrap().unwrap();

    // Same directory, other genesis: refused with both hashes.
    let mut other = genesis.clone();
    other.chain_name = "another".into();
    let err = LedgerServer::bind(LedgerConfig {
        genesis: Some(other),
        ..cfg.clone()
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, LedgerError::GenesisMismatch { .. }), "{err}");
    // Same directory, no genesis given: the stored one is used.
    let ok = LedgerServer::bind(LedgerConfig {
        genesis: None,
        ..cfg.clone()
    })
    .await
    .unwrap();
    drop(ok);
    // Same file again, as given on every start: still the same ledger.
    let again = LedgerServer::bind(cfg.clone()).await.unwrap();
    drop(again);
    let first = zos_ledger::chain::stored_genesis(&*zos_ledger::open_store(&cfg.data_dir).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(hex::encode(first.hash()), info.genesis_hash);
    // A ledger rebuilt from the same file is another chain: a new nonce and producer key.
    let rebuilt = LedgerServer::bind(LedgerConfig {
        data_dir: dir.path().join("rebuilt"),
        ..cfg.clone()
    })
    .await
    .unwrap();
    drop(rebuilt);
    let second = zos_ledger::chain::stored_genesis(
        &*zos_ledger::open_store(&dir.path().join("rebuilt")).unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_ne!(first.nonce, second.nonce);
    assert_ne!(first.producer, second.producer);
    assert_ne!(first.hash(), second.hash());

    // Unknown fields and unreadable files are clear errors.
    std::fs::write(&path, text.replace("\"chain_name\"", "\"chain_nmae\"")).unwrap();
    let err = load_genesis(&path).unwrap_err().to_string();
    assert!(
        err.contains("genesis.json") && err.contains("chain_nmae"),
        "{err}"
    );
    let err = load_genesis(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
    // An empty directory without genesis outside dev mode is refused.
    let empty = LedgerConfig {
        data_dir: dir.path().join("empty"),
        listen: "127.0.0.1:0".parse().unwrap(),
        dev: false,
        genesis: None,
        block_interval: std::time::Duration::from_millis(20),
        limits: Default::default(),
        tls: None,
        etcd: None,
        advertise: None,
    };
    assert!(matches!(
        LedgerServer::bind(empty).await.err().unwrap(),
        LedgerError::NoGenesis
    ));
}
