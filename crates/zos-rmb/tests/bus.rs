//! End-to-end: peers and relays on loopback, through the public API.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use zos_rmb::frame::BounceCode;
use zos_rmb::{MemoryDirectory, Peer, PeerConfig, RmbError};

#[tokio::test]
async fn request_response_through_one_relay() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));

    let got = a.call(2, "echo", &json!({"x": 1}), T).await.unwrap();
    assert_eq!(got, json!({"echo": {"x": 1}, "from": 1, "session": null}));

    match a.call(2, "fail", &json!(null), T).await {
        Err(RmbError::Remote { code, message }) => {
            assert_eq!((code, message.as_str()), (418, "teapot"));
        }
        other => panic!("{other:?}"),
    }
    match a.call(2, "nope", &json!(null), T).await {
        Err(RmbError::Remote { code: 404, message }) => assert!(message.contains("nope")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.call(99, "echo", &json!(null), T).await,
        Err(RmbError::UnknownTwin(99))
    ));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(relay.metrics.delivered_total(), 6);

    let text = http_get(relay.addr, "/metrics").await;
    assert!(text.contains("200 OK"), "{text}");
    assert!(text.contains("zos_rmb_relay_messages_total{outcome=\"delivered\"} 6"));
    assert!(text.contains("zos_rmb_relay_sessions 2"));
    assert!(text.contains("zos_rmb_relay_delivery_latency_seconds_count 6"));
    relay.stop().await;
}

#[tokio::test]
async fn several_sessions_of_one_twin_get_their_own_replies() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let cli = peer(&dir, &relay.url, 1, ka.clone(), Some("cli")).await;
    let web = peer(&dir, &relay.url, 1, ka, Some("web")).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    let (c, w) = (json!("c"), json!("w"));
    let (r1, r2) = tokio::join!(cli.call(2, "echo", &c, T), web.call(2, "echo", &w, T));
    assert_eq!(r1.unwrap()["session"], json!("cli"));
    assert_eq!(r2.unwrap()["session"], json!("web"));
    relay.stop().await;
}

