//! The switch: connected sessions per twin and bounded offline queues.
//!
//! All state sits behind one mutex; every critical section is short and never awaits. A
//! session that logs in gets the queued envelopes meant for it *inside* the same critical
//! section that registers it, so a queued envelope is handed out exactly once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::directory::lock;
use crate::envelope::Header;
use crate::frame::BounceCode;
use crate::limits::Limits;

/// Something for a session's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An encoded frame; `received` is when the relay got it (for the latency histogram,
    /// `None` for relay-generated frames).
    Frame {
        bytes: Bytes,
        received: Option<Instant>,
    },
    /// Close the connection (shutdown, or the session ended).
    Close(&'static str),
    /// Tell the client it was replaced by a newer login of the same twin and session, then close.
    Replaced,
}

/// The write side of a connected session.
#[derive(Debug, Clone)]
pub(crate) struct SessionTx {
    tx: mpsc::UnboundedSender<Outbound>,
    /// Bytes handed to `tx` and not yet written to the socket.
    backlog: Arc<AtomicUsize>,
}

impl SessionTx {
    pub(crate) fn new() -> (SessionTx, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            SessionTx {
                tx,
                backlog: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        )
    }

    /// Queues a frame for writing.
    pub(crate) fn send(&self, bytes: Bytes, received: Option<Instant>) -> bool {
        self.backlog.fetch_add(bytes.len(), Ordering::Relaxed);
        self.tx.send(Outbound::Frame { bytes, received }).is_ok()
    }

    pub(crate) fn close(&self, why: &'static str) {
        let _ = self.tx.send(Outbound::Close(why));
    }

