//! Shared helpers: twins in a memory directory, relays on port 0, raw protocol clients.
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use zos_rmb::envelope::{Address, Body, Envelope, Header, new_id, unix_now};
use zos_rmb::frame::{Frame, Role, auth_message};
use zos_rmb::metrics::RelayMetrics;
use zos_rmb::{
    HandlerError, Limits, MemoryDirectory, Peer, PeerConfig, Relay, RelayConfig, RelayIdentity,
    Router, TwinDirectory, TwinRecord, e2e_public_key,
};
use zos_types::crypto::{KeyPair, KeyType};

pub const T: Duration = Duration::from_secs(20);

pub fn key(n: u8) -> KeyPair {
    let kt = if n % 2 == 0 {
        KeyType::Ed25519
    } else {
        KeyType::Sr25519
    };
    KeyPair::from_seed(kt, [n; 32])
}

/// Registers twin `id` (key seed `[id; 32]`) on `relays`.
pub fn add_twin(dir: &MemoryDirectory, id: u32, relays: &[&str]) -> KeyPair {
    let k = key(id as u8);
    dir.insert(TwinRecord {
        id,
        account: k.public(),
        e2e_key: Some(e2e_public_key(k.seed())),
        relays: relays.iter().map(|s| s.to_string()).collect(),
    });
    k
}

pub struct RunningRelay {
    pub addr: SocketAddr,
    pub url: String,
    pub metrics: Arc<RelayMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningRelay {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

pub async fn start_relay_with(cfg: RelayConfig, dir: Arc<dyn TwinDirectory>) -> RunningRelay {
    let relay = Relay::bind(cfg, dir).await.unwrap();
    let addr = relay.local_addr();
    let metrics = relay.metrics();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    RunningRelay {
        addr,
        url: format!("ws://{addr}"),
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn start_relay(dir: &Arc<MemoryDirectory>, domain: &str) -> RunningRelay {
    let cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), domain);
    start_relay_with(cfg, dir.clone()).await
}

/// A relay with its own twin, links to `peers` (domain, URL), accepting federation links from
/// `federation_peers` (relay twins).
pub fn federated_config(
    domain: &str,
    identity: (u32, KeyPair),
    peers: &[(&str, &str)],
    federation_peers: &[u32],
) -> RelayConfig {
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), domain);
    cfg.federation_peers = federation_peers.to_vec();
    cfg.identity = Some(RelayIdentity {
        twin: identity.0,
        key: identity.1,
    });
    cfg.federation = peers
        .iter()
        .map(|(d, u)| (d.to_string(), u.to_string()))
        .collect::<HashMap<_, _>>();
    cfg
}

pub fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

pub async fn peer(
    dir: &Arc<MemoryDirectory>,
    url: &str,
    twin: u32,
    key: KeyPair,
    session: Option<&str>,
) -> Peer {
    Peer::connect(
        PeerConfig {
            relays: vec![url.to_owned()],
            twin_id: twin,
            key,
            session: session.map(str::to_owned),
        },
        dir.clone(),
    )
    .await
    .unwrap()
}

