//! The peer: a twin's connection to its relays, with `call` for requests and a [`Router`]
//! for serving.
//!
//! Every incoming envelope goes through the same checks, in order, before anything acts on it:
//! decode → addressed to us → time (TTL, skew, one-hour window) → id not already seen →
//! source twin exists → signature over every field (against the ledger key) → decrypt →
//! record the id (per-sender quota). A reply is accepted only for a pending call, and only
//! from the twin that call went to.

mod inbound;
mod link;
mod router;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use x25519_dalek::StaticSecret;
use zos_types::crypto::KeyPair;

use crate::codec::CodecError;
use crate::directory::{DirectoryError, TwinDirectory, lock};
use crate::envelope::{
    Address, Body, Envelope, Header, MAX_SESSION, MAX_TTL, MessageId, new_id, unix_now,
};
use crate::frame::{BounceCode, Frame};
pub use inbound::PING_COMMAND;
pub use router::{HandlerError, RequestContext, Router};

/// Largest WebSocket message a peer accepts.
pub const MAX_MESSAGE: usize = crate::envelope::MAX_SEALED + 1024;
/// Live ids the replay cache holds before only senders below their fair share are taken.
const REPLAY_CAPACITY: usize = 1_000_000;
/// Live ids one source twin may have in the replay cache; more are refused until some expire.
const REPLAY_PER_SENDER: usize = 50_000;
/// The longest an envelope lives at a receiver, whatever its TTL says (seconds): bounds the
/// replay cache's window. Calls with longer timeouts send envelopes with this TTL.
pub const RECEIVE_WINDOW: u32 = 3600;
/// The longest a reply lives (seconds), and never longer than its request has left.
pub const MAX_REPLY_TTL: u32 = 300;
/// How often a changed replay cache is written to its file (and always at close).
const REPLAY_SAVE_EVERY: Duration = Duration::from_secs(10);

/// Requests buffered before [`Peer::serve`] is called.
const EARLY_REQUESTS: usize = 1024;

/// How to connect a peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Relay URLs (`ws://127.0.0.1:PORT`, `wss://relay.example`); all are used at once.
    pub relays: Vec<String>,
    /// This twin's id.
    pub twin_id: u32,
    /// This twin's key (signing; the X25519 key is derived from its seed).
    pub key: KeyPair,
    /// Session name, so several processes of one twin can be connected at once. `None` is the
    /// default session, which receives requests addressed to the twin.
    pub session: Option<String>,
}

