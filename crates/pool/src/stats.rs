//! Hashrate and share statistics per worker and per user.
//!
//! Rates are exponentially decaying averages of accepted difficulty per
//! second over 1 m, 5 m, 1 h and 1 d; one update is a few multiplications, no
//! allocation, so it sits on the share path. Times are passed in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// The averaging windows, in seconds.
pub const WINDOWS: [f64; 4] = [60.0, 300.0, 3600.0, 86400.0];

/// Hashes per unit of difficulty (difficulty 1 = 2^32 hashes on average).
pub const HASHES_PER_DIFF1: f64 = 4_294_967_296.0;

/// Decaying averages of difficulty per second over [`WINDOWS`].
#[derive(Debug, Clone)]
pub struct DecayingRates {
    rates: [f64; 4],
    last: Instant,
}

impl DecayingRates {
    pub fn new(now: Instant) -> DecayingRates {
        DecayingRates {
            rates: [0.0; 4],
            last: now,
        }
    }

    fn decay_to(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if elapsed > 0.0 {
            for (rate, window) in self.rates.iter_mut().zip(WINDOWS) {
                *rate *= (-elapsed / window).exp();
            }
            self.last = now;
        }
    }

    /// Adds an accepted share of `difficulty`.
    pub fn record(&mut self, difficulty: f64, now: Instant) {
        self.decay_to(now);
        for (rate, window) in self.rates.iter_mut().zip(WINDOWS) {
            *rate += difficulty / window;
        }
    }

    /// Hashes per second over each window, as of `now`.
    pub fn hashrates(&self, now: Instant) -> [f64; 4] {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let mut out = [0.0; 4];
        for ((out, rate), window) in out.iter_mut().zip(self.rates).zip(WINDOWS) {
            *out = rate * (-elapsed / window).exp() * HASHES_PER_DIFF1;
        }
        out
    }
}

/// Counters of one worker (address + worker name), kept across reconnects.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub rates: DecayingRates,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    pub accepted_difficulty: f64,
    pub best_difficulty_ever: f64,
    pub last_share: Option<Instant>,
    pub connections: u32,
}

impl WorkerStats {
    fn new(now: Instant) -> WorkerStats {
        WorkerStats {
            rates: DecayingRates::new(now),
            shares_accepted: 0,
            shares_rejected: 0,
            accepted_difficulty: 0.0,
            best_difficulty_ever: 0.0,
            last_share: None,
            connections: 0,
        }
    }

    /// Records an accepted share; returns the previous all-time best when this
    /// share beats it.
    pub fn record_accepted(
        &mut self,
        target_difficulty: f64,
        share_difficulty: f64,
        now: Instant,
    ) -> Option<f64> {
        self.rates.record(target_difficulty, now);
        self.shares_accepted += 1;
        self.accepted_difficulty += target_difficulty;
        self.last_share = Some(now);
        if share_difficulty > self.best_difficulty_ever {
            let previous = self.best_difficulty_ever;
            self.best_difficulty_ever = share_difficulty;
            return Some(previous);
        }
        None
    }

    pub fn record_rejected(&mut self) {
        self.shares_rejected += 1;
    }
}

/// A worker's stats, shared between its sessions and the status API.
pub type WorkerHandle = Arc<Mutex<WorkerStats>>;

/// Every worker seen, by address and worker name.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    users: Mutex<HashMap<String, HashMap<String, WorkerHandle>>>,
}

/// A snapshot of one worker for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSnapshot {
    pub worker: String,
    pub hashrate_1m: f64,
    pub hashrate_5m: f64,
    pub hashrate_1h: f64,
    pub hashrate_1d: f64,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    pub best_difficulty: f64,
    pub seconds_since_last_share: Option<f64>,
    pub connections: u32,
}

/// A snapshot of one user (payout address) for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct UserSnapshot {
    pub address: String,
    pub hashrate_1m: f64,
    pub hashrate_5m: f64,
    pub hashrate_1h: f64,
    pub hashrate_1d: f64,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    pub best_difficulty: f64,
    pub workers_connected: u32,
    pub workers: Vec<WorkerSnapshot>,
}

