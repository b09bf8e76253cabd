//! Crash safety of `zos ledger serve`: SIGKILL the real process while clients stream
//! submissions, restart it, and check that every acknowledged transaction is in the chain at the
//! height its receipt named; after the last kill, `zos ledger verify` must pass.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{Proc as Server, TempDir};

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use zos_ledger::{Call, ClientError, LedgerClient, Receipt};
use zos_types::crypto::{KeyPair, KeyType};

fn start(data: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args([
            "ledger",
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ledger listening on ") {
            break rest.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), url)
}

fn key(worker: u8) -> KeyPair {
    KeyPair::from_seed(KeyType::Ed25519, [worker + 1; 32])
}

/// Submits until the first error (the kill), recording each acknowledged receipt.
async fn worker(c: LedgerClient, k: KeyPair, acked: Arc<Mutex<Vec<Receipt>>>, round: usize) {
    let mut i = 0u64;
    loop {
        let call = match c.twin_by_account(&k.public()).await {
            Ok(None) => Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
            Ok(Some(_)) => Call::UpdateTwin {
                relays: vec![format!("relay-{round}-{i}.example")],
                e2e_key: None,
            },
            Err(_) => return,
        };
        match c.send(&k, call).await {
            Ok(r) => acked.lock().unwrap().push(r),
            // Another in-flight copy raced; not possible with one worker per key, but harmless.
            Err(ClientError::Rejected(reason)) => panic!("unexpected rejection: {reason}"),
            Err(_) => return,
        }
        i += 1;
    }
}

#[test]
fn kill_9_during_submissions_loses_nothing_acknowledged() {
    let dir = TempDir::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked: Arc<Mutex<Vec<Receipt>>> = Arc::new(Mutex::new(Vec::new()));
    let rounds = 3;
    for round in 0..rounds {
        let (server, url) = start(&dir.0);
        let c = LedgerClient::new(&url).unwrap();
        rt.block_on(async {
            // Everything acknowledged before any earlier kill is still there, at its height.
            let prior = acked.lock().unwrap().clone();
            for r in prior {
                let loc = c.tx(&r.tx_hash).await.unwrap();
                assert_eq!(
                    loc.map(|l| (l.height, l.index)),
                    Some((r.height, r.index)),
                    "{r:?}"
                );
            }
            let before = acked.lock().unwrap().len();
            let tasks: Vec<_> = (0..6)
                .map(|w| tokio::spawn(worker(c.clone(), key(w), acked.clone(), round)))
                .collect();
            // Kill once this round has had a good number of acknowledgements, mid-stream.
            while acked.lock().unwrap().len() < before + 60 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            drop(server); // SIGKILL while the workers are still submitting
            for t in tasks {
                t.await.unwrap();
            }
        });
    }

    // Restart once more: all acknowledged transactions are present, then audit the data dir.
    let (server, url) = start(&dir.0);
    let c = LedgerClient::new(&url).unwrap();
    let total = rt.block_on(async {
        let acked = acked.lock().unwrap().clone();
        let head = c.head().await.unwrap();
        for r in &acked {
            let loc = c.tx(&r.tx_hash).await.unwrap().unwrap();
            assert_eq!((loc.height, loc.index), (r.height, r.index));
            assert!(r.height <= head);
        }
        acked.len()
    });
    assert!(total >= rounds * 60);
    drop(server); // kill -9 once more: verify must cope with an unclean shutdown too
    let out = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["ledger", "verify", "--data"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["transactions"].as_u64().unwrap() >= total as u64,
        "{report}"
    );
}
