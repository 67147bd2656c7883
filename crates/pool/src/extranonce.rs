//! Extranonce1 allocation: unique per live connection, resumable.
//!
//! A miner that reconnects and passes back its session id (the second
//! parameter of `mining.subscribe`) gets the same extranonce1, as ckpool does,
//! so that work it was hashing stays valid. Records of closed sessions are
//! kept for `resume_window`, then forgotten, so memory stays bounded.
//!
//! A closed session's accepted shares are parked with its record and handed
//! to the connection that resumes it: the same extranonce1 hashes the same
//! headers, so a share accepted before the reconnect stays a duplicate.
//!
//! The session id is a random 64-bit token, not the extranonce1 (ckpool
//! uses the extranonce1, which every miner sees and which is handed out in
//! sequence): a stranger who could name a neighbour's session would take
//! its extranonce1 the moment that miner's connection dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tbg_work::SeenShares;

/// What a subscribe gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub session_id: String,
    pub extranonce1: Vec<u8>,
    pub resumed: bool,
}

#[derive(Debug)]
struct Record {
    /// The extranonce1 as a number (its key in `taken`).
    value: u64,
    extranonce1: Vec<u8>,
    /// `None` while a connection holds it.
    released_at: Option<Instant>,
    /// The shares the closed session had accepted (boxed: most records
    /// have none, and every record pays for the field).
    shares: Option<Box<SeenShares>>,
}

/// Closed sessions kept resumable at most: beyond it the oldest is
/// forgotten (its miner, if it comes back, gets a new extranonce1). An
/// honest reconnect lasts seconds; this is for an hour of them.
pub const MAX_RESUMABLE: usize = 65_536;

#[derive(Debug)]
pub struct ExtranonceAllocator {
    length: usize,
    /// The instance's byte in front of every extranonce1 (multi-region:
    /// two regions never hand out the same one); the session's value
    /// takes the other bytes.
    prefix: Option<u8>,
    resume_window: Duration,
    /// Resumable records kept at most (smaller for small extranonce spaces,
    /// so that closed sessions can never take the values live ones need).
    max_resumable: usize,
    state: Mutex<AllocatorState>,
}

#[derive(Debug, Default)]
struct AllocatorState {
    next: u64,
    by_session: HashMap<String, Record>,
    /// The extranonce1 values of the records in `by_session`.
    taken: HashSet<u64>,
    /// Released sessions, oldest first: expiry and the cap take from the
    /// front. An entry whose record was resumed (or released again later)
    /// since is skipped when it comes up.
    released: VecDeque<(Instant, String)>,
}

impl AllocatorState {
    /// Forgets released records older than `window`, and the oldest ones
    /// beyond `max`.
    fn expire(&mut self, now: Instant, window: Duration, max: usize) {
        while let Some((at, _)) = self.released.front() {
            let expired = now.saturating_duration_since(*at) >= window;
            if !expired && self.released.len() <= max {
                break;
            }
            if let Some((at, session)) = self.released.pop_front() {
                self.forget_if_released_at(&session, at);
            }
        }
    }

    /// Drops the oldest released record, if any (the value space is full).
    fn evict_oldest_released(&mut self) -> bool {
        while let Some((at, session)) = self.released.pop_front() {
            if self.forget_if_released_at(&session, at) {
                return true;
            }
        }
        false
    }

    fn forget_if_released_at(&mut self, session: &str, at: Instant) -> bool {
        let current = self
            .by_session
            .get(session)
            .is_some_and(|record| record.released_at == Some(at));
        if current {
            self.forget(session);
        }
        current
    }

    fn forget(&mut self, session: &str) {
        if let Some(record) = self.by_session.remove(session) {
            self.taken.remove(&record.value);
        }
    }

    /// A fresh session id, unguessable and unused.
    fn new_session_id(&self) -> String {
        loop {
            let id = format!("{:016x}", rand::random::<u64>());
            if !self.by_session.contains_key(&id) {
                return id;
            }
        }
    }
}

impl ExtranonceAllocator {
    /// `length` is ckpool's `nonce1length` (2..=8 bytes).
    pub fn new(length: usize, resume_window: Duration) -> ExtranonceAllocator {
        ExtranonceAllocator::with_prefix(length, resume_window, None)
    }

    /// As [`ExtranonceAllocator::new`], every extranonce1 starting with
    /// `prefix` (the region's instance id).
    pub fn with_prefix(
        length: usize,
        resume_window: Duration,
        prefix: Option<u8>,
    ) -> ExtranonceAllocator {
        let length = length.clamp(2, 8);
        // A random start keeps extranonces of a restarted pool apart from the
        // ones miners still hold from before.
        let start: u64 = rand::random();
        let space = 1u128 << (8 * (length - usize::from(prefix.is_some())));
        let max_resumable = MAX_RESUMABLE.min(usize::try_from(space / 4).unwrap_or(usize::MAX));
        ExtranonceAllocator {
            length,
            prefix,
            resume_window,
            max_resumable,
            state: Mutex::new(AllocatorState {
                next: start,
                ..AllocatorState::default()
            }),
        }
    }

