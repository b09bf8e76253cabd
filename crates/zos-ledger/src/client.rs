//! The typed client every other crate uses: reads and submissions over HTTP JSON-RPC,
//! subscriptions over WebSocket.
//!
//! HTTP uses `reqwest` (no default features: JSON, and rustls only through our own config): it
//! brings connection pooling and is built on the same hyper 1 that axum already pulls in.
//!
//! Transport security ([`Trust`]): `https://` needs a pinned certificate (no web PKI); plain
//! `http://` is accepted only to a loopback address (dev ledgers, tests). Answer security: with
//! the producer key pinned (or learned over a pinned TLS channel), the `verified_*` reads check
//! each answer against a signed head and a Merkle proof (`crate::proof`), so they hold even when
//! the channel is not trusted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{SinkExt as _, Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message;
use zos_types::crypto::{KeyPair, PublicKey};

use crate::rpc::{NotificationParams, Request, Response, codes, methods};
use crate::tx::{Block, BlockHeader, Call, EventRecord, Receipt, SignedTransaction, TxLocation};
use crate::types::{
    Account, Balance, Contract, Farm, LedgerInfo, Node, PricingPolicy, Twin, ZosVersion,
};

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port`.
    #[error("bad ledger URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP request failed (connection refused, …).
    #[error("ledger {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The transaction was rejected; the text is the ledger's reason.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The ledger answered with an error.
    #[error("ledger error {code} on {method}: {message}")]
    Rpc {
        /// Method called.
        method: String,
        /// JSON-RPC code.
        code: i64,
        /// Message.
        message: String,
    },
    /// The answer did not decode.
    #[error("bad answer to {method}: {reason}")]
    Decode {
        /// Method called.
        method: String,
        /// Decoder message.
        reason: String,
    },
    /// The WebSocket failed or closed.
    #[error("subscription: {0}")]
    WebSocket(String),
    /// An answer did not verify against a signed head (or there is no key to verify with).
    #[error("unverified answer: {0}")]
    Unverified(String),
}

/// What a client trusts: the ledger's certificate (for `https://`) and the producer key (for
/// verified reads).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// DER of the one certificate an `https://` ledger may present.
    pub cert: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The producer key heads must be signed with. Without it, the key is taken from
    /// `ledger_info` once, which is only as trustworthy as the channel (a pinned TLS
    /// certificate makes it so; plain loopback HTTP is trusted as the local machine is).
    pub producer: Option<PublicKey>,
}

impl Trust {
    /// Reads a pinned certificate file (PEM).
    pub fn with_cert_file(mut self, path: &std::path::Path) -> Result<Self, ClientError> {
        self.cert = Some(crate::tls::read_cert(path).map_err(|e| ClientError::Url {
            url: path.display().to_string(),
            reason: e.to_string(),
        })?);
        Ok(self)
    }
}

/// A state value proven against a head signed by the producer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T> {
    /// The value (`None`: proven absent).
    pub value: Option<T>,
    /// Height of the signed head it was proven at.
    pub height: u64,
}

fn is_loopback_host(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// A stream of subscription items; it ends (after an `Err`) when the connection is lost:
/// resubscribe from the last height you processed + 1.
pub type SubscriptionStream<T> = Pin<Box<dyn Stream<Item = Result<T, ClientError>> + Send>>;

/// One ledger server of a client's list.
#[derive(Debug)]
struct Endpoint {
    http: String,
    ws: String,
}

/// How long a client with several ledger URLs keeps trying the others (an election takes a
/// lease period) before it reports the failure.
const FAILOVER_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// A ledger client; `Clone` is cheap (shared connection pool and cached ledger identity).
///
/// Several URLs (`URL,URL,…`: the servers of one etcd-backed ledger) make it fail over: a
/// request that cannot reach a server, or that a server answers with an internal error (no
/// producer during an election), goes to the next one, for up to 30 s; subscriptions resume on
/// another server from the last height seen, with no event missed or delivered twice.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    http: reqwest::Client,
    endpoints: Arc<[Endpoint]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    next_id: Arc<AtomicU64>,
    genesis_hash: Arc<OnceCell<[u8; 32]>>,
    /// Pinned TLS config for `https://`/`wss://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The producer key (pinned, or learned once from `ledger_info`).
    producer: Arc<OnceCell<PublicKey>>,
    /// Whether `producer` was pinned by the caller (not learned from the ledger).
    producer_pinned: bool,
}

