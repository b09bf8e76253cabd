//! Seen envelope ids, `(source twin, id)`, kept until they expire: the receiver's replay
//! cache and the relay's duplicate filter.
//!
//! * **Per-sender quota**: a twin with `per_sender` live ids gets no more recorded (its new
//!   envelopes are refused) until some expire, so one twin cannot fill the cache.
//! * **Fair share when full**: once `total` ids are live (many twins, each under its quota:
//!   twins cost nothing to create), only senders holding fewer than `total / senders` ids are
//!   still taken; a well-behaved twin with a few ids in flight keeps getting through. A hard
//!   cap of `2 × total` bounds memory whatever happens.
//! * **Time buckets**: ids sit in buckets by expiry second (`BUCKET_SECS` wide); expiry pops
//!   whole buckets from the front, so no insert ever scans the cache.
//!
//! Nothing is forgotten before it expires: a refusal is the answer to pressure, never
//! eviction (an evicted id could be replayed).

use std::collections::{BTreeMap, HashMap};

use crate::envelope::MessageId;

/// Width of an expiry bucket, seconds.
const BUCKET_SECS: u64 = 10;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Seen before and not yet expired.
    Replay,
    /// The sender has its quota of live ids.
    SenderFull,
    /// The cache is full and the sender holds at least its fair share.
    Full,
}

/// `(source twin, id) → expiry (unix s)`, bounded per sender and in total.
#[derive(Debug)]
pub(crate) struct SeenIds {
    per_sender: usize,
    total: usize,
    seen: HashMap<(u32, MessageId), u64>,
    buckets: BTreeMap<u64, Vec<(u32, MessageId)>>,
    live: HashMap<u32, usize>,
}

impl SeenIds {
    pub(crate) fn new(per_sender: usize, total: usize) -> Self {
        SeenIds {
            per_sender: per_sender.max(1),
            total: total.max(1),
            seen: HashMap::new(),
            buckets: BTreeMap::new(),
            live: HashMap::new(),
        }
    }

    pub(crate) fn set_limits(&mut self, per_sender: usize, total: usize) {
        self.per_sender = per_sender.max(1);
        self.total = total.max(1);
    }

    /// Drops every id whose bucket has wholly expired at `now` (amortised: each id is
    /// touched once when it is recorded and once when its bucket goes).
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(entry) = self.buckets.first_entry() {
            let b = *entry.key();
            if b.saturating_add(1).saturating_mul(BUCKET_SECS) > now {
                break;
            }
            for key in entry.remove() {
                // Skip keys recorded again since (their expiry is in a later bucket).
                if self.seen.get(&key).is_none_or(|exp| exp / BUCKET_SECS != b) {
                    continue;
                }
                self.seen.remove(&key);
                if let Some(n) = self.live.get_mut(&key.0) {
                    *n -= 1;
                    if *n == 0 {
                        self.live.remove(&key.0);
                    }
                }
            }
        }
    }

    /// True if `(twin, id)` is recorded and not expired at `now`.
    pub(crate) fn contains(&self, twin: u32, id: &MessageId, now: u64) -> bool {
        self.seen.get(&(twin, *id)).is_some_and(|exp| *exp >= now)
    }

    /// Records `(twin, id)` until `expires_at`, or says why not.
    pub(crate) fn insert(
        &mut self,
        twin: u32,
        id: MessageId,
        expires_at: u64,
        now: u64,
    ) -> Result<(), Refused> {
        self.expire(now);
        if self.contains(twin, &id, now) {
            return Err(Refused::Replay);
        }
        let mine = self.live.get(&twin).copied().unwrap_or(0);
        if mine >= self.per_sender {
            return Err(Refused::SenderFull);
        }
        let n = self.seen.len();
        if n >= self.total {
            // Senders present after this insert, counting this one if it is new.
            let senders = self.live.len() + usize::from(mine == 0);
            if n >= 2 * self.total || mine >= self.total / senders.max(1) {
                return Err(Refused::Full);
            }
        }
        // An expired entry of the same key may still sit in a bucket not yet popped: replace
        // it in place (that bucket skips the key, whose expiry moved to a later bucket).
        if self.seen.insert((twin, id), expires_at).is_none() {
            *self.live.entry(twin).or_default() += 1;
        }
        self.buckets
            .entry(expires_at / BUCKET_SECS)
            .or_default()
            .push((twin, id));
        Ok(())
    }

    /// Every id still live at `now`, with its expiry (what a restart must remember).
    pub(crate) fn live_entries(&self, now: u64) -> Vec<(u32, MessageId, u64)> {
        self.seen
            .iter()
            .filter(|(_, exp)| **exp >= now)
            .map(|((twin, id), exp)| (*twin, *id, *exp))
            .collect()
    }

    /// Live ids (including ones in a bucket not yet popped).
    #[cfg(feature = "relay")]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// First bytes of a saved receiver cache; entries follow as `twin u32 BE ‖ id(16) ‖
/// expiry u64 BE`.
const FILE_MAGIC: &[u8] = b"zos-rmb-replay-v1\n";
const ENTRY_LEN: usize = 4 + 16 + 8;