#[tokio::test]
async fn request_response_through_two_federated_relays() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r2"]);
    let k_r1 = add_twin(&dir, 101, &["r1"]);
    let k_r2 = add_twin(&dir, 102, &["r2"]);
    // r2 must exist before r1 knows its URL, and vice versa: bind both, then run.
    let relay_b = zos_rmb::Relay::bind(
        federated_config("r2", (102, k_r2.clone()), &[], &[101]),
        dir.clone(),
    )
    .await
    .unwrap();
    let url_b = format!("ws://{}", relay_b.local_addr());
    drop(relay_b);
    let r1 = start_relay_with(
        federated_config("r1", (101, k_r1), &[("r2", &url_b)], &[102]),
        dir.clone(),
    )
    .await;
    let mut cfg_b = federated_config("r2", (102, k_r2), &[("r1", &r1.url)], &[101]);
    cfg_b.listen = url_b.trim_start_matches("ws://").parse().unwrap();
    let r2 = start_relay_with(cfg_b, dir.clone()).await;

    let a = peer(&dir, &r1.url, 1, ka, None).await;
    let b = peer(&dir, &r2.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    let got = a.call(2, "echo", &json!("far"), T).await.unwrap();
    assert_eq!(got["echo"], json!("far"));
    assert_eq!(got["from"], json!(1));
    // Error replies come back across the federation too.
    assert!(matches!(
        a.call(2, "fail", &json!(null), T).await,
        Err(RmbError::Remote { code: 418, .. })
    ));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().requests, 2);
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test]
async fn federation_to_an_unreachable_relay_bounces() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    add_twin(&dir, 2, &["r2"]);
    add_twin(&dir, 3, &["elsewhere"]);
    let k_r1 = add_twin(&dir, 101, &["r1"]);
    // A port with nothing listening: bind, read, drop.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r1 = start_relay_with(
        federated_config("r1", (101, k_r1), &[("r2", &format!("ws://{dead}"))], &[]),
        dir.clone(),
    )
    .await;
    let a = peer(&dir, &r1.url, 1, ka, None).await;
    match a.call(2, "echo", &json!(null), T).await {
        Err(RmbError::Relay {
            code: BounceCode::Federation,
            message,
        }) => {
            assert!(message.contains("r2"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match a.call(3, "echo", &json!(null), T).await {
        Err(RmbError::Relay {
            code: BounceCode::Federation,
            message,
        }) => {
            assert!(message.contains("no federation link"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    r1.stop().await;
}

#[tokio::test]
async fn wrong_key_is_refused_at_login() {
    let dir = Arc::new(MemoryDirectory::new());
    add_twin(&dir, 1, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let err = Peer::connect(
        PeerConfig {
            relays: vec![relay.url.clone()],
            twin_id: 1,
            key: key(77),
            session: None,
        },
        dir.clone(),
    )
    .await
    .unwrap_err();
    match err {
        RmbError::AuthRejected { reason, .. } => assert!(reason.contains("twin 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let err = Peer::connect(
        PeerConfig {
            relays: vec![relay.url.clone()],
            twin_id: 55,
            key: key(55),
            session: None,
        },
        dir.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RmbError::AuthRejected { .. }), "{err:?}");
    relay.stop().await;
}

#[tokio::test]
async fn offline_destination_gets_the_message_exactly_once_on_login() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let call = {
        let a = a.clone();
        tokio::spawn(async move { a.call(2, "echo", &json!("later"), T).await })
    };
    let text_has_one = || async {
        http_get(relay.addr, "/metrics")
            .await
            .contains("zos_rmb_relay_queue_depth 1")
    };
    let deadline = tokio::time::Instant::now() + T;
    while !text_has_one().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B comes online, and only then installs its handlers: early requests wait for serve().
    let b = peer(&dir, &relay.url, 2, kb.clone(), None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    let got = call.await.unwrap().unwrap();
    assert_eq!(got["echo"], json!("later"));
    // Reconnecting must not redeliver: log in again (replacing the session) and make a
    // second call; the handler ran once per call.
    b.close();
    let b2 = peer(&dir, &relay.url, 2, kb, None).await;
    b2.serve(echo_router(hits.clone()));
    a.call(2, "echo", &json!("again"), T).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(b2.stats().requests, 1);
    assert!(
        http_get(relay.addr, "/metrics")
            .await
            .contains("zos_rmb_relay_queue_depth 0")
    );
    relay.stop().await;
}

#[tokio::test]
async fn relay_restart_peers_reconnect_and_in_flight_calls_fail_cleanly() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let addr = relay.addr;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let mut router = echo_router(Arc::new(AtomicUsize::new(0)));
    let r = release.clone();
    router.handle("slow", move |_c, v| {
        let r = r.clone();
        async move {
            r.notified().await;
            Ok(v)
        }
    });
    b.serve(router);
    assert!(a.call(2, "echo", &json!(1), T).await.is_ok());

    let in_flight = {
        let a = a.clone();
        tokio::spawn(async move { a.call(2, "slow", &json!("s"), T).await })
    };
    eventually("slow request to arrive", || b.stats().requests == 2).await;
    relay.stop().await;
    // The link carrying the call is gone: the call fails now, not at its timeout, and never
    // with a wrong answer.
    match in_flight.await.unwrap() {
        Err(RmbError::Disconnected { dst: 2 }) => {}
        other => panic!("{other:?}"),
    }
    release.notify_waiters();

    let mut cfg = zos_rmb::RelayConfig::new(addr, "r1");
    cfg.limits = zos_rmb::Limits::default();
    let relay = start_relay_with(cfg, dir.clone()).await;
    assert!(a.wait_connected(T).await);
    assert!(b.wait_connected(T).await);
    let got = a.call(2, "echo", &json!("back"), T).await.unwrap();
    assert_eq!(got["echo"], json!("back"));
    relay.stop().await;
}

#[tokio::test]
async fn rate_and_size_limits_bounce_with_a_reason() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let mut cfg = zos_rmb::RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r1");
    cfg.limits = limits(|l| {
        l.messages_per_sec = 0.001;
        l.message_burst = 3.0;
        l.max_envelope_bytes = 4096;
    });
    let relay = start_relay_with(cfg, dir.clone()).await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    match a.call(2, "echo", &json!("x".repeat(10_000)), T).await {
        Err(RmbError::Relay {
            code: BounceCode::TooLarge,
            message,
        }) => {
            assert!(message.contains("4096"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The too-large one did not consume budget; the burst allows one more request (each
    // request and each reply costs its sender one token: B's replies are on B's budget).
    a.call(2, "echo", &json!(1), T).await.unwrap();
    a.call(2, "echo", &json!(2), T).await.unwrap();
    a.call(2, "echo", &json!(3), T).await.unwrap();
    match a.call(2, "echo", &json!(4), T).await {
        Err(RmbError::Relay {
            code: BounceCode::RateLimited,
            message,
        }) => {
            assert!(message.contains("twin 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.metrics.bounced_total(BounceCode::RateLimited), 1);
    relay.stop().await;
}

#[tokio::test]
async fn every_peer_answers_ping_even_before_serve() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let _b = peer(&dir, &relay.url, 2, kb, None).await;
    let got = a
        .call(2, zos_rmb::PING_COMMAND, &json!(null), T)
        .await
        .unwrap();
    assert_eq!(got["twin"], json!(2));
    // A twin can ping itself (the reply comes back to this session).
    let got = a
        .call(1, zos_rmb::PING_COMMAND, &json!(null), T)
        .await
        .unwrap();
    assert_eq!(got["twin"], json!(1));
    relay.stop().await;
}

/// Many large envelopes in flight both ways at once: socket buffers fill in both directions,
/// which deadlocked a reader that waited on its own writes (regression test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_messages_do_not_deadlock() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 2, &["r1"]);
    let kb = add_twin(&dir, 4, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 2, ka, None).await;
    let b = peer(&dir, &relay.url, 4, kb, None).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    let big = json!("y".repeat(1024 * 1024));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (a, big) = (a.clone(), big.clone());
            tokio::spawn(async move { a.call(4, "echo", &big, Duration::from_secs(120)).await })
        })
        .collect();
    for c in calls {
        let v = c.await.unwrap().unwrap();
        assert_eq!(v["echo"].as_str().map(str::len), Some(1024 * 1024));
    }
    relay.stop().await;
}

/// A second process logging in as the same twin and session takes the slot; the first is told
/// why and gives that link up (no flapping between the two), and calls reach the newer one.
#[tokio::test]
async fn same_session_login_replaces_the_older_connection() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let old = peer(&dir, &relay.url, 2, kb.clone(), None).await;
    let new = peer(&dir, &relay.url, 2, kb, None).await;
    let hits_old = Arc::new(AtomicUsize::new(0));
    let hits_new = Arc::new(AtomicUsize::new(0));
    old.serve(echo_router(hits_old.clone()));
    new.serve(echo_router(hits_new.clone()));
    eventually("the older connection to drop", || old.connected() == 0).await;
    for i in 0..5 {
        a.call(2, "echo", &json!(i), T).await.unwrap();
    }
    assert_eq!(hits_new.load(Ordering::SeqCst), 5);
    assert_eq!(hits_old.load(Ordering::SeqCst), 0);
    old.close();
    relay.stop().await;
}

/// Dropping the last clone of a peer closes its links: the relay sees the session go.
#[tokio::test]
async fn dropping_the_last_peer_clone_closes_it() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let clone = a.clone();
    drop(a);
    assert!(clone.wait_connected(T).await, "a clone keeps the peer open");
    let sessions = || async { http_get(relay.addr, "/metrics").await };
    assert!(sessions().await.contains("zos_rmb_relay_sessions 1"));
    drop(clone);
    let deadline = tokio::time::Instant::now() + T;
    while !sessions().await.contains("zos_rmb_relay_sessions 0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}

/// Twins on two relays keep talking when one relay goes away: each peer holds a link to both,
/// and calls go out on whichever link is up.
#[tokio::test]
async fn peers_on_two_relays_survive_losing_one() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1", "r2"]);
    let kb = add_twin(&dir, 2, &["r1", "r2"]);
    let r1 = start_relay(&dir, "r1").await;
    let r2 = start_relay(&dir, "r2").await;
    let both = |k: zos_types::crypto::KeyPair, id: u32| {
        Peer::connect(
            PeerConfig {
                relays: vec![r1.url.clone(), r2.url.clone()],
                twin_id: id,
                key: k,
                session: None,
            },
            dir.clone(),
        )
    };
    let a = both(ka, 1).await.unwrap();
    let b = both(kb, 2).await.unwrap();
    eventually("both links of both peers", || {
        a.connected() == 2 && b.connected() == 2
    })
    .await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    assert_eq!(
        a.call(2, "echo", &json!(1), T).await.unwrap()["echo"],
        json!(1)
    );
    r1.stop().await;
    eventually("the r1 links to drop", || {
        a.connected() == 1 && b.connected() == 1
    })
    .await;
    assert_eq!(
        a.call(2, "echo", &json!(2), T).await.unwrap()["echo"],
        json!(2)
    );
    assert!(r2.metrics.delivered_total() >= 2);
    r2.stop().await;
}

#[tokio::test]
async fn small_order_e2e_keys_are_never_encrypted_to() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    // Twin 2 publishes a point of order 8: every shared secret with it is all zeros.
    let order8: [u8; 32] =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
            .unwrap()
            .try_into()
            .unwrap();
    for weak in [[0u8; 32], order8] {
        dir.insert(zos_rmb::TwinRecord {
            id: 2,
            account: kb.public(),
            e2e_key: Some(weak),
            relays: vec!["r1".into()],
        });
        assert!(matches!(
            a.call(2, "echo", &json!(null), T).await,
            Err(RmbError::WeakE2eKey(2))
        ));
    }
    // Read from the ledger, such a key counts as absent.
    let rec = zos_rmb::ledger::twin_record(zos_ledger::Twin {
        id: 2,
        account: kb.public(),
        relays: vec![],
        e2e_key: Some(hex::encode(order8)),
    });
    assert_eq!(rec.e2e_key, None);
    relay.stop().await;
}
