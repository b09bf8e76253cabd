//! RMB benchmark: round trips through one relay on loopback.
//!
//! `cargo run --release -p zos-rmb --example rmb_bench [-- --quick]`
//!
//! Two peers (ed25519 twins) and one relay in this process, talking over real loopback
//! WebSockets with full signing, sealing, verification and opening on every envelope. For each
//! payload size it measures latency (sequential calls: p50/p99 round trip) and throughput
//! (`CONCURRENCY` calls in flight: messages/s, where one call = one request + one reply).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zos_rmb::{
    Limits, MemoryDirectory, Peer, PeerConfig, Relay, RelayConfig, Router, TwinRecord,
    e2e_public_key,
};
use zos_types::crypto::{KeyPair, KeyType};

const CONCURRENCY: usize = 32;

fn twin(dir: &MemoryDirectory, id: u32, kt: KeyType) -> KeyPair {
    let k = KeyPair::from_seed(kt, [id as u8; 32]);
    dir.insert(TwinRecord {
        id,
        account: k.public(),
        e2e_key: Some(e2e_public_key(k.seed())),
        relays: vec!["bench".into()],
    });
    k
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run_size(a: &Peer, size: usize, seq: usize, total: usize) -> (Duration, Duration, f64) {
    let payload = json!("x".repeat(size));
    let t = Duration::from_secs(60);
    // Warm-up.
    for _ in 0..3 {
        a.call(2, "echo", &payload, t).await.unwrap();
    }
    let mut lat = Vec::with_capacity(seq);
    for _ in 0..seq {
        let s = Instant::now();
        let v = a.call(2, "echo", &payload, t).await.unwrap();
        lat.push(s.elapsed());
        assert_eq!(v.as_str().map(str::len), Some(size));
    }
    lat.sort();
    let start = Instant::now();
    let per_task = total / CONCURRENCY;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let a = a.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                a.call(2, "echo", &payload, t).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rate = (per_task * CONCURRENCY) as f64 / start.elapsed().as_secs_f64();
    (pct(&lat, 0.50), pct(&lat, 0.99), rate)
}

/// CPU per envelope for the sender (seal + sign) and the receiver (verify + open), one thread.
fn crypto_cost(dir: &MemoryDirectory) {
    use zos_rmb::envelope::{Address, Body, Envelope, Header, new_id, unix_now};
    let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
    let dst_secret = zos_rmb::e2e::e2e_secret(&[2; 32]);
    let dst = e2e_public_key(&[2; 32]);
    let _ = dir;
    for (size, name, n) in [(1024usize, "1 KiB", 2000u32), (1024 * 1024, "1 MiB", 20)] {
        let body = Body {
            command: "echo".into(),
            reference: None,
            error: None,
            payload: vec![b'x'; size],
        };
        let mut sealed = Vec::new();
        let t = Instant::now();
        for _ in 0..n {
            let h = Header {
                id: new_id(),
                source: Address::twin(1),
                destination: Address::twin(2),
                timestamp: unix_now(),
                ttl: 60,
            };
            sealed.push(Envelope::seal(h, &body, &key, &dst).unwrap());
        }
        let seal = t.elapsed() / n;
        let t = Instant::now();
        for e in &sealed {
            assert!(e.verify(&key.public()));
            e.open(&dst_secret).unwrap();
        }
        let open = t.elapsed() / n;
        println!("{name}: seal+sign {seal:?}, verify+open {open:?} per envelope (one core)");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = Arc::new(MemoryDirectory::new());
        let ka = twin(&dir, 1, KeyType::Ed25519);
        let kb = twin(&dir, 2, KeyType::Ed25519);
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "bench");
        cfg.limits = Limits {
            max_envelope_bytes: 4 * 1024 * 1024,
            messages_per_sec: 1e9,
            message_burst: 1e9,
            bytes_per_sec: 1e12,
            byte_burst: 1e12,
            ..Limits::default()
        };
        let relay = Relay::bind(cfg, dir.clone()).await.unwrap();
        let url = format!("ws://{}", relay.local_addr());
        let metrics = relay.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(relay.run(async move {
            let _ = stopped.await;
        }));
        let connect = |id, key| {
            Peer::connect(
                PeerConfig {
                    relays: vec![url.clone()],
                    twin_id: id,
                    key,
                    session: None,
                },
                dir.clone(),
            )
        };
        let a = connect(1, ka).await.unwrap();
        let b = connect(2, kb).await.unwrap();
        let mut r = Router::new();
        r.handle("echo", |_ctx, v: Value| async move { Ok(v) });
        b.serve(r);

        println!(
            "| payload | sequential calls | p50 round trip | p99 round trip | concurrent calls ({CONCURRENCY} in flight) | calls/s | envelopes/s |"
        );
        println!("|---|---|---|---|---|---|---|");
        let cases: [(usize, &str, usize, usize); 2] = if quick {
            [(1024, "1 KiB", 200, 640), (1024 * 1024, "1 MiB", 10, 64)]
        } else {
            [(1024, "1 KiB", 2000, 12_800), (1024 * 1024, "1 MiB", 100, 320)]
        };
        for (size, name, seq, total) in cases {
            let (p50, p99, rate) = run_size(&a, size, seq, total).await;
            println!(
                "| {name} | {seq} | {:.2} ms | {:.2} ms | {total} | {rate:.0} | {:.0} |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                rate * 2.0
            );
        }
        println!(
            "\nrelay delivered {} envelopes",
            metrics.delivered_total()
        );
        crypto_cost(&dir);
        a.close();
        b.close();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
}
