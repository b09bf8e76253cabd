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
    pub(crate) refused_full: AtomicU64,
    pub(crate) refused_banned: AtomicU64,
    pub(crate) timeout_handshake: AtomicU64,
    pub(crate) timeout_login: AtomicU64,
    pub(crate) timeout_frame: AtomicU64,
    pub(crate) frame_refused: AtomicU64,
    pub(crate) logins_delayed: AtomicU64,
    pub(crate) login_bans: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) frame_bytes_peak: AtomicU64,
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
    pub connections: usize,
    pub frame_bytes: usize,
    pub banned_addresses: usize,
    pub seen_ids: usize,
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

    /// Connections refused at accept: (relay full, address banned).
    pub fn connections_refused(&self) -> (u64, u64) {
        (
            self.refused_full.load(Relaxed),
            self.refused_banned.load(Relaxed),
        )
    }

    /// Connections closed for missing a deadline: (HTTP/WebSocket handshake, login,
    /// unfinished message).
    pub fn connections_timed_out(&self) -> (u64, u64, u64) {
        (
            self.timeout_handshake.load(Relaxed),
            self.timeout_login.load(Relaxed),
            self.timeout_frame.load(Relaxed),
        )
    }

    /// Connections closed for holding too much of an unfinished message.
    pub fn frame_refused_total(&self) -> u64 {
        self.frame_refused.load(Relaxed)
    }

    /// Logins: (accepted, failed).
    pub fn logins(&self) -> (u64, u64) {
        (self.auth_ok.load(Relaxed), self.auth_failed.load(Relaxed))
    }

    /// The most unfinished-message bytes ever drawn from the shared budget at once.
    pub fn frame_bytes_peak(&self) -> u64 {
        self.frame_bytes_peak.load(Relaxed)
    }

    /// Envelopes dropped by the duplicate filter.
    pub fn duplicates_total(&self) -> u64 {
        self.duplicates.load(Relaxed)
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
        let _ = writeln!(
            o,
            "# HELP zos_rmb_relay_connections_refused_total Connections refused at accept.\n\
             # TYPE zos_rmb_relay_connections_refused_total counter\n\
             zos_rmb_relay_connections_refused_total{{reason=\"full\"}} {}\n\
             zos_rmb_relay_connections_refused_total{{reason=\"banned\"}} {}",
            self.refused_full.load(Relaxed),
            self.refused_banned.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP zos_rmb_relay_connections_timed_out_total Connections closed for missing a deadline.\n\
             # TYPE zos_rmb_relay_connections_timed_out_total counter\n\
             zos_rmb_relay_connections_timed_out_total{{stage=\"handshake\"}} {}\n\
             zos_rmb_relay_connections_timed_out_total{{stage=\"login\"}} {}\n\
             zos_rmb_relay_connections_timed_out_total{{stage=\"frame\"}} {}",
            self.timeout_handshake.load(Relaxed),
            self.timeout_login.load(Relaxed),
            self.timeout_frame.load(Relaxed)
        );
        c(
            &mut o,
            "zos_rmb_relay_frame_refused_total",
            "Connections closed for unfinished-message memory (budget, or data before login).",
            self.frame_refused.load(Relaxed),
        );
        c(
            &mut o,
            "zos_rmb_relay_logins_delayed_total",
            "Failed logins answered late (address over its free failures).",
            self.logins_delayed.load(Relaxed),
        );
        c(
            &mut o,
            "zos_rmb_relay_login_bans_total",
            "Addresses banned for failed logins.",
            self.login_bans.load(Relaxed),
        );
        c(
            &mut o,
            "zos_rmb_relay_duplicates_total",
            "Envelopes dropped by the (source, id) duplicate filter.",
            self.duplicates.load(Relaxed),
        );
        for (name, help, v) in [
            (
                "zos_rmb_relay_connections",
                "Connections open (any state).",
                g.connections,
            ),
            (
                "zos_rmb_relay_frame_bytes",
                "Unfinished-message bytes drawn from the shared budget.",
                g.frame_bytes,
            ),
            (
                "zos_rmb_relay_frame_bytes_peak",
                "Most unfinished-message bytes drawn from the shared budget at once.",
                usize::try_from(self.frame_bytes_peak.load(Relaxed)).unwrap_or(usize::MAX),
            ),
            (
                "zos_rmb_relay_banned_addresses",
                "Source addresses banned now.",
                g.banned_addresses,
            ),
            (
                "zos_rmb_relay_seen_ids",
                "Envelope ids held by the duplicate filter.",
                g.seen_ids,
            ),
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
