//! Connection limits, enforced on the TCP stream under TLS, HTTP and WebSocket, so that they
//! hold whatever a client does (or fails to do) at any layer above:
//!
//! * **Connection cap**: past `max_connections` a new connection gets `503` and is closed
//!   (plain `ws://`; with TLS it is closed without a word).
//! * **Login deadline**: a connection not logged in `login_timeout` after accept is closed,
//!   whether it is stuck in the TLS handshake, the HTTP headers (slowloris), the WebSocket
//!   upgrade or the challenge.
//! * **Unfinished-message memory**: the bytes a connection read since its last complete
//!   message are counted. Up to `frame_allowance` is free (and is all a connection may send
//!   before it logs in); above that, bytes come from one server-wide budget
//!   (`frame_memory_total`): a connection that would exceed it is closed, as is one whose
//!   message above the allowance does not complete within `frame_timeout`. What a
//!   connection holds beyond what is counted is at most one socket read (the WebSocket read
//!   buffer), so unfinished messages take at most
//!   `connections × (frame_allowance + read buffer) + frame_memory_total`.
//! * **Login throttling** per source address (IPv4 address, IPv6 /64): failed logins past
//!   `login_free_failures` in `login_failure_window` are answered after
//!   `login_failure_delay`; at `login_ban_after` the address is banned for `login_ban`, and
//!   its connections are refused at accept (`429`) before any TLS or ledger work.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::directory::lock;
use crate::limits::Limits;
use crate::metrics::RelayMetrics;

/// Addresses tracked for login throttling before old entries are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    banned_until: Option<Instant>,
}

/// Server-wide connection state shared by all connections.
pub(crate) struct Guard {
    limits: Limits,
    open: AtomicUsize,
    /// Unfinished-message bytes above the per-connection allowances.
    frame_bytes: AtomicUsize,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    metrics: Arc<RelayMetrics>,
}

/// What the relay knows about one connection; shared by its stream and its session.
pub(crate) struct ConnState {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    logged_in: AtomicBool,
    upgraded: AtomicBool,
    /// Bytes read since the last complete message.
    held: AtomicUsize,
    guard: Arc<Guard>,
    /// The TLS channel's exporter value (`None` on plain `ws://`), set once after the
    /// handshake: the login must be signed over it.
    channel: std::sync::OnceLock<[u8; 32]>,
}

impl ConnState {
    /// Records the TLS channel binding (once, after the handshake).
    pub(crate) fn set_channel(&self, binding: [u8; 32]) {
        let _ = self.channel.set(binding);
    }

    /// The TLS channel binding, `None` on a plain connection.
    pub(crate) fn channel(&self) -> Option<[u8; 32]> {
        self.channel.get().copied()
    }

    /// The WebSocket upgrade succeeded (for the timeout metrics).
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// The login succeeded: the login deadline no longer applies.
    pub(crate) fn logged_in(&self) {
        self.logged_in.store(true, Ordering::Release);
    }

    /// A complete message was taken off the connection: what it held is released.
    pub(crate) fn message_done(&self) {
        let held = self.held.swap(0, Ordering::AcqRel);
        self.guard.release(held);
    }
}