impl LedgerClient {
    /// A client for `url`, e.g. `http://127.0.0.1:8900` (no request is made yet), trusting
    /// nothing pinned: loopback `http://` only.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_trust(url, Trust::default())
    }

    /// A client for `http://host:port` (loopback only) or `https://host:port` (needs
    /// `trust.cert`), or a comma-separated list of them (one scheme; failover).
    pub fn with_trust(urls: &str, trust: Trust) -> Result<Self, ClientError> {
        let list: Vec<&str> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .collect();
        let Some(first) = list.first().copied() else {
            return Err(ClientError::Url {
                url: urls.to_string(),
                reason: "no URL given".into(),
            });
        };
        let mut endpoints = Vec::new();
        let mut all_secure = None;
        let mut all_loopback = true;
        for url in &list {
            let bad = |reason: &str| ClientError::Url {
                url: url.to_string(),
                reason: reason.to_string(),
            };
            let (rest, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
                (Some(r), _) => (r, false),
                (_, Some(r)) => (r, true),
                _ => return Err(bad("must start with http:// or https://")),
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(bad("must be http(s)://host:port"));
            }
            if all_secure.is_some_and(|s| s != secure) {
                return Err(bad("all ledger URLs of a list must use the same scheme"));
            }
            all_secure = Some(secure);
            all_loopback &= is_loopback_host(rest);
            endpoints.push(Endpoint {
                http: url.to_string(),
                ws: format!("{}://{rest}/ws", if secure { "wss" } else { "ws" }),
            });
        }
        let url = first;
        let secure = all_secure.unwrap_or(false);
        let bad = |reason: &str| ClientError::Url {
            url: urls.to_string(),
            reason: reason.to_string(),
        };
        // Connecting fails fast; a request itself may legitimately wait for a block interval.
        let mut builder =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        let tls = match (secure, trust.cert) {
            (true, Some(cert)) => {
                let cfg =
                    crate::tls::pinned_client_config(cert).map_err(|e| bad(&e.to_string()))?;
                builder = builder.use_preconfigured_tls(cfg.clone()).https_only(true);
                Some(Arc::new(cfg))
            }
            (true, None) => {
                return Err(bad(
                    "https needs the ledger's certificate pinned (--ledger-cert FILE)",
                ));
            }
            (false, Some(_)) => {
                return Err(bad("a pinned certificate needs an https:// URL"));
            }
            (false, None) if !all_loopback => {
                return Err(bad(
                    "plain http is only for a ledger on this machine (loopback); use https:// \
                     with --ledger-cert",
                ));
            }
            (false, None) => None,
        };
        let http = builder.build().map_err(|e| bad(&e.to_string()))?;
        let producer = Arc::new(OnceCell::new());
        let producer_pinned = trust.producer.is_some();
        if let Some(p) = trust.producer {
            let _ = producer.set(p);
        }
        let _ = url;
        Ok(LedgerClient {
            http,
            endpoints: endpoints.into(),
            current: Default::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            genesis_hash: Arc::new(OnceCell::new()),
            tls,
            producer,
            producer_pinned,
        })
    }

    /// Whether the caller pinned the producer key ([`Trust::producer`]): then answers can be
    /// checked without trusting the channel, and twin lookups for the bus are (see zos-rmb's
    /// `LedgerDirectory`).
    pub fn pins_producer(&self) -> bool {
        self.producer_pinned
    }

    /// The producer key heads are checked against.
    pub async fn producer(&self) -> Result<PublicKey, ClientError> {
        self.producer
            .get_or_try_init(|| async {
                self.info().await?.producer.ok_or_else(|| {
                    ClientError::Unverified("the ledger's genesis names no producer key".into())
                })
            })
            .await
            .copied()
    }

    /// The value of a raw state key, proven against the latest signed head.
    pub async fn verified_raw(&self, key: &[u8]) -> Result<Verified<Vec<u8>>, ClientError> {
        let producer = self.producer().await?;
        let gh = self.genesis_hash().await?;
        let proof: crate::proof::StateProof =
            self.call(methods::PROOF, json!([hex::encode(key)])).await?;
        let value = proof
            .verify(&producer, &gh, key)
            .map_err(|e| ClientError::Unverified(e.to_string()))?;
        Ok(Verified {
            value,
            height: proof.head.header.height,
        })
    }

    async fn verified<T: DeserializeOwned>(
        &self,
        what: &str,
        key: &[u8],
    ) -> Result<Verified<T>, ClientError> {
        let raw = self.verified_raw(key).await?;
        let value = match raw.value {
            None => None,
            Some(b) => Some(serde_json::from_slice(&b).map_err(|e| ClientError::Decode {
                method: format!("{} ({what})", methods::PROOF),
                reason: e.to_string(),
            })?),
        };
        Ok(Verified {
            value,
            height: raw.height,
        })
    }

    /// A contract (any state), proven against a signed head.
    pub async fn verified_contract(&self, id: u64) -> Result<Verified<Contract>, ClientError> {
        self.verified("contract", &crate::state::keys::contract(id))
            .await
    }

    /// A node, proven against a signed head.
    pub async fn verified_node(&self, id: u32) -> Result<Verified<Node>, ClientError> {
        self.verified("node", &crate::state::keys::node(id)).await
    }

    /// A twin, proven against a signed head.
    pub async fn verified_twin(&self, id: u32) -> Result<Verified<Twin>, ClientError> {
        self.verified("twin", &crate::state::keys::twin(id)).await
    }

    /// The base URL of the server in use.
    pub fn url(&self) -> &str {
        &self.endpoint().http
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// Moves to the next server (after `idx` failed; no-op if another caller already moved).
    fn rotate(&self, idx: usize) {
        let next = (idx + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Calls `method` with positional `params` (on the next server too, if the client has
    /// several and this one cannot answer).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, ClientError> {
        self.call_failover(method, params, &mut false).await
    }

    /// [`call`](Self::call); `retried` is set when an attempt failed in a way that leaves
    /// its effect unknown (the request may have been served).
    async fn call_failover<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
        retried: &mut bool,
    ) -> Result<T, ClientError> {
        if self.endpoints.len() == 1 {
            return self.call_one(method, params).await;
        }
        let started = std::time::Instant::now();
        let mut attempts = 0usize;
        loop {
            let idx = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            match self.call_one(method, params.clone()).await {
                Err(e) if failover_worthy(&e) => {
                    *retried = true;
                    self.rotate(idx);
                    attempts += 1;
                    if started.elapsed() > FAILOVER_BUDGET {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, method, "ledger server failed; trying the next");
                    if attempts % self.endpoints.len() == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
                r => return r,
            }
        }
    }

    /// Calls `method` on the server in use only.
    pub async fn call_one<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, ClientError> {
        let url = &self.endpoint().http;
        let req = Request {
            jsonrpc: "2.0".into(),
            id: Some(json!(self.next_id.fetch_add(1, Ordering::Relaxed))),
            method: method.into(),
            params,
        };
        let http_err = |source| ClientError::Http {
            url: url.to_string(),
            source,
        };
        let resp: Response = self
            .http
            .post(url)
            .json(&req)
            .send()
            .await
            .map_err(http_err)?
            .json()
            .await
            .map_err(http_err)?;
        decode_response(method, resp)
    }

    /// Chain facts (genesis hash, head, dev mode, council, billing parameters).
    pub async fn info(&self) -> Result<LedgerInfo, ClientError> {
        self.call(methods::INFO, json!([])).await
    }

    /// The genesis hash (fetched once, then cached).
    pub async fn genesis_hash(&self) -> Result<[u8; 32], ClientError> {
        self.genesis_hash
            .get_or_try_init(|| async {
                let info = self.info().await?;
                crate::tx::decode32(&info.genesis_hash).ok_or_else(|| ClientError::Decode {
                    method: methods::INFO.into(),
                    reason: "genesis_hash is not 32 hex bytes".into(),
                })
            })
            .await
            .copied()
    }

    /// Twin by id.
    pub async fn twin(&self, id: u32) -> Result<Option<Twin>, ClientError> {
        self.call(methods::TWIN, json!([id])).await
    }
    /// Twin by account.
    pub async fn twin_by_account(&self, account: &PublicKey) -> Result<Option<Twin>, ClientError> {
        self.call(methods::TWIN_BY_ACCOUNT, json!([account])).await
    }
    /// Farm by id.
    pub async fn farm(&self, id: u32) -> Result<Option<Farm>, ClientError> {
        self.call(methods::FARM, json!([id])).await
    }
    /// Farm by name.
    pub async fn farm_by_name(&self, name: &str) -> Result<Option<Farm>, ClientError> {
        self.call(methods::FARM_BY_NAME, json!([name])).await
    }
    /// Node by id.
    pub async fn node(&self, id: u32) -> Result<Option<Node>, ClientError> {
        self.call(methods::NODE, json!([id])).await
    }
    /// Node by its twin.
    pub async fn node_by_twin(&self, twin: u32) -> Result<Option<Node>, ClientError> {
        self.call(methods::NODE_BY_TWIN, json!([twin])).await
    }
    /// Contract by id (any state).
    pub async fn contract(&self, id: u64) -> Result<Option<Contract>, ClientError> {
        self.call(methods::CONTRACT, json!([id])).await
    }
    /// Active (created or grace period) contracts of a node.
    pub async fn node_contracts(&self, node_id: u32) -> Result<Vec<Contract>, ClientError> {
        self.call(methods::NODE_CONTRACTS, json!([node_id])).await
    }
    /// All contracts of a twin (any state).
    pub async fn twin_contracts(&self, twin_id: u32) -> Result<Vec<Contract>, ClientError> {
        self.call(methods::TWIN_CONTRACTS, json!([twin_id])).await
    }
    /// Active name contract by name.
    pub async fn name_contract(&self, name: &str) -> Result<Option<Contract>, ClientError> {
        self.call(methods::NAME_CONTRACT, json!([name])).await
    }
    /// Balance and nonce of an account.
    pub async fn account(&self, account: &PublicKey) -> Result<Account, ClientError> {
        self.call(methods::ACCOUNT, json!([account])).await
    }
    /// Balance of an account.
    pub async fn balance(&self, account: &PublicKey) -> Result<Balance, ClientError> {
        Ok(self.account(account).await?.balance)
    }
    /// Current pricing policy.
    pub async fn pricing_policy(&self) -> Result<PricingPolicy, ClientError> {
        self.call(methods::PRICING, json!([])).await
    }
    /// Counters of the ledger process.
    pub async fn metrics(&self) -> Result<crate::metrics::MetricsSnapshot, ClientError> {
        self.call(methods::METRICS, json!([])).await
    }
    /// Target node software version.
    pub async fn zos_version(&self) -> Result<ZosVersion, ClientError> {
        self.call(methods::ZOS_VERSION, json!([])).await
    }
    /// Head height.
    pub async fn head(&self) -> Result<u64, ClientError> {
        self.call(methods::HEAD, json!([])).await
    }
    /// Block by height.
    pub async fn block(&self, height: u64) -> Result<Option<Block>, ClientError> {
        self.call(methods::BLOCK, json!([height])).await
    }
    /// Events of one block.
    pub async fn events(&self, height: u64) -> Result<Vec<EventRecord>, ClientError> {
        self.call(methods::EVENTS, json!([height])).await
    }
    /// Where a transaction (hex hash) landed, if it did.
    pub async fn tx(&self, hash: &str) -> Result<Option<TxLocation>, ClientError> {
        self.call(methods::TX, json!([hash])).await
    }

    /// Submits a signed transaction; answers once its block is durable.
    /// A rejection is [`ClientError::Rejected`] with the reason.
    ///
    /// When an attempt failed without a clear answer (the server died, the producer changed)
    /// and a retry is then refused for a stale nonce, the transaction may be the one that
    /// used the nonce: if it is in the chain, its receipt is rebuilt and returned, so a
    /// transaction is acknowledged exactly when it is in the chain, once.
    pub async fn submit(&self, tx: SignedTransaction) -> Result<Receipt, ClientError> {
        let mut retried = false;
        let r = self
            .call_failover(methods::SUBMIT, json!([tx]), &mut retried)
            .await;
        match r {
            Err(ClientError::Rejected(reason)) if retried && reason.starts_with("stale nonce") => {
                match self.landed(&tx).await? {
                    Some(receipt) => Ok(receipt),
                    None => Err(ClientError::Rejected(reason)),
                }
            }
            r => r,
        }
    }

    /// The receipt of `tx` if it is in the chain (the server asked may lag the producer by a
    /// few milliseconds: asked a few times).
    pub async fn landed(&self, tx: &SignedTransaction) -> Result<Option<Receipt>, ClientError> {
        let gh = self.genesis_hash().await?;
        let hash = hex::encode(tx.hash(&gh));
        for _ in 0..20 {
            if let Some(loc) = self.tx(&hash).await? {
                let events = match loc.events {
                    Some([first, end]) => {
                        let all = self.events(loc.height).await?;
                        all.get(first as usize..end as usize)
                            .map(<[EventRecord]>::to_vec)
                            .unwrap_or_default()
                    }
                    None => Vec::new(),
                };
                return Ok(Some(Receipt {
                    tx_hash: hash,
                    height: loc.height,
                    index: loc.index,
                    events,
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// Fetches the account nonce, signs `call` with `key` and submits it. Concurrent `send`s from
    /// one key race for the same nonce (one gets `Rejected("stale nonce …")`): serialise them,
    /// or sign with explicit nonces and [`submit`](Self::submit).
    pub async fn send(&self, key: &KeyPair, call: Call) -> Result<Receipt, ClientError> {
        let gh = self.genesis_hash().await?;
        let nonce = self.account(&key.public()).await?.nonce;
        self.submit(SignedTransaction::sign(key, &gh, nonce, call))
            .await
    }

    /// Events from `from_height` on: first the stored ones (catch-up), then live ones, each
    /// exactly once and in (height, index) order.
    pub async fn subscribe_events(
        &self,
        from_height: u64,
    ) -> Result<SubscriptionStream<EventRecord>, ClientError> {
        self.subscribe(
            methods::SUBSCRIBE_EVENTS,
            methods::EVENT_NOTIFICATION,
            from_height,
        )
        .await
    }

    /// Block headers from `from_height` on, each exactly once and in order.
    pub async fn subscribe_blocks(
        &self,
        from_height: u64,
    ) -> Result<SubscriptionStream<BlockHeader>, ClientError> {
        self.subscribe(
            methods::SUBSCRIBE_BLOCKS,
            methods::BLOCK_NOTIFICATION,
            from_height,
        )
        .await
    }

    /// Dev only: moves ledger time forward and commits a block at the new time (billing runs).
    pub async fn dev_advance_time(&self, seconds: u64) -> Result<(), ClientError> {
        let _height: u64 = self
            .call(methods::DEV_ADVANCE_TIME, json!([seconds]))
            .await?;
        Ok(())
    }

    /// Dev only: transfers `amount` from the faucet to `account`.
    pub async fn dev_fund(
        &self,
        account: &PublicKey,
        amount: Balance,
    ) -> Result<Receipt, ClientError> {
        self.call(methods::DEV_FUND, json!([account, amount])).await
    }

    async fn subscribe<T: DeserializeOwned + Send + Positioned + 'static>(
        &self,
        method: &'static str,
        notification: &'static str,
        from: u64,
    ) -> Result<SubscriptionStream<T>, ClientError> {
        if self.endpoints.len() == 1 {
            return self.subscribe_once(method, notification, from).await;
        }
        // Several servers: resume on the next one from the height of the last item seen,
        // dropping what was already delivered (a block's events may have been cut halfway).
        struct S<T> {
            client: LedgerClient,
            from: u64,
            last: Option<(u64, u32)>,
            inner: Option<SubscriptionStream<T>>,
            failing_since: Option<std::time::Instant>,
            attempts: usize,
        }
        let first = self.subscribe_once::<T>(method, notification, from).await;
        let (inner, failing_since) = match first {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(std::time::Instant::now())),
        };
        let state = S {
            client: self.clone(),
            from,
            last: None,
            inner,
            failing_since,
            attempts: 0,
        };
        let stream = futures::stream::unfold(Some(state), move |st| async move {
            let mut st = st?;
            loop {
                let Some(inner) = st.inner.as_mut() else {
                    let idx = st.client.current.load(Ordering::Relaxed) % st.client.endpoints.len();
                    let resume = st.last.map_or(st.from, |(h, _)| h);
                    match st
                        .client
                        .subscribe_once::<T>(method, notification, resume)
                        .await
                    {
                        Ok(s) => st.inner = Some(s),
                        Err(e) => {
                            st.client.rotate(idx);
                            st.attempts += 1;
                            let since =
                                *st.failing_since.get_or_insert_with(std::time::Instant::now);
                            if since.elapsed() > FAILOVER_BUDGET {
                                return Some((Err(e), None));
                            }
                            if st.attempts % st.client.endpoints.len() == 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            }
                        }
                    }
                    continue;
                };
                match inner.next().await {
                    Some(Ok(item)) => {
                        let pos = item.position();
                        if st.last.is_some_and(|l| pos <= l) {
                            continue;
                        }
                        st.last = Some(pos);
                        st.failing_since = None;
                        return Some((Ok(item), Some(st)));
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::debug!(error = %e, "ledger subscription lost; resuming");
                        }
                        let idx =
                            st.client.current.load(Ordering::Relaxed) % st.client.endpoints.len();
                        st.client.rotate(idx);
                        st.inner = None;
                        st.failing_since.get_or_insert_with(std::time::Instant::now);
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn subscribe_once<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        notification: &'static str,
        from: u64,
    ) -> Result<SubscriptionStream<T>, ClientError> {
        let ws_err = |e: &dyn std::fmt::Display| ClientError::WebSocket(e.to_string());
        // TCP_NODELAY: the pongs this stream sends must not wait behind Nagle.
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let ws_url = self.endpoint().ws.clone();
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(&*ws_url, None, true, connector)
                .await
                .map_err(|e| ws_err(&e))?;
        let req = Request {
            jsonrpc: "2.0".into(),
            id: Some(json!(0)),
            method: method.into(),
            params: json!([from]),
        };
        let text = serde_json::to_string(&req).map_err(|e| ws_err(&e))?;
        ws.send(Message::Text(text.into()))
            .await
            .map_err(|e| ws_err(&e))?;
        // The first text frame is the answer to the subscribe request.
        let sub: u64 = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let resp: Response = serde_json::from_str(&t).map_err(|e| ws_err(&e))?;
                    break decode_response(method, resp)?;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ws_err(&e)),
                None => return Err(ClientError::WebSocket("closed before answering".into())),
            }
        };
        let stream = futures::stream::unfold(Some(ws), move |ws| async move {
            let mut ws = ws?;
            loop {
                let item = match ws.next().await {
                    Some(Ok(Message::Text(t))) => parse_notification::<T>(&t, notification, sub),
                    Some(Ok(Message::Close(_))) | None => {
                        Some(Err(ClientError::WebSocket("connection closed".into())))
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => Some(Err(ClientError::WebSocket(e.to_string()))),
                };
                match item {
                    None => continue,
                    Some(Ok(v)) => return Some((Ok(v), Some(ws))),
                    Some(Err(e)) => return Some((Err(e), None)),
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// Where a subscription item sits in the chain (resuming skips what was delivered).
trait Positioned {
    fn position(&self) -> (u64, u32);
}

impl Positioned for EventRecord {
    fn position(&self) -> (u64, u32) {
        (self.height, self.index)
    }
}

impl Positioned for BlockHeader {
    fn position(&self) -> (u64, u32) {
        (self.height, 0)
    }
}

/// Errors after which another server may do better: unreachable, or an internal error (no
/// producer during an election, a producer that just lost its lease) or busy.
fn failover_worthy(e: &ClientError) -> bool {
    match e {
        ClientError::Http { .. } => true,
        ClientError::Rpc { code, .. } => *code == codes::INTERNAL || *code == codes::BUSY,
        _ => false,
    }
}

fn parse_notification<T: DeserializeOwned>(
    text: &str,
    method: &str,
    sub: u64,
) -> Option<Result<T, ClientError>> {
    #[derive(serde::Deserialize)]
    struct Note {
        method: Option<String>,
        params: Option<NotificationParams>,
    }
    let note: Note = match serde_json::from_str(text) {
        Ok(n) => n,
        Err(e) => return Some(Err(ClientError::WebSocket(format!("bad frame: {e}")))),
    };
    let params = note.params.filter(|p| p.subscription == sub)?;
    if note.method.as_deref() != Some(method) {
        return None;
    }
    Some(
        serde_json::from_value(params.result).map_err(|e| ClientError::Decode {
            method: method.into(),
            reason: e.to_string(),
        }),
    )
}

fn decode_response<T: DeserializeOwned>(method: &str, resp: Response) -> Result<T, ClientError> {
    if let Some(e) = resp.error {
        return Err(if e.code == codes::REJECTED {
            ClientError::Rejected(e.message)
        } else {
            ClientError::Rpc {
                method: method.into(),
                code: e.code,
                message: e.message,
            }
        });
    }
    serde_json::from_value(resp.result.unwrap_or(Value::Null)).map_err(|e| ClientError::Decode {
        method: method.into(),
        reason: e.to_string(),
    })
}
