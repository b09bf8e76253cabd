//! Forged, tampered, expired and replayed envelopes are refused: by the relay (with a bounce)
//! or by the receiving peer (silently: the caller times out). Never a wrong answer.
//!
//! Determinism: a peer checks incoming envelopes in arrival order on one link, so after a
//! *valid* sentinel request has been answered, every bad envelope sent before it on the same
//! connection has already been judged; the assertions on counters need no sleeps.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use zos_rmb::MemoryDirectory;
use zos_rmb::envelope::{Address, Envelope, signing_message, unix_now};
use zos_rmb::frame::{Bounce, BounceCode, Frame, Role};

struct Setup {
    dir: Arc<MemoryDirectory>,
    relay: RunningRelay,
    b: zos_rmb::Peer,
    hits: Arc<AtomicUsize>,
    raw: RawClient,
}

async fn setup() -> Setup {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r1"]);
    add_twin(&dir, 3, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    let raw = RawClient::login(&relay.url, 1, ka, None).await.unwrap();
    Setup {
        dir,
        relay,
        b,
        hits,
        raw,
    }
}

/// Sends a valid request and checks its answer: everything sent earlier has been judged.
async fn sentinel(s: &mut Setup) {
    let env = s
        .raw
        .request(&record(&s.dir, 2), "echo", &json!("sentinel"), 30);
    s.raw.send(&env).await;
    let reply = s.raw.recv_reply().await;
    assert_eq!(reply.reference, Some(env.header.id));
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["echo"], json!("sentinel"));
}

fn bounce(f: Frame) -> Bounce {
    match f {
        Frame::Bounce(b) => b,
        other => panic!("expected a bounce, got {other:?}"),
    }
}

#[tokio::test]
async fn forged_source_is_bounced_by_the_relay() {
    let mut s = setup().await;
    let mut env = s.raw.request(&record(&s.dir, 2), "echo", &json!(1), 30);
    env.header.source = Address::twin(3);
    s.raw.send(&env).await;
    let b = bounce(s.raw.recv().await);
    assert_eq!(b.code, BounceCode::ForgedSource);
    assert_eq!(b.id, env.header.id);
    // Claiming another session of one's own twin is forged too.
    let mut env = s.raw.request(&record(&s.dir, 2), "echo", &json!(1), 30);
    env.header.source.session = Some("web".into());
    s.raw.send(&env).await;
    assert_eq!(bounce(s.raw.recv().await).code, BounceCode::ForgedSource);
    sentinel(&mut s).await;
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    assert_eq!(s.b.stats().received, 1);
    s.relay.stop().await;
}