impl StatsRegistry {
    /// The shared stats of a worker, created on first sight; counts a connection.
    pub fn attach(&self, user: &str, worker: &str, now: Instant) -> WorkerHandle {
        let mut users = self.users.lock();
        let workers = users.entry(user.to_string()).or_default();
        let handle = workers
            .entry(worker.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(WorkerStats::new(now))))
            .clone();
        handle.lock().connections += 1;
        handle
    }

    /// Counts a connection of this worker as gone.
    pub fn detach(handle: &WorkerHandle) {
        let mut stats = handle.lock();
        stats.connections = stats.connections.saturating_sub(1);
    }

    /// Forgets workers idle for longer than `idle` with no connection, so
    /// memory stays bounded however many addresses ever mined.
    pub fn prune(&self, idle: Duration, now: Instant) {
        let mut users = self.users.lock();
        users.retain(|_, workers| {
            workers.retain(|_, handle| {
                let stats = handle.lock();
                let last = stats.last_share.unwrap_or(stats.rates.last);
                stats.connections > 0 || now.saturating_duration_since(last) < idle
            });
            !workers.is_empty()
        });
    }

    pub fn user(&self, address: &str, now: Instant) -> Option<UserSnapshot> {
        let users = self.users.lock();
        users
            .get(address)
            .map(|workers| snapshot_user(address, workers, now))
    }

    pub fn users(&self, now: Instant) -> Vec<UserSnapshot> {
        let users = self.users.lock();
        let mut out: Vec<UserSnapshot> = users
            .iter()
            .map(|(address, workers)| snapshot_user(address, workers, now))
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }
}

fn snapshot_user(
    address: &str,
    workers: &HashMap<String, WorkerHandle>,
    now: Instant,
) -> UserSnapshot {
    let mut snapshot = UserSnapshot {
        address: address.to_string(),
        hashrate_1m: 0.0,
        hashrate_5m: 0.0,
        hashrate_1h: 0.0,
        hashrate_1d: 0.0,
        shares_accepted: 0,
        shares_rejected: 0,
        best_difficulty: 0.0,
        workers_connected: 0,
        workers: Vec::with_capacity(workers.len()),
    };
    for (name, handle) in workers {
        let stats = handle.lock();
        let [h1m, h5m, h1h, h1d] = stats.rates.hashrates(now);
        snapshot.hashrate_1m += h1m;
        snapshot.hashrate_5m += h5m;
        snapshot.hashrate_1h += h1h;
        snapshot.hashrate_1d += h1d;
        snapshot.shares_accepted += stats.shares_accepted;
        snapshot.shares_rejected += stats.shares_rejected;
        snapshot.best_difficulty = snapshot.best_difficulty.max(stats.best_difficulty_ever);
        snapshot.workers_connected += stats.connections;
        snapshot.workers.push(WorkerSnapshot {
            worker: name.clone(),
            hashrate_1m: h1m,
            hashrate_5m: h5m,
            hashrate_1h: h1h,
            hashrate_1d: h1d,
            shares_accepted: stats.shares_accepted,
            shares_rejected: stats.shares_rejected,
            best_difficulty: stats.best_difficulty_ever,
            seconds_since_last_share: stats
                .last_share
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            connections: stats.connections,
        });
    }
    snapshot.workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_shares_give_the_true_hashrate() {
        let start = Instant::now();
        let mut rates = DecayingRates::new(start);
        // Difficulty 8 every 2 s for 6 days (long enough for the 1-day
        // average to settle) = 4 diff/s = 4 * 2^32 H/s.
        let mut now = start;
        for _ in 0..(6 * 43_200) {
            now += Duration::from_secs(2);
            rates.record(8.0, now);
        }
        let expected = 4.0 * HASHES_PER_DIFF1;
        for (hashrate, window) in rates.hashrates(now).iter().zip(WINDOWS) {
            let error = (hashrate - expected).abs() / expected;
            // Read right after a share, a window reads high by about diff/window.
            assert!(
                error < 0.01 + 8.0 / window / 4.0,
                "window {window}: {hashrate} vs {expected}"
            );
        }
    }

    #[test]
    fn hashrate_decays_when_shares_stop() {
        let start = Instant::now();
        let mut rates = DecayingRates::new(start);
        rates.record(100.0, start);
        let later = rates.hashrates(start + Duration::from_secs(600));
        assert!(later[0] < rates.hashrates(start)[0] * 0.001);
        assert!(later[3] > 0.0);
    }

    #[test]
    fn best_share_and_pruning() {
        let registry = StatsRegistry::default();
        let now = Instant::now();
        let worker = registry.attach("addr", "rig1", now);
        assert_eq!(worker.lock().record_accepted(1.0, 5.0, now), Some(0.0));
        assert_eq!(worker.lock().record_accepted(1.0, 3.0, now), None);
        let user = registry.user("addr", now).unwrap();
        assert_eq!(user.best_difficulty, 5.0);
        assert_eq!(user.workers_connected, 1);
        StatsRegistry::detach(&worker);
        registry.prune(Duration::from_secs(60), now + Duration::from_secs(120));
        assert!(registry.user("addr", now).is_none());
    }
}
