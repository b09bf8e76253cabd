//! Server limits: how many connections, how long a client may take, how much memory unfinished
//! requests may hold, and how signature failures are throttled. Defaults are for a public
//! ledger; every field has a `zos ledger serve` flag (see `docs/ledger.md`).

use std::time::Duration;

/// Connection and request limits of one ledger server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (HTTP and WebSocket alike). When full, a new connection gets
    /// an HTTP 503 with a JSON-RPC error and is closed.
    pub max_connections: usize,
    /// Connections from one source address (an IPv4 address or an IPv6 /64) at once, so that
    /// one host cannot take every slot; more are refused the same way.
    pub max_connections_per_ip: usize,
    /// Time allowed for an HTTP request head. The timer starts as soon as the connection waits
    /// for a request, so it is also the idle limit of a keep-alive connection between requests
    /// (hyper's `header_read_timeout`).
    pub header_timeout: Duration,
    /// Time allowed to receive a whole request body, however it is trickled.
    pub body_timeout: Duration,
    /// A WebSocket that sends nothing (not even a pong to the server's pings, sent every third
    /// of this) for this long is closed.
    pub idle_timeout: Duration,
    /// Largest HTTP request body in bytes (WebSocket messages: this or 64 KiB, whichever is
    /// lower).
    pub max_body_bytes: usize,
    /// Bytes all unfinished request bodies may hold together; a body that cannot get its share
    /// within `body_timeout` is refused with "server busy".
    pub body_memory: usize,
    /// Requests served on one HTTP keep-alive connection; the last one is answered with
    /// `Connection: close`.
    pub keep_alive_requests: u64,
    /// Subscriptions open at once on one WebSocket.
    pub max_subscriptions: usize,
    /// Throttling of bad signatures per source address.
    pub sig_throttle: SigThrottle,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_body_bytes: 2 << 20,
            body_memory: 64 << 20,
            keep_alive_requests: 10_000,
            max_subscriptions: 64,
            sig_throttle: SigThrottle::default(),
        }
    }
}

/// What happens to a source address (an IPv4 address or an IPv6 /64) whose submissions carry
/// bad signatures. Failures are remembered until `forget_after` has passed without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigThrottle {
    /// Failures answered at once, without penalty (a client with a wrong key learns of it).
    pub free_failures: u32,
    /// Each failure after the free ones is answered `delay_step` × (failures − free) later
    /// (at most 2 s), and its connection is closed after the answer.
    pub delay_step: Duration,
    /// At this many failures the address is banned: its submissions are refused unverified
    /// (error -32003) for `ban`, doubling on every failure after a ban, up to `max_ban`.
    pub ban_after: u32,
    /// First ban.
    pub ban: Duration,
    /// Longest ban.
    pub max_ban: Duration,
    /// A record with no failure for this long (and no running ban) is forgotten.
    pub forget_after: Duration,
    /// Addresses remembered at once; when full, forgotten records are dropped first, then the
    /// one whose last failure is oldest.
    pub max_tracked: usize,
}

impl Default for SigThrottle {
    fn default() -> Self {
        SigThrottle {
            free_failures: 3,
            delay_step: Duration::from_millis(200),
            ban_after: 10,
            ban: Duration::from_secs(60),
            max_ban: Duration::from_secs(3600),
            forget_after: Duration::from_secs(600),
            max_tracked: 65_536,
        }
    }
}

impl SigThrottle {
    /// Disabled: no delay, no ban.
    pub fn off() -> Self {
        SigThrottle {
            free_failures: u32::MAX,
            ban_after: u32::MAX,
            ..SigThrottle::default()
        }
    }
}
