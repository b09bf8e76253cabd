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
}

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
}