/// Peer failures, as seen by a caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RmbError {
    /// A twin lookup failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The twin is not on the ledger.
    #[error("twin {0} does not exist")]
    UnknownTwin(u32),
    /// The twin has not published an X25519 key, so nothing can be encrypted for it.
    #[error("twin {0} has no e2e key on the ledger")]
    NoE2eKey(u32),
    /// The twin's e2e key is a small-order X25519 point: the shared secret would be all
    /// zeros, so a sealed body would be readable by anyone.
    #[error("twin {0} has a small-order (non-contributory) e2e key; refusing to encrypt to it")]
    WeakE2eKey(u32),
    /// The configuration is unusable.
    #[error("invalid peer config: {0}")]
    Config(String),
    /// No relay could be reached at connect time.
    #[error("cannot connect to relay {url}: {reason}")]
    Connect {
        /// The relay URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A relay refused the login (wrong key for the twin, unknown twin).
    #[error("relay {url} refused login: {reason}")]
    AuthRejected {
        /// The relay URL.
        url: String,
        /// The relay's reason.
        reason: String,
    },
    /// No relay link came up before the call's deadline.
    #[error("not connected to any relay")]
    NotConnected,
    /// The relay link carrying the call dropped before the reply came.
    #[error("relay connection lost while waiting for twin {dst} to answer")]
    Disconnected {
        /// The called twin.
        dst: u32,
    },
    /// No reply within the timeout.
    #[error("twin {dst} did not answer {command} within {after:?}")]
    Timeout {
        /// The called twin.
        dst: u32,
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The remote handler answered with an error.
    #[error("remote error {code}: {message}")]
    Remote {
        /// Application code.
        code: u32,
        /// Message.
        message: String,
    },
    /// A relay refused the envelope.
    #[error("relay refused the message ({code:?}): {message}")]
    Relay {
        /// Why.
        code: BounceCode,
        /// The relay's detail.
        message: String,
    },
    /// The message could not be encoded (too large, name too long).
    #[error("cannot encode message: {0}")]
    Encode(#[from] CodecError),
    /// A payload was not valid JSON.
    #[error("payload is not JSON: {0}")]
    Json(String),
    /// The peer was closed.
    #[error("peer closed")]
    Closed,
}

/// Counts of incoming envelopes by fate (all dropped ones are silent to the sender).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Envelopes received.
    pub received: u64,
    /// Did not decode.
    pub malformed: u64,
    /// Addressed to another twin or session.
    pub misrouted: u64,
    /// Expired, TTL too long, or from the future.
    pub expired: u64,
    /// Source twin unknown, or its lookup failed.
    pub unknown_source: u64,
    /// Signature did not verify.
    pub bad_signature: u64,
    /// Id seen before.
    pub replayed: u64,
    /// Refused because the sender has too many ids in the replay cache (or the cache is
    /// full and the sender holds at least its fair share).
    pub over_quota: u64,
    /// Body did not decrypt or decode.
    pub undecryptable: u64,
    /// A reply that matched no pending call (late, or from the wrong twin).
    pub unexpected_reply: u64,
    /// Requests handed to the router.
    pub requests: u64,
    /// Replies handed to callers.
    pub replies: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    malformed: AtomicU64,
    misrouted: AtomicU64,
    expired: AtomicU64,
    unknown_source: AtomicU64,
    bad_signature: AtomicU64,
    replayed: AtomicU64,
    over_quota: AtomicU64,
    undecryptable: AtomicU64,
    unexpected_reply: AtomicU64,
    requests: AtomicU64,
    replies: AtomicU64,
}

struct Pending {
    dst: u32,
    tx: oneshot::Sender<Result<Value, RmbError>>,
    /// (link index, link generation) that carried the request.
    link: Option<(usize, u64)>,
}

#[derive(Default)]
struct LinkSlot {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    generation: u64,
}

enum Serving {
    /// Requests that arrived before `serve`, with their expiry (unix s).
    Waiting(Vec<(RequestContext, Body, Address, u64)>),
    Ready(Arc<Router>),
}

pub(crate) struct Inner {
    twin: u32,
    session: Option<String>,
    key: KeyPair,
    e2e: StaticSecret,
    dir: Arc<dyn TwinDirectory>,
    relays: Vec<String>,
    links: Mutex<Vec<LinkSlot>>,
    connected: watch::Sender<usize>,
    pending: Mutex<HashMap<MessageId, Pending>>,
    serving: Mutex<Serving>,
    replay: Mutex<crate::replay::SeenIds>,
    /// Where the replay cache survives restarts, if anywhere.
    replay_file: Option<PathBuf>,
    /// Ids recorded since the last save.
    replay_dirty: AtomicBool,
    counters: Counters,
    shutdown: watch::Sender<bool>,
}

/// A twin's handle on the bus. Cheap to clone; all clones share the connections, which close
/// when the last clone is dropped (or on [`Peer::close`]).
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
    /// Dropped with the last clone: closes the links (background tasks hold only `inner`).
    _open: Arc<CloseOnDrop>,
}

struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.save_replay();
        let _ = self.0.shutdown.send(true);
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("twin", &self.inner.twin)
            .field("session", &self.inner.session)
            .finish()
    }
}

impl Peer {
    /// Connects to every relay in `cfg.relays` and logs in. Returns once one relay accepted
    /// the login; fails if all of them failed their first attempt. From then on each relay
    /// link reconnects by itself (backoff up to 5 s) until [`Peer::close`].
    pub async fn connect(cfg: PeerConfig, dir: Arc<dyn TwinDirectory>) -> Result<Peer, RmbError> {
        Peer::connect_with_replay_file(cfg, dir, None).await
    }

