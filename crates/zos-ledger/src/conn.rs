//! The ledger's accept loop: a semaphore of `max_connections` slots around `accept`, hyper's
//! HTTP/1 server per connection (with its header-read timeout on a tokio timer), TCP_NODELAY on
//! every socket, and a polite refusal (HTTP 503 + JSON-RPC error) when every slot is taken.
//! A WebSocket keeps its connection's slot after the upgrade (see [`ConnCtx`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::header::{CONNECTION, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::server::App;
use crate::throttle::Source;

/// Largest HTTP request head (hyper's read buffer; its minimum is 8 KiB). JSON-RPC requests
/// need a few hundred bytes of headers.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Refusals answered politely at once; more are closed without an answer.
const MAX_REFUSALS: usize = 64;

/// How long a refused connection is kept to read what the client sent (closing a socket with
/// unread input resets it, and the client could lose the 503).
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// What a handler knows about its connection (a request extension).
#[derive(Clone, Debug)]
pub(crate) struct ConnCtx {
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection's slot: a WebSocket session takes a clone, so the slot stays taken
    /// until the session ends, after hyper has handed the socket over.
    pub _slot: Arc<Slot>,
}

/// One of `max_connections`; counted in `connections_open` and in its source's count while
/// it lives.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    per_source: Arc<PerSource>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection(false);
        self.per_source.release(self.source);
    }
}

/// Open connections per source address (an IPv4 address or an IPv6 /64), so that one host
/// cannot take every slot.
#[derive(Debug, Default)]
pub(crate) struct PerSource {
    open: Mutex<HashMap<Source, usize>>,
}

impl PerSource {
    /// Counts a connection from `src` unless it has `max` open already.
    fn try_take(&self, src: Source, max: usize) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(src).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, src: Source) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&src) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&src);
            }
        }
    }
}

/// Accepts until the listener fails for good; `stop` asks every connection to finish.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
) {
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let per_source = Arc::new(PerSource::default());
    let per_ip = app.limits.max_connections_per_ip;
    let mut stop_accepting = stop.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_accepting.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the cap should keep us
                // below the descriptor limit, but other parts of the process use descriptors too.
                warn!(error = %e, "ledger accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small JSON-RPC answers and notifications must leave at once, not wait for the
        // previous segment's ACK (Nagle + delayed ACK cost up to 40 ms per event).
        let _ = stream.set_nodelay(true);
        let source = Source::from(peer.ip());
        let refusal = match app.slots.clone().try_acquire_owned() {
            Ok(permit) if per_source.try_take(source, per_ip) => {
                app.metrics.connection(true);
                let slot = Arc::new(Slot {
                    _permit: permit,
                    metrics: app.metrics.clone(),
                    per_source: per_source.clone(),
                    source,
                });
                let ctx = ConnCtx { peer, _slot: slot };
                let (router, app2, stop) = (router.clone(), app.clone(), stop.clone());
                match app.tls.clone() {
                    None => {
                        tokio::spawn(serve(stream, ctx, router, app2, stop));
                    }
                    Some(acceptor) => {
                        // The handshake shares the header deadline: a client that never
                        // finishes it holds its slot no longer than one that never sends a head.
                        tokio::spawn(async move {
                            let deadline = app2.limits.header_timeout;
                            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve(tls, ctx, router, app2, stop).await,
                                Ok(Err(e)) => {
                                    debug!(peer = %ctx.peer, error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    app2.metrics.timed_out();
                                    debug!(peer = %ctx.peer, "TLS handshake not done in time");
                                }
                            }
                        });
                    }
                }
                continue;
            }
            Ok(_) => format!("too many connections from {}: at most {per_ip}", peer.ip()),
            Err(_) => format!(
                "server full: {} connections open",
                app.limits.max_connections
            ),
        };
        app.metrics.refused();
        debug!(%peer, reason = %refusal, "refusing a connection");
        // Over TLS a plain-text 503 would be noise to the client: the refusal is the close.
        if app.tls.is_some() {
            continue;
        }
        if let Ok(p) = refusals.clone().try_acquire_owned() {
            tokio::spawn(refuse(stream, refusal, p));
        }
    }
}

async fn serve<S>(
    stream: S,
    ctx: ConnCtx,
    router: Router,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicU64::new(0));
    let keep_alive_requests = app.limits.keep_alive_requests.max(1);
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(svc_ctx.clone());
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        let router = router.clone();
        async move {
            let mut resp = router.oneshot(req.map(Body::new)).await?;
            if n >= keep_alive_requests {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    let result = match finished {
        Some(r) => r,
        None => {
            // Shutdown: finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            app.metrics.timed_out();
            debug!(peer = %ctx.peer, "request head not received in time; closed");
        } else {
            debug!(peer = %ctx.peer, error = %e, "connection ended with an error");
        }
    }
}

/// Answers a connection over a cap with a 503 and a JSON-RPC error, then closes it.
async fn refuse(mut stream: TcpStream, reason: String, _permit: OwnedSemaphorePermit) {
    let error = crate::rpc::Response::from_result(
        serde_json::Value::Null,
        Err(crate::rpc::RpcError::new(
            crate::rpc::codes::BUSY,
            format!("{reason}; retry later"),
        )),
    );
    let body = serde_json::to_string(&error).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(REFUSAL_LINGER, write).await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut read = 0usize;
        while read < 64 << 10 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// Waits until every connection gave its slot back, or `grace` passed.
pub(crate) async fn drain(app: &App, grace: Duration) {
    let all = u32::try_from(app.limits.max_connections).unwrap_or(u32::MAX);
    let wait = app.slots.acquire_many(all);
    if tokio::time::timeout(grace, wait).await.is_err() {
        warn!(
            open = app.metrics.snapshot().connections_open,
            "ledger shutdown: connections still open after the grace period"
        );
    }
}
