//! The relay and the receiver under abuse: idle and slowloris connections, partial large
//! messages, login guessing, replay floods, replay-cache filling and relayed logins. In every
//! case a well-behaved pair of twins keeps talking. Loopback only (other clients come from
//! 127.0.0.2…, which Linux routes to loopback too), bounded in count and time.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use zos_rmb::envelope::{Envelope, signing_message};
use zos_rmb::frame::{BounceCode, Frame, Role};
use zos_rmb::{
    CachedDirectory, DirectoryError, MemoryDirectory, Peer, PeerConfig, RelayConfig, RmbError,
    TwinDirectory, TwinRecord,
};

/// A directory that counts backend lookups per twin (the ledger stand-in).
struct Counting {
    mem: Arc<MemoryDirectory>,
    calls: Mutex<HashMap<u32, usize>>,
}

impl Counting {
    fn lookups(&self, id: u32) -> usize {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl TwinDirectory for Counting {
    async fn twin(&self, id: u32) -> Result<Option<TwinRecord>, DirectoryError> {
        *self.calls.lock().unwrap().entry(id).or_default() += 1;
        self.mem.twin(id).await
    }
}

fn counting(mem: &Arc<MemoryDirectory>) -> Arc<CachedDirectory<Counting>> {
    Arc::new(
        CachedDirectory::new(
            Counting {
                mem: mem.clone(),
                calls: Mutex::new(HashMap::new()),
            },
            Duration::from_secs(60),
        )
        .with_min_refresh(Duration::from_secs(60)),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A WebSocket frame header for a masked binary message of `len` bytes (client → server).
fn ws_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

/// 200 idle sockets, 100 slowloris HTTP clients, 20 logged-in twins each sending 1 MiB of a
/// 3 MiB message and stalling, and 100 connections past the cap, while twins 1 and 2 keep
/// calling each other: every call is answered within 2 s, the unfinished-message budget holds,
/// the cap refuses with 503, deadlines close every stuck connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_idle_slowloris_and_partial_messages_do_not_starve_a_working_pair() {
    const BUDGET: usize = 4 * 1024 * 1024;
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let attackers: Vec<_> = (10..30u32)
        .map(|t| (t, add_twin(&dir, t, &["r1"])))
        .collect();
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.limits = limits(|l| {
        l.max_connections = 300;
        l.login_timeout = Duration::from_secs(3);
        l.frame_memory_total = BUDGET;
        l.frame_timeout = Duration::from_secs(4);
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    a.call(2, "echo", &json!("warm"), T).await.unwrap();
    let rss_before = rss_kib();

    // The well-behaved pair: calls back to back for the whole attack.
    let caller = {
        let a = a.clone();
        tokio::spawn(async move {
            let (mut n, mut worst) = (0u64, Duration::ZERO);
            let end = Instant::now() + Duration::from_secs(8);
            while Instant::now() < end {
                let t0 = Instant::now();
                let v = a.call(2, "echo", &json!(n), Duration::from_secs(5)).await;
                let v = v.unwrap_or_else(|e| panic!("call {n} failed during the attack: {e}"));
                assert_eq!(v["echo"], json!(n));
                worst = worst.max(t0.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (n, worst)
        })
    };

    // Partial large messages from logged-in twins.
    let mut partial = Vec::new();
    for (t, k) in attackers {
        let mut c = RawClient::login(&relay.url, t, k, None).await.unwrap();
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() else {
            panic!("plain socket expected")
        };
        let _ = tcp.write_all(&ws_header(3 * 1024 * 1024)).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tcp.write_all(&vec![0x55u8; 1024 * 1024]),
        )
        .await;
        partial.push(c);
    }
    // Idle sockets and slowloris headers.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(relay.addr).await.unwrap());
    }
    let slow: Vec<_> = (0..100)
        .map(|i| {
            let addr = relay.addr;
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                if s.write_all(b"GET / HTTP/1.1\r\nHost: r1\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if s.write_all(format!("X-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    // Past the cap (2 + partial + 300 > 300): answered 503 at once.
    let extra: Vec<_> = (0..100)
        .map(|_| {
            let addr = relay.addr;
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut buf = vec![0u8; 256];
                let got = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::io::AsyncReadExt::read(&mut s, &mut buf),
                )
                .await;
                let is_503 = matches!(got, Ok(Ok(n)) if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
                (s, is_503)
            })
        })
        .collect();
    let mut refused_503 = 0;
    for e in extra {
        let (s, is_503) = e.await.unwrap();
        refused_503 += usize::from(is_503);
        idle.push(s);
    }
    let rss_peak = rss_kib();

    let (calls, worst) = caller.await.unwrap();
    for s in slow {
        s.await.unwrap();
    }
    let m = &relay.metrics;
    let (full, _) = m.connections_refused();
    let (handshake, _login, frame_timeouts) = m.connections_timed_out();
    println!(
        "soak: {calls} calls, worst {worst:?}; refused full {full} (503 read {refused_503}); \
         timed out: handshake {handshake}, frame {frame_timeouts}; frame budget refusals {}; \
         budget peak {} B of {BUDGET}; RSS {rss_before} -> {rss_peak} KiB",
        m.frame_refused_total(),
        m.frame_bytes_peak()
    );
    assert!(calls >= 20, "only {calls} calls in 8 s");
    assert!(worst < Duration::from_secs(2), "worst call took {worst:?}");
    // Nothing acknowledged was lost: every call was handled exactly once.
    assert_eq!(hits.load(Ordering::SeqCst) as u64, calls + 1);
    assert!(full > 0 && refused_503 > 0, "the cap never refused");
    assert!(
        handshake >= 250,
        "idle and slowloris connections not closed: {handshake}"
    );
    assert_eq!(
        m.frame_refused_total() + frame_timeouts,
        20,
        "every partial message is cut"
    );
    assert!(m.frame_bytes_peak() as usize <= BUDGET + 128 * 1024);
    // Everything stuck is gone: the pair, plus this metrics request.
    let text = http_get(relay.addr, "/metrics").await;
    assert!(text.contains("zos_rmb_relay_connections 3"), "{text}");
    assert!(text.contains("zos_rmb_relay_frame_bytes 0"), "{text}");
    drop((idle, partial));
    relay.stop().await;
}

/// Failed logins from one address: the first few are answered at once, then late, then the
/// address is banned and refused at accept. Each twin costs one ledger lookup whatever the
/// failures (negative answers cached too), and so do bad signatures on a federation link.
/// Other clients keep logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_guessing_is_throttled_and_costs_one_lookup_per_twin() {
    let mem = Arc::new(MemoryDirectory::new());
    add_twin(&mem, 1, &["r1"]);
    let k2 = add_twin(&mem, 2, &["r1"]);
    let k3 = add_twin(&mem, 3, &["r1"]);
    let k_link = add_twin(&mem, 101, &["r0"]);
    let dir = counting(&mem);
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.federation_peers = vec![101];
    cfg.limits = limits(|l| {
        l.login_free_failures = 3;
        l.login_failure_delay = Duration::from_millis(200);
        l.login_ban_after = 10;
        l.login_ban = Duration::from_secs(60);
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let attacker = ip("127.0.0.2");
    let started = Instant::now();
    let (mut rejected, mut refused) = (0, 0);
    for _ in 0..200 {
        match connect_from(&relay.url, Some(attacker)).await {
            Err(_) => refused += 1, // banned: 429 at accept
            Ok(ws) => {
                let r =
                    RawClient::login_on(ws, &relay.url, Role::Peer, 1, key(99), None, None).await;
                assert!(r.is_err(), "a wrong key logged in");
                rejected += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let (_, failed) = relay.metrics.logins();
    println!("guessing: 200 attempts in {elapsed:?}: {failed} judged, {refused} refused at accept");
    // Documented rate: at most `login_ban_after` judged failures per address per ban.
    assert_eq!(failed, 10);
    assert_eq!(rejected, 10);
    assert_eq!(refused, 190);
    // Seven of them were answered 200 ms late.
    assert!(elapsed >= Duration::from_millis(7 * 200));
    assert_eq!(dir.inner().lookups(1), 1, "one lookup for all failures");
    // An unknown twin is remembered as unknown.
    for _ in 0..5 {
        let ws = connect_from(&relay.url, Some(ip("127.0.0.3")))
            .await
            .unwrap();
        let r = RawClient::login_on(ws, &relay.url, Role::Peer, 999, key(99), None, None).await;
        assert!(r.is_err_and(|e| e.contains("does not exist")));
    }
    assert_eq!(dir.inner().lookups(999), 1);
    // Bad signatures on a federation link: forged envelopes "from twin 1".
    let ws = connect_from(&relay.url, Some(ip("127.0.0.4")))
        .await
        .unwrap();
    let mut link = RawClient::login_on(ws, &relay.url, Role::Federation, 101, k_link, None, None)
        .await
        .unwrap();
    let dst = record(&mem, 3);
    for _ in 0..50 {
        let forged = sealed_by(key(99), 1, &dst);
        link.send(&forged).await;
        match link.recv().await {
            Frame::Bounce(b) => assert_eq!(b.code, BounceCode::BadSignature),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(dir.inner().lookups(1), 1, "bad signatures bought lookups");
    // Another client (127.0.0.1) logs in and talks.
    let a = peer_on(&dir, &relay.url, 2, k2).await;
    let b = peer_on(&dir, &relay.url, 3, k3).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    assert_eq!(
        a.call(3, "echo", &json!("ok"), T).await.unwrap()["echo"],
        json!("ok")
    );
    relay.stop().await;
}

async fn peer_on(
    dir: &Arc<CachedDirectory<Counting>>,
    url: &str,
    twin: u32,
    k: zos_types::crypto::KeyPair,
) -> Peer {
    Peer::connect(
        PeerConfig {
            relays: vec![url.to_owned()],
            twin_id: twin,
            key: k,
            session: None,
        },
        dir.clone(),
    )
    .await
    .unwrap()
}

/// A captured envelope replayed hundreds of times, by its own twin's session and over a
/// federation link, costs that twin nothing: the duplicate filter comes before any budget,
/// and the link pays for what it carries. The twin's next real calls go through.
#[tokio::test]
async fn replay_flood_does_not_exhaust_the_senders_budget() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let k_link = add_twin(&dir, 101, &["r0"]);
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.federation_peers = vec![101];
    cfg.limits = limits(|l| {
        l.messages_per_sec = 2.0;
        l.message_burst = 10.0;
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    let mut raw = RawClient::login(&relay.url, 1, ka.clone(), Some("raw"))
        .await
        .unwrap();
    let captured = raw.request(&record(&dir, 2), "echo", &json!("once"), 600);
    raw.send(&captured).await;
    assert_eq!(raw.recv_reply().await.reference, Some(captured.header.id));
    for _ in 0..300 {
        raw.send(&captured).await;
    }
    let mut link = RawClient::login_as(&relay.url, Role::Federation, 101, k_link, None)
        .await
        .unwrap();
    for _ in 0..300 {
        link.send(&captured).await;
    }
    eventually("all replays judged", || {
        relay.metrics.duplicates_total() == 600
    })
    .await;
    assert_eq!(relay.metrics.bounced_total(BounceCode::RateLimited), 0);
    // Twin 1's budget (burst 10) is untouched but for the one real message.
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    for i in 0..8 {
        assert_eq!(
            a.call(2, "echo", &json!(i), T).await.unwrap()["echo"],
            json!(i)
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 9);
    relay.stop().await;
}

/// One twin sending many unique ids, and many twins each sending up to their quota, cannot
/// make the receiver drop a well-behaved twin's messages. A flood of bad signatures costs the
/// receiver one lookup of the claimed source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_cannot_be_filled_by_one_twin_or_many() {
    let mem = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&mem, 1, &["r1"]);
    let kb = add_twin(&mem, 2, &["r1"]);
    let k3 = add_twin(&mem, 3, &["r1"]);
    let sybils: Vec<_> = (10..22u32)
        .map(|t| (t, add_twin(&mem, t, &["r1"])))
        .collect();
    let relay = start_relay(&mem, "r1").await;
    let bdir = counting(&mem);
    let b = peer_on(&bdir, &relay.url, 2, kb).await;
    b.set_replay_limits(20, 200);
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    let a = peer(&mem, &relay.url, 1, ka, None).await;
    let dst = record(&mem, 2);

    let mut flooder = RawClient::login(&relay.url, 3, k3, None).await.unwrap();
    for i in 0..60 {
        let env = flooder.request(&dst, "echo", &json!(i), 600);
        flooder.send(&env).await;
    }
    // Bad signatures do not take room in the cache, nor buy lookups.
    for _ in 0..10 {
        let mut env = flooder.request(&dst, "echo", &json!("bad"), 600);
        env.signature = key(99).sign(&signing_message(&env.digest().unwrap()));
        flooder.send(&env).await;
    }
    let mut sent = 70;
    let mut raws = Vec::new();
    for (t, k) in sybils {
        let mut c = RawClient::login(&relay.url, t, k, None).await.unwrap();
        for i in 0..20 {
            let env = c.request(&dst, "echo", &json!(i), 600);
            c.send(&env).await;
        }
        sent += 20;
        raws.push(c);
    }
    eventually("the floods to arrive", || {
        b.stats().received as usize >= sent
    })
    .await;
    let st = b.stats();
    println!("replay-cache fill: {st:?}");
    assert_eq!(st.bad_signature, 10);
    assert_eq!(bdir.inner().lookups(3), 1, "bad signatures bought lookups");
    // Twin 3 got its quota of 20 and no more; the sybils (12 × 20) filled the cache past its
    // total of 200, and the later ones were held to their fair share.
    assert!(st.over_quota >= 40 + 5, "{st:?}");
    assert!(st.requests <= 20 + 12 * 20, "{st:?}");
    // The well-behaved twin still gets through.
    for i in 0..10 {
        assert_eq!(
            a.call(2, "echo", &json!(i), T).await.unwrap()["echo"],
            json!(i)
        );
    }
    relay.stop().await;
}

/// A relay that passes another relay's challenge through to its own client cannot log in as
/// that client there: the client signs the host it dialed, and the other relay refuses it.
#[tokio::test]
async fn a_login_relayed_from_another_relay_is_refused() {
    let dir = Arc::new(MemoryDirectory::new());
    let kv = add_twin(&dir, 7, &["rb"]);
    let relay_b = start_relay(&dir, "rb").await;
    // The malicious relay M: accepts the victim, opens a connection to B, and shuttles B's
    // challenge to the victim and the victim's answer to B.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m_url = format!("ws://{}", listener.local_addr().unwrap());
    let b_url = relay_b.url.clone();
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut victim = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (mut to_b, _) = tokio_tungstenite::connect_async(&b_url).await.unwrap();
        let challenge = next(&mut to_b).await.unwrap();
        victim
            .send(Message::Binary(challenge.encode().unwrap()))
            .await
            .unwrap();
        let auth = next(&mut victim).await.unwrap();
        to_b.send(Message::Binary(auth.encode().unwrap()))
            .await
            .unwrap();
        let answer = next(&mut to_b).await.unwrap();
        let _ = verdict_tx.send(answer.clone());
        let _ = victim.send(Message::Binary(answer.encode().unwrap())).await;
    });
    let err = Peer::connect(
        PeerConfig {
            relays: vec![m_url],
            twin_id: 7,
            key: kv.clone(),
            session: None,
        },
        dir.clone(),
    )
    .await
    .unwrap_err();
    match verdict_rx.await.unwrap() {
        Frame::Rejected { reason } => assert!(reason.contains("not this relay"), "{reason}"),
        other => panic!("relay B accepted a relayed login: {other:?}"),
    }
    assert!(matches!(err, RmbError::AuthRejected { .. }), "{err:?}");
    // The same twin dialing B itself logs in.
    RawClient::login(&relay_b.url, 7, kv, None).await.unwrap();
    relay_b.stop().await;
}

/// A link replaced by another login of the same twin and session comes back (after its
/// backoff) instead of stopping for good.
#[tokio::test]
async fn a_replaced_link_reconnects() {
    let dir = Arc::new(MemoryDirectory::new());
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let old = peer(&dir, &relay.url, 2, kb.clone(), None).await;
    let mut intruder = RawClient::login(&relay.url, 2, kb, None).await.unwrap();
    eventually("the link to be replaced", || old.connected() == 0).await;
    eventually("the link to come back", || old.connected() == 1).await;
    // It took the slot back: the intruder was told so.
    match intruder.recv().await {
        Frame::Rejected { reason } => assert!(reason.contains("replaced"), "{reason}"),
        other => panic!("{other:?}"),
    }
    relay.stop().await;
}

/// A request "from" `source` to `dst`, signed with `k` (not necessarily the source's key).
fn sealed_by(k: zos_types::crypto::KeyPair, source: u32, dst: &TwinRecord) -> Envelope {
    use zos_rmb::envelope::{Address, Body, Header, new_id, unix_now};
    let header = Header {
        id: new_id(),
        source: Address::twin(source),
        destination: Address::twin(dst.id),
        timestamp: unix_now(),
        ttl: 30,
    };
    let body = Body {
        command: "echo".into(),
        reference: None,
        error: None,
        payload: b"1".to_vec(),
    };
    Envelope::seal(header, &body, &k, &dst.e2e_key.unwrap()).unwrap()
}
