//! Relay limits and the per-twin token-bucket rate limiter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Per-twin limits a relay enforces; every refusal is bounced to the sender with a reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest encoded envelope accepted (bytes).
    pub max_envelope_bytes: usize,
    /// Sustained messages per second per source twin.
    pub messages_per_sec: f64,
    /// Burst of messages above the sustained rate.
    pub message_burst: f64,
    /// Sustained bytes per second per source twin.
    pub bytes_per_sec: f64,
    /// Burst of bytes above the sustained rate.
    pub byte_burst: f64,
    /// Messages held for one offline destination twin.
    pub queue_messages_per_twin: usize,
    /// Bytes held for one offline destination twin.
    pub queue_bytes_per_twin: usize,
    /// Bytes held for all offline twins together.
    pub queue_bytes_total: usize,
    /// Bytes waiting to be written to one connected session before the relay refuses more.
    pub session_backlog_bytes: usize,
    /// Longest TTL the relay accepts (seconds); longer envelopes bounce with `Expired`. Bounds
    /// how long queued envelopes and remembered ids live.
    pub max_ttl: u32,
    /// Open connections (any state); further ones get `503` and are closed.
    pub max_connections: usize,
    /// From accept to a successful login (TLS, HTTP upgrade, challenge and answer): a
    /// connection that is not logged in by then is closed (slowloris, idle sockets).
    pub login_timeout: Duration,
    /// Bytes of an unfinished message a connection may hold without drawing on the shared
    /// budget (and the most a connection may send before it logs in).
    pub frame_allowance: usize,
    /// Bytes of unfinished messages above the per-connection allowances, for all connections
    /// together; a connection that needs more is closed.
    pub frame_memory_total: usize,
    /// A message larger than the allowance must arrive completely within this time.
    pub frame_timeout: Duration,
    /// Failed logins per source address (IPv4 address, IPv6 /64) within `login_failure_window`
    /// that are answered at once; later failures are answered after `login_failure_delay`.
    pub login_free_failures: u32,
    /// Delay before a throttled failure is answered.
    pub login_failure_delay: Duration,
    /// Failures within the window after which the address is banned.
    pub login_ban_after: u32,
    /// The window failures are counted in.
    pub login_failure_window: Duration,
    /// How long a banned address's connections are refused at accept.
    pub login_ban: Duration,
    /// Envelope ids remembered per source twin for the duplicate filter (and the most
    /// envelopes of one twin in flight within their TTL).
    pub ids_per_twin: usize,
    /// Envelope ids remembered in total before only twins below their fair share are taken.
    pub ids_total: usize,
    /// A federation link's budget is this many times a twin's (federated traffic is charged
    /// to the link, not to the envelopes' sources).
    pub federation_rate_factor: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_envelope_bytes: 4 * 1024 * 1024,
            messages_per_sec: 1000.0,
            message_burst: 2000.0,
            bytes_per_sec: 64.0 * 1024.0 * 1024.0,
            byte_burst: 128.0 * 1024.0 * 1024.0,
            queue_messages_per_twin: 1000,
            queue_bytes_per_twin: 64 * 1024 * 1024,
            queue_bytes_total: 1024 * 1024 * 1024,
            session_backlog_bytes: 64 * 1024 * 1024,
            max_ttl: 3600,
            max_connections: 4096,
            login_timeout: Duration::from_secs(10),
            frame_allowance: 64 * 1024,
            frame_memory_total: 256 * 1024 * 1024,
            frame_timeout: Duration::from_secs(60),
            login_free_failures: 5,
            login_failure_delay: Duration::from_secs(1),
            login_ban_after: 20,
            login_failure_window: Duration::from_secs(60),
            login_ban: Duration::from_secs(300),
            ids_per_twin: 100_000,
            ids_total: 1_000_000,
            federation_rate_factor: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    messages: f64,
    bytes: f64,
    at: Instant,
}

/// Token buckets per twin (messages and bytes).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    buckets: HashMap<u32, Bucket>,
}

/// Which budget a message exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Messages,
    Bytes,
}

impl RateLimiter {
    pub(crate) fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            buckets: HashMap::new(),
        }
    }

    /// A limiter whose rates and bursts are `factor` times those of `limits`.
    pub(crate) fn scaled(limits: &Limits, factor: f64) -> Self {
        let mut l = limits.clone();
        l.messages_per_sec *= factor;
        l.message_burst *= factor;
        l.bytes_per_sec *= factor;
        l.byte_burst *= factor;
        Self::new(l)
    }

    /// Takes one message of `size` bytes from `twin`'s budget, or says which budget is empty.
    pub(crate) fn take(&mut self, twin: u32, size: usize, now: Instant) -> Result<(), Exceeded> {
        let l = &self.limits;
        if self.buckets.len() > 100_000 {
            // Full buckets carry no state worth keeping.
            let (mb, bb) = (l.message_burst, l.byte_burst);
            self.buckets.retain(|_, b| b.messages < mb || b.bytes < bb);
        }
        let b = self.buckets.entry(twin).or_insert(Bucket {
            messages: l.message_burst,
            bytes: l.byte_burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.messages = (b.messages + dt * l.messages_per_sec).min(l.message_burst);
        b.bytes = (b.bytes + dt * l.bytes_per_sec).min(l.byte_burst);
        let size = size as f64;
        if b.messages < 1.0 {
            return Err(Exceeded::Messages);
        }
        if b.bytes < size {
            return Err(Exceeded::Bytes);
        }
        b.messages -= 1.0;
        b.bytes -= size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_over_time() {
        let mut rl = RateLimiter::new(Limits {
            messages_per_sec: 10.0,
            message_burst: 2.0,
            ..Limits::default()
        });
        let t0 = Instant::now();
        assert!(rl.take(1, 10, t0).is_ok());
        assert!(rl.take(1, 10, t0).is_ok());
        assert_eq!(rl.take(1, 10, t0), Err(Exceeded::Messages));
        // Another twin has its own budget.
        assert!(rl.take(2, 10, t0).is_ok());
        assert!(rl.take(1, 10, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn byte_budget() {
        let mut rl = RateLimiter::new(Limits {
            bytes_per_sec: 100.0,
            byte_burst: 150.0,
            ..Limits::default()
        });
        let t0 = Instant::now();
        assert!(rl.take(1, 100, t0).is_ok());
        assert_eq!(rl.take(1, 100, t0), Err(Exceeded::Bytes));
    }
}
