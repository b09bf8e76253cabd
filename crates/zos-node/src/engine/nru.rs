//! Network consumption (NRU) reports (upstream `provisiond/reporter.go`): every interval the
//! engine asks each ok/paused workload's primitive for its cumulative traffic counter
//! ([`zos_primitive::Primitive::consumption`]), turns counters into increases, sums them per
//! contract and sends one `add_nru_reports` transaction. The engine knows no workload type:
//! which types consume network units, and what is counted, is the primitives' business.
//!
//! Counters live in the kernel and restart from 0 when a resource is re-created; the last
//! values are kept in memory only, so the first round after a start is a baseline (what was
//! counted before may already have been reported by the previous run). Traffic between the
//! last round and a restart, or a re-creation, is therefore not billed: the node errs towards
//! the user. A round the ledger does not take is kept and sent with the next one.

use std::collections::{BTreeMap, HashMap};

use zos_types::ResultState;

use super::{Engine, now_secs};
use crate::chain::NruReport;

/// State of the NRU reporter between rounds.
#[derive(Debug, Default)]
pub struct NruMeter {
    /// Workload id → last counter value.
    last: HashMap<String, u64>,
    /// Time of the previous round (None before the first).
    since: Option<u64>,
    /// Increases not yet accepted by the ledger, per contract.
    pending: BTreeMap<u64, u64>,
}

/// One sampled counter: workload id, its contract, the cumulative byte count.
pub type Sample = (String, u64, u64);

impl NruMeter {
    /// Folds a round of samples into per-contract increases (added to the pending ones).
    ///
    /// - a counter below its previous value was reset (resource re-created): its value is the
    ///   increase;
    /// - a counter not seen in the previous round counts whole, except in the very first round
    ///   (a baseline: the node may have reported it before it restarted);
    /// - workloads that are gone are forgotten.
    pub fn fold(&mut self, samples: &[Sample]) {
        let first = self.since.is_none();
        let mut next = HashMap::with_capacity(samples.len());
        for (wlid, contract, value) in samples {
            let inc = match self.last.get(wlid) {
                Some(prev) if value >= prev => value - prev,
                Some(_) => *value,
                None if first => 0,
                None => *value,
            };
            if inc > 0 {
                let e = self.pending.entry(*contract).or_insert(0);
                *e = e.saturating_add(inc);
            }
            next.insert(wlid.clone(), *value);
        }
        self.last = next;
    }

    /// The reports for a round at `now` (seconds); `None` on the first round (nothing to
    /// measure a window against). Contracts without traffic are left out, as upstream does.
    pub fn reports(&mut self, now: u64) -> Option<Vec<NruReport>> {
        let since = self.since.replace(now)?;
        let window = now.saturating_sub(since);
        Some(
            self.pending
                .iter()
                .filter(|(_, nru)| **nru > 0)
                .map(|(&contract_id, &nru)| NruReport {
                    contract_id,
                    timestamp: now,
                    window,
                    nru,
                })
                .collect(),
        )
    }
}

impl Engine {
    /// The consumption counters of every ok/paused workload whose primitive reports one.
    /// A primitive that fails for one workload is logged and the workload skipped this round.
    pub async fn sample_consumption(&self) -> Vec<Sample> {
        let records = match self.inner.store.list(None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "nru: cannot list deployments");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for r in records {
            let dl = &r.deployment;
            for wl in &dl.workloads {
                if !matches!(wl.result.state, ResultState::Ok | ResultState::Paused) {
                    continue;
                }
                let Some(p) = self.inner.registry.get(&wl.workload_type) else {
                    continue;
                };
                let ctx = self.ctx(dl, &wl.name);
                match p.consumption(&ctx, wl).await {
                    Ok(Some(v)) => out.push((ctx.workload_id.clone(), dl.contract_id, v)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(wl = %ctx.workload_id, error = %e, "nru: cannot read consumption")
                    }
                }
            }
        }
        out
    }

    /// One NRU round: sample, fold, and send what was consumed since the previous round.
    /// Returns the reports sent (empty when nothing was consumed or on the first round).
    pub async fn report_consumption(&self, meter: &mut NruMeter) -> Vec<NruReport> {
        let samples = self.sample_consumption().await;
        meter.fold(&samples);
        let Some(reports) = meter.reports(u64::try_from(now_secs()).unwrap_or(0)) else {
            return Vec::new();
        };
        if reports.is_empty() {
            return reports;
        }
        match self.inner.chain.report_nru(&reports).await {
            Ok(()) => {
                meter.pending.clear();
                reports
            }
            Err(e) => {
                // A refused batch (a contract ended meanwhile) would be refused again: drop it.
                // Otherwise keep the increases for the next round.
                tracing::warn!(error = %e, contracts = reports.len(), "nru report failed");
                if e.rejected {
                    meter.pending.clear();
                }
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(w: &str, c: u64, v: u64) -> Sample {
        (w.to_string(), c, v)
    }

    #[test]
    fn first_round_is_a_baseline_then_increases_are_summed_per_contract() {
        let mut m = NruMeter::default();
        m.fold(&[s("1-10-net", 10, 5_000), s("1-11-net", 11, 70)]);
        assert_eq!(m.reports(1000), None, "no window before the first round");
        m.fold(&[
            s("1-10-net", 10, 5_600),
            s("1-10-other", 10, 400), // appeared after the baseline: counts whole
            s("1-11-net", 11, 70),    // no traffic: left out
        ]);
        let r = m.reports(1060).expect("second round");
        assert_eq!(
            r,
            vec![NruReport {
                contract_id: 10,
                timestamp: 1060,
                window: 60,
                nru: 1000
            }]
        );
    }

    #[test]
    fn a_reset_counter_counts_its_new_value_and_pending_survives_a_failed_send() {
        let mut m = NruMeter::default();
        m.fold(&[s("w", 3, 900)]);
        m.reports(0);
        m.fold(&[s("w", 3, 1_000)]);
        m.reports(10).expect("round"); // pretend the ledger refused nothing but was down
        // Not cleared (the send failed): the next round adds to it.
        m.fold(&[s("w", 3, 50)]); // re-created resource
        let r = m.reports(20).expect("round");
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].nru, r[0].window), (150, 10));
        // Gone workloads are forgotten: coming back later counts whole.
        m.pending.clear();
        m.fold(&[]);
        m.fold(&[s("w", 3, 7)]);
        assert_eq!(m.reports(30).expect("round")[0].nru, 7);
    }
}