impl Guard {
    pub(crate) fn new(limits: Limits, metrics: Arc<RelayMetrics>) -> Arc<Self> {
        Arc::new(Guard {
            limits,
            open: AtomicUsize::new(0),
            frame_bytes: AtomicUsize::new(0),
            failures: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Unfinished-message bytes drawn from the shared budget now.
    pub(crate) fn frame_bytes(&self) -> usize {
        self.frame_bytes.load(Ordering::Relaxed)
    }

    /// Addresses banned now.
    pub(crate) fn banned_addresses(&self) -> usize {
        let now = Instant::now();
        lock(&self.failures)
            .values()
            .filter(|f| f.banned_until.is_some_and(|u| u > now))
            .count()
    }

    fn release(&self, held: usize) {
        let charged = held.saturating_sub(self.limits.frame_allowance);
        if charged > 0 {
            self.frame_bytes.fetch_sub(charged, Ordering::AcqRel);
        }
    }

    /// True if `ip` is banned now.
    pub(crate) fn banned(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        lock(&self.failures)
            .get(&throttle_key(ip))
            .and_then(|f| f.banned_until)
            .is_some_and(|u| u > now)
    }

    /// Records a failed login from `ip`; returns how long to wait before answering it.
    pub(crate) fn login_failed(&self, ip: IpAddr) -> Duration {
        let l = &self.limits;
        let now = Instant::now();
        let mut map = lock(&self.failures);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| {
                f.banned_until.is_some_and(|u| u > now)
                    || now.duration_since(f.since) < l.login_failure_window
            });
        }
        let key = throttle_key(ip);
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            // Too many addresses failing at once to track another; it gets the delay.
            return l.login_failure_delay;
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            since: now,
            banned_until: None,
        });
        if now.duration_since(f.since) >= l.login_failure_window {
            f.count = 0;
            f.since = now;
        }
        f.count = f.count.saturating_add(1);
        if f.count >= l.login_ban_after && f.banned_until.is_none_or(|u| u <= now) {
            f.banned_until = Some(now + l.login_ban);
            self.metrics.login_bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(address = %key, failures = f.count, ban = ?l.login_ban, "banning address after failed relay logins");
        }
        if f.count > l.login_free_failures {
            self.metrics.logins_delayed.fetch_add(1, Ordering::Relaxed);
            l.login_failure_delay
        } else {
            Duration::ZERO
        }
    }

    /// Takes a new connection, or refuses it (full, banned) with a short HTTP answer.
    fn admit(self: &Arc<Self>, tcp: TcpStream, addr: SocketAddr) -> Option<Guarded<TcpStream>> {
        if self.banned(addr.ip()) {
            self.metrics.refused_banned.fetch_add(1, Ordering::Relaxed);
            let secs = self.limits.login_ban.as_secs();
            refuse(
                &tcp,
                "429 Too Many Requests",
                secs,
                "too many failed logins",
            );
            return None;
        }
        // Reserve a slot first, so concurrent accepts cannot overshoot the cap.
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused_full.fetch_add(1, Ordering::Relaxed);
            refuse(
                &tcp,
                "503 Service Unavailable",
                5,
                "relay at its connection limit",
            );
            return None;
        }
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(ConnState {
            addr,
            logged_in: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            guard: self.clone(),
            channel: std::sync::OnceLock::new(),
        });
        Some(Guarded {
            io: tcp,
            deadline: Box::pin(tokio::time::sleep(self.limits.login_timeout)),
            frame_armed: false,
            conn,
        })
    }
}

/// Best effort: one non-blocking write into the fresh socket's buffer, then close.
fn refuse(tcp: &TcpStream, status: &str, retry_after: u64, why: &str) {
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nRetry-After: {retry_after}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(resp.as_bytes());
}

/// IPv4 addresses are throttled one by one, IPv6 by /64 (one host's usual allocation).
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A connection's byte stream with the limits above.
pub(crate) struct Guarded<S> {
    io: S,
    conn: Arc<ConnState>,
    /// The login deadline until logged in; then the deadline of an unfinished message above
    /// the allowance (`frame_armed`).
    deadline: Pin<Box<Sleep>>,
    frame_armed: bool,
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.conn.message_done();
        self.conn.guard.open.fetch_sub(1, Ordering::AcqRel);
    }
}

