//! Server limits on loopback: connection caps with polite refusal and recovery, header and body
//! deadlines, JSON-RPC errors for oversized bodies and batches, WebSocket slots and idle
//! timeout, bad-signature throttling, dev-only methods and bounded dev time, and a soak of idle
//! and slowloris connections while a good client keeps being served (docs/ledger.md, "Limits").
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Server, wall};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use zos_ledger::chain::{MAX_ADVANCE_SECS, MAX_LEDGER_TIME};
use zos_ledger::rpc::codes;
use zos_ledger::{
    Call, Chain, ClientError, LedgerClient, Limits, MemStore, SigThrottle, SignedTransaction, dev,
};
use zos_types::crypto::{KeyPair, KeyType};

/// A TCP connection from a chosen loopback address (all of 127.0.0.0/8 is local on Linux).
async fn connect_from(ip: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))?;
    s.connect(addr).await
}

/// Whether this host lets us use 127.0.0.2 as a second client address.
async fn second_loopback(addr: SocketAddr) -> bool {
    match connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPING the part with a second client address: 127.0.0.2 unusable: {e}");
            false
        }
    }
}

fn post(body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST / HTTP/1.1\r\nhost: ledger\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// One HTTP exchange on `s`: status, lower-case head, JSON body.
async fn exchange(s: &mut TcpStream, req: &[u8]) -> (u16, String, Value) {
    s.write_all(req).await.unwrap();
    read_response(s).await
}

async fn read_response(s: &mut TcpStream) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    (status, head, body)
}

/// Reads until the server closes the connection; true if it did within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

fn err_code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or(0)
}

