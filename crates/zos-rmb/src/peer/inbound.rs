//! Incoming envelopes: the receiver's checks, replies to pending calls, requests to the router.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::{
    EARLY_REQUESTS, HandlerError, Inner, MAX_REPLY_TTL, RECEIVE_WINDOW, RequestContext, RmbError,
    Router, Serving,
};
use crate::directory::lock;
use crate::envelope::{Address, Body, Envelope, Header, MessageId, unix_now};
use crate::replay::Refused;

/// Answered by every peer itself (even before [`Peer::serve`](crate::Peer::serve)): `{"twin": id, "time": unix_s}`.
/// A liveness check for a twin, end to end through relays, signatures and encryption.
pub const PING_COMMAND: &str = "rmb.ping";

fn ping_router(twin: u32) -> Router {
    let mut r = Router::new();
    r.handle(PING_COMMAND, move |_ctx, _v| async move {
        Ok(serde_json::json!({ "twin": twin, "time": unix_now() }))
    });
    r
}

impl Inner {
    /// Checks and acts on one incoming envelope.
    pub(super) async fn incoming(self: &Arc<Self>, bytes: &Bytes) {
        let c = &self.counters;
        c.received.fetch_add(1, Relaxed);
        let Ok(env) = Envelope::decode(bytes) else {
            c.malformed.fetch_add(1, Relaxed);
            return;
        };
        let h = &env.header;
        if h.destination.twin != self.twin
            || (h.destination.session.is_some() && h.destination.session != self.session)
        {
            c.misrouted.fetch_add(1, Relaxed);
            return;
        }
        let now = unix_now();
        // The receiver keeps an envelope for at most its window, whatever the TTL says: that
        // bounds how long the replay cache must remember ids.
        let expires_at = h
            .expires_at()
            .min(h.timestamp.saturating_add(u64::from(RECEIVE_WINDOW)));
        if h.check_time(now).is_err() || now > expires_at {
            c.expired.fetch_add(1, Relaxed);
            return;
        }
        // A known id is dropped before any lookup or crypto.
        if lock(&self.replay).contains(h.source.twin, &h.id, now) {
            c.replayed.fetch_add(1, Relaxed);
            tracing::debug!(source = %h.source, "dropped replayed envelope");
            return;
        }
        let rec = match self.dir.twin(h.source.twin).await {
            Ok(Some(r)) => r,
            _ => {
                c.unknown_source.fetch_add(1, Relaxed);
                return;
            }
        };
        if !env.verify(&rec.account) {
            c.bad_signature.fetch_add(1, Relaxed);
            tracing::debug!(source = %h.source, "dropped envelope with a bad signature");
            // The key may have rotated: refresh the record in the background (the directory
            // allows this at most once per twin per interval), never while the link waits.
            if self.dir.invalidate(h.source.twin) {
                let inner = self.clone();
                let twin = h.source.twin;
                tokio::spawn(async move {
                    let _ = inner.dir.twin(twin).await;
                });
            }
            return;
        }
        let body = match env.open(&self.e2e) {
            Ok(b) => b,
            Err(e) => {
                c.undecryptable.fetch_add(1, Relaxed);
                tracing::debug!(source = %h.source, error = %e, "dropped undecryptable envelope");
                return;
            }
        };
        // Recorded only now, once the envelope is known to be genuine and readable: what a
        // sender cannot get through costs it no room in the cache.
        match lock(&self.replay).insert(h.source.twin, h.id, expires_at, now) {
            Ok(()) => self.replay_dirty.store(true, Relaxed),
            Err(Refused::Replay) => {
                c.replayed.fetch_add(1, Relaxed);
                tracing::debug!(source = %h.source, "dropped replayed envelope");
                return;
            }
            Err(Refused::SenderFull | Refused::Full) => {
                c.over_quota.fetch_add(1, Relaxed);
                tracing::debug!(source = %h.source, "dropped envelope: sender over its replay-cache quota");
                return;
            }
        }
        match body.reference {
            Some(reference) => self.reply(h, reference, body),
            None => self.request(h, body),
        }
    }

