//! A man in the middle between node and ledger: an HTTP + WebSocket proxy that passes
//! everything through until it turns evil, then answers `ledger_nodeContracts` with an empty
//! list, marks contracts deleted in `ledger_contract` and in proofs, swaps a twin's account and
//! e2e key (in `ledger_twin` and in proofs), and injects `NodeContractCanceled` and
//! `ContractGracePeriodStarted` into the node's event subscription. It has everything TLS
//! termination with the pinned certificate would give it, but not the producer key.
//!
//! The node pins the producer key: it must delete nothing, pause nothing, accept no forged twin
//! key, and still act on a real cancellation once the proxy is honest again.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as TMessage;
use zos_ledger::{Call, Event, EventRecord, LedgerClient, Trust};
use zos_node::chain::Chain as _;
use zos_node::ledger::NodeLedger;
use zos_rmb::LedgerDirectory;
use zos_rmb::TwinDirectory as _;
use zos_types::crypto::{KeyPair, KeyType, PublicKey};

const NODE: u32 = 1;

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    evil: AtomicBool,
    /// Answers rewritten (so the test knows the node was exposed to lies).
    lies: AtomicU64,
    /// Events injected into live subscriptions.
    injected: AtomicU64,
    inject: tokio::sync::broadcast::Sender<EventRecord>,
    forged_account: PublicKey,
    /// The twin whose account and e2e key are swapped (the others pass, so that the bus
    /// still carries the attacker's own messages).
    victim_twin: AtomicU64,
}

