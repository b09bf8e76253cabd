//! Outgoing relay-to-relay links.
//!
//! A relay forwards an envelope when the destination twin's ledger record names another relay
//! domain that appears in this relay's federation map. The link is an ordinary relay
//! WebSocket, logged in with role `Federation` as the relay's own twin (challenge signed with
//! that twin's key, checked by the remote relay against the ledger). The remote relay verifies
//! each forwarded envelope's signature and delivers it locally only (one hop). Bounces come
//! back over the same link and are routed to the local source session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::RelayIdentity;
use super::switch::Switch;
use crate::directory::{lock, relay_domain};
use crate::envelope::{Address, Header, MessageId};
use crate::frame::{Bounce, BounceCode, Frame, Role};
use crate::limits::Limits;
use crate::metrics::RelayMetrics;
use crate::transport;

/// Envelopes waiting for one link.
const LINK_BACKLOG: usize = 1024;

struct Item {
    frame: Bytes,
    id: MessageId,
    source: Address,
}

pub(super) struct Federation {
    urls: HashMap<String, String>,
    identity: Option<RelayIdentity>,
    max_message: usize,
    links: Mutex<HashMap<String, mpsc::Sender<Item>>>,
    up: Arc<AtomicUsize>,
    switch: Arc<Switch>,
    metrics: Arc<RelayMetrics>,
    shutdown: watch::Receiver<bool>,
}

impl Federation {
    pub(super) fn new(
        urls: HashMap<String, String>,
        identity: Option<RelayIdentity>,
        limits: &Limits,
        switch: Arc<Switch>,
        metrics: Arc<RelayMetrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Federation {
            urls: urls
                .into_iter()
                .map(|(d, u)| (relay_domain(&d).to_owned(), u))
                .collect(),
            identity,
            max_message: limits.max_envelope_bytes + 64,
            links: Mutex::new(HashMap::new()),
            up: Arc::new(AtomicUsize::new(0)),
            switch,
            metrics,
            shutdown,
        }
    }

    pub(super) fn links_up(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn stop(&self) {
        lock(&self.links).clear();
    }

    /// Queues `frame` for the first of `relays` this relay has a link to.
    pub(super) fn forward(
        &self,
        relays: &[String],
        header: &Header,
        frame: Bytes,
    ) -> Result<(), String> {
        let Some((domain, url)) = relays.iter().find_map(|d| {
            let d = relay_domain(d);
            self.urls.get(d).map(|u| (d.to_owned(), u.clone()))
        }) else {
            return Err(format!(
                "twin {} is on relays {relays:?}; this relay has no federation link to any of them",
                header.destination.twin
            ));
        };
        let Some(identity) = self.identity.clone() else {
            return Err(format!(
                "twin {} is on relay {domain}, but this relay has no twin identity to federate with",
                header.destination.twin
            ));
        };
        let item = Item {
            frame,
            id: header.id,
            source: header.source.clone(),
        };
        let mut links = lock(&self.links);
        let tx = match links.get(&domain) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(LINK_BACKLOG);
                tokio::spawn(link_task(Link {
                    domain: domain.clone(),
                    url,
                    identity,
                    max_message: self.max_message,
                    rx,
                    up: self.up.clone(),
                    switch: self.switch.clone(),
                    metrics: self.metrics.clone(),
                    shutdown: self.shutdown.clone(),
                }));
                links.insert(domain.clone(), tx.clone());
                tx
            }
        };
        tx.try_send(item)
            .map_err(|_| format!("federation link to {domain} is backlogged"))
    }
}

struct Link {
    domain: String,
    url: String,
    identity: RelayIdentity,
    max_message: usize,
    rx: mpsc::Receiver<Item>,
    up: Arc<AtomicUsize>,
    switch: Arc<Switch>,
    metrics: Arc<RelayMetrics>,
    shutdown: watch::Receiver<bool>,
}

impl Link {
    fn bounce(&self, item: Item, message: String) {
        self.metrics.bounce(BounceCode::Federation);
        bounce_to_local(
            &self.switch,
            Bounce {
                id: item.id,
                source: item.source,
                code: BounceCode::Federation,
                message,
            },
        );
    }
}

/// Routes a bounce to the local session it is addressed to (if still connected).
pub(super) fn bounce_to_local(switch: &Switch, b: Bounce) {
    let Some(tx) = switch.session(b.source.twin, &b.source.session) else {
        tracing::debug!(source = %b.source, "bounce for a session that is gone");
        return;
    };
    if let Ok(bytes) = Frame::Bounce(b).encode() {
        tx.send(bytes, None);
    }
}

async fn link_task(mut l: Link) {
    let mut pending: Vec<Item> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            tokio::select! {
                item = l.rx.recv() => match item {
                    Some(i) => pending.push(i),
                    None => return,
                },
                _ = l.shutdown.changed() => return,
            }
        }
        let login = tokio::select! {
            r = transport::connect_and_login(
                &l.url, Role::Federation, l.identity.twin, None, &l.identity.key, l.max_message,
            ) => r,
            _ = l.shutdown.changed() => return,
        };
        let mut ws = match login {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(domain = %l.domain, error = %e, "federation link down");
                while let Ok(i) = l.rx.try_recv() {
                    pending.push(i);
                }
                for item in std::mem::take(&mut pending) {
                    l.bounce(item, format!("cannot reach relay {}: {e}", l.domain));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        l.up.fetch_add(1, Ordering::Relaxed);
        tracing::info!(domain = %l.domain, "federation link up");
        let mut broken = false;
        for item in std::mem::take(&mut pending) {
            if let Err(e) = transport::send(&mut ws, item.frame.clone()).await {
                l.bounce(item, format!("send to relay {}: {e}", l.domain));
                broken = true;
            }
        }
        while !broken {
            tokio::select! {
                item = l.rx.recv() => match item {
                    Some(item) => {
                        if let Err(e) = transport::send(&mut ws, item.frame.clone()).await {
                            l.bounce(item, format!("send to relay {}: {e}", l.domain));
                            broken = true;
                        }
                    }
                    None => broken = true,
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                        Ok(Frame::Bounce(b)) => bounce_to_local(&l.switch, b),
                        _ => tracing::debug!(domain = %l.domain, "unexpected frame on federation link"),
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => broken = true,
                    Some(Ok(_)) => {}
                },
                _ = l.shutdown.changed() => {
                    let _ = ws.close(None).await;
                    l.up.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        l.up.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(domain = %l.domain, "federation link lost; reconnecting on next envelope");
        if l.rx.is_closed() {
            return;
        }
    }
}