fn closed(kind: io::ErrorKind, why: &str) -> Poll<io::Result<()>> {
    Poll::Ready(Err(io::Error::new(kind, why.to_owned())))
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let conn = &this.conn;
        let guard = &conn.guard;
        let l = &guard.limits;
        let logged_in = conn.logged_in.load(Ordering::Acquire);
        if this.frame_armed && conn.held.load(Ordering::Acquire) <= l.frame_allowance {
            this.frame_armed = false;
        }
        if (!logged_in || this.frame_armed) && this.deadline.as_mut().poll(cx).is_ready() {
            let m = &guard.metrics;
            let (counter, why) = if logged_in {
                (&m.timeout_frame, "message not completed in time")
            } else if conn.upgraded.load(Ordering::Relaxed) {
                (&m.timeout_login, "no login in time")
            } else {
                (&m.timeout_handshake, "no WebSocket handshake in time")
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.addr, why, "closing connection");
            return closed(io::ErrorKind::TimedOut, why);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        let held = conn.held.fetch_add(n, Ordering::AcqRel) + n;
        if held <= l.frame_allowance {
            return Poll::Ready(Ok(()));
        }
        if !logged_in {
            // Nothing was charged: give the count back so the close releases nothing.
            conn.held.fetch_sub(n, Ordering::AcqRel);
            guard.metrics.frame_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.addr, held, "closing connection: too much data before login");
            return closed(io::ErrorKind::InvalidData, "too much data before login");
        }
        let charge = (held - l.frame_allowance) - (held - n).saturating_sub(l.frame_allowance);
        let total = guard.frame_bytes.fetch_add(charge, Ordering::AcqRel) + charge;
        guard
            .metrics
            .frame_bytes_peak
            .fetch_max(total as u64, Ordering::Relaxed);
        if total > l.frame_memory_total {
            guard.metrics.frame_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %conn.addr, held, total, "closing connection: unfinished-message memory budget exhausted");
            return closed(
                io::ErrorKind::OutOfMemory,
                "relay's unfinished-message memory is exhausted",
            );
        }
        if !this.frame_armed {
            this.frame_armed = true;
            this.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + l.frame_timeout);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The relay's TCP listener with the limits above.
pub(crate) struct GuardedListener {
    tcp: TcpListener,
    guard: Arc<Guard>,
}

impl GuardedListener {
    pub(crate) fn new(tcp: TcpListener, guard: Arc<Guard>) -> Self {
        GuardedListener { tcp, guard }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, addr)) => {
                    if let Some(g) = self.guard.admit(tcp, addr) {
                        return (g, addr);
                    }
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // little instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The connection's state, handed to the WebSocket handler (axum connect info).
#[derive(Clone)]
pub(crate) struct ConnInfo(pub(crate) Arc<ConnState>);

/// Streams that carry a [`ConnState`].
pub(crate) trait HasConn {
    fn conn_state(&self) -> Arc<ConnState>;
}

impl HasConn for Guarded<TcpStream> {
    fn conn_state(&self) -> Arc<ConnState> {
        self.conn.clone()
    }
}

impl HasConn for tokio_rustls::server::TlsStream<Guarded<TcpStream>> {
    fn conn_state(&self) -> Arc<ConnState> {
        self.get_ref().0.conn.clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        ConnInfo(stream.io().conn_state())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        ConnInfo(stream.io().conn_state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_throttled_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(throttle_key(a), throttle_key(b));
        assert_ne!(throttle_key(a), throttle_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(throttle_key(mapped), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn failures_delay_then_ban() {
        let l = Limits {
            login_free_failures: 2,
            login_ban_after: 4,
            ..Limits::default()
        };
        let g = Guard::new(l.clone(), Arc::new(RelayMetrics::default()));
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(g.login_failed(ip), Duration::ZERO);
        assert_eq!(g.login_failed(ip), Duration::ZERO);
        assert_eq!(g.login_failed(ip), l.login_failure_delay);
        assert!(!g.banned(ip));
        g.login_failed(ip);
        assert!(g.banned(ip));
        assert!(!g.banned([10, 0, 0, 2].into()));
        assert_eq!(g.banned_addresses(), 1);
    }
}