fn err_msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_batches_get_json_rpc_errors() {
    let limits = Limits {
        max_body_bytes: 64 << 10,
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;

    // Declared too large: 413 and a JSON-RPC error, read by an ordinary client (reqwest).
    let http = reqwest::Client::new();
    let big = vec![b' '; 300 << 10];
    let resp = http.post(&srv.url).body(big).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(err_code(&v), codes::INVALID_REQUEST, "{v}");
    assert!(err_msg(&v).contains("over the limit of 65536 bytes"), "{v}");

    // Chunked, no length: refused when the limit is crossed, same answer.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = b"POST / HTTP/1.1\r\nhost: l\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(format!("{:x}\r\n", 32 << 10).as_bytes());
        req.extend_from_slice(&vec![b' '; 32 << 10]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, head, v) = exchange(&mut s, &req).await;
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(err_code(&v), codes::INVALID_REQUEST);

    // A batch gets a clear refusal, over HTTP and WebSocket.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ledger_head", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "ledger_head", "params": []}
    ]);
    let resp = http.post(&srv.url).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(err_code(&v), codes::INVALID_REQUEST);
    assert!(
        err_msg(&v).contains("batch requests are not supported"),
        "{v}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        batch.to_string().into(),
    ))
    .await
    .unwrap();
    let answer = loop {
        match ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(
        err_msg(&v).contains("batch requests are not supported"),
        "{v}"
    );

    // A message over the limit on the WebSocket: an error, then the socket closes.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(100 << 10));
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Text(huge.into()))
        .await;
    let mut saw_error = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            saw_error |= err_code(&v) == codes::INVALID_REQUEST;
        }
    }
    assert!(
        saw_error,
        "an oversized WebSocket message gets an error answer"
    );

    // The server is fine, and counted the refusals.
    assert!(srv.client.head().await.is_ok());
    let m = srv.client.metrics().await.unwrap();
    assert!(m.requests_too_large >= 2, "{m:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_politely_and_recover() {
    let limits = Limits {
        max_connections: 6,
        max_connections_per_ip: 4,
        header_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;
    let local = Ipv4Addr::LOCALHOST;
    let two = second_loopback(srv.addr).await;
    // The probe connection above may still hold a slot for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let head_req = post(br#"{"jsonrpc":"2.0","id":1,"method":"ledger_head","params":[]}"#);
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from(local, srv.addr).await.unwrap());
    }
    // A fifth from the same address: refused with a JSON-RPC error.
    let mut s = connect_from(local, srv.addr).await.unwrap();
    let (status, head, v) = exchange(&mut s, &head_req).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after"), "{head}");
    assert_eq!(err_code(&v), codes::BUSY);
    assert!(
        err_msg(&v).contains("too many connections from 127.0.0.1"),
        "{v}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);

    if two {
        // Another address still gets in, up to the total cap...
        let b = Ipv4Addr::new(127, 0, 0, 2);
        let mut ok = connect_from(b, srv.addr).await.unwrap();
        let (status, _, v) = exchange(&mut ok, &head_req).await;
        assert_eq!(status, 200, "{v}");
        idle.push(ok);
        idle.push(connect_from(b, srv.addr).await.unwrap());
        // ...then the whole server is full.
        let c = Ipv4Addr::new(127, 0, 0, 3);
        let mut s = connect_from(c, srv.addr).await.unwrap();
        let (status, _, v) = exchange(&mut s, &head_req).await;
        assert_eq!(status, 503);
        assert!(
            err_msg(&v).contains("server full: 6 connections open"),
            "{v}"
        );
    }

    // Closing the idle connections frees the slots.
    drop(idle);
    let t = Instant::now();
    loop {
        let mut s = connect_from(local, srv.addr).await.unwrap();
        let (status, _, _) = exchange(&mut s, &head_req).await;
        if status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = srv.client.metrics().await.unwrap();
    assert!(m.connections_refused >= if two { 2 } else { 1 }, "{m:?}");
    assert!(m.connections_open <= 3, "{m:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_deadlines_close_slow_clients() {
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;

    // Idle: never sends a byte.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    // Slowloris: an unfinished head, one more header byte every 200 ms.
    let mut loris = TcpStream::connect(srv.addr).await.unwrap();
    loris
        .write_all(b"POST / HTTP/1.1\r\nhost: l\r\nx-slow: ")
        .await
        .unwrap();
    let trickling = Arc::new(AtomicBool::new(true));
    let (mut rd, mut wr) = loris.into_split();
    let t2 = trickling.clone();
    let trickle = tokio::spawn(async move {
        while t2.load(Ordering::Relaxed) {
            if wr.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    let mut sink = [0u8; 64];
    let loris_closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(loris_closed.is_ok(), "slowloris connection still open");
    assert!(t.elapsed() < Duration::from_secs(5));
    trickling.store(false, Ordering::Relaxed);
    let _ = trickle.await;

    // A body that never finishes: 408 with a JSON-RPC error, then closed.
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    let (status, head, v) = exchange(
        &mut slow,
        b"POST / HTTP/1.1\r\nhost: l\r\ncontent-length: 1000\r\n\r\n{\"jsonrpc\"",
    )
    .await;
    assert_eq!(status, 408, "{head}");
    assert_eq!(err_code(&v), codes::INVALID_REQUEST);
    assert!(err_msg(&v).contains("not received within"), "{v}");
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);

    let m = srv.client.metrics().await.unwrap();
    assert!(m.connections_timed_out >= 3, "{m:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_hold_a_slot_and_idle_ones_are_closed() {
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;
    let start = srv.client.head().await.unwrap() + 1;
    let mut sub = LedgerClient::new(&srv.url)
        .unwrap()
        .subscribe_events(start)
        .await
        .unwrap();
    // A subscriber keeps reading its stream (that is when its pongs go out).
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            let _ = events_tx.send(item);
        }
    });
    // Longer than the idle timeout: the subscriber answers the server's pings and stays, while
    // the pooled HTTP connection of `head` above is closed by the header timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The subscription holds one of the two slots.
    let head_req = post(br#"{"jsonrpc":"2.0","id":1,"method":"ledger_head","params":[]}"#);
    let _held = TcpStream::connect(srv.addr).await.unwrap();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (status, _, v) = exchange(&mut s, &head_req).await;
    assert_eq!(status, 503, "{v}");
    drop(_held);

    // The subscription still delivers.
    let who = KeyPair::from_seed(KeyType::Ed25519, [42; 32]).public();
    let t = Instant::now();
    loop {
        match srv.client.dev_fund(&who, 5).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "no slot came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.event, zos_ledger::Event::Transfer { amount: 5, .. }),
        "{ev:?}"
    );
    reader.abort();

    // A WebSocket that never reads (so never answers a ping) is closed after the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut mute, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match mute.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None => return,
                Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "mute websocket still open");
    let m = srv.client.metrics().await.unwrap();
    assert!(m.connections_timed_out >= 1, "{m:?}");
    srv.shutdown().await;
}

fn bad_signature(tx: &SignedTransaction) -> SignedTransaction {
    let mut bad = tx.clone();
    let flipped = if bad.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    bad.signature.replace_range(0..1, flipped);
    bad
}

fn submit_body(tx: &SignedTransaction) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "ledger_submit", "params": [tx]})
}

