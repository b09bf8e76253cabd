//! Receive replay window (a zos addition; upstream accepts any replayed ciphertext).
//!
//! Upstream's wire format carries a **random** 12-byte nonce and no counter or timestamp, so a
//! sliding counter window is impossible without breaking compatibility. What can be done: a
//! node remembers the last [`WINDOW`] nonces it accepted from each source /64 and drops a packet
//! whose nonce it has seen. Under one key a repeated random nonce means a replay (an honest
//! collision has probability ~2^-96). An attacker can still replay a packet older than the
//! window (after `WINDOW` newer packets from that source), and can still drop, delay or reorder
//! packets.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::crypto::NONCE_LEN;
use crate::subnet::Subnet;

/// Nonces remembered per source (about 16 KiB of nonces plus the set per source).
pub const WINDOW: usize = 1024;

/// Per-source sets of recently accepted nonces.
#[derive(Default, Debug)]
pub struct ReplayWindow {
    per_source: HashMap<Subnet, Seen>,
}

#[derive(Default, Debug)]
struct Seen {
    order: VecDeque<[u8; NONCE_LEN]>,
    set: HashSet<[u8; NONCE_LEN]>,
}

impl ReplayWindow {
    /// Records `nonce` for `source`; `false` if it was already seen (a replay: drop it).
    pub fn accept(&mut self, source: Subnet, nonce: [u8; NONCE_LEN]) -> bool {
        let s = self.per_source.entry(source).or_default();
        if !s.set.insert(nonce) {
            return false;
        }
        s.order.push_back(nonce);
        if s.order.len() > WINDOW {
            if let Some(old) = s.order.pop_front() {
                s.set.remove(&old);
            }
        }
        true
    }

    /// Forgets a source (its route went away).
    pub fn forget(&mut self, source: &Subnet) {
        self.per_source.remove(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_refused_within_the_window_and_forgotten_after() {
        let s: Subnet = "400::/64".parse().expect("subnet");
        let other: Subnet = "401::/64".parse().expect("subnet");
        let mut w = ReplayWindow::default();
        let n = |i: u32| {
            let mut b = [0u8; NONCE_LEN];
            b[..4].copy_from_slice(&i.to_be_bytes());
            b
        };
        assert!(w.accept(s, n(0)));
        assert!(!w.accept(s, n(0)), "replay refused");
        assert!(w.accept(other, n(0)), "windows are per source");
        for i in 1..=WINDOW as u32 {
            assert!(w.accept(s, n(i)));
        }
        // n(0) fell out of the window: a replay that old is accepted (documented limit).
        assert!(w.accept(s, n(0)));
        assert!(!w.accept(s, n(WINDOW as u32)));
    }
}
