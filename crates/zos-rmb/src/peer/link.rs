//! One relay link of a peer: log in, pump frames both ways, reconnect with backoff forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{Inner, MAX_MESSAGE, RmbError};
use crate::directory::lock;
use crate::frame::{Frame, Role};
use crate::transport::{self, LoginError, Ws};

/// Ping period; a link that heard nothing for three periods is considered dead.
const PING_EVERY: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after the relay said another login replaced this one; doubles up to
/// `MAX_REPLACED_BACKOFF` while it keeps happening.
const REPLACED_BACKOFF: Duration = Duration::from_secs(10);
const MAX_REPLACED_BACKOFF: Duration = Duration::from_secs(300);

/// Runs link `i` until the peer is closed. The outcome of the first login attempt is reported
/// on `first` (so `Peer::connect` can fail fast with a clear error).
pub(super) async fn run(inner: Arc<Inner>, i: usize, first: mpsc::Sender<Result<(), RmbError>>) {
    let url = inner.relays[i].clone();
    let mut first = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut replaced_backoff = REPLACED_BACKOFF;
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let login = tokio::select! {
            r = transport::connect_and_login(
                &url, Role::Peer, inner.twin, inner.session.as_deref(), &inner.key, MAX_MESSAGE,
            ) => r,
            _ = shutdown.changed() => return,
        };
        match login {
            Ok(ws) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(())).await;
                }
                backoff = Duration::from_millis(100);
                tracing::debug!(%url, twin = inner.twin, "relay link up");
                let replaced = pump(&inner, i, ws, &mut shutdown).await;
                if *shutdown.borrow() {
                    tracing::debug!(%url, twin = inner.twin, "relay link closed");
                    return;
                }
                if replaced {
                    // Another process (or Peer) logged in as this twin and session and took the
                    // slot. Take it back, but slowly: two processes sharing a session trade it
                    // every few minutes instead of flapping, and a link that someone else
                    // pushed off (with a relayed login, say) comes back by itself.
                    tracing::warn!(%url, twin = inner.twin, session = ?inner.session, retry_in = ?replaced_backoff, "replaced by another login of this twin and session; give each process its own session");
                    tokio::select! {
                        _ = tokio::time::sleep(replaced_backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    replaced_backoff = (replaced_backoff * 2).min(MAX_REPLACED_BACKOFF);
                    continue;
                } else {
                    tracing::info!(%url, twin = inner.twin, "relay link down; reconnecting");
                }
            }
            Err(e) => {
                tracing::warn!(%url, twin = inner.twin, error = %e, "relay login failed");
                if let Some(f) = first.take() {
                    let err = match e {
                        LoginError::Rejected(reason) => RmbError::AuthRejected {
                            url: url.clone(),
                            reason,
                        },
                        LoginError::Transient(reason) => RmbError::Connect {
                            url: url.clone(),
                            reason,
                        },
                    };
                    let _ = f.send(Err(err)).await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn pump(
    inner: &Arc<Inner>,
    i: usize,
    ws: Ws,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let generation = {
        let mut links = lock(&inner.links);
        links[i].generation += 1;
        links[i].tx = Some(tx);
        links[i].generation
    };
    inner.connected.send_modify(|n| *n += 1);
    let (sink, mut stream) = ws.split();
    // Reading never waits for writing (see the relay session for the deadlock this avoids).
    let mut writer = tokio::spawn(write_loop(sink, rx, shutdown.clone()));
    let mut writer_done = false;
    let mut replaced = false;
    loop {
        tokio::select! {
            msg = tokio::time::timeout(3 * PING_EVERY, stream.next()) => match msg {
                Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(&b) {
                    Ok(Frame::Envelope(env)) => inner.incoming(&env).await,
                    Ok(Frame::Bounce(bounce)) => inner.bounced(bounce),
                    Ok(Frame::Rejected { reason }) => {
                        tracing::debug!(%reason, "relay ended the session");
                        replaced = true;
                    }
                    Ok(_) => tracing::debug!("unexpected frame from relay"),
                    Err(e) => tracing::debug!(error = %e, "undecodable frame from relay"),
                },
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {} // pong (our pings keep the relay talking)
                Err(_) => {
                    tracing::warn!(url = %inner.relays[i], "relay silent; dropping link");
                    break;
                }
            },
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = shutdown.changed() => break,
        }
    }
    lock(&inner.links)[i].tx = None;
    inner.connected.send_modify(|n| *n = n.saturating_sub(1));
    inner.fail_calls_on((i, generation));
    if !writer_done {
        // On shutdown the writer sends a Close frame itself; otherwise the link is dead.
        if tokio::time::timeout(Duration::from_secs(1), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    replaced
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(b) => if sink.send(Message::Binary(b)).await.is_err() { return },
                // The reader dropped the link (slot cleared): nothing more to send.
                None => return,
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
