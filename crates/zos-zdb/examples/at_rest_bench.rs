//! The server-side cost of encryption at rest (`ServerConfig::at_rest_key`): N SETs then N
//! GETs of one value size on one namespace through the storage engine (no network, one
//! thread, no fsync, read cache off so every GET reads and, with a key, opens its record),
//! without and with an at-rest key, in the same process. Prints a markdown row per case.
//!
//! Usage: cargo run --release -p zos-zdb --example at_rest_bench [N] [VALUE_BYTES...]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use zos_zdb::crypto::AtRestKey;
use zos_zdb::engine::{Engine, EngineConfig};

fn run(n: usize, size: usize, key: Option<AtRestKey>) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().join("data"),
        index_dir: dir.path().join("index"),
        mode: None,
        sync: false,
        datasize: zos_zdb::DEFAULT_DATASIZE,
        cache_bytes: 0,
        strict_index: false,
        at_rest_key: key,
    })
    .unwrap();
    engine.create("bench").unwrap();
    let ns = engine.get("bench").unwrap();
    let mut value = vec![0x5au8; size];
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("key:{i:012}").into_bytes())
        .collect();
    let t = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        value[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let mut st = ns.lock();
        st.set(k, &value, None).unwrap();
        st.store.flush().unwrap();
    }
    let set = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut bytes = 0;
    for k in &keys {
        bytes += ns.lock().get(k).unwrap().unwrap().len();
    }
    assert_eq!(bytes, n * size);
    let get = n as f64 / t.elapsed().as_secs_f64();
    (set, get)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(200_000, |a| a.parse().unwrap());
    let sizes: Vec<usize> = if args.len() > 2 {
        args[2..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![64, 4096]
    };
    println!("| value | SET k/s plain | SET k/s at rest | GET k/s plain | GET k/s at rest |");
    println!("|---|---|---|---|---|");
    for size in sizes {
        let n = if size > 1024 { n / 4 } else { n };
        let (ps, pg) = run(n, size, None);
        let (es, eg) = run(n, size, Some(AtRestKey([7; 32])));
        println!(
            "| {size} B ({n} keys) | {:.0} | {:.0} ({:+.0}%) | {:.0} | {:.0} ({:+.0}%) |",
            ps / 1e3,
            es / 1e3,
            (es / ps - 1.0) * 100.0,
            pg / 1e3,
            eg / 1e3,
            (eg / pg - 1.0) * 100.0
        );
    }
}
