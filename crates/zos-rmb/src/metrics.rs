//! Relay counters and the Prometheus text rendering served at `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::frame::BounceCode;

/// Upper bounds (seconds) of the delivery-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];
const BOUNCE_CODES: [BounceCode; 11] = [
    BounceCode::Malformed,
    BounceCode::ForgedSource,
    BounceCode::TooLarge,
    BounceCode::RateLimited,
    BounceCode::NoRoute,
    BounceCode::QueueFull,
    BounceCode::Expired,
    BounceCode::Federation,
    BounceCode::BadSignature,
    BounceCode::Undelivered,
    BounceCode::Other,
];

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) auth_ok: AtomicU64,
    pub(crate) auth_failed: AtomicU64,
    bounced: [AtomicU64; BOUNCE_CODES.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// Gauges sampled when rendering.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Gauges {
    pub sessions: usize,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    pub federation_links: usize,
}

impl RelayMetrics {
    pub(crate) fn bounce(&self, code: BounceCode) {
        let i = BOUNCE_CODES.iter().position(|c| *c == code).unwrap_or(0);
        self.bounced[i].fetch_add(1, Relaxed);
    }

    /// Counts one envelope handed to a destination socket after `latency` inside the relay.
    pub(crate) fn delivered(&self, bytes: usize, latency: Duration) {
        self.delivered.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
        let s = latency.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Total envelopes delivered (for tests and `zos up`).
    pub fn delivered_total(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// Total envelopes bounced with `code`.
    pub fn bounced_total(&self, code: BounceCode) -> u64 {
        let i = BOUNCE_CODES.iter().position(|c| *c == code).unwrap_or(0);
        self.bounced[i].load(Relaxed)
    }

    pub(crate) fn render(&self, g: Gauges) -> String {
        let mut o = String::with_capacity(4096);
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP zos_rmb_relay_messages_total Envelopes by outcome.\n\
             # TYPE zos_rmb_relay_messages_total counter"
        );
        for (outcome, v) in [
            ("received", &self.received),
            ("delivered", &self.delivered),
            ("queued", &self.queued),
            ("forwarded", &self.forwarded),
        ] {
            let _ = writeln!(
                o,
                "zos_rmb_relay_messages_total{{outcome=\"{outcome}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP zos_rmb_relay_bounced_total Envelopes refused, by reason.\n\
             # TYPE zos_rmb_relay_bounced_total counter"
        );
        for (i, code) in BOUNCE_CODES.iter().enumerate() {
            let _ = writeln!(
                o,
                "zos_rmb_relay_bounced_total{{reason=\"{code:?}\"}} {}",
                self.bounced[i].load(Relaxed)
            );
        }
        c(
            &mut o,
            "zos_rmb_relay_bytes_in_total",
            "Envelope bytes received.",
            self.bytes_in.load(Relaxed),
        );
        c(
            &mut o,
            "zos_rmb_relay_bytes_out_total",
            "Envelope bytes delivered to sessions.",
            self.bytes_out.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP zos_rmb_relay_logins_total Session logins by result.\n\
             # TYPE zos_rmb_relay_logins_total counter\n\
             zos_rmb_relay_logins_total{{result=\"ok\"}} {}\n\
             zos_rmb_relay_logins_total{{result=\"failed\"}} {}",
            self.auth_ok.load(Relaxed),
            self.auth_failed.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "zos_rmb_relay_sessions",
                "Authenticated sessions connected.",
                g.sessions,
            ),
            (
                "zos_rmb_relay_queue_depth",
                "Envelopes held for offline twins.",
                g.queued_messages,
            ),
            (
                "zos_rmb_relay_queue_bytes",
                "Bytes held for offline twins.",
                g.queued_bytes,
            ),
            (
                "zos_rmb_relay_federation_links",
                "Outgoing relay-to-relay links up.",
                g.federation_links,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "zos_rmb_relay_delivery_latency_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time from receipt to hand-off to the destination socket (includes queueing).\n\
             # TYPE {name} histogram"
        );
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "{name}_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{name}_count {count}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = RelayMetrics::default();
        m.delivered(100, Duration::from_millis(3));
        m.bounce(BounceCode::RateLimited);
        let t = m.render(Gauges {
            queued_messages: 2,
            ..Gauges::default()
        });
        assert!(t.contains("zos_rmb_relay_messages_total{outcome=\"delivered\"} 1"));
        assert!(t.contains("zos_rmb_relay_bounced_total{reason=\"RateLimited\"} 1"));
        assert!(t.contains("zos_rmb_relay_queue_depth 2"));
        assert!(t.contains("zos_rmb_relay_delivery_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(t.contains("zos_rmb_relay_delivery_latency_seconds_bucket{le=\"0.001\"} 0"));
        assert!(t.contains("zos_rmb_relay_bytes_out_total 100"));
    }
}