    /// [`Peer::connect`], with the receiver's replay cache kept in `replay_file` across
    /// restarts: loaded before any link opens (a missing file is an empty cache; an unreadable
    /// or damaged one is logged and replaced), written atomically (temporary file, fsync,
    /// rename) every [`REPLAY_SAVE_EVERY`] when ids were recorded, and at [`Peer::close`] or
    /// when the last clone is dropped. Ids recorded in the last interval before a crash are
    /// lost (see docs/rmb.md).
    pub async fn connect_with_replay_file(
        cfg: PeerConfig,
        dir: Arc<dyn TwinDirectory>,
        replay_file: Option<PathBuf>,
    ) -> Result<Peer, RmbError> {
        if cfg.relays.is_empty() {
            return Err(RmbError::Config("no relay URL given".into()));
        }
        if let Some(s) = &cfg.session
            && (s.is_empty() || s.len() > MAX_SESSION)
        {
            return Err(RmbError::Config(format!(
                "session name must be 1..={MAX_SESSION} bytes"
            )));
        }
        // Two links to one relay would log in as the same session and displace each other.
        let mut relays = Vec::with_capacity(cfg.relays.len());
        for r in cfg.relays {
            if !relays.contains(&r) {
                relays.push(r);
            }
        }
        let e2e = crate::e2e::e2e_secret(cfg.key.seed());
        let inner = Arc::new(Inner {
            twin: cfg.twin_id,
            session: cfg.session,
            key: cfg.key,
            e2e,
            dir,
            links: Mutex::new((0..relays.len()).map(|_| LinkSlot::default()).collect()),
            relays,
            connected: watch::channel(0).0,
            pending: Mutex::new(HashMap::new()),
            serving: Mutex::new(Serving::Waiting(Vec::new())),
            replay: Mutex::new(load_replay(replay_file.as_deref())),
            replay_dirty: AtomicBool::new(false),
            replay_file,
            counters: Counters::default(),
            shutdown: watch::channel(false).0,
        });
        inner.warn_if_ledger_differs().await;
        let (first_tx, mut first_rx) = mpsc::channel(inner.relays.len());
        for i in 0..inner.relays.len() {
            tokio::spawn(link::run(inner.clone(), i, first_tx.clone()));
        }
        drop(first_tx);
        if inner.replay_file.is_some() {
            tokio::spawn(save_replay_periodically(inner.clone()));
        }
        let mut first_error = None;
        while let Some(r) = first_rx.recv().await {
            match r {
                Ok(()) => {
                    return Ok(Peer {
                        _open: Arc::new(CloseOnDrop(inner.clone())),
                        inner,
                    });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let _ = inner.shutdown.send(true);
        Err(first_error.unwrap_or(RmbError::NotConnected))
    }

    /// Sends `command` with `payload` to twin `dst` and waits up to `timeout` for the reply.
    /// The envelope's TTL is the timeout (rounded up to whole seconds, at most
    /// [`RECEIVE_WINDOW`]): a reply nobody waits for is useless.
    pub async fn call(
        &self,
        dst: u32,
        command: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, RmbError> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(u64::from(MAX_TTL)));
        let ttl = u32::try_from(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0))
            .unwrap_or(RECEIVE_WINDOW)
            .clamp(1, RECEIVE_WINDOW.min(MAX_TTL));
        let body = Body {
            command: command.to_owned(),
            reference: None,
            error: None,
            payload: serde_json::to_vec(payload).map_err(|e| RmbError::Json(e.to_string()))?,
        };
        let inner = &self.inner;
        let timed_out = || RmbError::Timeout {
            dst,
            command: command.to_owned(),
            after: timeout,
        };
        // Twin lookups count against the timeout too (the ledger may be slow).
        let (id, frame) =
            tokio::time::timeout_at(deadline.into(), inner.seal(Address::twin(dst), &body, ttl))
                .await
                .map_err(|_| timed_out())??;
        let (tx, rx) = oneshot::channel();
        lock(&inner.pending).insert(
            id,
            Pending {
                dst,
                tx,
                link: None,
            },
        );
        let _guard = PendingGuard { inner, id };
        inner.send(frame, Some(id), deadline).await?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RmbError::Closed),
            Err(_) => Err(timed_out()),
        }
    }

    /// Starts dispatching incoming requests to `router` (replacing any earlier router).
    /// Requests that arrived before the first `serve` are dispatched now.
    pub fn serve(&self, router: Router) {
        let router = Arc::new(router);
        let early = {
            let mut s = lock(&self.inner.serving);
            match std::mem::replace(&mut *s, Serving::Ready(router.clone())) {
                Serving::Waiting(v) => v,
                Serving::Ready(_) => Vec::new(),
            }
        };
        for (ctx, body, reply_to, expires_at) in early {
            tokio::spawn(inbound::handle_request(
                self.inner.clone(),
                router.clone(),
                ctx,
                body,
                reply_to,
                expires_at,
            ));
        }
    }

    /// Sets the replay cache's bounds: live ids per source twin (default 50,000) and in
    /// total (default 1,000,000; past it only twins below their fair share are taken). Ids
    /// already recorded stay.
    pub fn set_replay_limits(&self, per_sender: usize, total: usize) {
        lock(&self.inner.replay).set_limits(per_sender, total);
    }

    /// This twin's id.
    pub fn twin_id(&self) -> u32 {
        self.inner.twin
    }

    /// Relay links currently logged in.
    pub fn connected(&self) -> usize {
        *self.inner.connected.borrow()
    }

    /// Waits until at least one relay link is up; false on timeout.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Counts of incoming envelopes by fate.
    pub fn stats(&self) -> PeerStats {
        let c = &self.inner.counters;
        PeerStats {
            received: c.received.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            misrouted: c.misrouted.load(Relaxed),
            expired: c.expired.load(Relaxed),
            unknown_source: c.unknown_source.load(Relaxed),
            bad_signature: c.bad_signature.load(Relaxed),
            replayed: c.replayed.load(Relaxed),
            over_quota: c.over_quota.load(Relaxed),
            undecryptable: c.undecryptable.load(Relaxed),
            unexpected_reply: c.unexpected_reply.load(Relaxed),
            requests: c.requests.load(Relaxed),
            replies: c.replies.load(Relaxed),
        }
    }

    /// Closes every relay link and stops reconnecting; pending calls fail. Dropping the last
    /// clone of a `Peer` does the same.
    pub fn close(&self) {
        self.inner.save_replay();
        let _ = self.inner.shutdown.send(true);
    }
}

