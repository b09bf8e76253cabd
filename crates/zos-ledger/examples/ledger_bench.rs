//! Ledger benchmark (not a test): applied transactions per second and event delivery latency.
//!
//! `cargo run --release -p zos-ledger --example ledger_bench -- [clients] [tx_per_client] [block_size] [state]`
//!
//! With `state` > 0 only the engine runs, on a ledger whose genesis holds `state` extra funded
//! accounts (one state entry each): the state root is recomputed for every block, so this shows
//! what a large state costs per block, with transfers to one existing account (value updates)
//! and to a new account each (inserts at random key positions).
//!
//! 1. Engine: signed transfers applied by `Chain::produce` on a redb store, `block_size` per block
//!    (signature checks, nonce, state overlay, one durable commit per block).
//! 2. End to end: an in-process dev server; `clients` concurrent accounts each send
//!    `tx_per_client` transfers over HTTP JSON-RPC (each waits for its durable receipt); one
//!    WebSocket subscriber receives the events. Reports tx/s, submit→receipt latency and
//!    submit→event delivery latency.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use zos_ledger::store::LedgerStore;
use zos_ledger::{
    Call, Chain, Event, LedgerClient, LedgerConfig, LedgerServer, RedbStore, SignedTransaction, dev,
};
use zos_types::crypto::{KeyPair, KeyType};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn engine(n: usize, block: usize) {
    engine_with_state(n, block, 0, false);
}

/// `state` extra genesis accounts; `fresh`: each transfer goes to a new account.
fn engine_with_state(n: usize, block: usize, state: usize, fresh: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LedgerStore> =
        Arc::new(RedbStore::open(&dir.path().join("b.redb")).unwrap());
    let mut genesis = dev::genesis(1_700_000_000);
    // Distinct public keys without deriving `state` key pairs: any 32 bytes are an account.
    let account = |i: u64, tag: u8| {
        use sha2::Digest as _;
        let mut b: [u8; 32] = sha2::Sha256::digest(i.to_be_bytes()).into();
        b[31] = tag;
        zos_types::crypto::PublicKey {
            key_type: KeyType::Ed25519,
            bytes: b,
        }
    };
    genesis
        .accounts
        .extend((0..state as u64).map(|i| zos_ledger::GenesisAccount {
            account: account(i, 1),
            balance: 1_000,
        }));
    let t = Instant::now();
    let mut chain = Chain::open(store, Some(genesis)).unwrap();
    if state > 0 {
        println!(
            "open with {state} extra accounts: {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let faucet = dev::faucet_key();
    let gh = chain.genesis_hash();
    let to = KeyPair::from_seed(KeyType::Ed25519, [7; 32]).public();
    let txs: Vec<SignedTransaction> = (0..n as u64)
        .map(|i| {
            let to = if fresh { account(i, 2) } else { to };
            SignedTransaction::sign(&faucet, &gh, i, Call::Transfer { to, amount: 1 })
        })
        .collect();
    let t = Instant::now();
    for chunk in txs.chunks(block) {
        let out = chain.produce(chunk, 1_700_000_000, false).unwrap();
        assert!(out.results.iter().all(|r| r.is_ok()));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "engine: state +{state}, {n} transfers{} in blocks of {block}: {:.0} tx/s ({:.2} ms per block)",
        if fresh { " to new accounts" } else { "" },
        n as f64 / secs,
        secs * 1000.0 / (n as f64 / block as f64)
    );
}

async fn end_to_end(clients: usize, per_client: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = LedgerServer::bind(LedgerConfig::dev(dir.path().to_path_buf()))
        .await
        .unwrap();
    let c = LedgerClient::new(&format!("http://{}", server.local_addr())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let keys: Vec<KeyPair> = (0..clients)
        .map(|i| KeyPair::from_seed(KeyType::Ed25519, [i as u8 + 1; 32]))
        .collect();
    for k in &keys {
        c.dev_fund(&k.public(), 1_000_000_000).await.unwrap();
    }
    let sink = KeyPair::from_seed(KeyType::Ed25519, [250; 32]).public();
    let start_height = c.head().await.unwrap() + 1;

    // Subscriber: arrival time per transfer amount (amounts are unique per transaction).
    let arrivals: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut sub = c.subscribe_events(start_height).await.unwrap();
    let total = clients * per_client;
    let arr = arrivals.clone();
    let subscriber = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            let ev = sub.next().await.unwrap().unwrap();
            if let Event::Transfer { amount, .. } = ev.event {
                arr.lock().unwrap().insert(amount, Instant::now());
                n += 1;
            }
        }
    });

    let sent: Arc<Mutex<HashMap<u64, (Instant, Instant)>>> = Arc::default();
    let t = Instant::now();
    let tasks: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(ci, k)| {
            let (c, sent) = (c.clone(), sent.clone());
            tokio::spawn(async move {
                let gh = c.genesis_hash().await.unwrap();
                for i in 0..per_client {
                    let amount = (ci * per_client + i + 1) as u64;
                    let tx = SignedTransaction::sign(
                        &k,
                        &gh,
                        i as u64,
                        Call::Transfer { to: sink, amount },
                    );
                    let t0 = Instant::now();
                    c.submit(tx).await.unwrap();
                    sent.lock().unwrap().insert(amount, (t0, Instant::now()));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    subscriber.await.unwrap();
    let blocks = c.head().await.unwrap() - start_height + 1;
    let (mut ack, mut deliver, mut after) = {
        let sent = sent.lock().unwrap();
        let arrivals = arrivals.lock().unwrap();
        let ack: Vec<Duration> = sent.values().map(|(a, b)| *b - *a).collect();
        let deliver: Vec<Duration> = sent
            .iter()
            .map(|(amt, (a, _))| arrivals[amt] - *a)
            .collect();
        // Event arrival minus receipt arrival, in signed microseconds: the producer publishes
        // the block to subscribers just before it answers the submitter, so this is the
        // delivery cost beyond the durable commit itself (negative: the event came first).
        let after: Vec<i64> = sent
            .iter()
            .map(|(amt, (_, b))| {
                let (e, r) = (arrivals[amt], *b);
                if e >= r {
                    (e - r).as_micros() as i64
                } else {
                    -((r - e).as_micros() as i64)
                }
            })
            .collect();
        (ack, deliver, after)
    };
    println!(
        "end-to-end: {clients} clients x {per_client} transfers: {:.0} tx/s, {blocks} blocks ({:.1} tx/block)",
        total as f64 / secs,
        total as f64 / blocks as f64
    );
    println!(
        "  submit -> durable receipt: p50 {:?} p99 {:?}",
        pct(&mut ack, 0.5),
        pct(&mut ack, 0.99)
    );
    println!(
        "  submit -> event at WebSocket subscriber: p50 {:?} p99 {:?}",
        pct(&mut deliver, 0.5),
        pct(&mut deliver, 0.99)
    );
    after.sort();
    println!(
        "  event at subscriber - receipt at submitter: p50 {} us p99 {} us",
        after[(after.len() - 1) / 2],
        after[((after.len() - 1) as f64 * 0.99).round() as usize]
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let clients = args.first().copied().unwrap_or(32);
    let per_client = args.get(1).copied().unwrap_or(100);
    let block = args.get(2).copied().unwrap_or(500);
    if let Some(&state) = args.get(3).filter(|s| **s > 0) {
        engine_with_state(2_000, block, state, false);
        engine_with_state(2_000, block, state, true);
        engine_with_state(200, 1, state, false);
        return;
    }
    engine(20_000, block);
    engine(2_000, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(end_to_end(1, 300));
    rt.block_on(end_to_end(clients, per_client));
}