    /// The writer calls this after each written frame.
    pub(crate) fn written(&self, n: usize) {
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Session {
    conn: u64,
    name: Option<String>,
    tx: SessionTx,
}

#[derive(Debug)]
struct Queued {
    frame: Bytes,
    session: Option<String>,
    expires_at: u64,
    received: Instant,
}

#[derive(Debug, Default)]
struct TwinQueue {
    items: VecDeque<Queued>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    next_conn: u64,
    /// Sum of `TwinQueue::bytes`.
    queued_bytes: usize,
    sessions: HashMap<u32, Vec<Session>>,
    queues: HashMap<u32, TwinQueue>,
}

/// What happened to an envelope handed to [`Switch::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Written to a connected session's writer.
    Sent,
    /// Held for the offline destination.
    Queued,
}

#[derive(Debug)]
pub(crate) struct Switch {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl Switch {
    pub(crate) fn new(limits: Limits) -> Self {
        Switch {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Registers a session (closing an older connection of the same twin and session) and
    /// hands it the queued envelopes it may take. Returns the connection id.
    pub(crate) fn register(
        &self,
        twin: u32,
        name: Option<String>,
        tx: SessionTx,
        now_unix: u64,
    ) -> (u64, usize) {
        let mut g = lock(&self.inner);
        g.next_conn += 1;
        let conn = g.next_conn;
        let list = g.sessions.entry(twin).or_default();
        if let Some(pos) = list.iter().position(|s| s.name == name) {
            let _ = list.remove(pos).tx.tx.send(Outbound::Replaced);
        }
        list.push(Session {
            conn,
            name: name.clone(),
            tx: tx.clone(),
        });
        let mut drained = 0;
        let mut freed = 0;
        if let Some(q) = g.queues.get_mut(&twin) {
            let mut keep = VecDeque::with_capacity(q.items.len());
            for item in q.items.drain(..) {
                if item.expires_at < now_unix {
                    freed += item.frame.len();
                } else if item.session.is_none() || item.session == name {
                    freed += item.frame.len();
                    drained += 1;
                    tx.send(item.frame, Some(item.received));
                } else {
                    keep.push_back(item);
                }
            }
            q.items = keep;
            q.bytes -= freed;
            if q.items.is_empty() {
                g.queues.remove(&twin);
            }
        }
        g.queued_bytes -= freed;
        (conn, drained)
    }

    pub(crate) fn unregister(&self, twin: u32, conn: u64) {
        let mut g = lock(&self.inner);
        if let Some(list) = g.sessions.get_mut(&twin) {
            list.retain(|s| s.conn != conn);
            if list.is_empty() {
                g.sessions.remove(&twin);
            }
        }
    }

    /// Hands an envelope to its destination session, or queues it while the twin is offline.
    pub(crate) fn deliver(
        &self,
        header: &Header,
        frame: Bytes,
        received: Instant,
    ) -> Result<Delivery, (BounceCode, String)> {
        let dst = &header.destination;
        let mut g = lock(&self.inner);
        if let Some(list) = g.sessions.get(&dst.twin) {
            let chosen = match &dst.session {
                Some(_) => list.iter().find(|s| s.name == dst.session),
                // Any session will do: prefer the default one, then the oldest.
                None => list
                    .iter()
                    .find(|s| s.name.is_none())
                    .or_else(|| list.first()),
            };
            if let Some(s) = chosen {
                if s.tx.backlog() + frame.len() > self.limits.session_backlog_bytes {
                    return Err((
                        BounceCode::QueueFull,
                        format!("destination {dst} is not reading fast enough (backlog full)"),
                    ));
                }
                if s.tx.send(frame.clone(), Some(received)) {
                    return Ok(Delivery::Sent);
                }
            }
        }
        if g.queued_bytes + frame.len() > self.limits.queue_bytes_total {
            return Err((
                BounceCode::QueueFull,
                format!(
                    "destination {dst} is offline and the relay's queues are full ({} bytes)",
                    g.queued_bytes
                ),
            ));
        }
        g.queued_bytes += frame.len();
        let q = g.queues.entry(dst.twin).or_default();
        if q.items.len() >= self.limits.queue_messages_per_twin
            || q.bytes + frame.len() > self.limits.queue_bytes_per_twin
        {
            let msg = format!(
                "destination {dst} is offline and its queue is full ({} messages, {} bytes)",
                q.items.len(),
                q.bytes
            );
            g.queued_bytes -= frame.len();
            return Err((BounceCode::QueueFull, msg));
        }
        q.bytes += frame.len();
        q.items.push_back(Queued {
            frame,
            session: dst.session.clone(),
            expires_at: header.expires_at(),
            received,
        });
        Ok(Delivery::Queued)
    }

    /// A connected session of `twin`/`session` (exact match), to route a bounce.
    pub(crate) fn session(&self, twin: u32, session: &Option<String>) -> Option<SessionTx> {
        let g = lock(&self.inner);
        g.sessions
            .get(&twin)?
            .iter()
            .find(|s| &s.name == session)
            .map(|s| s.tx.clone())
    }

    /// Drops queued envelopes whose TTL has passed; returns how many.
    pub(crate) fn sweep(&self, now_unix: u64) -> usize {
        let mut g = lock(&self.inner);
        let mut dropped = 0;
        let mut freed = 0;
        g.queues.retain(|_, q| {
            let before = q.items.len();
            let mut bytes = q.bytes;
            q.items.retain(|i| {
                let keep = i.expires_at >= now_unix;
                if !keep {
                    bytes -= i.frame.len();
                }
                keep
            });
            freed += q.bytes - bytes;
            q.bytes = bytes;
            dropped += before - q.items.len();
            !q.items.is_empty()
        });
        g.queued_bytes -= freed;
        dropped
    }

    /// Closes every session (shutdown).
    pub(crate) fn close_all(&self) {
        let g = lock(&self.inner);
        for s in g.sessions.values().flatten() {
            s.tx.close("relay shutting down");
        }
    }

    /// (sessions, queued messages, queued bytes).
    pub(crate) fn gauges(&self) -> (usize, usize, usize) {
        let g = lock(&self.inner);
        (
            g.sessions.values().map(Vec::len).sum(),
            g.queues.values().map(|q| q.items.len()).sum(),
            g.queued_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Address;

    fn header(dst: u32, session: Option<&str>, ttl: u32) -> Header {
        Header {
            id: [0; 16],
            source: Address::twin(1),
            destination: Address {
                twin: dst,
                session: session.map(str::to_owned),
            },
            timestamp: 1000,
            ttl,
        }
    }

    fn frames(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> usize {
        let mut n = 0;
        while let Ok(o) = rx.try_recv() {
            if matches!(o, Outbound::Frame { .. }) {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn queued_until_login_then_delivered_once() {
        let sw = Switch::new(Limits::default());
        let now = Instant::now();
        assert_eq!(
            sw.deliver(&header(2, None, 60), Bytes::from_static(b"a"), now),
            Ok(Delivery::Queued)
        );
        assert_eq!(
            sw.deliver(&header(2, Some("web"), 60), Bytes::from_static(b"b"), now),
            Ok(Delivery::Queued)
        );
        let (tx, mut rx) = SessionTx::new();
        assert_eq!(sw.register(2, None, tx, 1010).1, 1);
        assert_eq!(frames(&mut rx), 1);
        let (tx2, mut rx2) = SessionTx::new();
        assert_eq!(sw.register(2, Some("web".into()), tx2, 1010).1, 1);
        assert_eq!(frames(&mut rx2), 1);
        assert_eq!(sw.gauges(), (2, 0, 0));
    }

    #[test]
    fn expired_entries_are_not_delivered_and_queue_is_bounded() {
        let sw = Switch::new(Limits {
            queue_messages_per_twin: 2,
            ..Limits::default()
        });
        let now = Instant::now();
        sw.deliver(&header(2, None, 5), Bytes::from_static(b"a"), now)
            .unwrap();
        sw.deliver(&header(2, None, 500), Bytes::from_static(b"b"), now)
            .unwrap();
        assert_eq!(
            sw.deliver(&header(2, None, 5), Bytes::from_static(b"c"), now)
                .unwrap_err()
                .0,
            BounceCode::QueueFull
        );
        assert_eq!(sw.sweep(1010), 1);
        let (tx, mut rx) = SessionTx::new();
        sw.register(2, None, tx, 1010);
        assert_eq!(frames(&mut rx), 1);
    }

    #[test]
    fn total_queue_bytes_are_bounded_and_accounted() {
        let sw = Switch::new(Limits {
            queue_bytes_total: 3,
            ..Limits::default()
        });
        let now = Instant::now();
        sw.deliver(&header(2, None, 60), Bytes::from_static(b"ab"), now)
            .unwrap();
        let e = sw
            .deliver(&header(3, None, 60), Bytes::from_static(b"cd"), now)
            .unwrap_err();
        assert!(e.1.contains("relay's queues are full"), "{}", e.1);
        sw.deliver(&header(3, None, 5), Bytes::from_static(b"e"), now)
            .unwrap();
        assert_eq!(sw.gauges(), (0, 2, 3));
        assert_eq!(sw.sweep(1010), 1);
        assert_eq!(sw.gauges(), (0, 1, 2));
        let (tx, _rx) = SessionTx::new();
        sw.register(2, None, tx, 1010);
        assert_eq!(sw.gauges(), (1, 0, 0));
    }

    #[test]
    fn newer_login_replaces_older() {
        let sw = Switch::new(Limits::default());
        let (tx1, mut rx1) = SessionTx::new();
        let (tx2, _rx2) = SessionTx::new();
        sw.register(3, None, tx1, 0);
        sw.register(3, None, tx2, 0);
        assert!(matches!(rx1.try_recv(), Ok(Outbound::Replaced)));
        assert_eq!(sw.gauges().0, 1);
    }
}
