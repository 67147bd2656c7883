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
    /// Best since the worker's connections last went from none to one.
    pub best_difficulty_session: f64,
    /// Best of the UTC day `best_day` (days since 1970): the dashboard
    /// keeps a week of them.
    pub best_difficulty_day: f64,
    pub best_day: u64,
    pub last_share: Option<Instant>,
    pub connections: u32,
}

/// Days since 1970-01-01 (UTC), the day the best-share records go by.
pub fn unix_day() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

impl WorkerStats {
    fn new(now: Instant) -> WorkerStats {
        WorkerStats {
            rates: DecayingRates::new(now),
            shares_accepted: 0,
            shares_rejected: 0,
            accepted_difficulty: 0.0,
            best_difficulty_ever: 0.0,
            best_difficulty_session: 0.0,
            best_difficulty_day: 0.0,
            best_day: 0,
            last_share: None,
            connections: 0,
        }
    }

    /// Records an accepted share (`unix_day`: days since 1970, UTC); returns
    /// the previous all-time best when this share beats it.
    pub fn record_accepted(
        &mut self,
        target_difficulty: f64,
        share_difficulty: f64,
        now: Instant,
        unix_day: u64,
    ) -> Option<f64> {
        self.rates.record(target_difficulty, now);
        self.shares_accepted += 1;
        self.accepted_difficulty += target_difficulty;
        self.last_share = Some(now);
        self.best_difficulty_session = self.best_difficulty_session.max(share_difficulty);
        if self.best_day != unix_day {
            self.best_day = unix_day;
            self.best_difficulty_day = 0.0;
        }
        self.best_difficulty_day = self.best_difficulty_day.max(share_difficulty);
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

/// Workers kept at most (beyond the ones with a live connection, which are
/// never forgotten). Stratum V1 has no password: anyone can authorize as
/// any address and worker name, so without a cap a stranger cycling names
/// would grow this without end.
pub const MAX_TRACKED_WORKERS: usize = 100_000;

/// Every worker seen, by address and worker name, at most `capacity` of
/// them: past it, workers without a connection are forgotten, those that
/// never had a share accepted first (what a stranger's made-up names look
/// like), then the longest idle.
#[derive(Debug)]
pub struct StatsRegistry {
    capacity: usize,
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    users: HashMap<String, HashMap<String, WorkerHandle>>,
    workers: usize,
    /// No sweep before this many workers: when connected workers alone
    /// fill the registry, a sweep frees nothing, and each new name must
    /// not pay for another one.
    sweep_at: usize,
}

impl Default for StatsRegistry {
    fn default() -> StatsRegistry {
        StatsRegistry::with_capacity(MAX_TRACKED_WORKERS)
    }
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
    /// Best since the pool started (or since the worker was last
    /// forgotten after a day idle).
    pub best_difficulty: f64,
    /// Best since the worker (re)connected.
    pub best_difficulty_session: f64,
    /// Best of today (UTC).
    pub best_difficulty_today: f64,
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
    /// The best of its workers' sessions.
    pub best_difficulty_session: f64,
    /// Best of today (UTC), over its workers.
    pub best_difficulty_today: f64,
    pub workers_connected: u32,
    pub workers: Vec<WorkerSnapshot>,
}

impl UserSnapshot {
    /// An address with no worker and nothing counted.
    pub fn empty(address: &str) -> UserSnapshot {
        UserSnapshot {
            address: address.to_string(),
            hashrate_1m: 0.0,
            hashrate_5m: 0.0,
            hashrate_1h: 0.0,
            hashrate_1d: 0.0,
            shares_accepted: 0,
            shares_rejected: 0,
            best_difficulty: 0.0,
            best_difficulty_session: 0.0,
            best_difficulty_today: 0.0,
            workers_connected: 0,
            workers: Vec::new(),
        }
    }
}

impl StatsRegistry {
    pub fn with_capacity(capacity: usize) -> StatsRegistry {
        StatsRegistry {
            capacity: capacity.max(1),
            inner: Mutex::new(Registry::default()),
        }
    }

    /// Workers tracked.
    pub fn len(&self) -> usize {
        self.inner.lock().workers
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shared stats of a worker, created on first sight; counts a connection.
    pub fn attach(&self, user: &str, worker: &str, now: Instant) -> WorkerHandle {
        let mut inner = self.inner.lock();
        let known = inner
            .users
            .get(user)
            .and_then(|workers| workers.get(worker))
            .cloned();
        let handle = match known {
            Some(handle) => handle,
            None => {
                if inner.workers >= self.capacity.max(inner.sweep_at) {
                    // A tenth at once, so that a stream of new names pays
                    // one sweep per many of them.
                    inner.evict_idle(self.capacity - self.capacity / 10);
                    inner.sweep_at = inner.workers + self.capacity / 10;
                }
                let handle = Arc::new(Mutex::new(WorkerStats::new(now)));
                inner
                    .users
                    .entry(user.to_string())
                    .or_default()
                    .insert(worker.to_string(), handle.clone());
                inner.workers += 1;
                handle
            }
        };
        let mut stats = handle.lock();
        if stats.connections == 0 {
            // A new session of this worker: its session best starts over.
            stats.best_difficulty_session = 0.0;
        }
        stats.connections += 1;
        drop(stats);
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
        self.inner.lock().retain(|stats| {
            let last = stats.last_share.unwrap_or(stats.rates.last);
            stats.connections > 0 || now.saturating_duration_since(last) < idle
        });
    }

    pub fn user(&self, address: &str, now: Instant) -> Option<UserSnapshot> {
        let inner = self.inner.lock();
        inner
            .users
            .get(address)
            .map(|workers| snapshot_user(address, workers, now))
    }

    pub fn users(&self, now: Instant) -> Vec<UserSnapshot> {
        let inner = self.inner.lock();
        let mut out: Vec<UserSnapshot> = inner
            .users
            .iter()
            .map(|(address, workers)| snapshot_user(address, workers, now))
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }
}

impl Registry {
    /// Keeps the workers `keep` says yes to.
    fn retain(&mut self, mut keep: impl FnMut(&WorkerStats) -> bool) {
        let mut workers = 0;
        self.users.retain(|_, user| {
            user.retain(|_, handle| keep(&handle.lock()));
            workers += user.len();
            !user.is_empty()
        });
        self.workers = workers;
        // Room was made: the next new name past the cap sweeps again.
        self.sweep_at = 0;
    }

    /// Forgets workers without a connection until at most `target` remain
    /// (or none without a connection is left): those that never had a
    /// share accepted first, then the longest idle.
    fn evict_idle(&mut self, target: usize) {
        let excess = self.workers.saturating_sub(target);
        if excess == 0 {
            return;
        }
        // (ever accepted, last activity) of every idle worker; the
        // `excess` smallest go.
        let mut idle: Vec<(bool, Instant)> = self
            .users
            .values()
            .flat_map(HashMap::values)
            .filter_map(|handle| {
                let stats = handle.lock();
                (stats.connections == 0).then(|| eviction_rank(&stats))
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        let cut = excess.min(idle.len()) - 1;
        let (_, &mut threshold, _) = idle.select_nth_unstable(cut);
        let mut budget = cut + 1;
        self.retain(|stats| {
            if budget == 0 || stats.connections > 0 || eviction_rank(stats) > threshold {
                return true;
            }
            budget -= 1;
            false
        });
    }
}

/// Idle workers in the order they are forgotten: never credited first,
/// then by last activity.
fn eviction_rank(stats: &WorkerStats) -> (bool, Instant) {
    (
        stats.shares_accepted > 0,
        stats.last_share.unwrap_or(stats.rates.last),
    )
}

fn snapshot_user(
    address: &str,
    workers: &HashMap<String, WorkerHandle>,
    now: Instant,
) -> UserSnapshot {
    let mut snapshot = UserSnapshot::empty(address);
    snapshot.workers.reserve(workers.len());
    let today = unix_day();
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
        let best_today = if stats.best_day == today {
            stats.best_difficulty_day
        } else {
            0.0
        };
        snapshot.best_difficulty_session = snapshot
            .best_difficulty_session
            .max(stats.best_difficulty_session);
        snapshot.best_difficulty_today = snapshot.best_difficulty_today.max(best_today);
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
            best_difficulty_session: stats.best_difficulty_session,
            best_difficulty_today: best_today,
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
        assert_eq!(
            worker.lock().record_accepted(1.0, 5.0, now, unix_day()),
            Some(0.0)
        );
        assert_eq!(
            worker.lock().record_accepted(1.0, 3.0, now, unix_day()),
            None
        );
        let user = registry.user("addr", now).unwrap();
        assert_eq!(user.best_difficulty, 5.0);
        assert_eq!(user.best_difficulty_session, 5.0);
        assert_eq!(user.best_difficulty_today, 5.0);
        assert_eq!(user.workers_connected, 1);
        // A second connection shares the session; a reconnect after all
        // were gone starts a new one, the best ever and of today stay.
        let second = registry.attach("addr", "rig1", now);
        assert_eq!(
            registry.user("addr", now).unwrap().best_difficulty_session,
            5.0
        );
        StatsRegistry::detach(&second);
        StatsRegistry::detach(&worker);
        let again = registry.attach("addr", "rig1", now);
        let user = registry.user("addr", now).unwrap();
        assert_eq!(user.best_difficulty_session, 0.0);
        assert_eq!(
            (user.best_difficulty, user.best_difficulty_today),
            (5.0, 5.0)
        );
        again.lock().record_accepted(1.0, 2.0, now, unix_day());
        assert_eq!(
            registry.user("addr", now).unwrap().workers[0].best_difficulty_session,
            2.0
        );
        StatsRegistry::detach(&again);
        registry.prune(Duration::from_secs(60), now + Duration::from_secs(120));
        assert!(registry.user("addr", now).is_none());
        assert!(registry.is_empty());
    }

    #[test]
    fn made_up_names_cannot_grow_the_registry_or_push_out_real_miners() {
        let registry = StatsRegistry::with_capacity(1000);
        let start = Instant::now();
        // A real miner, connected, and another one that mined and left.
        let live = registry.attach("honest", "rig", start);
        live.lock().record_accepted(1.0, 1.0, start, unix_day());
        let left = registry.attach("honest", "old-rig", start);
        left.lock().record_accepted(1.0, 2.0, start, unix_day());
        StatsRegistry::detach(&left);
        // A stranger authorizes 100,000 made-up names, one connection each.
        for i in 0..100_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            let fake = registry.attach(&format!("addr{}", i % 97), &format!("w{i}"), now);
            StatsRegistry::detach(&fake);
            assert!(registry.len() <= 1000, "{} workers", registry.len());
        }
        let honest = registry.user("honest", start).expect("the real miner kept");
        let names: Vec<_> = honest.workers.iter().map(|w| w.worker.as_str()).collect();
        assert_eq!(
            names,
            ["old-rig", "rig"],
            "credited workers outlive made-up ones"
        );
        assert_eq!(honest.shares_accepted, 2);
        assert_eq!(honest.workers_connected, 1);
    }

    #[test]
    fn live_workers_are_never_forgotten() {
        let registry = StatsRegistry::with_capacity(10);
        let now = Instant::now();
        let handles: Vec<_> = (0..50)
            .map(|i| registry.attach("addr", &format!("w{i}"), now))
            .collect();
        assert_eq!(registry.len(), 50, "every connected worker is kept");
        for handle in &handles[..45] {
            StatsRegistry::detach(handle);
        }
        registry.attach("addr", "new", now);
        assert!(registry.len() <= 10, "{}", registry.len());
        let kept = registry.user("addr", now).unwrap();
        assert_eq!(kept.workers_connected, 6);
    }
}