#[tokio::test]
async fn tampered_ciphertext_and_wrong_keys_are_dropped_by_the_receiver() {
    let mut s = setup().await;
    let dst = record(&s.dir, 2);
    // 1. Flip a ciphertext bit, keep the signature: signature check fails.
    let env = s.raw.request(&dst, "echo", &json!("t1"), 30);
    let mut sealed = env.sealed.to_vec();
    sealed[50] ^= 0x01;
    let mut t1 = env.clone();
    t1.sealed = Bytes::from(sealed.clone());
    s.raw.send(&t1).await;
    // 2. Flip a bit and re-sign (a malicious sender): decryption fails.
    let mut t2 = s.raw.request(&dst, "echo", &json!("t2"), 30);
    let mut sealed2 = t2.sealed.to_vec();
    sealed2[60] ^= 0x80;
    t2.sealed = Bytes::from(sealed2);
    t2.signature = s.raw.key.sign(&signing_message(&t2.digest().unwrap()));
    s.raw.send(&t2).await;
    // 3. Signed with a key that is not twin 1's ledger key.
    let mut t3 = s.raw.request(&dst, "echo", &json!("t3"), 30);
    t3.signature = key(99).sign(&signing_message(&t3.digest().unwrap()));
    s.raw.send(&t3).await;
    // 4. Encrypted to the wrong X25519 key (not the one twin 2 derives from its seed).
    let mut wrong = dst.clone();
    wrong.e2e_key = Some(zos_rmb::e2e_public_key(&[42u8; 32]));
    let t4 = s.raw.request(&wrong, "echo", &json!("t4"), 30);
    s.raw.send(&t4).await;
    // 5. A valid ciphertext moved under a new header (new id), re-signed: AAD mismatch.
    let mut t5 = s.raw.request(&dst, "echo", &json!("t5"), 30);
    t5.header.id[0] ^= 0xff;
    t5.signature = s.raw.key.sign(&signing_message(&t5.digest().unwrap()));
    s.raw.send(&t5).await;

    sentinel(&mut s).await;
    let st = s.b.stats();
    assert_eq!(st.bad_signature, 2, "{st:?}");
    assert_eq!(st.undecryptable, 3, "{st:?}");
    assert_eq!(st.requests, 1, "{st:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    s.relay.stop().await;
}

#[tokio::test]
async fn replayed_envelope_is_handled_once() {
    let mut s = setup().await;
    let env = s
        .raw
        .request(&record(&s.dir, 2), "echo", &json!("once"), 30);
    s.raw.send(&env).await;
    s.raw.send(&env).await;
    let first = s.raw.recv_reply().await;
    assert_eq!(first.reference, Some(env.header.id));
    sentinel(&mut s).await;
    // The relay's duplicate filter drops the copy (the receiver's own replay cache is tested
    // against a malicious relay below).
    assert_eq!(s.relay.metrics.duplicates_total(), 1);
    assert_eq!(s.b.stats().received, 2);
    assert_eq!(s.hits.load(Ordering::SeqCst), 2); // "once" + the sentinel
    s.relay.stop().await;
}

#[tokio::test]
async fn expired_envelope_is_bounced_by_the_relay() {
    let mut s = setup().await;
    let mut env = s.raw.request(&record(&s.dir, 2), "echo", &json!(1), 5);
    env.header.timestamp = unix_now() - 100;
    env.signature = s.raw.key.sign(&signing_message(&env.digest().unwrap()));
    s.raw.send(&env).await;
    let b = bounce(s.raw.recv().await);
    assert_eq!(b.code, BounceCode::Expired);
    let mut env = s.raw.request(&record(&s.dir, 2), "echo", &json!(1), 5);
    env.header.timestamp = unix_now() + 3600;
    s.raw.send(&env).await;
    assert_eq!(bounce(s.raw.recv().await).code, BounceCode::Expired);
    sentinel(&mut s).await;
    assert_eq!(s.b.stats().received, 1);
    s.relay.stop().await;
}

/// A compromised relay injects envelopes directly: the receiving peer's own checks refuse
/// expired, replayed, misaddressed, forged-signature and garbage envelopes.
#[tokio::test]
async fn receiver_checks_hold_against_a_malicious_relay() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["evil"]);
    let kb = add_twin(&dir, 2, &["evil"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (inject_tx, mut inject_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let ch = Frame::Challenge {
            nonce: [0; 32],
            domain: "evil".into(),
        };
        ws.send(Message::Binary(ch.encode().unwrap()))
            .await
            .unwrap();
        let Some(Frame::Auth {
            role: Role::Peer, ..
        }) = next(&mut ws).await
        else {
            panic!("no auth")
        };
        let w = Frame::Welcome { session: None };
        ws.send(Message::Binary(w.encode().unwrap())).await.unwrap();
        loop {
            tokio::select! {
                Some(b) = inject_rx.recv() => {
                    let f = Frame::Envelope(b).encode().unwrap();
                    ws.send(Message::Binary(f)).await.unwrap();
                }
                f = next(&mut ws) => match f {
                    Some(f) => { let _ = got_tx.send(f); }
                    None => return,
                }
            }
        }
    });
    let b = peer(&dir, &url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    // Build envelopes as twin 1 would (the relay cannot sign as twin 1; twin 1's captured
    // traffic is what it can replay or hold back).
    let a = RawClientBuilder { key: ka.clone() };
    let dst = record(&dir, 2);
    let inject = |e: &Envelope| inject_tx.send(Bytes::from(e.encode().unwrap())).unwrap();

    let mut expired = a.request(&dst, 2);
    expired.header.timestamp = unix_now() - 100;
    expired.signature = ka.sign(&signing_message(&expired.digest().unwrap()));
    inject(&expired);
    let valid = a.request(&dst, 30);
    inject(&valid);
    inject(&valid); // replay
    let mut misaddressed = a.request(&dst, 30);
    misaddressed.header.destination = Address::twin(7);
    misaddressed.signature = ka.sign(&signing_message(&misaddressed.digest().unwrap()));
    inject(&misaddressed);
    let mut forged = a.request(&dst, 30);
    forged.header.source = Address::twin(2); // "from" the receiver itself, with 1's signature
    inject(&forged);
    inject_tx.send(Bytes::from_static(b"\x01garbage")).unwrap();

    // Only the valid request is answered (its reply reaches the fake relay).
    let reply = tokio::time::timeout(T, got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let Frame::Envelope(bytes) = reply else {
        panic!("{reply:?}")
    };
    let env = Envelope::decode(&bytes).unwrap();
    let body = env.open(&zos_rmb::e2e::e2e_secret(ka.seed())).unwrap();
    assert_eq!(body.reference, Some(valid.header.id));
    // The reply was sent after the whole batch was judged (same link, in order) only if the
    // batch came first; wait for all six to be counted.
    eventually("all injected envelopes judged", || b.stats().received == 6).await;
    let st = b.stats();
    assert_eq!(
        (
            st.expired,
            st.replayed,
            st.misrouted,
            st.bad_signature,
            st.malformed,
            st.requests
        ),
        (1, 1, 1, 1, 1, 1),
        "{st:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

struct RawClientBuilder {
    key: zos_types::crypto::KeyPair,
}

impl RawClientBuilder {
    fn request(&self, dst: &zos_rmb::TwinRecord, ttl: u32) -> Envelope {
        use zos_rmb::envelope::{Body, Header, new_id};
        let header = Header {
            id: new_id(),
            source: Address::twin(1),
            destination: Address::twin(dst.id),
            timestamp: unix_now(),
            ttl,
        };
        let body = Body {
            command: "echo".into(),
            reference: None,
            error: None,
            payload: b"{}".to_vec(),
        };
        Envelope::seal(header, &body, &self.key, &dst.e2e_key.unwrap()).unwrap()
    }
}

/// A federation link may carry any source, so the relay verifies every envelope's signature
/// against its source twin's ledger key (before charging that twin's rate budget).
#[tokio::test]
async fn federation_link_checks_every_envelope_signature() {
    let dir = Arc::new(MemoryDirectory::new());
    let k1 = add_twin(&dir, 1, &["r1"]);
    let kb = add_twin(&dir, 2, &["r2"]);
    let k_relay = add_twin(&dir, 101, &["r1"]);
    let k_other = add_twin(&dir, 103, &["r1"]);
    let mut cfg = zos_rmb::RelayConfig::new("127.0.0.1:0".parse().unwrap(), "r2");
    cfg.federation_peers = vec![101];
    let relay = start_relay_with(cfg, dir.clone()).await;
    // Only listed relay twins may open a federation link.
    let refused = RawClient::login_as(&relay.url, Role::Federation, 103, k_other, None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|r| r.contains("not a federation peer")),
        "{:?}",
        refused.map(|_| ())
    );
    let b = peer(&dir, &relay.url, 2, kb, None).await;
    let hits = Arc::new(AtomicUsize::new(0));
    b.serve(echo_router(hits.clone()));
    // A federation login cannot carry a session.
    assert!(
        RawClient::login_as(
            &relay.url,
            Role::Federation,
            101,
            k_relay.clone(),
            Some("x")
        )
        .await
        .is_err()
    );
    let mut link = RawClient::login_as(&relay.url, Role::Federation, 101, k_relay, None)
        .await
        .unwrap();
    let dst = record(&dir, 2);
    // "From twin 1", signed by someone else.
    let forged = RawClientBuilder { key: key(99) }.request(&dst, 30);
    link.send(&forged).await;
    let bounced = bounce(link.recv().await);
    assert_eq!(bounced.code, BounceCode::BadSignature);
    assert_eq!(bounced.id, forged.header.id);
    assert_eq!(relay.metrics.bounced_total(BounceCode::BadSignature), 1);
    // Genuinely from twin 1: delivered.
    let genuine = RawClientBuilder { key: k1 }.request(&dst, 30);
    link.send(&genuine).await;
    eventually("the genuine request to be handled", || {
        hits.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(b.stats().received, 1);
    relay.stop().await;
}

/// A reply is accepted only from the twin the call went to: another twin that learned the
/// request id (say, with a relay's help) cannot answer in its place.
#[tokio::test]
async fn reply_from_another_twin_is_not_accepted() {
    use zos_rmb::envelope::{Body, Header, new_id};
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["r1"]);
    let k3 = add_twin(&dir, 3, &["r1"]);
    let k4 = add_twin(&dir, 5, &["r1"]);
    let relay = start_relay(&dir, "r1").await;
    let a = peer(&dir, &relay.url, 1, ka, None).await;
    let mut callee = RawClient::login(&relay.url, 3, k3, None).await.unwrap();
    let mut impostor = RawClient::login(&relay.url, 5, k4, None).await.unwrap();
    let call = {
        let a = a.clone();
        tokio::spawn(async move { a.call(3, "whoami", &json!(null), T).await })
    };
    // The callee sees the request (and its id).
    let Frame::Envelope(req) = callee.recv().await else {
        panic!("expected the request")
    };
    let req = Envelope::decode(&req).unwrap();
    let reply_from = |c: &RawClient, answer: &str| {
        let header = Header {
            id: new_id(),
            source: Address::twin(c.twin),
            destination: req.header.source.clone(),
            timestamp: unix_now(),
            ttl: 30,
        };
        let body = Body {
            command: "whoami".into(),
            reference: Some(req.header.id),
            error: None,
            payload: serde_json::to_vec(&json!(answer)).unwrap(),
        };
        let dst = record(&dir, 1).e2e_key.unwrap();
        Envelope::seal(header, &body, &c.key, &dst).unwrap()
    };
    impostor.send(&reply_from(&impostor, "impostor")).await;
    eventually("the impostor's reply to be refused", || {
        a.stats().unexpected_reply == 1
    })
    .await;
    callee.send(&reply_from(&callee, "callee")).await;
    assert_eq!(call.await.unwrap().unwrap(), json!("callee"));
    relay.stop().await;
}

/// A fake relay that accepts any number of peer logins, one after the other, and hands each
/// connection every envelope injected after it logged in.
async fn replaying_relay() -> (String, tokio::sync::broadcast::Sender<Bytes>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (inject, _) = tokio::sync::broadcast::channel::<Bytes>(16);
    let tx = inject.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let ch = Frame::Challenge {
                    nonce: [0; 32],
                    domain: "evil".into(),
                };
                if ws
                    .send(Message::Binary(ch.encode().unwrap()))
                    .await
                    .is_err()
                {
                    return;
                }
                let Some(Frame::Auth { .. }) = next(&mut ws).await else {
                    return;
                };
                let w = Frame::Welcome { session: None };
                if ws.send(Message::Binary(w.encode().unwrap())).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        b = rx.recv() => match b {
                            Ok(b) => {
                                let f = Frame::Envelope(b).encode().unwrap();
                                if ws.send(Message::Binary(f)).await.is_err() { return; }
                            }
                            Err(_) => return,
                        },
                        f = next(&mut ws) => if f.is_none() { return },
                    }
                }
            });
        }
    });
    (url, inject)
}

