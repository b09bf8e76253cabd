//! Soak of the ledger server's limits on loopback: thousands of idle and slowloris
//! connections while a good client keeps being served (docs/ledger.md, "Limits"). In its own
//! test binary so that the memory it measures is its own.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, nofile_soft, rss};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zos_ledger::{Call, LedgerClient, Limits, SignedTransaction};
use zos_types::crypto::{KeyPair, KeyType};

/// Soak: 1,500 idle connections, 300 slowloris heads, 150 trickled bodies and 30 nearly
/// complete 1 MiB bodies, all from 127.0.0.1 and re-opened when the server closes them, for
/// 8 s, while a good client on its own connection keeps reading and submitting. Bounds (see
/// docs/ledger.md): every answer to the good client within 2 s, RSS growth of this process
/// (server and attack sockets together) under 256 MiB, every acknowledged transaction in the
/// chain afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_idle_and_slowloris_connections_do_not_starve_a_good_client() {
    let (mut idle_n, mut loris_n, mut body_n, big_n) = (1500usize, 300usize, 150usize, 30usize);
    let soft = nofile_soft() as usize;
    // Two descriptors per connection (client and server side in one process), plus margin.
    let need = 2 * (idle_n + loris_n + body_n + big_n) + 256;
    if soft < need {
        let scale = soft.saturating_sub(256) as f64 / (need - 256) as f64;
        if scale < 0.25 {
            eprintln!("SKIPPING soak: RLIMIT_NOFILE soft limit {soft} is too low (wants {need})");
            return;
        }
        eprintln!(
            "soak scaled to {:.0}% for RLIMIT_NOFILE {soft}",
            scale * 100.0
        );
        idle_n = (idle_n as f64 * scale) as usize;
        loris_n = (loris_n as f64 * scale) as usize;
        body_n = (body_n as f64 * scale) as usize;
    }
    let total = idle_n + loris_n + body_n + big_n;
    let limits = Limits {
        max_connections: total + 64,
        max_connections_per_ip: total + 64,
        header_timeout: Duration::from_secs(3),
        body_timeout: Duration::from_secs(3),
        body_memory: 16 << 20,
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;
    let addr = srv.addr;
    let rss0 = rss();
    let peak = Arc::new(AtomicU64::new(rss0));
    let run_for = Duration::from_secs(8);
    let started = Instant::now();
    let live = move || started.elapsed() < run_for;

    // Each attacker keeps one connection of its kind open, re-opening when it is closed.
    let mut attackers = Vec::new();
    for kind in std::iter::repeat_n(0u8, idle_n)
        .chain(std::iter::repeat_n(1, loris_n))
        .chain(std::iter::repeat_n(2, body_n))
        .chain(std::iter::repeat_n(3, big_n))
    {
        attackers.push(tokio::spawn(async move {
            let mut opened = 0u32;
            while live() {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                opened += 1;
                let mut sink = [0u8; 1024];
                let _ = match kind {
                    0 => Ok(()),
                    1 => s.write_all(b"POST / HTTP/1.1\r\nhost: l\r\nx-a: ").await,
                    2 => {
                        s.write_all(
                            b"POST / HTTP/1.1\r\nhost: l\r\ncontent-length: 1048576\r\n\r\n",
                        )
                        .await
                    }
                    _ => {
                        let mut req =
                            b"POST / HTTP/1.1\r\nhost: l\r\ncontent-length: 1048576\r\n\r\n"
                                .to_vec();
                        req.extend(std::iter::repeat_n(b' ', (1 << 20) - 1));
                        s.write_all(&req).await
                    }
                };
                // Trickle (kinds 1 and 2) until the server closes the connection.
                loop {
                    if !live() {
                        return opened;
                    }
                    tokio::select! {
                        r = s.read(&mut sink) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => continue,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            if (kind == 1 || kind == 2) && s.write_all(b"a").await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            opened
        }));
    }
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while live() {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The good client: reads and durable submissions, one at a time, on its own connection.
    let good = KeyPair::from_seed(KeyType::Ed25519, [77; 32]);
    let sink = KeyPair::from_seed(KeyType::Ed25519, [78; 32]).public();
    let c = LedgerClient::new(&srv.url).unwrap();
    c.dev_fund(&good.public(), 1_000_000).await.unwrap();
    let gh = c.genesis_hash().await.unwrap();
    let mut receipts = Vec::new();
    let mut worst = Duration::ZERO;
    let mut calls = 0u32;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while live() {
        let t = Instant::now();
        if calls % 4 == 0 {
            let nonce = receipts.len() as u64;
            let tx = SignedTransaction::sign(
                &good,
                &gh,
                nonce,
                Call::Transfer {
                    to: sink,
                    amount: nonce + 1,
                },
            );
            receipts.push(c.submit(tx).await.expect("good submission answered"));
        } else {
            c.head().await.expect("good read answered");
        }
        let took = t.elapsed();
        if took > Duration::from_millis(500) {
            eprintln!(
                "slow good call {calls} ({took:?}) at {:?}",
                started.elapsed()
            );
        }
        worst = worst.max(took);
        assert!(took < Duration::from_secs(2), "good client waited {took:?}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reopened = 0u32;
    for a in attackers {
        reopened += a.await.unwrap();
    }
    sampler.await.unwrap();
    let m = c.metrics().await.unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(rss0);
    eprintln!(
        "soak: {total} attack connections ({idle_n} idle, {loris_n} slowloris, {body_n} trickled \
         bodies, {big_n} nearly complete 1 MiB bodies), {reopened} opened in all; good client: \
         {calls} calls, worst {worst:?}; RSS growth {} MiB; metrics {m:?}",
        growth >> 20
    );
    assert!(calls >= 50, "the good client made only {calls} calls");
    assert!(growth < 256 << 20, "RSS grew by {} MiB", growth >> 20);
    assert!(m.connections_timed_out > 0, "{m:?}");

    // Nothing acknowledged is lost.
    for r in &receipts {
        let loc = c
            .tx(&r.tx_hash)
            .await
            .unwrap()
            .expect("acknowledged tx is indexed");
        assert_eq!((loc.height, loc.index), (r.height, r.index));
        let block = c.block(r.height).await.unwrap().unwrap();
        assert!(block.header.tx_hashes.contains(&r.tx_hash));
    }
    let acct = c.account(&good.public()).await.unwrap();
    assert_eq!(acct.nonce, receipts.len() as u64);
    srv.shutdown().await;
}
