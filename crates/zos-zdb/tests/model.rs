//! Model-based property test: random operation sequences, with clean restarts and simulated
//! crashes in between, must behave like an in-memory model (a map per namespace plus the
//! order of last writes, which SCAN must follow).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use redis::Value;

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>),
    Del(u8),
    Get(u8),
    Exists(u8),
    Jump,
    Restart,
    Crash,
    Select(bool),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(|(k, v)| Op::Set(k, v)),
        2 => (0u8..12).prop_map(Op::Del),
        3 => (0u8..12).prop_map(Op::Get),
        1 => (0u8..12).prop_map(Op::Exists),
        1 => Just(Op::Jump),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => any::<bool>().prop_map(Op::Select),
        1 => Just(Op::Flush),
    ]
}

#[derive(Default)]
struct Model {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Keys in order of their last write (SCAN order).
    order: Vec<Vec<u8>>,
}

impl Model {
    fn set(&mut self, k: &[u8], v: &[u8]) -> bool {
        if self.values.get(k).is_some_and(|old| old == v) {
            return false;
        }
        self.values.insert(k.to_vec(), v.to_vec());
        self.order.retain(|x| x != k);
        self.order.push(k.to_vec());
        true
    }

    fn del(&mut self, k: &[u8]) -> bool {
        self.order.retain(|x| x != k);
        self.values.remove(k).is_some()
    }
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn scan_all(c: &mut redis::Connection) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let r = match &cursor {
            None => q(c, &["SCAN"]),
            Some(cur) => qb(c, &[b"SCAN", cur]),
        };
        let Ok(Value::Array(parts)) = r else {
            assert_eq!(r, e("No more data"));
            return keys;
        };
        let Value::BulkString(cur) = &parts[0] else {
            panic!()
        };
        let Value::Array(items) = &parts[1] else {
            panic!()
        };
        for it in items {
            let Value::Array(f) = it else { panic!() };
            let Value::BulkString(k) = &f[0] else {
                panic!()
            };
            keys.push(k.clone());
        }
        cursor = Some(cur.clone());
    }
}

fn connect(s: &TestServer, ns: bool) -> redis::Connection {
    let mut c = s.con();
    if ns {
        assert_eq!(q(&mut c, &["SELECT", "other", "pw"]), ok());
    }
    c
}

/// Read cache budgets: none, one that evicts all the time (values reach 3000 B), the default.
fn cache_budget() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(8 << 10),
        Just(zos_zdb::cache::DEFAULT_CACHE_BYTES)
    ]
}

fn run(ops: Vec<Op>, sync: bool, cache_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.datasize = 64 * 1024; // frequent rotation
    cfg.sync = sync;
    cfg.cache_bytes = cache_bytes;
    let mut server = TestServer::start(cfg);
    {
        let mut a = server.admin();
        assert_eq!(q(&mut a, &["NSNEW", "other"]), ok());
        assert_eq!(q(&mut a, &["NSSET", "other", "password", "pw"]), ok());
        // Private, so that FLUSH is allowed there (and denied on the public default).
        assert_eq!(q(&mut a, &["NSSET", "other", "public", "0"]), ok());
        assert_eq!(
            q(
                &mut a,
                &["NSSET", "other", "encryption-key", &"ab".repeat(32)]
            ),
            ok()
        );
    }
    let mut models = [Model::default(), Model::default()];
    let mut cur = false;
    let mut c = connect(&server, cur);
    let mut admin = server.admin();
    for op in ops {
        let m = &mut models[usize::from(cur)];
        match op {
            Op::Set(k, v) => {
                let want = if m.set(&key(k), &v) {
                    bulk(&key(k))
                } else {
                    nil()
                };
                assert_eq!(qb(&mut c, &[b"SET", &key(k), &v]), want);
            }
            Op::Del(k) => {
                let want = if m.del(&key(k)) {
                    ok()
                } else {
                    e("Key not found")
                };
                assert_eq!(qb(&mut c, &[b"DEL", &key(k)]), want);
            }
            Op::Get(k) => {
                let want = m.values.get(&key(k)).map_or(nil(), |v| bulk(v));
                assert_eq!(qb(&mut c, &[b"GET", &key(k)]), want);
            }
            Op::Exists(k) => {
                assert_eq!(
                    qb(&mut c, &[b"EXISTS", &key(k)]),
                    int(i64::from(m.values.contains_key(&key(k))))
                );
            }
            Op::Jump => {
                let select: &[&str] = if cur {
                    &["SELECT", "other", "pw"]
                } else {
                    &["SELECT", "default"]
                };
                assert_eq!(q(&mut admin, select), ok());
                assert_eq!(q(&mut admin, &["NSJUMP"]), ok());
                assert_eq!(q(&mut admin, &["SELECT", "default"]), ok());
            }
            Op::Restart | Op::Crash => {
                drop((c, admin));
                let cfg = if matches!(op, Op::Restart) {
                    server.stop()
                } else {
                    server.crash()
                };
                server = TestServer::start(cfg);
                let mut a = server.admin();
                assert_eq!(
                    q(
                        &mut a,
                        &["NSSET", "other", "encryption-key", &"ab".repeat(32)]
                    ),
                    ok(),
                    "unseal"
                );
                admin = a;
                c = connect(&server, cur);
            }
            Op::Select(ns) => {
                cur = ns;
                c = connect(&server, cur);
            }
            Op::Flush => {
                if cur {
                    *m = Model::default();
                    assert_eq!(q(&mut c, &["FLUSH"]), ok());
                } else {
                    assert_eq!(q(&mut c, &["FLUSH"]), e("Flushing public namespace denied"));
                }
            }
        }
        let m = &models[usize::from(cur)];
        assert_eq!(q(&mut c, &["DBSIZE"]), int(m.values.len() as i64));
    }
    for ns in [false, true] {
        let mut c = connect(&server, ns);
        let m = &models[usize::from(ns)];
        assert_eq!(scan_all(&mut c), m.order, "SCAN order in namespace {ns}");
        for (k, v) in &m.values {
            assert_eq!(qb(&mut c, &[b"GET", k]), bulk(v));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_model(ops in proptest::collection::vec(op(), 1..80), cache in cache_budget()) {
        run(ops, false, cache);
    }

    #[test]
    fn matches_model_with_sync(ops in proptest::collection::vec(op(), 1..40), cache in cache_budget()) {
        run(ops, true, cache);
    }
}