/// The receiver's replay cache survives a restart when it has a file: a request captured
/// before the restart and injected again after it is refused. Without the file, the same
/// replay is served again (what the file prevents).
#[tokio::test]
async fn replay_cache_survives_a_restart() {
    let dir = Arc::new(MemoryDirectory::new());
    let ka = add_twin(&dir, 1, &["evil"]);
    let kb = add_twin(&dir, 2, &["evil"]);
    let (url, inject) = replaying_relay().await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rmb-replay");
    let connect = |file: Option<std::path::PathBuf>| {
        let (dir, url, kb) = (dir.clone(), url.clone(), kb.clone());
        async move {
            let cfg = zos_rmb::PeerConfig {
                relays: vec![url],
                twin_id: 2,
                key: kb,
                session: None,
            };
            zos_rmb::Peer::connect_with_replay_file(cfg, dir, file)
                .await
                .unwrap()
        }
    };
    let valid = RawClientBuilder { key: ka.clone() }.request(&record(&dir, 2), 60);
    let bytes = Bytes::from(valid.encode().unwrap());

    let b = connect(Some(file.clone())).await;
    b.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    inject.send(bytes.clone()).unwrap();
    eventually("request served", || b.stats().requests == 1).await;
    b.close();
    drop(b);
    assert!(file.exists(), "close writes the cache");

    let b2 = connect(Some(file.clone())).await;
    b2.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    inject.send(bytes.clone()).unwrap();
    eventually("replay judged", || b2.stats().received == 1).await;
    assert_eq!((b2.stats().replayed, b2.stats().requests), (1, 0));
    b2.close();
    drop(b2);

    // Control: a restarted peer without the file serves the replay.
    let b3 = connect(None).await;
    b3.serve(echo_router(Arc::new(AtomicUsize::new(0))));
    inject.send(bytes).unwrap();
    eventually("replay judged", || b3.stats().received == 1).await;
    assert_eq!((b3.stats().replayed, b3.stats().requests), (0, 1));

    // A damaged file is an empty cache, not a failure to start.
    std::fs::write(&file, b"garbage").unwrap();
    let b4 = connect(Some(file.clone())).await;
    b4.close();
}
