//! Replay protection: an envelope id seen from a twin is refused again until it expires.

use std::collections::HashMap;

use crate::envelope::MessageId;

/// Above this many entries, an insert first drops expired ones.
const SWEEP_ABOVE: usize = 65_536;

/// `(source twin, id) → expiry (unix s)`, bounded.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    seen: HashMap<(u32, MessageId), u64>,
    max: usize,
}

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Seen before.
    Replay,
    /// Too many live ids: refuse rather than forget one (forgetting would allow a replay).
    Full,
}

impl ReplayCache {
    pub(crate) fn new(max: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            max,
        }
    }

    /// Records `(twin, id)` until `expires_at`; refuses ids already present.
    pub(crate) fn insert(
        &mut self,
        twin: u32,
        id: MessageId,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Refused> {
        if self.seen.len() >= SWEEP_ABOVE.min(self.max) {
            self.seen.retain(|_, exp| *exp >= now);
        }
        match self.seen.get(&(twin, id)) {
            Some(exp) if *exp >= now => return Err(Refused::Replay),
            _ => {}
        }
        if self.seen.len() >= self.max {
            return Err(Refused::Full);
        }
        self.seen.insert((twin, id), expires_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_refused_until_expiry_then_bounded() {
        let mut c = ReplayCache::new(2);
        assert_eq!(c.insert(1, [1; 16], 100, 50), Ok(()));
        assert_eq!(c.insert(1, [1; 16], 100, 60), Err(Refused::Replay));
        // Same id from another twin is another message.
        assert_eq!(c.insert(2, [1; 16], 100, 60), Ok(()));
        assert_eq!(c.insert(3, [1; 16], 100, 60), Err(Refused::Full));
        // After expiry the slots are reclaimed.
        assert_eq!(c.insert(3, [1; 16], 200, 150), Ok(()));
    }
}
