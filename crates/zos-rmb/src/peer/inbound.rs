//! Incoming envelopes: the receiver's checks, replies to pending calls, requests to the router.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::{EARLY_REQUESTS, HandlerError, Inner, RequestContext, RmbError, Router, Serving};
use crate::directory::lock;
use crate::envelope::{Address, Body, Envelope, Header, MAX_TTL, MessageId, unix_now};

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
        if h.check_time(now).is_err() {
            c.expired.fetch_add(1, Relaxed);
            return;
        }
        let mut verified = false;
        for attempt in 0..2 {
            let rec = match self.dir.twin(h.source.twin).await {
                Ok(Some(r)) => r,
                _ => {
                    c.unknown_source.fetch_add(1, Relaxed);
                    return;
                }
            };
            if env.verify(&rec.account) {
                verified = true;
                break;
            }
            if attempt == 0 {
                self.dir.invalidate(h.source.twin);
            }
        }
        if !verified {
            c.bad_signature.fetch_add(1, Relaxed);
            tracing::debug!(source = %h.source, "dropped envelope with a bad signature");
            return;
        }
        if lock(&self.replay)
            .insert(h.source.twin, h.id, h.expires_at(), now)
            .is_err()
        {
            c.replayed.fetch_add(1, Relaxed);
            tracing::debug!(source = %h.source, "dropped replayed envelope");
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
        let remaining = h.expires_at().saturating_sub(unix_now());
        let mut serving = lock(&self.serving);
        match &mut *serving {
            _ if body.command == PING_COMMAND => {
                tokio::spawn(handle_request(
                    self.clone(),
                    Arc::new(ping_router(self.twin)),
                    ctx,
                    body,
                    h.source.clone(),
                    remaining,
                ));
            }
            Serving::Ready(router) => {
                tokio::spawn(handle_request(
                    self.clone(),
                    router.clone(),
                    ctx,
                    body,
                    h.source.clone(),
                    remaining,
                ));
            }
            Serving::Waiting(early) if early.len() < EARLY_REQUESTS => {
                early.push((ctx, body, h.source.clone()));
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
    remaining_ttl: u64,
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
    // The reply lives as long as the request would have, with a floor so a slow handler's
    // answer is not dead on arrival.
    let ttl = u32::try_from(remaining_ttl)
        .unwrap_or(MAX_TTL)
        .clamp(5, MAX_TTL);
    let deadline = Instant::now() + Duration::from_secs(u64::from(ttl));
    let sent = match inner.seal(reply_to.clone(), &reply, ttl).await {
        Ok((_, frame)) => inner.send(frame, None, deadline).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(to = %reply_to, error = %e, "could not send reply");
    }
}
