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

use std::collections::HashMap;
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
    extranonce1: Vec<u8>,
    /// `None` while a connection holds it.
    released_at: Option<Instant>,
    /// The shares the closed session had accepted (boxed: most records
    /// have none, and every record pays for the field).
    shares: Option<Box<SeenShares>>,
}

#[derive(Debug)]
pub struct ExtranonceAllocator {
    length: usize,
    resume_window: Duration,
    state: Mutex<AllocatorState>,
}

#[derive(Debug)]
struct AllocatorState {
    next: u64,
    by_session: HashMap<String, Record>,
}

impl ExtranonceAllocator {
    /// `length` is ckpool's `nonce1length` (2..=8 bytes).
    pub fn new(length: usize, resume_window: Duration) -> ExtranonceAllocator {
        let length = length.clamp(2, 8);
        // A random start keeps extranonces of a restarted pool apart from the
        // ones miners still hold from before.
        let start: u64 = rand::random();
        ExtranonceAllocator {
            length,
            resume_window,
            state: Mutex::new(AllocatorState {
                next: start,
                by_session: HashMap::new(),
            }),
        }
    }

    pub fn length(&self) -> usize {
        self.length
    }

    fn encode(&self, value: u64) -> Vec<u8> {
        value.to_be_bytes()[8 - self.length..].to_vec()
    }

    /// Allocates an extranonce1, resuming `requested_session` when it is
    /// known, released and not expired. `None` when every value is taken
    /// (only possible with tiny `nonce1length`s and a huge number of miners).
    pub fn allocate(&self, requested_session: Option<&str>, now: Instant) -> Option<Allocation> {
        let mut state = self.state.lock();
        let window = self.resume_window;
        state.by_session.retain(|_, record| {
            record
                .released_at
                .is_none_or(|at| now.saturating_duration_since(at) < window)
        });
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
        let modulus_bits = 8 * self.length as u32;
        let attempts = if modulus_bits >= 24 {
            1u64 << 24
        } else {
            1u64 << modulus_bits
        };
        for _ in 0..attempts {
            let value = if modulus_bits >= 64 {
                state.next
            } else {
                state.next % (1u64 << modulus_bits)
            };
            state.next = state.next.wrapping_add(1);
            let extranonce1 = self.encode(value);
            let session_id = hex::encode(&extranonce1);
            if state.by_session.contains_key(&session_id) {
                continue;
            }
            state.by_session.insert(
                session_id.clone(),
                Record {
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
        None
    }

    /// The connection holding `session_id` is gone; the id may be resumed.
    pub fn release(&self, session_id: &str, now: Instant) {
        if let Some(record) = self.state.lock().by_session.get_mut(session_id) {
            record.released_at = Some(now);
        }
    }

    /// As [`ExtranonceAllocator::release`], parking the session's accepted
    /// shares for the connection that resumes it.
    pub fn release_with_shares(&self, session_id: &str, now: Instant, shares: SeenShares) {
        if let Some(record) = self.state.lock().by_session.get_mut(session_id) {
            record.released_at = Some(now);
            record.shares = (!shares.is_empty()).then(|| Box::new(shares));
        }
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
        allocator.release(&first.session_id, now);
        let resumed = allocator.allocate(Some(&first.session_id), now).unwrap();
        assert!(resumed.resumed);
        assert_eq!(resumed.extranonce1, first.extranonce1);
        // Expired records are forgotten.
        allocator.release(&first.session_id, now);
        let late = allocator
            .allocate(Some(&first.session_id), now + Duration::from_secs(61))
            .unwrap();
        assert!(!late.resumed);
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
}
