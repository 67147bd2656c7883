//! Each worker's difficulty, remembered across reconnects, so that a miner
//! that reconnects does not restart at the start difficulty (and cannot
//! reset its difficulty by reconnecting).
//!
//! Only a difficulty the worker's own accepted shares earned (a vardiff
//! retarget from the measured share rate) is stored, never a suggestion, a
//! `mining.configure` minimum or an idle drop: Stratum V1 has no password, so
//! anyone can authorize as any address and worker, and what such a
//! connection merely asks for must not follow the real miner.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
pub struct DifficultyMemory {
    keep_for: Duration,
    entries: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

impl DifficultyMemory {
    pub fn new(keep_for: Duration) -> DifficultyMemory {
        DifficultyMemory {
            keep_for,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn remember(&self, user: &str, worker: &str, difficulty: f64, now: Instant) {
        let mut entries = self.entries.lock();
        entries.insert((user.to_string(), worker.to_string()), (difficulty, now));
    }

    pub fn recall(&self, user: &str, worker: &str, now: Instant) -> Option<f64> {
        let entries = self.entries.lock();
        // Lookup by borrowed pair without allocating would need a custom key; authorize is rare.
        let (difficulty, at) = entries.get(&(user.to_string(), worker.to_string()))?;
        (now.saturating_duration_since(*at) < self.keep_for).then_some(*difficulty)
    }

    /// Drops expired entries; called periodically so memory stays bounded.
    pub fn prune(&self, now: Instant) {
        let keep_for = self.keep_for;
        self.entries
            .lock()
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep_for);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_configured_time() {
        let memory = DifficultyMemory::new(Duration::from_secs(24 * 3600));
        let now = Instant::now();
        memory.remember("addr", "rig", 512.0, now);
        assert_eq!(
            memory.recall("addr", "rig", now + Duration::from_secs(3600)),
            Some(512.0)
        );
        assert_eq!(memory.recall("addr", "other", now), None);
        assert_eq!(
            memory.recall("addr", "rig", now + Duration::from_secs(25 * 3600)),
            None
        );
        memory.prune(now + Duration::from_secs(25 * 3600));
        assert!(memory.is_empty());
    }
}