/// The replay cache saved at `path`, or an empty one.
fn load_replay(path: Option<&Path>) -> crate::replay::SeenIds {
    let mut seen = crate::replay::SeenIds::new(REPLAY_PER_SENDER, REPLAY_CAPACITY);
    let Some(path) = path else { return seen };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return seen,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the replay cache; starting empty");
            return seen;
        }
    };
    let now = unix_now();
    match crate::replay::decode_file(&bytes, now, 2 * REPLAY_CAPACITY) {
        Ok(entries) => {
            let n = entries.len();
            for (twin, id, exp) in entries {
                // Quotas held when the ids were taken; a refusal here only drops an id the
                // sender could not have had recorded anyway.
                let _ = seen.insert(twin, id, exp, now);
            }
            tracing::debug!(path = %path.display(), ids = n, "replay cache loaded");
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "damaged replay cache; starting empty");
        }
    }
    seen
}

async fn save_replay_periodically(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut tick = tokio::time::interval(REPLAY_SAVE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if inner.replay_dirty.load(Relaxed) {
                    let i = inner.clone();
                    let _ = tokio::task::spawn_blocking(move || i.save_replay()).await;
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Removes a call's pending entry however the call ends.
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: MessageId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.id);
    }
}

impl Inner {
    /// Writes the live replay ids to the replay file (if any) atomically; failures are logged.
    fn save_replay(&self) {
        let Some(path) = &self.replay_file else {
            return;
        };
        self.replay_dirty.store(false, Relaxed);
        let entries = lock(&self.replay).live_entries(unix_now());
        let bytes = crate::replay::encode_file(&entries);
        let tmp = path.with_extension("tmp");
        let res = (|| -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = res {
            // Try again at the next interval.
            self.replay_dirty.store(true, Relaxed);
            tracing::warn!(path = %path.display(), error = %e, "cannot save the replay cache");
        }
    }

    async fn warn_if_ledger_differs(&self) {
        match self.dir.twin(self.twin).await {
            Ok(Some(rec)) => {
                if rec.account != self.key.public() {
                    tracing::warn!(
                        twin = self.twin,
                        "key does not match the twin's ledger account; relays will refuse the login"
                    );
                }
                let own = x25519_dalek::PublicKey::from(&self.e2e).to_bytes();
                if rec.e2e_key != Some(own) {
                    tracing::warn!(
                        twin = self.twin,
                        "ledger e2e key differs from the one derived from this seed; messages to this twin cannot be decrypted"
                    );
                }
            }
            Ok(None) => tracing::warn!(twin = self.twin, "twin not found on the ledger"),
            Err(e) => tracing::warn!(twin = self.twin, error = %e, "own twin lookup failed"),
        }
    }

    /// Seals `body` for `dst`: returns the envelope id and the encoded frame.
    async fn seal(
        &self,
        dst: Address,
        body: &Body,
        ttl: u32,
    ) -> Result<(MessageId, Bytes), RmbError> {
        let rec = self
            .dir
            .twin(dst.twin)
            .await?
            .ok_or(RmbError::UnknownTwin(dst.twin))?;
        let e2e = rec.e2e_key.ok_or(RmbError::NoE2eKey(dst.twin))?;
        if zos_types::crypto::x25519_low_order(&e2e) {
            return Err(RmbError::WeakE2eKey(dst.twin));
        }
        let header = Header {
            id: new_id(),
            source: Address {
                twin: self.twin,
                session: self.session.clone(),
            },
            destination: dst,
            timestamp: unix_now(),
            ttl,
        };
        let id = header.id;
        let env = Envelope::seal(header, body, &self.key, &e2e)?;
        let frame = Frame::Envelope(Bytes::from(env.encode()?)).encode()?;
        Ok((id, frame))
    }

    /// Sends a frame on the first logged-in link, waiting for one until `deadline`.
    async fn send(
        &self,
        frame: Bytes,
        call: Option<MessageId>,
        deadline: Instant,
    ) -> Result<(), RmbError> {
        let mut connected = self.connected.subscribe();
        loop {
            {
                let links = lock(&self.links);
                for (i, slot) in links.iter().enumerate() {
                    if let Some(tx) = &slot.tx
                        && tx.send(frame.clone()).is_ok()
                    {
                        if let Some(id) = call
                            && let Some(p) = lock(&self.pending).get_mut(&id)
                        {
                            p.link = Some((i, slot.generation));
                        }
                        return Ok(());
                    }
                }
            }
            if *self.shutdown.borrow() {
                return Err(RmbError::Closed);
            }
            let wait = tokio::time::timeout_at(deadline.into(), connected.changed());
            match wait.await {
                Ok(Ok(())) => continue,
                _ => return Err(RmbError::NotConnected),
            }
        }
    }

    /// A link went down: calls it carried fail now rather than at their timeout.
    fn fail_calls_on(&self, link: (usize, u64)) {
        let mut pending = lock(&self.pending);
        let ids: Vec<MessageId> = pending
            .iter()
            .filter(|(_, p)| p.link == Some(link))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = pending.remove(&id) {
                let _ = p.tx.send(Err(RmbError::Disconnected { dst: p.dst }));
            }
        }
    }
}