/// The file form of `entries` (see [`FILE_MAGIC`]).
pub(crate) fn encode_file(entries: &[(u32, MessageId, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_MAGIC.len() + entries.len() * ENTRY_LEN);
    out.extend_from_slice(FILE_MAGIC);
    for (twin, id, exp) in entries {
        out.extend_from_slice(&twin.to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&exp.to_be_bytes());
    }
    out
}

/// Parses a saved cache: at most `max` entries, those expired at `now` dropped. A wrong magic
/// or a truncated entry is an error (the caller starts empty and says so), never a panic.
pub(crate) fn decode_file(
    bytes: &[u8],
    now: u64,
    max: usize,
) -> Result<Vec<(u32, MessageId, u64)>, String> {
    let body = bytes
        .strip_prefix(FILE_MAGIC)
        .ok_or("not a replay cache file (bad magic)")?;
    if body.len() % ENTRY_LEN != 0 {
        return Err(format!(
            "truncated: {} bytes of entries is not a multiple of {ENTRY_LEN}",
            body.len()
        ));
    }
    if body.len() / ENTRY_LEN > max {
        return Err(format!(
            "{} entries, more than the {max} a cache can hold",
            body.len() / ENTRY_LEN
        ));
    }
    let mut out = Vec::with_capacity(body.len() / ENTRY_LEN);
    for e in body.chunks_exact(ENTRY_LEN) {
        let (twin, rest) = e.split_at(4);
        let (id, exp) = rest.split_at(16);
        let twin = u32::from_be_bytes(twin.try_into().map_err(|_| "entry")?);
        let id: MessageId = id.try_into().map_err(|_| "entry")?;
        let exp = u64::from_be_bytes(exp.try_into().map_err(|_| "entry")?);
        if exp >= now {
            out.push((twin, id, exp));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_bad_files() {
        let entries = vec![(1, [1u8; 16], 100), (2, [2u8; 16], 50), (3, [3u8; 16], 200)];
        let bytes = encode_file(&entries);
        // The entry expired at 60 is dropped.
        assert_eq!(
            decode_file(&bytes, 60, 10).unwrap(),
            vec![(1, [1u8; 16], 100), (3, [3u8; 16], 200)]
        );
        assert!(
            decode_file(&bytes[..bytes.len() - 1], 0, 10)
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            decode_file(b"junk", 0, 10)
                .unwrap_err()
                .contains("bad magic")
        );
        assert!(decode_file(&bytes, 0, 2).unwrap_err().contains("more than"));
        assert!(decode_file(b"", 0, 10).is_err());
    }

    fn id(n: u32) -> MessageId {
        let mut i = [0; 16];
        i[..4].copy_from_slice(&n.to_be_bytes());
        i
    }

    #[test]
    fn replay_refused_until_expiry() {
        let mut c = SeenIds::new(10, 100);
        assert_eq!(c.insert(1, id(1), 100, 50), Ok(()));
        assert_eq!(c.insert(1, id(1), 100, 60), Err(Refused::Replay));
        // Same id from another twin is another message.
        assert_eq!(c.insert(2, id(1), 100, 60), Ok(()));
        // After expiry the id may be used again and the slots are reclaimed.
        assert_eq!(c.insert(1, id(1), 200, 150), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn one_sender_cannot_fill_the_cache() {
        let mut c = SeenIds::new(100, 1000);
        for n in 0..100 {
            c.insert(1, id(n), 500, 0).unwrap();
        }
        assert_eq!(c.insert(1, id(1000), 500, 0), Err(Refused::SenderFull));
        assert_eq!(c.insert(2, id(1000), 500, 0), Ok(()));
        // Twin 1's ids expire with their bucket: it may send again.
        assert_eq!(c.insert(1, id(2000), 900, 510), Ok(()));
        assert_eq!(c.live.get(&1), Some(&1));
    }

    #[test]
    fn many_senders_leave_room_for_a_small_one() {
        let mut c = SeenIds::new(100, 1000);
        // 10 sybil twins fill the cache to its total with their full quotas.
        for t in 10..20 {
            for n in 0..100 {
                c.insert(t, id(n), 500, 0).unwrap();
            }
        }
        assert_eq!(c.len(), 1000);
        // An 11th sybil is refused once it has its fair share (1000 / 11 = 90)...
        for n in 0..90 {
            c.insert(30, id(n), 500, 0).unwrap();
        }
        assert_eq!(c.insert(30, id(90), 500, 0), Err(Refused::Full));
        // ...and a well-behaved twin with few ids in flight still gets through.
        for n in 0..5 {
            assert_eq!(c.insert(2, id(n), 500, 0), Ok(()));
        }
        // Nothing was forgotten.
        assert_eq!(c.insert(10, id(0), 500, 0), Err(Refused::Replay));
    }

    #[test]
    fn an_id_recorded_again_survives_its_old_bucket() {
        let mut c = SeenIds::new(10, 100);
        c.insert(1, id(1), 105, 100).unwrap();
        c.insert(1, id(1), 200, 107).unwrap(); // expired at 107, bucket 10 not popped yet
        c.expire(150);
        assert!(c.contains(1, &id(1), 150));
        assert_eq!(c.live.get(&1), Some(&1));
    }

    #[test]
    fn expiry_pops_whole_buckets_only() {
        let mut c = SeenIds::new(10, 100);
        c.insert(1, id(1), 105, 0).unwrap(); // bucket 10: [100, 110)
        c.insert(1, id(2), 112, 0).unwrap(); // bucket 11
        c.expire(109);
        assert_eq!(c.len(), 2);
        c.expire(110);
        assert_eq!(c.len(), 1);
        assert!(c.contains(1, &id(2), 110));
        c.expire(120);
        assert_eq!(c.len(), 0);
        assert!(c.live.is_empty());
    }
}
