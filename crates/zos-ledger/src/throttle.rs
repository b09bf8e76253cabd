//! Throttling of submissions with bad signatures, per source address: a few failures are
//! free, then each answer is delayed and the connection closed, then the address is banned for
//! a while (doubling per repeat). Policy and rates: [`SigThrottle`] and `docs/ledger.md`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::SigThrottle;

/// Longest delay of one answer.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// An IPv4 address, or the /64 of an IPv6 one (one host usually owns a whole /64, so
/// per-address keys would let it rotate out of a ban).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

#[derive(Debug)]
struct Record {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
    bans: u32,
}

/// What a failure costs the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Penalty {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Close the connection after the answer.
    pub close: bool,
    /// This failure started a ban.
    pub banned: bool,
}

/// The per-address failure records.
#[derive(Debug)]
pub(crate) struct Throttle {
    policy: SigThrottle,
    records: Mutex<HashMap<Source, Record>>,
}

impl Throttle {
    pub(crate) fn new(policy: SigThrottle) -> Self {
        Throttle {
            policy,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn forgotten(&self, r: &Record, now: Instant) -> bool {
        r.banned_until.is_none_or(|t| t <= now)
            && now.saturating_duration_since(r.last_failure) >= self.policy.forget_after
    }

    /// `Some(time left)` while `ip` is banned.
    pub(crate) fn banned(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let src = Source::from(ip);
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let r = map.get(&src)?;
        if self.forgotten(r, now) {
            map.remove(&src);
            return None;
        }
        r.banned_until
            .filter(|t| *t > now)
            .map(|t| t.saturating_duration_since(now))
    }

    /// Records a bad signature from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) -> Penalty {
        let p = &self.policy;
        let now = Instant::now();
        let src = Source::from(ip);
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&src) && map.len() >= p.max_tracked {
            map.retain(|_, r| !self.forgotten(r, now));
            if map.len() >= p.max_tracked {
                // Still full of live records: drop the stalest one (bounded memory wins).
                let oldest = map
                    .iter()
                    .filter(|(_, r)| r.banned_until.is_none_or(|t| t <= now))
                    .min_by_key(|(_, r)| r.last_failure)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    // Every record is a running ban: the newcomer is not tracked.
                    None => {
                        return Penalty {
                            delay: MAX_DELAY,
                            close: true,
                            banned: false,
                        };
                    }
                }
            }
        }
        let r = map.entry(src).or_insert(Record {
            failures: 0,
            last_failure: now,
            banned_until: None,
            bans: 0,
        });
        if self.forgotten(r, now) {
            *r = Record {
                failures: 0,
                last_failure: now,
                banned_until: None,
                bans: 0,
            };
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
        let mut banned = false;
        // A failure during a running ban was admitted before it began (a request in flight):
        // it counts, but only a failure after the ban ends bans again, for twice as long.
        let running = r.banned_until.is_some_and(|t| t > now);
        if r.failures >= p.ban_after && !running {
            let factor = 1u32.checked_shl(r.bans.min(31)).unwrap_or(u32::MAX);
            let ban = p.ban.saturating_mul(factor).min(p.max_ban);
            // A ban past the end of `Instant` (an absurd --sig-max-ban) is capped at an hour.
            r.banned_until = now
                .checked_add(ban)
                .or_else(|| now.checked_add(Duration::from_secs(3600)));
            r.bans = r.bans.saturating_add(1);
            banned = true;
        }
        let over = r.failures.saturating_sub(p.free_failures);
        Penalty {
            delay: p.delay_step.saturating_mul(over).min(MAX_DELAY),
            close: over > 0,
            banned,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy() -> SigThrottle {
        SigThrottle {
            free_failures: 2,
            delay_step: Duration::from_millis(100),
            ban_after: 4,
            ban: Duration::from_secs(60),
            max_ban: Duration::from_secs(150),
            forget_after: Duration::from_secs(600),
            max_tracked: 3,
        }
    }

    #[test]
    fn free_then_delayed_then_banned_with_doubling() {
        let t = Throttle::new(SigThrottle {
            ban: Duration::from_millis(100),
            max_ban: Duration::from_millis(250),
            ..policy()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..2 {
            let p = t.failed(ip);
            assert_eq!(p.delay, Duration::ZERO);
            assert!(!p.close && !p.banned);
        }
        let p = t.failed(ip);
        assert_eq!(p.delay, Duration::from_millis(100));
        assert!(p.close && !p.banned);
        assert!(t.banned(ip).is_none());
        let p = t.failed(ip);
        assert!(p.banned);
        assert!(t.banned(ip).unwrap() <= Duration::from_millis(100));
        // A failure that was in flight when the ban began does not extend it.
        assert!(!t.failed(ip).banned);
        assert!(t.banned(ip).unwrap() <= Duration::from_millis(100));
        // Other addresses are not affected.
        assert!(t.banned("10.0.0.2".parse().unwrap()).is_none());
        // After the ban, one failure bans again for twice as long, then at most max_ban.
        std::thread::sleep(Duration::from_millis(120));
        assert!(t.banned(ip).is_none());
        assert!(t.failed(ip).banned);
        assert!(t.banned(ip).unwrap() > Duration::from_millis(150));
        std::thread::sleep(Duration::from_millis(220));
        assert!(t.banned(ip).is_none());
        assert!(t.failed(ip).banned);
        let left = t.banned(ip).unwrap();
        assert!(left > Duration::from_millis(200) && left <= Duration::from_millis(250));
    }

    #[test]
    fn ipv6_keyed_by_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(Source::from(a), Source::from(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(Source::from(a), Source::from(c));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            Source::from(m),
            Source::from("10.0.0.1".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn table_is_bounded() {
        let t = Throttle::new(policy());
        for i in 0..100u8 {
            t.failed(IpAddr::from([10, 0, 1, i]));
        }
        assert!(t.records.lock().unwrap().len() <= 3);
    }

    #[test]
    fn off_never_bans() {
        let t = Throttle::new(SigThrottle::off());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            let p = t.failed(ip);
            assert_eq!(
                p,
                Penalty {
                    delay: Duration::ZERO,
                    close: false,
                    banned: false
                }
            );
        }
        assert!(t.banned(ip).is_none());
    }
}
