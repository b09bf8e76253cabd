//! Counters of the ledger process, served by `ledger_metrics` (names listed in `docs/ledger.md`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters, shared by the producer and the RPC handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    rpc_requests: AtomicU64,
    rpc_errors: AtomicU64,
    tx_applied: AtomicU64,
    tx_rejected: AtomicU64,
    blocks_committed: AtomicU64,
    block_commit_failures: AtomicU64,
    block_commit_micros_total: AtomicU64,
    events_emitted: AtomicU64,
    subscriptions_active: AtomicU64,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_timed_out: AtomicU64,
    requests_too_large: AtomicU64,
    sig_failures: AtomicU64,
    sig_bans: AtomicU64,
    sig_refused_banned: AtomicU64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// JSON-RPC requests handled (HTTP and WebSocket).
    pub rpc_requests: u64,
    /// Requests answered with an error (rejections included).
    pub rpc_errors: u64,
    /// Transactions included in blocks.
    pub tx_applied: u64,
    /// Transactions rejected by the producer.
    pub tx_rejected: u64,
    /// Blocks committed since start.
    pub blocks_committed: u64,
    /// Block commits that failed (the producer stops after one).
    pub block_commit_failures: u64,
    /// Sum of block build+commit times in microseconds (divide by `blocks_committed`).
    pub block_commit_micros_total: u64,
    /// Events emitted in committed blocks.
    pub events_emitted: u64,
    /// Subscriptions currently open.
    pub subscriptions_active: u64,
    /// Connections currently open (HTTP and WebSocket; a gauge).
    #[serde(default)]
    pub connections_open: u64,
    /// Connections accepted and served since start.
    #[serde(default)]
    pub connections_accepted: u64,
    /// Connections refused because `max_connections` were open.
    #[serde(default)]
    pub connections_refused: u64,
    /// Connections closed by a deadline: request head, request body or WebSocket idle.
    #[serde(default)]
    pub connections_timed_out: u64,
    /// Requests refused for a body or message over the size limit.
    #[serde(default)]
    pub requests_too_large: u64,
    /// Submissions whose signature did not verify.
    #[serde(default)]
    pub sig_failures: u64,
    /// Source addresses banned for bad signatures (each ban counted).
    #[serde(default)]
    pub sig_bans: u64,
    /// Submissions refused unverified because their source address was banned.
    #[serde(default)]
    pub sig_refused_banned: u64,
}

// The recording methods are called by the server only (feature `server`).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
impl Metrics {
    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            rpc_requests: g(&self.rpc_requests),
            rpc_errors: g(&self.rpc_errors),
            tx_applied: g(&self.tx_applied),
            tx_rejected: g(&self.tx_rejected),
            blocks_committed: g(&self.blocks_committed),
            block_commit_failures: g(&self.block_commit_failures),
            block_commit_micros_total: g(&self.block_commit_micros_total),
            events_emitted: g(&self.events_emitted),
            subscriptions_active: g(&self.subscriptions_active),
            connections_open: g(&self.connections_open),
            connections_accepted: g(&self.connections_accepted),
            connections_refused: g(&self.connections_refused),
            connections_timed_out: g(&self.connections_timed_out),
            requests_too_large: g(&self.requests_too_large),
            sig_failures: g(&self.sig_failures),
            sig_bans: g(&self.sig_bans),
            sig_refused_banned: g(&self.sig_refused_banned),
        }
    }

    pub(crate) fn rpc(&self, failed: bool) {
        self.rpc_requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.rpc_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn block(
        &self,
        applied: u64,
        rejected: u64,
        events: u64,
        micros: u64,
        committed: bool,
    ) {
        self.tx_applied.fetch_add(applied, Ordering::Relaxed);
        self.tx_rejected.fetch_add(rejected, Ordering::Relaxed);
        if committed {
            self.blocks_committed.fetch_add(1, Ordering::Relaxed);
            self.events_emitted.fetch_add(events, Ordering::Relaxed);
            self.block_commit_micros_total
                .fetch_add(micros, Ordering::Relaxed);
        }
    }

    pub(crate) fn commit_failed(&self) {
        self.block_commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn subscription(&self, opened: bool) {
        if opened {
            self.subscriptions_active.fetch_add(1, Ordering::Relaxed);
        } else {
            self.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connection(&self, opened: bool) {
        if opened {
            self.connections_accepted.fetch_add(1, Ordering::Relaxed);
            self.connections_open.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self) {
        self.connections_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn too_large(&self) {
        self.requests_too_large.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sig_failed(&self, banned: bool) {
        self.sig_failures.fetch_add(1, Ordering::Relaxed);
        if banned {
            self.sig_bans.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn sig_refused(&self) {
        self.sig_refused_banned.fetch_add(1, Ordering::Relaxed);
    }
}
