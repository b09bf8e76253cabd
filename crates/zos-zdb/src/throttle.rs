//! Authentication throttling and the counters of the connection limits.
//!
//! A password guess (a wrong `AUTH`, `AUTH SECURE`, `HELLO … AUTH`, or `SELECT ns <pw>`) is
//! counted on its connection and, for TCP clients, on its source address (IPv6: the /64, as
//! one host usually owns a whole /64). Past the free failures each further one is answered
//! only after a delay, then the connection is closed, then the source is banned for a while.
//! Numbers: [`crate::Limits`] and `docs/zdb.md`. Only failures take the map's lock, and
//! accepting a connection takes it only while some source is banned: the request path of
//! well-behaved clients never does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::Limits;

/// Sources tracked at most; beyond it only banned sources are kept (a flood of addresses
/// cannot grow the map without bound, it only loses the per-address count).
const MAX_SOURCES: usize = 65_536;

/// Reply to a banned source (then the connection is closed).
pub const BANNED_MSG: &str = "ERR too many authentication failures, try again later";
/// Reply when a connection used up its failures (then it is closed).
pub const CLOSED_MSG: &str = "ERR too many authentication failures";

/// Counters of the limits, shown by `INFO` (`# limits`).
#[derive(Default)]
pub struct Stats {
    /// Connections refused because `--max-clients` were connected.
    pub refused_full: AtomicU64,
    /// Connections refused because their source is banned.
    pub refused_banned: AtomicU64,
    /// Connections closed after `--idle-timeout` without a byte.
    pub idle_timeouts: AtomicU64,
    /// Connections closed because a request (or a reply) was not finished in time.
    pub request_timeouts: AtomicU64,
    /// Bytes of unfinished requests currently charged to `--max-pending`.
    pub pending_bytes: AtomicUsize,
    /// Connections closed because their unfinished request did not fit `--max-pending`.
    pub pending_refused: AtomicU64,
    /// Wrong passwords.
    pub auth_failures: AtomicU64,
    /// Failures answered after a delay.
    pub auth_delayed: AtomicU64,
    /// Connections closed for too many failures.
    pub auth_closed: AtomicU64,
    /// Sources banned.
    pub auth_bans: AtomicU64,
    /// Rounds of the `--synctime` fsync task.
    pub periodic_syncs: AtomicU64,
}

/// What to do with the reply to a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer now.
    Answer,
    /// Answer after this delay.
    Delay(Duration),
    /// Answer, then close the connection.
    Close,
}

struct Source {
    failures: u32,
    last: Instant,
    banned_until: Option<Instant>,
}

/// Failure counts per source address, and bans.
pub struct AuthThrottle {
    limits: Limits,
    sources: Mutex<HashMap<IpAddr, Source>>,
    /// Sources banned now or recently (an upper bound): zero means accept need not look.
    banned: AtomicUsize,
}

/// The address a source is counted under: IPv4 as is (mapped IPv6 too), IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

impl AuthThrottle {
    /// An empty throttle with these limits.
    pub fn new(limits: Limits) -> AuthThrottle {
        AuthThrottle {
            limits,
            sources: Mutex::new(HashMap::new()),
            banned: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        if self.banned.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let now = Instant::now();
        let mut map = self.map();
        let key = source_key(ip);
        match map.get(&key).and_then(|s| s.banned_until) {
            Some(until) if until > now => true,
            Some(_) => {
                // Expired: forget the source (its count starts again).
                map.remove(&key);
                self.banned.fetch_sub(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Sources banned now (INFO).
    pub fn banned_now(&self) -> usize {
        if self.banned.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let now = Instant::now();
        self.map()
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| u > now))
            .count()
    }

    /// Records one failure: `conn_failures` is the connection's count including this one.
    pub fn failure(&self, ip: Option<IpAddr>, conn_failures: u32, stats: &Stats) -> Verdict {
        stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        let l = &self.limits;
        let mut ip_failures = 0;
        if let Some(ip) = ip {
            let now = Instant::now();
            let mut map = self.map();
            if map.len() >= MAX_SOURCES {
                map.retain(|_, s| s.banned_until.is_some_and(|u| u > now));
                self.banned.store(map.len(), Ordering::Relaxed);
            }
            if map.len() < MAX_SOURCES {
                let s = map.entry(source_key(ip)).or_insert(Source {
                    failures: 0,
                    last: now,
                    banned_until: None,
                });
                if now.duration_since(s.last) >= l.auth_ban {
                    s.failures = 0; // A quiet source starts again.
                }
                s.failures = s.failures.saturating_add(1);
                s.last = now;
                ip_failures = s.failures;
                if s.failures >= l.auth_ip_ban_after && s.banned_until.is_none() {
                    s.banned_until = Some(now + l.auth_ban);
                    self.banned.fetch_add(1, Ordering::Relaxed);
                    stats.auth_bans.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %source_key(ip), failures = s.failures, ban_secs = l.auth_ban.as_secs(), "banning a source after authentication failures");
                }
            }
        }
        if ip_failures >= l.auth_ip_ban_after || conn_failures >= l.auth_close_after {
            stats.auth_closed.fetch_add(1, Ordering::Relaxed);
            return Verdict::Close;
        }
        if conn_failures > l.auth_free_failures || ip_failures > l.auth_ip_delay_after {
            stats.auth_delayed.fetch_add(1, Ordering::Relaxed);
            return Verdict::Delay(l.auth_delay);
        }
        Verdict::Answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_then_close_then_ban() {
        let limits = Limits {
            auth_free_failures: 2,
            auth_close_after: 4,
            auth_ip_delay_after: 5,
            auth_ip_ban_after: 7,
            auth_ban: Duration::from_secs(60),
            ..Limits::default()
        };
        let t = AuthThrottle::new(limits.clone());
        let st = Stats::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let v: Vec<Verdict> = (1..=4).map(|n| t.failure(Some(ip), n, &st)).collect();
        let d = Verdict::Delay(limits.auth_delay);
        assert_eq!(v, [Verdict::Answer, Verdict::Answer, d, Verdict::Close]);
        // A new connection from the same source: its own count is fresh, the source's is 5+.
        assert_eq!(t.failure(Some(ip), 1, &st), Verdict::Answer);
        assert_eq!(t.failure(Some(ip), 2, &st), d);
        assert!(!t.is_banned(Some(ip)));
        assert_eq!(t.failure(Some(ip), 3, &st), Verdict::Close);
        assert!(t.is_banned(Some(ip)));
        assert!(!t.is_banned(Some("192.0.2.2".parse().unwrap())));
        assert!(!t.is_banned(None));
        assert_eq!(st.auth_bans.load(Ordering::Relaxed), 1);
        assert_eq!(t.banned_now(), 1);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(m), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
