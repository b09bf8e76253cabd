//! One WebSocket connection on the relay: challenge–response login, then a loop that writes
//! what the switch hands it and accepts envelopes it reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::guard::ConnState;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rand::RngCore;

use super::switch::{Outbound, SessionTx};
use super::{Origin, State};
use crate::frame::{Frame, Role, auth_message};

pub(super) async fn run(state: Arc<State>, socket: WebSocket, conn: Arc<ConnState>) {
    let _alive = state.alive.clone();
    conn.upgraded();
    let mut shutdown = state.shutdown.clone();
    if *shutdown.borrow_and_update() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let origin = match login(&state, &conn, &mut sink, &mut stream).await {
        Ok(o) => o,
        Err(Failure::Closed(reason)) => {
            tracing::debug!(peer = %conn.addr, %reason, "connection ended before login");
            return;
        }
        Err(failure) => {
            state.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
            let reason = match failure {
                Failure::Refused(reason) => {
                    tracing::debug!(peer = %conn.addr, %reason, "relay login refused");
                    // Past its free failures, an address waits for each answer (and is
                    // banned at the limit): guessing is slow, and each failure holds one of
                    // its connections.
                    let delay = state.guard.login_failed(conn.addr.ip());
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    reason
                }
                Failure::Unavailable(reason) | Failure::Closed(reason) => {
                    tracing::debug!(peer = %conn.addr, %reason, "relay login failed");
                    reason
                }
            };
            if let Ok(f) = (Frame::Rejected { reason }).encode() {
                let _ = sink.send(Message::Binary(f)).await;
            }
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    conn.logged_in();
    state.metrics.auth_ok.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(twin = origin.twin, session = ?origin.session, role = ?origin.role, "login");

    let (tx, rx) = SessionTx::new();
    let registered = match origin.role {
        Role::Peer => Some(state.register(origin.twin, origin.session.clone(), tx.clone())),
        // A federation link receives only bounces for what it sent, through `tx` directly.
        Role::Federation => None,
    };
    // Reading and writing run separately: a task that blocks writing to a peer which is itself
    // blocked writing to us would deadlock both (large envelopes fill the socket buffers).
    let mut writer = tokio::spawn(write_loop(state.clone(), sink, rx, tx.clone()));
    let mut writer_done = false;
    loop {
        tokio::select! {
            msg = stream.next() => {
                // The message is off the connection: what it held is released.
                conn.message_done();
                match msg {
                    Some(Ok(Message::Binary(b))) => handle(&state, &origin, &tx, b).await,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {} // text, ping, pong: pings are answered by the library
                }
            },
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(id) = registered {
        state.switch.unregister(origin.twin, id);
    }
    if !writer_done {
        // Let the writer send a Close frame, then make sure it is gone.
        tx.close("session ended");
        if tokio::time::timeout(Duration::from_secs(1), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

async fn write_loop(
    state: Arc<State>,
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Outbound>,
    tx: SessionTx,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outbound::Frame { bytes, received } => {
                let n = bytes.len();
                let sent = sink.send(Message::Binary(bytes)).await;
                tx.written(n);
                if sent.is_err() {
                    return;
                }
                if let Some(r) = received {
                    state.metrics.delivered(n, r.elapsed());
                }
            }
            Outbound::Replaced => {
                let reason = "replaced by a newer login of this twin and session".to_owned();
                if let Ok(f) = (Frame::Rejected { reason }).encode() {
                    let _ = sink.send(Message::Binary(f)).await;
                }
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            Outbound::Close(why) => {
                tracing::debug!(why, "closing session");
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

async fn handle(state: &State, origin: &Origin, tx: &SessionTx, b: Bytes) {
    match Frame::decode(&b) {
        Ok(Frame::Envelope(env)) => {
            if let Err(bounce) = state.accept(origin, env).await
                && let Ok(f) = Frame::Bounce(bounce).encode()
            {
                tx.send(f, None);
            }
        }
        Ok(other) => {
            tracing::debug!(twin = origin.twin, frame = ?std::mem::discriminant(&other), "unexpected frame ignored");
        }
        Err(e) => {
            tracing::debug!(twin = origin.twin, error = %e, "undecodable frame ignored");
        }
    }
}

/// Why a connection did not log in.
enum Failure {
    /// The client went away or broke the protocol before answering (not a guess).
    Closed(String),
    /// The answer was wrong: counted against the address.
    Refused(String),
    /// The relay could not check the answer (ledger unreachable): not the client's fault.
    Unavailable(String),
}

async fn login(
    state: &State,
    conn: &ConnState,
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) -> Result<Origin, Failure> {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = Frame::Challenge {
        nonce,
        domain: state.domain.clone(),
    }
    .encode()
    .map_err(|e| Failure::Closed(e.to_string()))?;
    sink.send(Message::Binary(challenge))
        .await
        .map_err(|e| Failure::Closed(format!("send challenge: {e}")))?;
    let timeout = state.limits.login_timeout;
    let answer = tokio::time::timeout(timeout, async {
        loop {
            let msg = stream.next().await;
            conn.message_done();
            match msg {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(_))) | None => return Err("closed before login".to_owned()),
                Some(Err(e)) => return Err(format!("read login: {e}")),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .map_err(|_| Failure::Closed(format!("no login within {timeout:?}")))?
    .map_err(Failure::Closed)?;
    let Ok(Frame::Auth {
        role,
        twin,
        session,
        host,
        signature,
    }) = Frame::decode(&answer)
    else {
        return Err(Failure::Refused("expected an Auth frame".to_owned()));
    };
    if role == Role::Federation && session.is_some() {
        return Err(Failure::Refused(
            "federation logins have no session".to_owned(),
        ));
    }
    // The login must be meant for this relay: an answer signed for another host was passed
    // through from someone else's challenge.
    if !state.is_own_host(&host) {
        return Err(Failure::Refused(format!(
            "login signed for host {host:?}, which is not this relay ({})",
            state.domain
        )));
    }
    if role == Role::Federation && !state.federation_peers.contains(&twin) {
        return Err(Failure::Refused(format!(
            "twin {twin} is not a federation peer of this relay"
        )));
    }
    // Verified over *this* connection's TLS binding: a login signed on another TLS channel
    // (a man in the middle terminating TLS, even with our certificate) does not verify.
    let channel = conn.channel();
    let msg = auth_message(
        &nonce,
        &state.domain,
        &host,
        channel.as_ref(),
        role,
        twin,
        session.as_deref(),
    );
    for attempt in 0..2 {
        let rec = state
            .dir
            .twin(twin)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
            .ok_or_else(|| Failure::Refused(format!("twin {twin} does not exist")))?;
        if rec.account.verify(&msg, &signature) {
            let welcome = Frame::Welcome {
                session: session.clone(),
            }
            .encode()
            .map_err(|e| Failure::Closed(e.to_string()))?;
            sink.send(Message::Binary(welcome))
                .await
                .map_err(|e| Failure::Closed(format!("send welcome: {e}")))?;
            return Ok(Origin {
                role,
                twin,
                session,
            });
        }
        // The key may have been rotated on the ledger since it was cached: look again, but
        // only if the directory allows a refresh now (at most once per twin per interval,
        // whatever the signatures say).
        if attempt == 0 && !state.dir.invalidate(twin) {
            break;
        }
    }
    Err(Failure::Refused(format!(
        "login signature does not match twin {twin}'s key on the ledger for this {} \
         (a login signed on another TLS channel is refused)",
        if channel.is_some() {
            "TLS channel"
        } else {
            "plain connection"
        }
    )))
}
