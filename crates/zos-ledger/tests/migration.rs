//! The v1 → v2 store migration on a ledger written by the previous version: the fixture
//! `fixtures/ledger-v1-50ee3bc.redb` was written by zos-ledger at commit 50ee3bc (format 1) with
//! `fixtures/gen_v1_fixture.rs.txt` (three twins, a farm with an IP, a node, a node contract with
//! a public IP, an uptime report an hour later: legacy head 8).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::key;
use zos_ledger::store::migrate::{META_UPGRADE, Upgrade, is_legacy};
use zos_ledger::store::{Batch, LedgerStore, Pairs, StoreError, Table};
use zos_ledger::{
    Call, Chain, LedgerError, Reader, RedbStore, SignedHead, SignedTransaction, verify,
};
use zos_types::crypto::KeyPair;

const FIXTURE: &str = "tests/fixtures/ledger-v1-50ee3bc.redb";
const LEGACY_HEAD: u64 = 8;

fn producer() -> KeyPair {
    key(200)
}

/// A private copy of the fixture (the test mutates it).
fn fixture(dir: &Path) -> PathBuf {
    let path = dir.join("ledger.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE), &path).unwrap();
    path
}

fn format(store: &dyn LedgerStore) -> u32 {
    serde_json::from_slice(&store.get(Table::Meta, b"format").unwrap().unwrap()).unwrap()
}

#[test]
fn a_v1_store_migrates_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&fixture(dir.path())).unwrap());
    assert_eq!(format(&*store), 1);
    let reader = Reader::new(store.clone());
    // What the previous version left: read before the migration, compared after.
    let before_state = store.range(Table::State, &[], None).unwrap();
    let before_blocks = store.range(Table::Blocks, &[], None).unwrap();
    assert_eq!(before_blocks.len() as u64, LEGACY_HEAD + 1);

    let mut chain = Chain::open_with_producer(store.clone(), None, Some(producer())).unwrap();
    assert_eq!(format(&*store), 2);
    let up = chain.upgrade().unwrap().clone();
    assert_eq!(
        up,
        Upgrade {
            from_format: 1,
            height: LEGACY_HEAD,
            producer: producer().public()
        }
    );
    assert_eq!(chain.producer_key(), Some(producer().public()));
    assert_eq!(
        chain.genesis().producer,
        None,
        "genesis (and its hash) unchanged"
    );
    // The state is untouched (billing had nothing due at the legacy head's time).
    assert_eq!(store.range(Table::State, &[], None).unwrap(), before_state);
    // Legacy blocks keep their hashes and contents; they decode as blocks without a root.
    for (k, v) in &before_blocks {
        let old: serde_json::Value = serde_json::from_slice(v).unwrap();
        let h = u64::from_be_bytes(k.as_slice().try_into().unwrap());
        let b = reader.block(h).unwrap().unwrap();
        assert!(is_legacy(&b.header) && b.signature.is_none());
        assert_eq!(b.hash, old["hash"].as_str().unwrap());
        assert_eq!(
            b.transactions.len(),
            old["transactions"].as_array().unwrap().len()
        );
    }
    // One signed v2 block on top, linked to the legacy head, with the state's root.
    let head = chain.head().clone();
    assert_eq!(head.header.height, LEGACY_HEAD + 1);
    let legacy_head = reader.block(LEGACY_HEAD).unwrap().unwrap();
    assert_eq!(head.header.parent_hash, legacy_head.hash);
    let signed = SignedHead {
        header: head.header.clone(),
        hash: head.hash.clone(),
        signature: head.signature.clone().unwrap(),
    };
    let root = signed
        .verify(&producer().public(), &chain.genesis_hash())
        .unwrap();
    assert_eq!(root, chain.snapshot().root());
    assert!(
        signed
            .verify(&key(201).public(), &chain.genesis_hash())
            .is_err(),
        "another key does not verify it"
    );

    // Data from the previous version, read by the new one.
    assert_eq!(reader.farm(1).unwrap().unwrap().name, "farm1");
    assert!(reader.node(1).unwrap().is_some());
    assert!(reader.contract(1).unwrap().is_some());
    assert_eq!(
        reader
            .twin_by_account(&key(3).public())
            .unwrap()
            .unwrap()
            .id,
        3
    );

    // New transactions (signed against the unchanged genesis hash) go in v2 blocks.
    let nonce = reader.account(&key(3).public()).unwrap().nonce;
    let tx = SignedTransaction::sign(
        &key(3),
        &chain.genesis_hash(),
        nonce,
        Call::CancelContract { contract_id: 1 },
    );
    let now = head.header.timestamp + 60;
    let out = chain.produce(&[tx], now, false).unwrap();
    assert!(out.results[0].is_ok(), "{:?}", out.results);
    let b = out.block.unwrap();
    assert!(!is_legacy(&b.header) && b.signature.is_some());

    // The audit re-executes the legacy prefix, then checks roots and signatures.
    drop(chain);
    let report = verify(store.clone()).unwrap();
    assert_eq!(report.head, LEGACY_HEAD + 2);
    assert!(report.transactions >= 9, "{report:?}");
}

