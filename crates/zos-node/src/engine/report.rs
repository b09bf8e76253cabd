//! Used-resource reports to the ledger (upstream `cap.go`): after every job the contract is
//! marked; a reporter task waits 500 ms for more, then sends all marked contracts in one
//! `ReportContractResources` transaction, so the job worker never waits for a ledger block and
//! a burst of jobs costs a few transactions.

use std::future::Future;
use std::time::Duration;

use super::Engine;
use crate::model::Capacity;

/// How long the reporter waits after the first marked contract before sending the batch.
const COALESCE: Duration = Duration::from_millis(500);

impl Engine {
    /// Marks `contract` for a used-resources report.
    pub(crate) fn report(&self, contract: u64) {
        self.inner
            .pending_reports
            .lock()
            .expect("report set lock")
            .insert(contract);
        self.inner.report_wake.notify_one();
    }

    /// Sends every pending report now (Σ capacity of ok/paused workloads per contract, and
    /// whether the contract has any: the deployment is up).
    /// On failure the contracts stay pending for the next attempt.
    pub async fn flush_reports(&self) -> bool {
        let pending =
            std::mem::take(&mut *self.inner.pending_reports.lock().expect("report set lock"));
        if pending.is_empty() {
            return true;
        }
        let batch: Vec<(u64, Capacity, bool)> = {
            let used = self.inner.used.lock().expect("usage index lock");
            pending
                .iter()
                .map(|&c| {
                    let mut cap = Capacity::default();
                    let mut up = false;
                    for (wc, w) in used.values() {
                        if *wc == c {
                            cap += *w;
                            up = true;
                        }
                    }
                    (c, cap, up)
                })
                .collect()
        };
        if self.inner.chain.report_resources(&batch).await.is_ok() {
            return true;
        }
        // One bad contract (canceled meanwhile) makes the ledger refuse the whole batch: send
        // them one by one and drop the refused ones. If none gets through, the ledger is
        // probably unreachable: keep them all for the next attempt.
        let mut failed = Vec::new();
        for item in &batch {
            match self
                .inner
                .chain
                .report_resources(std::slice::from_ref(item))
                .await
            {
                Ok(()) => {}
                Err(e) if e.rejected => {
                    tracing::warn!(contract = item.0, error = %e, "used resources report refused");
                }
                Err(e) => {
                    tracing::warn!(contract = item.0, error = %e, "cannot report used resources");
                    failed.push(item.0);
                }
            }
        }
        if !failed.is_empty() {
            self.inner
                .pending_reports
                .lock()
                .expect("report set lock")
                .extend(failed);
            return false;
        }
        true
    }

    pub(crate) async fn run_reporter(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.report_wake.notified() => {
                    // Coalesce: jobs finishing within the window share one transaction, so a
                    // burst of deployments costs a few ledger blocks, not one per job.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(COALESCE) => {}
                    }
                    if !self.flush_reports().await {
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(Duration::from_secs(6)) => self.inner.report_wake.notify_one(),
                        }
                    }
                }
            }
        }
    }
}