async fn submit_from(http: &reqwest::Client, url: &str, tx: &SignedTransaction) -> Value {
    http.post(url)
        .json(&submit_body(tx))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_delayed_then_banned_per_address() {
    const BAN_AFTER: u32 = 10;
    const ATTACKERS: u64 = 8;
    let limits = Limits {
        sig_throttle: SigThrottle {
            free_failures: 3,
            delay_step: Duration::from_millis(20),
            ban_after: BAN_AFTER,
            ban: Duration::from_secs(3),
            max_ban: Duration::from_secs(60),
            ..SigThrottle::default()
        },
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;
    let gh = srv.client.genesis_hash().await.unwrap();
    let victim = KeyPair::from_seed(KeyType::Ed25519, [9; 32]);
    srv.client
        .dev_fund(&victim.public(), 1_000_000)
        .await
        .unwrap();
    let sink = KeyPair::from_seed(KeyType::Ed25519, [10; 32]).public();
    let transfer = |nonce| {
        SignedTransaction::sign(
            &victim,
            &gh,
            nonce,
            Call::Transfer {
                to: sink,
                amount: 1,
            },
        )
    };
    let forged = bad_signature(&transfer(0));

    // Eight attackers on 127.0.0.1 as fast as they can for 1.5 s.
    let verified = Arc::new(AtomicU64::new(0));
    let banned = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let (url, forged) = (srv.url.clone(), forged.clone());
            let (verified, banned) = (verified.clone(), banned.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while t.elapsed() < Duration::from_millis(1500) {
                    let v = submit_from(&http, &url, &forged).await;
                    match err_code(&v) {
                        codes::REJECTED => {
                            assert_eq!(err_msg(&v), "bad signature");
                            verified.fetch_add(1, Ordering::Relaxed);
                        }
                        codes::BANNED => {
                            assert!(err_msg(&v).contains("too many bad signatures"), "{v}");
                            banned.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected answer {other}: {v}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (verified, banned) = (
        verified.load(Ordering::Relaxed),
        banned.load(Ordering::Relaxed),
    );
    eprintln!("bad-signature attempts: {verified} verified, {banned} refused while banned");
    // After BAN_AFTER failures no more signatures are checked (only those already in flight
    // when the ban began): the documented rate is 0 verifications during a ban.
    assert!(verified >= u64::from(BAN_AFTER), "{verified}");
    assert!(
        verified <= u64::from(BAN_AFTER) + ATTACKERS,
        "{verified} verified"
    );
    assert!(banned > 0);
    let m = srv.client.metrics().await.unwrap();
    assert_eq!(m.sig_failures, verified);
    assert!(m.sig_bans >= 1);
    assert_eq!(m.sig_refused_banned, banned);

    // The banned address cannot submit even a good transaction...
    let http = reqwest::Client::new();
    let v = submit_from(&http, &srv.url, &transfer(0)).await;
    assert_eq!(err_code(&v), codes::BANNED, "{v}");

    // ...another address can.
    if second_loopback(srv.addr).await {
        let other = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let v = submit_from(&other, &srv.url, &transfer(0)).await;
        assert!(v["result"]["height"].as_u64().is_some(), "{v}");
    } else {
        srv.client
            .submit(transfer(0))
            .await
            .expect_err("still banned");
    }

    // After the ban the address works again; one more bad signature bans it at once, longer.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let http = reqwest::Client::new();
    let nonce = srv.client.account(&victim.public()).await.unwrap().nonce;
    let v = submit_from(&http, &srv.url, &transfer(nonce)).await;
    assert!(v["result"]["height"].as_u64().is_some(), "{v}");
    let v = submit_from(&http, &srv.url, &forged).await;
    assert_eq!(err_msg(&v), "bad signature");
    let v = submit_from(&http, &srv.url, &transfer(nonce + 1)).await;
    assert_eq!(err_code(&v), codes::BANNED, "{v}");
    assert!(
        err_msg(&v).contains("for 6 s") || err_msg(&v).contains("for 5 s"),
        "{v}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_methods_need_dev_mode() {
    let srv = Server::start(Limits::default(), false).await;
    let who = KeyPair::from_seed(KeyType::Ed25519, [3; 32]).public();
    for r in [
        srv.client.dev_advance_time(60).await.map(|_| ()),
        srv.client.dev_fund(&who, 1).await.map(|_| ()),
    ] {
        match r {
            Err(ClientError::Rpc { code, message, .. }) => {
                assert_eq!(code, codes::DEV_ONLY);
                assert!(message.contains("--dev"), "{message}");
            }
            other => panic!("dev method on a non-dev ledger: {other:?}"),
        }
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_advance_time_is_bounded() {
    let srv = Server::start(Limits::default(), true).await;
    let c = &srv.client;
    match c.dev_advance_time(u64::MAX).await {
        Err(ClientError::Rpc { code, message, .. }) => {
            assert_eq!(code, codes::INVALID_PARAMS);
            assert!(
                message.contains("at most 315576000 s (10 years)"),
                "{message}"
            );
        }
        other => panic!("u64::MAX accepted: {other:?}"),
    }
    // Time is still sane and still moves: a block now, then exactly ten years on.
    let who = KeyPair::from_seed(KeyType::Ed25519, [4; 32]).public();
    c.dev_fund(&who, 1).await.unwrap();
    let t0 = c.info().await.unwrap().time;
    assert!(t0 <= wall() + 5, "ledger time {t0} ran ahead of the clock");
    c.dev_advance_time(MAX_ADVANCE_SECS).await.unwrap();
    let t1 = c.info().await.unwrap().time;
    assert!(t1 >= t0 + MAX_ADVANCE_SECS && t1 <= wall() + MAX_ADVANCE_SECS + 5);
    assert!(c.dev_advance_time(MAX_ADVANCE_SECS + 1).await.is_err());
    c.dev_fund(&who, 1).await.unwrap();
    srv.shutdown().await;

    // The end of time (year 9999) is refused without wedging the chain.
    let mut chain = Chain::open(Arc::new(MemStore::new()), Some(dev::genesis(wall()))).unwrap();
    let mut steps = 0;
    let err = loop {
        match chain.advance_time(MAX_ADVANCE_SECS) {
            Ok(()) => steps += 1,
            Err(e) => break e,
        }
        assert!(steps < 1000);
    };
    assert!(err.contains("would pass 253402300799"), "{err}");
    assert!(chain.now() <= MAX_LEDGER_TIME && chain.now() > MAX_LEDGER_TIME - MAX_ADVANCE_SECS);
    let now = chain.now();
    let faucet = dev::faucet_key();
    let tx = SignedTransaction::sign(
        &faucet,
        &chain.genesis_hash(),
        0,
        Call::Transfer { to: who, amount: 1 },
    );
    let out = chain.produce(&[tx], now, false).unwrap();
    assert!(out.results[0].is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalised_failures_close_the_connection() {
    let limits = Limits {
        sig_throttle: SigThrottle {
            free_failures: 3,
            delay_step: Duration::from_millis(100),
            ..SigThrottle::default()
        },
        ..Limits::default()
    };
    let srv = Server::start(limits, true).await;
    let gh = srv.client.genesis_hash().await.unwrap();
    let key = KeyPair::from_seed(KeyType::Ed25519, [11; 32]);
    let forged = bad_signature(&SignedTransaction::sign(
        &key,
        &gh,
        0,
        Call::Transfer {
            to: key.public(),
            amount: 1,
        },
    ));
    let req = post(submit_body(&forged).to_string().as_bytes());
    // The free failures are answered at once on one keep-alive connection.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    for _ in 0..3 {
        let (status, head, v) = exchange(&mut s, &req).await;
        assert_eq!((status, err_msg(&v).as_str()), (200, "bad signature"));
        assert!(!head.contains("connection: close"), "{head}");
    }
    // The next is answered later, and the connection closes after it.
    let t = Instant::now();
    let (_, head, v) = exchange(&mut s, &req).await;
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(err_msg(&v), "bad signature");
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    srv.shutdown().await;
}
