//! The duplicate store: the headers one session (one extranonce1) had
//! accepted, by hash, per previous block.
//!
//! Keyed by the header's hash, not by job: a retarget's new job id for the
//! same coinbase, or the same job sent again to a resumed session, hashes
//! the same header to the same value, so a resend is caught whatever job id
//! it names. Two previous blocks are kept (the tip and the one before), so
//! a share on a job made stale a moment ago is still recognised; the hash
//! commits to the previous block, so entries of different tips never mix.
//!
//! Each entry is the hash's low 64 bits: random for any header (the share
//! target constrains the high bits), so a false duplicate between one
//! session's own shares has odds of about n²/2⁶⁵, and no other session can
//! aim at it. Blocks are never refused on this key (see the validator).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

/// Hashes remembered per previous block per session. Vardiff keeps a miner
/// near one share per 10 s: 16,384 shares is 45 hours on one tip, where an
/// hour is already rare on mainnet. A miner faster than `maxdiff` lets
/// vardiff slow can get there; then the store stops growing: later shares
/// are still checked against the 16,384 kept, accepted when new, but not
/// remembered, so a resend of one of them is credited again. Only that
/// miner's own share counts can be inflated that way: a block is
/// deduplicated pool-wide on its full hash. Memory at the bound: ~300 KB for
/// that session, until the next block.
pub const MAX_SEEN_SHARES: usize = 16_384;

/// The stored values are already uniformly random: no need to hash them
/// again (SipHash would cost more than the lookup).
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type KeySet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Default)]
struct Generation {
    prev: Option<BlockHash>,
    keys: KeySet,
}

/// One session's accepted headers, for the current and the previous tip.
#[derive(Debug, Default)]
pub struct SeenShares {
    current: Generation,
    previous: Generation,
}

fn key(hash: &BlockHash) -> u64 {
    let bytes = hash.as_byte_array();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(low)
}

impl SeenShares {
    /// A job on `prev` was sent: when `prev` is a new tip, the older of the
    /// two kept generations is dropped (with its memory).
    pub(crate) fn on_job(&mut self, prev: BlockHash) {
        if self.current.prev == Some(prev) {
            return;
        }
        if self.previous.prev == Some(prev) {
            // Back to the tip before (a reorg, or failover to a lagging node).
            std::mem::swap(&mut self.current, &mut self.previous);
            return;
        }
        self.previous = std::mem::take(&mut self.current);
        self.current.prev = Some(prev);
    }

    fn generation(&self, prev: BlockHash) -> Option<&Generation> {
        [&self.current, &self.previous]
            .into_iter()
            .find(|generation| generation.prev == Some(prev))
    }

    pub(crate) fn contains(&self, prev: BlockHash, hash: &BlockHash) -> bool {
        self.generation(prev)
            .is_some_and(|generation| generation.keys.contains(&key(hash)))
    }

    /// Remembers an accepted header; false when it was already there. A
    /// share on an older tip than the two kept is not remembered (it can
    /// only be a block, claimed pool-wide); past [`MAX_SEEN_SHARES`] the
    /// store only answers.
    pub(crate) fn insert(&mut self, prev: BlockHash, hash: &BlockHash) -> bool {
        let generation = if self.current.prev == Some(prev) {
            &mut self.current
        } else if self.previous.prev == Some(prev) {
            &mut self.previous
        } else {
            return true;
        };
        let key = key(hash);
        if generation.keys.len() < MAX_SEEN_SHARES {
            generation.keys.insert(key)
        } else {
            !generation.keys.contains(&key)
        }
    }

    /// Headers remembered for `prev`.
    pub fn len_for(&self, prev: &BlockHash) -> usize {
        self.generation(*prev).map_or(0, |g| g.keys.len())
    }

    /// Headers remembered in all.
    pub fn len(&self) -> usize {
        self.current.keys.len() + self.previous.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
