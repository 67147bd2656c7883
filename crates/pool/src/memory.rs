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

/// Workers remembered at most; past it the oldest entries go first. Only
/// accepted shares create entries, but names cost nothing, so a miner with
/// real hashrate cycling worker names must not grow this without end.
pub const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug)]
pub struct DifficultyMemory {
    keep_for: Duration,
    capacity: usize,
    entries: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

impl DifficultyMemory {
    pub fn new(keep_for: Duration) -> DifficultyMemory {
        DifficultyMemory::with_capacity(keep_for, MAX_REMEMBERED)
    }

    pub fn with_capacity(keep_for: Duration, capacity: usize) -> DifficultyMemory {
        DifficultyMemory {
            keep_for,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn remember(&self, user: &str, worker: &str, difficulty: f64, now: Instant) {
        let mut entries = self.entries.lock();
        let key = (user.to_string(), worker.to_string());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let keep_for = self.keep_for;
            entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < keep_for);
            if entries.len() >= self.capacity {
                // The oldest tenth goes, so that one sweep serves many new names.
                let mut ages: Vec<Instant> = entries.values().map(|(_, at)| *at).collect();
                let cut = (self.capacity / 10).min(ages.len() - 1);
                let (_, &mut threshold, _) = ages.select_nth_unstable(cut);
                entries.retain(|_, (_, at)| *at > threshold);
            }
        }
        entries.insert(key, (difficulty, now));
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

    #[test]
    fn bounded_however_many_workers_earn_a_difficulty() {
        let memory = DifficultyMemory::with_capacity(Duration::from_secs(24 * 3600), 1000);
        let start = Instant::now();
        for i in 0..20_000u64 {
            let now = start + Duration::from_millis(i);
            memory.remember("addr", &format!("w{i}"), 64.0, now);
            assert!(memory.len() <= 1000, "{}", memory.len());
        }
        let end = start + Duration::from_secs(20);
        // The most recent entries are the ones kept.
        assert_eq!(memory.recall("addr", "w19999", end), Some(64.0));
        assert_eq!(memory.recall("addr", "w0", end), None);
    }
}
