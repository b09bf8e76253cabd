//! `verify` accepts an honest ledger (redb, reopened) and pinpoints each kind of tampering.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use zos_ledger::store::{Batch, LedgerStore, RedbStore, Table};
use zos_ledger::{Block, Call, LedgerError, verify};

fn build(path: &std::path::Path) -> u64 {
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(path).unwrap());
    let mut h = common::Harness::with_store(store);
    let a = common::key(1);
    h.fund(&a, 5_000_000);
    h.twin(&a);
    h.ok(&a, Call::CreateFarm { name: "f".into() });
    h.ok(&a, common::create_node(1));
    h.ok(&a, Call::CreateNameContract { name: "gw".into() });
    h.now += 7200; // billing runs in the next block
    h.ok(&a, Call::ReportUptime { uptime: 10 });
    h.chain.head().header.height
}

fn tamper(path: &std::path::Path, f: impl FnOnce(&RedbStore)) -> LedgerError {
    let s = RedbStore::open(path).unwrap();
    f(&s);
    let s: Arc<dyn LedgerStore> = Arc::new(s);
    verify(s).unwrap_err()
}

fn copy(src: &std::path::Path, dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::copy(src, &p).unwrap();
    p
}

#[test]
fn honest_ledger_verifies_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("orig.redb");
    let head = build(&orig);
    let report = verify(Arc::new(RedbStore::open(&orig).unwrap())).unwrap();
    assert_eq!(report.head, head);
    assert_eq!(report.transactions, 6);
    assert!(report.events >= 7, "{report:?}"); // includes the name contract's charge

    // A balance edited in place.
    let p = copy(&orig, &dir, "state.redb");
    let err = tamper(&p, |s| {
        let (k, _) = s.scan_prefix(Table::State, b"acct/").unwrap().remove(0);
        let mut b = Batch::default();
        b.put(
            Table::State,
            k,
            br#"{"balance":999999999,"nonce":0}"#.to_vec(),
        );
        s.commit(b).unwrap();
    });
    // Opening the ledger already finds it: the state no longer matches the head's root.
    assert!(
        err.to_string()
            .contains("state does not match the state root of head block"),
        "{err}"
    );

    // A transaction swapped inside a stored block.
    let p = copy(&orig, &dir, "tx.redb");
    let err = tamper(&p, |s| {
        let key = 3u64.to_be_bytes().to_vec();
        let mut block: Block =
            serde_json::from_slice(&s.get(Table::Blocks, &key).unwrap().unwrap()).unwrap();
        block.transactions[0].nonce += 1;
        let mut b = Batch::default();
        b.put(Table::Blocks, key, serde_json::to_vec(&block).unwrap());
        s.commit(b).unwrap();
    });
    assert!(
        err.to_string()
            .contains("block 3: transaction 0 hash mismatch"),
        "{err}"
    );

    // A block re-hashed after editing its header (the link from the next block breaks).
    let p = copy(&orig, &dir, "link.redb");
    let err = tamper(&p, |s| {
        let key = 2u64.to_be_bytes().to_vec();
        let mut block: Block =
            serde_json::from_slice(&s.get(Table::Blocks, &key).unwrap().unwrap()).unwrap();
        block.header.timestamp += 1;
        block.hash = hex::encode(block.header.hash().unwrap());
        let mut b = Batch::default();
        b.put(Table::Blocks, key, serde_json::to_vec(&block).unwrap());
        s.commit(b).unwrap();
    });
    assert!(err.to_string().contains("block 3: parent hash"), "{err}");

    // Stored events that are not what the transactions emit.
    let p = copy(&orig, &dir, "events.redb");
    let err = tamper(&p, |s| {
        let mut b = Batch::default();
        b.put(Table::Events, 4u64.to_be_bytes().to_vec(), b"[]".to_vec());
        s.commit(b).unwrap();
    });
    assert!(
        err.to_string().contains("block 4: stored events differ"),
        "{err}"
    );
}

#[test]
fn signed_heads_verify_and_forged_signatures_are_found() {
    use zos_ledger::Chain;
    use zos_types::crypto::{KeyPair, KeyType};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signed.redb");
    let producer = KeyPair::from_seed(KeyType::Ed25519, [42; 32]);
    {
        let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&path).unwrap());
        let mut g = zos_ledger::dev::genesis(common::T0);
        g.producer = Some(producer.public());
        // Only the named producer's key may produce.
        let other = KeyPair::from_seed(KeyType::Ed25519, [43; 32]);
        assert!(Chain::open_with_producer(store.clone(), Some(g.clone()), Some(other)).is_err());
        let mut chain = Chain::open_with_producer(store, Some(g), Some(producer.clone())).unwrap();
        let gh = chain.genesis_hash();
        let faucet = zos_ledger::dev::faucet_key();
        for nonce in 0..3 {
            let tx = zos_ledger::SignedTransaction::sign(
                &faucet,
                &gh,
                nonce,
                Call::Transfer {
                    to: common::key(1).public(),
                    amount: 10,
                },
            );
            let out = chain.produce(&[tx], common::T0 + nonce, false).unwrap();
            let b = out.block.unwrap();
            let head = zos_ledger::SignedHead {
                header: b.header.clone(),
                hash: b.hash.clone(),
                signature: b.signature.clone().unwrap(),
            };
            head.verify(&producer.public(), &gh).unwrap();
        }
    }
    verify(Arc::new(RedbStore::open(&path).unwrap())).unwrap();

    let resign = |name: &str, sig: String| {
        let p = copy(&path, &dir, name);
        tamper(&p, |s| {
            let key = 2u64.to_be_bytes().to_vec();
            let mut block: Block =
                serde_json::from_slice(&s.get(Table::Blocks, &key).unwrap().unwrap()).unwrap();
            block.signature = Some(sig);
            let mut b = Batch::default();
            b.put(Table::Blocks, key, serde_json::to_vec(&block).unwrap());
            s.commit(b).unwrap();
        })
    };
    let err = resign("zero.redb", "00".repeat(64));
    assert!(
        err.to_string()
            .contains("block 2: head 2: not signed by the pinned producer"),
        "{err}"
    );
    let err = resign("short.redb", "ab".into());
    assert!(err.to_string().contains("block 2"), "{err}");
}