    pub fn length(&self) -> usize {
        self.length
    }

    /// Bytes of the extranonce1 that tell sessions apart.
    fn value_length(&self) -> usize {
        self.length - usize::from(self.prefix.is_some())
    }

    fn encode(&self, value: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.length);
        bytes.extend(self.prefix);
        bytes.extend_from_slice(&value.to_be_bytes()[8 - self.value_length()..]);
        bytes
    }

    /// Allocates an extranonce1, resuming `requested_session` when it is
    /// known, released and not expired. `None` only when every value is
    /// held by a live connection (a tiny `nonce1length` and a huge number
    /// of miners): closed sessions give their values up first.
    pub fn allocate(&self, requested_session: Option<&str>, now: Instant) -> Option<Allocation> {
        let mut state = self.state.lock();
        state.expire(now, self.resume_window, self.max_resumable);
        if let Some(session) = requested_session {
            if let Some(record) = state.by_session.get_mut(session) {
                if record.released_at.is_some() {
                    record.released_at = None;
                    return Some(Allocation {
                        session_id: session.to_string(),
                        extranonce1: record.extranonce1.clone(),
                        resumed: true,
                    });
                }
            }
        }
        // The space holds 2^(8*length) values; skip any still recorded.
        let modulus_bits = 8 * self.value_length() as u32;
        let attempts = if modulus_bits >= 24 {
            1u64 << 24
        } else {
            1u64 << modulus_bits
        };
        loop {
            for _ in 0..attempts {
                let value = if modulus_bits >= 64 {
                    state.next
                } else {
                    state.next % (1u64 << modulus_bits)
                };
                state.next = state.next.wrapping_add(1);
                if !state.taken.insert(value) {
                    continue;
                }
                let extranonce1 = self.encode(value);
                let session_id = state.new_session_id();
                state.by_session.insert(
                    session_id.clone(),
                    Record {
                        value,
                        extranonce1: extranonce1.clone(),
                        released_at: None,
                        shares: None,
                    },
                );
                return Some(Allocation {
                    session_id,
                    extranonce1,
                    resumed: false,
                });
            }
            // Every value taken: a closed session's value goes to a live one.
            if !state.evict_oldest_released() {
                return None;
            }
        }
    }

    /// The connection holding `session_id` is gone. `resumable`: whether
    /// the session did work worth resuming (it authorized); one that never
    /// did gives its extranonce1 back at once, so connecting and
    /// disconnecting in a loop reserves nothing.
    pub fn release(&self, session_id: &str, now: Instant, resumable: bool) {
        self.release_with_shares(session_id, now, resumable, SeenShares::default());
    }

    /// As [`ExtranonceAllocator::release`], parking the session's accepted
    /// shares for the connection that resumes it.
    pub fn release_with_shares(
        &self,
        session_id: &str,
        now: Instant,
        resumable: bool,
        shares: SeenShares,
    ) {
        let mut state = self.state.lock();
        if !resumable {
            state.forget(session_id);
            return;
        }
        let Some(record) = state.by_session.get_mut(session_id) else {
            return;
        };
        record.released_at = Some(now);
        record.shares = (!shares.is_empty()).then(|| Box::new(shares));
        state.released.push_back((now, session_id.to_string()));
        state.expire(now, self.resume_window, self.max_resumable);
    }

    /// The shares parked by the session a resumed `session_id` continues.
    pub fn take_shares(&self, session_id: &str) -> Option<SeenShares> {
        let mut state = self.state.lock();
        let record = state.by_session.get_mut(session_id)?;
        record.shares.take().map(|shares| *shares)
    }

    /// Sessions recorded (live and resumable).
    pub fn recorded(&self) -> usize {
        self.state.lock().by_session.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extranonces_are_unique_and_resumable() {
        let allocator = ExtranonceAllocator::new(4, Duration::from_secs(60));
        let now = Instant::now();
        let first = allocator.allocate(None, now).unwrap();
        let second = allocator.allocate(None, now).unwrap();
        assert_ne!(first.extranonce1, second.extranonce1);
        assert_eq!(first.extranonce1.len(), 4);
        // A live session cannot be taken over by another connection.
        let thief = allocator.allocate(Some(&first.session_id), now).unwrap();
        assert!(!thief.resumed);
        assert_ne!(thief.extranonce1, first.extranonce1);
        allocator.release(&first.session_id, now, true);
        let resumed = allocator.allocate(Some(&first.session_id), now).unwrap();
        assert!(resumed.resumed);
        assert_eq!(resumed.extranonce1, first.extranonce1);
        // Expired records are forgotten.
        allocator.release(&first.session_id, now, true);
        let late = allocator
            .allocate(Some(&first.session_id), now + Duration::from_secs(61))
            .unwrap();
        assert!(!late.resumed);
    }

    #[test]
    fn session_ids_cannot_be_guessed_from_extranonces() {
        let allocator = ExtranonceAllocator::new(4, Duration::from_secs(60));
        let now = Instant::now();
        let first = allocator.allocate(None, now).unwrap();
        let second = allocator.allocate(None, now).unwrap();
        // A neighbour's extranonce1 (which every miner can work out from
        // its own) does not name its session.
        allocator.release(&first.session_id, now, true);
        let guess = allocator
            .allocate(Some(&hex::encode(&first.extranonce1)), now)
            .unwrap();
        assert!(!guess.resumed);
        assert_ne!(guess.extranonce1, first.extranonce1);
        assert_eq!(first.session_id.len(), 16);
        assert_ne!(first.session_id, second.session_id);
        // Its own session id still resumes it.
        let resumed = allocator.allocate(Some(&first.session_id), now).unwrap();
        assert!(resumed.resumed);
        assert_eq!(resumed.extranonce1, first.extranonce1);
    }

    #[test]
    fn every_extranonce1_of_an_instance_starts_with_its_id() {
        let now = Instant::now();
        let east = ExtranonceAllocator::with_prefix(4, Duration::from_secs(60), Some(7));
        let west = ExtranonceAllocator::with_prefix(4, Duration::from_secs(60), Some(8));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            for (allocator, id) in [(&east, 7), (&west, 8)] {
                let allocation = allocator.allocate(None, now).unwrap();
                assert_eq!(allocation.extranonce1.len(), 4);
                assert_eq!(allocation.extranonce1[0], id);
                assert!(
                    seen.insert(allocation.extranonce1),
                    "one value, two sessions"
                );
            }
        }
        // A 3-byte extranonce1 leaves 65,536 values for an instance's sessions.
        let small = ExtranonceAllocator::with_prefix(3, Duration::from_secs(60), Some(1));
        let values: std::collections::HashSet<_> = (0..65_536)
            .map(|_| small.allocate(None, now).unwrap().extranonce1)
            .collect();
        assert_eq!(values.len(), 65_536);
        assert!(small.allocate(None, now).is_none(), "every value is live");
    }

    #[test]
    fn small_spaces_never_hand_out_a_live_extranonce() {
        let allocator = ExtranonceAllocator::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(allocator.allocate(None, now).unwrap().extranonce1));
        }
    }

    #[test]
    fn a_session_that_never_authorized_reserves_nothing() {
        let allocator = ExtranonceAllocator::new(4, Duration::from_secs(3600));
        let now = Instant::now();
        for _ in 0..10_000 {
            let allocation = allocator.allocate(None, now).unwrap();
            allocator.release(&allocation.session_id, now, false);
        }
        assert_eq!(allocator.recorded(), 0);
    }

    #[test]
    fn connect_disconnect_cycles_cannot_exhaust_a_small_space() {
        // 2 bytes: 65,536 values. Authorized sessions cycling for an hour
        // must not starve a new miner.
        let allocator = ExtranonceAllocator::new(2, Duration::from_secs(3600));
        let now = Instant::now();
        let honest: Vec<_> = (0..1000)
            .map(|_| allocator.allocate(None, now).unwrap())
            .collect();
        for _ in 0..200_000 {
            let allocation = allocator
                .allocate(None, now)
                .expect("a value for a new miner");
            allocator.release(&allocation.session_id, now, true);
        }
        assert!(
            allocator.recorded() <= 1000 + 65_536 / 4,
            "{}",
            allocator.recorded()
        );
        let mut live: std::collections::HashSet<_> =
            honest.iter().map(|a| a.extranonce1.clone()).collect();
        assert_eq!(live.len(), 1000);
        // A new connection never gets a live miner's extranonce1.
        for _ in 0..10_000 {
            let allocation = allocator.allocate(None, now).unwrap();
            assert!(
                live.insert(allocation.extranonce1),
                "a live value handed out twice"
            );
        }
    }

    #[test]
    fn the_oldest_closed_session_is_forgotten_beyond_the_cap() {
        let allocator = ExtranonceAllocator::new(8, Duration::from_secs(3600));
        let now = Instant::now();
        let first = allocator.allocate(None, now).unwrap();
        allocator.release(&first.session_id, now, true);
        for _ in 0..MAX_RESUMABLE {
            let allocation = allocator.allocate(None, now).unwrap();
            allocator.release(&allocation.session_id, now, true);
        }
        assert_eq!(allocator.recorded(), MAX_RESUMABLE);
        let again = allocator.allocate(Some(&first.session_id), now).unwrap();
        assert!(!again.resumed, "the oldest was forgotten");
    }
}