/// A router with `echo` (returns its input plus who asked), `fail` (error 418) and `count`
/// (increments `hits`).
pub fn echo_router(hits: Arc<AtomicUsize>) -> Router {
    let mut r = Router::new();
    let h = hits.clone();
    r.handle("echo", move |ctx, v: Value| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"echo": v, "from": ctx.source, "session": ctx.session}))
        }
    });
    r.handle("fail", |_ctx, _v| async {
        Err::<Value, _>(HandlerError::new(418, "teapot"))
    });
    r
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` (a `ws://` loopback URL) from `src` (another loopback address
/// such as 127.0.0.2, to look like another client to per-address throttling).
pub async fn connect_from(
    url: &str,
    src: Option<std::net::IpAddr>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let addr: SocketAddr = url.trim_start_matches("ws://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = sock.connect(addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await?;
    Ok(ws)
}

/// A hand-driven protocol client (for attacks the real `Peer` refuses to make).
pub struct RawClient {
    pub ws: Ws,
    pub twin: u32,
    pub session: Option<String>,
    pub key: KeyPair,
}

impl RawClient {
    pub async fn login(
        url: &str,
        twin: u32,
        key: KeyPair,
        session: Option<&str>,
    ) -> Result<RawClient, String> {
        Self::login_as(url, Role::Peer, twin, key, session).await
    }

    pub async fn login_as(
        url: &str,
        role: Role,
        twin: u32,
        key: KeyPair,
        session: Option<&str>,
    ) -> Result<RawClient, String> {
        let ws = connect_from(url, None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Self::login_on(ws, url, role, twin, key, session, None).await
    }

    /// Logs in on an open socket, signing `host` (default: the host of `url`).
    pub async fn login_on(
        mut ws: Ws,
        url: &str,
        role: Role,
        twin: u32,
        key: KeyPair,
        session: Option<&str>,
        host: Option<&str>,
    ) -> Result<RawClient, String> {
        let Some(Frame::Challenge { nonce, domain }) = next(&mut ws).await else {
            return Err("no challenge".into());
        };
        let host = host
            .unwrap_or_else(|| zos_rmb::directory::relay_domain(url))
            .to_owned();
        let sig = key.sign(&auth_message(
            &nonce, &domain, &host, None, role, twin, session,
        ));
        let auth = Frame::Auth {
            role,
            twin,
            session: session.map(str::to_owned),
            host,
            signature: sig,
        };
        ws.send(Message::Binary(auth.encode().unwrap()))
            .await
            .map_err(|e| format!("send auth: {e}"))?;
        match next(&mut ws).await {
            Some(Frame::Welcome { .. }) => Ok(RawClient {
                ws,
                twin,
                session: session.map(str::to_owned),
                key,
            }),
            Some(Frame::Rejected { reason }) => Err(reason),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    /// A valid request envelope from this client to `dst`.
    pub fn request(&self, dst: &TwinRecord, command: &str, payload: &Value, ttl: u32) -> Envelope {
        let header = Header {
            id: new_id(),
            source: Address {
                twin: self.twin,
                session: self.session.clone(),
            },
            destination: Address::twin(dst.id),
            timestamp: unix_now(),
            ttl,
        };
        let body = Body {
            command: command.into(),
            reference: None,
            error: None,
            payload: serde_json::to_vec(payload).unwrap(),
        };
        Envelope::seal(header, &body, &self.key, &dst.e2e_key.unwrap()).unwrap()
    }

    pub async fn send(&mut self, env: &Envelope) {
        let f = Frame::Envelope(Bytes::from(env.encode().unwrap()));
        self.ws
            .send(Message::Binary(f.encode().unwrap()))
            .await
            .unwrap();
    }

    /// The next frame (with a generous timeout so a bug fails instead of hanging).
    pub async fn recv(&mut self) -> Frame {
        tokio::time::timeout(T, next(&mut self.ws))
            .await
            .expect("no frame within the test timeout")
            .expect("connection closed")
    }

    /// Receives the next envelope and opens it with this client's e2e key.
    pub async fn recv_reply(&mut self) -> Body {
        match self.recv().await {
            Frame::Envelope(b) => Envelope::decode(&b)
                .unwrap()
                .open(&zos_rmb::e2e::e2e_secret(self.key.seed()))
                .unwrap(),
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
}

pub async fn next<S>(ws: &mut S) -> Option<Frame>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Frame::decode(&b).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// `GET path` over plain HTTP/1.1; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Polls `cond` every 20 ms for up to the test timeout.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn record(dir: &MemoryDirectory, id: u32) -> TwinRecord {
    futures::executor::block_on(dir.twin(id)).unwrap().unwrap()
}
