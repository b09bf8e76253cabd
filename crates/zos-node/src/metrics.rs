//! Prometheus metrics, served on a loopback address (`GET /metrics`, text format 0.0.4).
//!
//! - `zos_node_workloads{type,state}`: workloads by type and state (from the store, at scrape);
//! - `zos_node_jobs_total{op}`: processed jobs;
//! - `zos_node_job_latency_seconds{op}`: histogram of queue → done latency per job;
//! - `zos_node_results_total{type,state}`: results recorded;
//! - `zos_node_queued_jobs`: jobs waiting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::model::ResultState;

const BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_ms: u64,
}

/// Counters shared by the engine and the endpoint.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<&'static str, Histogram>>,
    results: Mutex<BTreeMap<(String, &'static str), u64>>,
    last_result: AtomicI64,
    /// The last self-check (`zos.admin.diag.health` and the node's periodic check).
    health: Mutex<Option<crate::diag::Health>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Wire name of a result state.
pub fn state_name(s: ResultState) -> &'static str {
    match s {
        ResultState::Unset => "",
        ResultState::Init => "init",
        ResultState::Unchanged => "unchanged",
        ResultState::Error => "error",
        ResultState::Ok => "ok",
        ResultState::Deleted => "deleted",
        ResultState::Paused => "paused",
    }
}

impl Metrics {
    /// Records a finished job and its latency.
    pub fn job_done(&self, op: &'static str, latency_ms: u64) {
        let mut jobs = self.jobs.lock().expect("metrics lock");
        let h = jobs.entry(op).or_default();
        h.count += 1;
        h.sum_ms += latency_ms;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if latency_ms <= *b {
                h.counts[i] += 1;
            }
        }
    }

    /// Records a workload result.
    pub fn result(&self, wtype: &str, state: ResultState, created: i64) {
        *self
            .results
            .lock()
            .expect("metrics lock")
            .entry((wtype.to_string(), state_name(state)))
            .or_default() += 1;
        self.last_result.fetch_max(created, Ordering::Relaxed);
    }

    /// Newest result timestamp seen (seconds).
    pub fn last_result_ts(&self) -> i64 {
        self.last_result.load(Ordering::Relaxed)
    }

    /// Records the last self-check, published as `zos_node_health_ok` and
    /// `zos_node_health_degraded{reason=…}`.
    pub fn set_health(&self, h: crate::diag::Health) {
        *self.health.lock().expect("metrics lock") = Some(h);
    }

    /// Renders the text exposition; `workloads` is (type, state) → count, `queued` the queue.
    pub fn render(&self, workloads: &BTreeMap<(String, String), u64>, queued: u64) -> String {
        let mut out = String::new();
        if let Some(h) = &*self.health.lock().expect("metrics lock") {
            let _ = writeln!(
                out,
                "# HELP zos_node_health_ok 1 when the node's self-check is ok, 0 when degraded."
            );
            let _ = writeln!(out, "# TYPE zos_node_health_ok gauge");
            let _ = writeln!(out, "zos_node_health_ok {}", u8::from(h.reasons.is_empty()));
            let _ = writeln!(
                out,
                "# HELP zos_node_health_degraded Why the self-check is degraded (one series per reason)."
            );
            let _ = writeln!(out, "# TYPE zos_node_health_degraded gauge");
            for r in &h.reasons {
                let label: String = r
                    .chars()
                    .map(|c| {
                        if c == '"' || c == '\\' || c == '\n' {
                            '\''
                        } else {
                            c
                        }
                    })
                    .take(200)
                    .collect();
                let _ = writeln!(out, "zos_node_health_degraded{{reason=\"{label}\"}} 1");
            }
        }
        let _ = writeln!(
            out,
            "# HELP zos_node_workloads Workloads by type and state."
        );
        let _ = writeln!(out, "# TYPE zos_node_workloads gauge");
        for ((t, s), n) in workloads {
            let _ = writeln!(out, "zos_node_workloads{{type=\"{t}\",state=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP zos_node_queued_jobs Jobs waiting in the queue."
        );
        let _ = writeln!(out, "# TYPE zos_node_queued_jobs gauge");
        let _ = writeln!(out, "zos_node_queued_jobs {queued}");
        let _ = writeln!(
            out,
            "# HELP zos_node_results_total Workload results recorded."
        );
        let _ = writeln!(out, "# TYPE zos_node_results_total counter");
        for ((t, s), n) in self.results.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "zos_node_results_total{{type=\"{t}\",state=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP zos_node_job_latency_seconds Time from queueing to completion of a job."
        );
        let _ = writeln!(out, "# TYPE zos_node_job_latency_seconds histogram");
        for (op, h) in self.jobs.lock().expect("metrics lock").iter() {
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "zos_node_job_latency_seconds_bucket{{op=\"{op}\",le=\"{}\"}} {}",
                    *b as f64 / 1000.0,
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "zos_node_job_latency_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "zos_node_job_latency_seconds_sum{{op=\"{op}\"}} {}",
                h.sum_ms as f64 / 1000.0
            );
            let _ = writeln!(
                out,
                "zos_node_job_latency_seconds_count{{op=\"{op}\"}} {}",
                h.count
            );
        }
        out
    }
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {addr}: {source}")]
pub struct MetricsError {
    /// Address.
    pub addr: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics endpoint; only loopback addresses are accepted.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError {
            addr,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "metrics are served on loopback only",
            ),
        });
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: crate::engine::Engine,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let engine = engine.clone();
            async move {
                let mut by = BTreeMap::new();
                if let Ok(all) = engine.store().list(None) {
                    for r in all {
                        for w in r.deployment.workloads {
                            *by.entry((
                                w.workload_type.to_string(),
                                state_name(w.result.state).to_string(),
                            ))
                            .or_default() += 1;
                        }
                    }
                }
                engine.metrics().render(&by, engine.queued_jobs())
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.job_done("provision", 7);
        m.job_done("provision", 700);
        let text = m.render(&BTreeMap::new(), 3);
        assert!(
            text.contains("zos_node_job_latency_seconds_bucket{op=\"provision\",le=\"0.01\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("zos_node_job_latency_seconds_bucket{op=\"provision\",le=\"1\"} 2"),
            "{text}"
        );
        assert!(text.contains("zos_node_job_latency_seconds_count{op=\"provision\"} 2"));
        assert!(text.contains("zos_node_queued_jobs 3"));
    }
}