#[test]
fn migration_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    let head = {
        let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&path).unwrap());
        let chain = Chain::open_with_producer(store, None, Some(producer())).unwrap();
        chain.head().clone()
    };
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&path).unwrap());
    let blocks = store.range(Table::Blocks, &[], None).unwrap();
    let chain = Chain::open_with_producer(store.clone(), None, Some(producer())).unwrap();
    assert_eq!(chain.head(), &head, "no second migration block");
    assert_eq!(store.range(Table::Blocks, &[], None).unwrap(), blocks);
    // Read-only opens (verify, tools) need no key once migrated.
    drop(chain);
    Chain::open(store.clone(), None).unwrap();
    // The producer key is the recorded one: another key is refused, nothing written.
    let err = Chain::open_with_producer(store.clone(), None, Some(key(201)))
        .err()
        .unwrap();
    assert!(matches!(err, LedgerError::Config(_)), "{err}");
    assert_eq!(store.range(Table::Blocks, &[], None).unwrap(), blocks);
}

#[test]
fn a_v1_store_needs_the_producer_key() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&fixture(dir.path())).unwrap());
    let err = Chain::open(store.clone(), None).err().unwrap();
    assert!(err.to_string().contains("must be migrated"), "{err}");
    assert_eq!(format(&*store), 1);
    assert!(verify(store.clone()).is_err());
    assert_eq!(format(&*store), 1, "verify does not migrate");
}

/// Fails every commit: what a crash in the middle of the migration's write leaves (a redb
/// write transaction that never commits).
struct FailingCommit(Arc<dyn LedgerStore>);

impl LedgerStore for FailingCommit {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key)
    }
    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, StoreError> {
        self.0.range(table, start, end)
    }
    fn commit(&self, _batch: Batch) -> Result<(), StoreError> {
        Err(StoreError::Backend {
            op: "commit",
            source: "injected crash".into(),
        })
    }
}

#[test]
fn a_failed_migration_leaves_v1_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    let inner: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&path).unwrap());
    let before: Vec<Pairs> = [Table::Meta, Table::State, Table::Blocks]
        .iter()
        .map(|t| inner.range(*t, &[], None).unwrap())
        .collect();
    let failing: Arc<dyn LedgerStore> = Arc::new(FailingCommit(inner.clone()));
    assert!(Chain::open_with_producer(failing, None, Some(producer())).is_err());
    let after: Vec<Pairs> = [Table::Meta, Table::State, Table::Blocks]
        .iter()
        .map(|t| inner.range(*t, &[], None).unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(inner.get(Table::Meta, META_UPGRADE).unwrap().is_none());
    // And the next start migrates it.
    Chain::open_with_producer(inner.clone(), None, Some(producer())).unwrap();
    assert_eq!(format(&*inner), 2);
}

#[test]
fn a_tampered_legacy_block_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&fixture(dir.path())).unwrap());
    let k = 3u64.to_be_bytes().to_vec();
    let mut b: serde_json::Value =
        serde_json::from_slice(&store.get(Table::Blocks, &k).unwrap().unwrap()).unwrap();
    b["header"]["timestamp"] = serde_json::json!(1);
    let mut batch = Batch::default();
    batch.put(Table::Blocks, k, serde_json::to_vec(&b).unwrap());
    store.commit(batch).unwrap();
    let err = Chain::open_with_producer(store.clone(), None, Some(producer()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("legacy block"), "{err}");
    assert_eq!(format(&*store), 1, "nothing written");
}

#[test]
fn verify_catches_a_legacy_block_changed_after_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LedgerStore> = Arc::new(RedbStore::open(&fixture(dir.path())).unwrap());
    drop(Chain::open_with_producer(store.clone(), None, Some(producer())).unwrap());
    verify(store.clone()).unwrap();
    // A legacy block given a (made-up) root and re-hashed as v2 is not a legacy block.
    let k = 2u64.to_be_bytes().to_vec();
    let mut b: serde_json::Value =
        serde_json::from_slice(&store.get(Table::Blocks, &k).unwrap().unwrap()).unwrap();
    b["header"]["state_root"] = serde_json::json!(hex::encode([7u8; 32]));
    let mut batch = Batch::default();
    batch.put(Table::Blocks, k, serde_json::to_vec(&b).unwrap());
    store.commit(batch).unwrap();
    let err = verify(store).err().unwrap();
    assert!(
        matches!(err, LedgerError::Verify { height: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_server_serves_a_migrated_ledger_with_proofs() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let (client, stop, handle) = common::spawn_dev_server(dir.path()).await;
    let producer = zos_ledger::server::producer_key(dir.path())
        .unwrap()
        .public();
    let info = client.info().await.unwrap();
    assert_eq!(info.producer, Some(producer));
    assert_eq!(info.head, LEGACY_HEAD + 1);
    // A twin written by the previous version, proven against the migration's signed head.
    let twin = client.verified_twin(3).await.unwrap();
    assert_eq!(twin.value.unwrap().account, key(3).public());
    assert!(twin.height > LEGACY_HEAD);
    let _ = stop.send(());
    handle.await.unwrap();
}