impl Proxy {
    async fn start(upstream: &str, forged_account: PublicKey) -> (Arc<Proxy>, String) {
        let (inject, _) = tokio::sync::broadcast::channel(16);
        let p = Arc::new(Proxy {
            upstream: upstream.to_string(),
            http: reqwest::Client::new(),
            evil: AtomicBool::new(false),
            lies: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            inject,
            forged_account,
            victim_twin: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/", post(rpc))
            .route("/ws", get(ws))
            .with_state(p.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (p, format!("http://{addr}"))
    }

    /// Rewrites one record (a contract or a twin) the way the attacker wants it.
    fn forge(&self, v: &mut Value) {
        if v.get("state").is_some() && v.get("kind").is_some() {
            v["state"] = json!({"deleted": {"reason": "canceled_by_user"}});
        }
        let victim = self.victim_twin.load(Ordering::SeqCst);
        if v.get("account").is_some() && v.get("relays").is_some() && v["id"] == json!(victim) {
            v["account"] = serde_json::to_value(self.forged_account).unwrap();
            v["e2e_key"] = json!(hex::encode(self.forged_account.bytes));
        }
    }

    fn rewrite(&self, method: &str, result: &mut Value) {
        if !self.evil.load(Ordering::SeqCst) || result.is_null() {
            return;
        }
        match method {
            "ledger_nodeContracts" => *result = json!([]),
            "ledger_contract" | "ledger_twin" => self.forge(result),
            "ledger_proof" => {
                if let Some(text) = result["value"].as_str() {
                    let orig: Value = serde_json::from_str(text).unwrap();
                    let mut v = orig.clone();
                    self.forge(&mut v);
                    // Untouched records keep their exact bytes.
                    if v == orig {
                        return;
                    }
                    result["value"] = json!(v.to_string());
                }
            }
            _ => return,
        }
        self.lies.fetch_add(1, Ordering::SeqCst);
    }
}

async fn rpc(State(p): State<Arc<Proxy>>, body: String) -> impl IntoResponse {
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let method = req["method"].as_str().unwrap_or_default().to_string();
    let resp = p
        .http
        .post(&p.upstream)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let mut v: Value = resp.json().await.unwrap();
    if let Some(r) = v.get_mut("result") {
        p.rewrite(&method, r);
    }
    axum::Json(v)
}

async fn ws(State(p): State<Arc<Proxy>>, up: WebSocketUpgrade) -> impl IntoResponse {
    up.on_upgrade(move |client| relay_ws(p, client))
}

/// Forwards text frames both ways; remembers the subscription id from the answer to the
/// subscribe request and sends injected events as notifications of it.
async fn relay_ws(p: Arc<Proxy>, mut client: WebSocket) {
    let url = p.upstream.replace("http://", "ws://") + "/ws";
    let (mut upstream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut inject = p.inject.subscribe();
    let mut sub: Option<u64> = None;
    loop {
        tokio::select! {
            m = client.next() => match m {
                Some(Ok(AxMessage::Text(t))) => {
                    if upstream.send(TMessage::Text(t.as_str().into())).await.is_err() { return; }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = upstream.next() => match m {
                Some(Ok(TMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if sub.is_none() && v["id"] == json!(0) {
                        sub = v["result"].as_u64();
                    }
                    if client.send(AxMessage::Text(t.as_str().into())).await.is_err() { return; }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            r = inject.recv() => {
                let Ok(rec) = r else { continue };
                let Some(sub) = sub else { continue };
                let note = json!({"jsonrpc": "2.0", "method": "ledger_event",
                    "params": {"subscription": sub, "result": rec}});
                if client.send(AxMessage::Text(note.to_string().into())).await.is_err() { return; }
                p.injected.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_cannot_delete_workloads_or_swap_twin_keys() {
    let grid = Grid::start().await;
    // The producer key, pinned from the real ledger (in `zos up`: over the pinned TLS channel).
    let producer = grid.client.info().await.unwrap().producer.unwrap();
    let mallory = KeyPair::from_seed(KeyType::Ed25519, [66; 32]);
    let (proxy, proxy_url) = Proxy::start(&grid.ledger_url, mallory.public()).await;

    let prims = grid.dir.path().join("prims");
    let mut cfg = grid.node_config(&grid.dir.path().join("node"));
    cfg.ledger_url = proxy_url.clone();
    cfg.ledger_producer = Some(producer);
    cfg.sync_interval = Duration::from_millis(300);
    let node = InProcNode::start(cfg, registry(&prims, Duration::ZERO));
    let node_twin = grid.node_twin(NODE).await;
    let alice = grid.user(10).await;

    let mut d = alice.deployment(0, "one", vec![volume("a", GIB, 0)]);
    let c1 = alice.contract(NODE, &mut d).await;
    alice.send_deploy(node_twin, &mut d).await;
    alice.wait_state(node_twin, c1, 0, "ok").await;
    let file = prims.join(format!("{}-{c1}-a", alice.twin));
    assert!(file.exists());

    // Evil from here on.
    proxy
        .victim_twin
        .store(u64::from(alice.twin), Ordering::SeqCst);
    proxy.evil.store(true, Ordering::SeqCst);
    let height = grid.client.head().await.unwrap();
    for event in [
        Event::NodeContractCanceled {
            contract_id: c1,
            node_id: NODE,
            twin_id: alice.twin,
        },
        Event::ContractGracePeriodStarted {
            contract_id: c1,
            node_id: NODE,
            twin_id: alice.twin,
        },
    ] {
        let _ = proxy.inject.send(EventRecord {
            height,
            index: 0,
            event,
        });
    }
    // Several syncs (every 300 ms) against the empty list, and the injected events.
    wait_for("the node to swallow the lies", T, || async {
        let seen =
            proxy.injected.load(Ordering::SeqCst) >= 2 && proxy.lies.load(Ordering::SeqCst) >= 5;
        seen.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(file.exists(), "the workload's data is still there");
    assert_eq!(
        (ops(&prims, "deprovision").len(), ops(&prims, "pause").len()),
        (0, 0)
    );
    let got = alice.get(node_twin, c1).await.unwrap();
    assert_eq!(
        serde_json::to_value(got.workloads[0].result.state).unwrap(),
        json!("ok")
    );

    // Twin lookups through the proxy: the swapped account and e2e key are refused, not used.
    let via_proxy = LedgerClient::with_trust(
        &proxy_url,
        Trust {
            producer: Some(producer),
            ..Trust::default()
        },
    )
    .unwrap();
    let lies_before = proxy.lies.load(Ordering::SeqCst);
    let node_ledger = NodeLedger::new(via_proxy.clone(), mallory.clone());
    let e = node_ledger.twin_key(alice.twin).await.unwrap_err();
    assert!(e.to_string().contains("state proof"), "{e}");
    let e = LedgerDirectory::new(via_proxy.clone())
        .twin(alice.twin)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("state proof"), "{e}");
    let e = node_ledger.verified_contract(c1).await.unwrap_err();
    assert!(e.to_string().contains("state proof"), "{e}");
    assert!(proxy.lies.load(Ordering::SeqCst) >= lies_before + 3);
    // Unverified reads through the proxy do carry the lies (the proxy is really lying).
    assert_eq!(
        via_proxy.twin(alice.twin).await.unwrap().unwrap().account,
        mallory.public()
    );
    // The honest ledger, directly: the real key.
    let direct = NodeLedger::new(grid.client.clone(), mallory.clone());
    assert_eq!(
        direct.twin_key(alice.twin).await.unwrap(),
        Some(alice.key.public())
    );

    // A deployment signed by Mallory in Alice's name (her key swapped in by the proxy) is
    // refused by the node.
    let mallory_twin = grid.twin(&mallory).await;
    let mut forged = alice.deployment(0, "forged", vec![volume("m", GIB, 0)]);
    forged.twin_id = mallory_twin;
    forged.signature_requirement.requests[0].twin_id = alice.twin;
    forged.sign(alice.twin, &mallory).unwrap();
    let mallory_user = User {
        key: mallory.clone(),
        twin: mallory_twin,
        peer: zos_rmb::Peer::connect(
            zos_rmb::PeerConfig {
                relays: vec![grid.relay_url.clone()],
                twin_id: mallory_twin,
                key: mallory.clone(),
                session: None,
            },
            Arc::new(LedgerDirectory::new(grid.client.clone())),
        )
        .await
        .unwrap(),
        client: grid.client.clone(),
    };
    mallory_user.contract(NODE, &mut forged).await;
    let msg = mallory_user
        .call_err(
            node_twin,
            "zos.deployment.deploy",
            &serde_json::to_value(&forged).unwrap(),
        )
        .await;
    assert!(msg.contains("unverified answer"), "{msg}");
    assert!(
        mallory_user
            .get(node_twin, forged.contract_id)
            .await
            .is_err(),
        "nothing stored"
    );

    // Honest again: a real cancellation, proven, deprovisions.
    proxy.evil.store(false, Ordering::SeqCst);
    grid.client
        .send(&alice.key, Call::CancelContract { contract_id: c1 })
        .await
        .unwrap();
    wait_for("real cancel deprovisions", T, || async {
        (!file.exists()).then_some(())
    })
    .await;
    node.stop().await;
}
