//! One suite, every `LedgerStore` backend: the in-memory one and redb.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use zos_ledger::store::{Batch, LedgerStore, MemStore, RedbStore, Table};

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

fn conformance(s: &dyn LedgerStore) {
    assert_eq!(s.get(Table::State, b"a").unwrap(), None);
    assert!(s.range(Table::State, b"", None).unwrap().is_empty());

    let mut b = Batch::default();
    for k in [&b"a"[..], b"ab", b"abc", b"b", b"b\xff", b"c"] {
        b.put(Table::State, k.to_vec(), k.to_vec());
    }
    b.put(Table::Meta, b"a".to_vec(), b"meta".to_vec());
    s.commit(b).unwrap();
    // Tables are separate.
    assert_eq!(s.get(Table::State, b"a").unwrap().unwrap(), b"a");
    assert_eq!(s.get(Table::Meta, b"a").unwrap().unwrap(), b"meta");
    assert_eq!(s.get(Table::Blocks, b"a").unwrap(), None);
    // Ranges are [start, end) in byte order; prefixes include 0xff tails.
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(s.range(Table::State, b"ab", Some(b"b")).unwrap()),
        vec![b"ab".to_vec(), b"abc".to_vec()]
    );
    assert_eq!(
        keys(s.range(Table::State, b"b", None).unwrap()),
        vec![b"b".to_vec(), b"b\xff".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        keys(s.scan_prefix(Table::State, b"b").unwrap()),
        vec![b"b".to_vec(), b"b\xff".to_vec()]
    );
    assert_eq!(keys(s.scan_prefix(Table::State, b"a").unwrap()).len(), 3);
    // Writes in one batch apply in order: put then delete = absent; delete then put = present.
    let mut b = Batch::default();
    b.put(Table::State, b"x".to_vec(), b"1".to_vec());
    b.delete(Table::State, b"x".to_vec());
    b.delete(Table::State, b"y".to_vec());
    b.put(Table::State, b"y".to_vec(), b"2".to_vec());
    b.put(Table::State, b"a".to_vec(), b"overwritten".to_vec());
    b.delete(Table::State, b"never-existed".to_vec());
    s.commit(b).unwrap();
    assert_eq!(s.get(Table::State, b"x").unwrap(), None);
    assert_eq!(s.get(Table::State, b"y").unwrap().unwrap(), b"2");
    assert_eq!(
        s.range(Table::State, b"a", Some(b"ab")).unwrap(),
        vec![kv(b"a", b"overwritten")]
    );
    // Empty keys and values are legal.
    let mut b = Batch::default();
    b.put(Table::TxIndex, Vec::new(), Vec::new());
    s.commit(b).unwrap();
    assert_eq!(s.get(Table::TxIndex, b"").unwrap().unwrap(), b"");
}

#[test]
fn memory_store_conforms() {
    conformance(&MemStore::new());
}

#[test]
fn redb_store_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        conformance(&s);
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.get(Table::State, b"y").unwrap().unwrap(), b"2");
    assert_eq!(s.get(Table::Meta, b"a").unwrap().unwrap(), b"meta");
}

type Op = (u8, Vec<u8>, Option<Vec<u8>>);

fn op() -> impl Strategy<Value = Op> {
    (
        0u8..5,
        proptest::collection::vec(0u8..4, 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Random batches leave both backends with identical contents and identical range answers.
    #[test]
    fn backends_agree(batches in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..6),
                      start in proptest::collection::vec(0u8..4, 0..3),
                      end in proptest::option::of(proptest::collection::vec(0u8..4, 0..3))) {
        let dir = tempfile::tempdir().unwrap();
        let redb = RedbStore::open(&dir.path().join("p.redb")).unwrap();
        let mem = MemStore::new();
        for ops in batches {
            let mut b = Batch::default();
            for (t, k, v) in ops {
                let t = Table::ALL[t as usize];
                match v {
                    Some(v) => b.put(t, k, v),
                    None => b.delete(t, k),
                }
            }
            redb.commit(b.clone()).unwrap();
            mem.commit(b).unwrap();
        }
        for t in Table::ALL {
            prop_assert_eq!(redb.range(t, b"", None).unwrap(), mem.range(t, b"", None).unwrap());
            if end.as_ref().is_none_or(|e| *e >= start) {
                prop_assert_eq!(redb.range(t, &start, end.as_deref()).unwrap(), mem.range(t, &start, end.as_deref()).unwrap());
            }
        }
    }
}