    /// A relay refused one of our envelopes: the call fails with the relay's reason.
    pub(super) fn bounced(&self, b: crate::frame::Bounce) {
        if let Some(p) = lock(&self.pending).remove(&b.id) {
            let _ = p.tx.send(Err(RmbError::Relay {
                code: b.code,
                message: b.message,
            }));
        } else {
            tracing::debug!(code = ?b.code, message = %b.message, "relay refused a message");
        }
    }

    fn reply(&self, h: &Header, reference: MessageId, body: Body) {
        let mut pending = lock(&self.pending);
        // Only the twin we called may answer; anyone else's "reply" leaves the call pending.
        if pending.get(&reference).map(|p| p.dst) != Some(h.source.twin) {
            self.counters.unexpected_reply.fetch_add(1, Relaxed);
            return;
        }
        let Some(p) = pending.remove(&reference) else {
            return;
        };
        drop(pending);
        self.counters.replies.fetch_add(1, Relaxed);
        let result = match body.error {
            Some(e) => Err(RmbError::Remote {
                code: e.code,
                message: e.message,
            }),
            None => {
                serde_json::from_slice(&body.payload).map_err(|e| RmbError::Json(e.to_string()))
            }
        };
        let _ = p.tx.send(result);
    }

    fn request(self: &Arc<Self>, h: &Header, body: Body) {
        self.counters.requests.fetch_add(1, Relaxed);
        let ctx = RequestContext {
            source: h.source.twin,
            session: h.source.session.clone(),
            id: h.id,
            command: body.command.clone(),
        };
        let expires_at = h
            .expires_at()
            .min(h.timestamp.saturating_add(u64::from(RECEIVE_WINDOW)));
        let mut serving = lock(&self.serving);
        match &mut *serving {
            _ if body.command == PING_COMMAND => {
                tokio::spawn(handle_request(
                    self.clone(),
                    Arc::new(ping_router(self.twin)),
                    ctx,
                    body,
                    h.source.clone(),
                    expires_at,
                ));
            }
            Serving::Ready(router) => {
                tokio::spawn(handle_request(
                    self.clone(),
                    router.clone(),
                    ctx,
                    body,
                    h.source.clone(),
                    expires_at,
                ));
            }
            Serving::Waiting(early) if early.len() < EARLY_REQUESTS => {
                early.push((ctx, body, h.source.clone(), expires_at));
            }
            Serving::Waiting(_) => {
                tracing::warn!("dropping request: serve() not called yet and the buffer is full");
            }
        }
    }
}

pub(super) async fn handle_request(
    inner: Arc<Inner>,
    router: Arc<Router>,
    ctx: RequestContext,
    body: Body,
    reply_to: Address,
    request_expires_at: u64,
) {
    let id = ctx.id;
    let command = ctx.command.clone();
    let result = match serde_json::from_slice::<Value>(&body.payload) {
        Err(e) => Err(HandlerError::bad_request(format!(
            "payload is not JSON: {e}"
        ))),
        Ok(v) => match router.get(&command) {
            Some(h) => h(ctx, v).await,
            None => Err(HandlerError::not_found(format!(
                "no handler for command {command:?}"
            ))),
        },
    };
    let (payload, error) = match result {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(HandlerError::internal(e.to_string()))),
        },
        Err(e) => (Vec::new(), Some(e)),
    };
    let reply = Body {
        command,
        reference: Some(id),
        error: error.map(|e| crate::envelope::ErrorBody {
            code: e.code,
            message: e.message,
        }),
        payload,
    };
    // A reply never outlives its request (nobody waits for it after that), and lives at most
    // MAX_REPLY_TTL: a captured reply is only worth replaying for that long.
    let remaining_ttl = request_expires_at.saturating_sub(unix_now());
    if remaining_ttl == 0 {
        tracing::debug!(to = %reply_to, "request expired before its reply; not sent");
        return;
    }
    let ttl = u32::try_from(remaining_ttl)
        .unwrap_or(MAX_REPLY_TTL)
        .min(MAX_REPLY_TTL);
    let deadline = Instant::now() + Duration::from_secs(u64::from(ttl));
    let sent = match inner.seal(reply_to.clone(), &reply, ttl).await {
        Ok((_, frame)) => inner.send(frame, None, deadline).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(to = %reply_to, error = %e, "could not send reply");
    }
}
