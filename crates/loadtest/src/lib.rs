//! `tbg loadtest`: thousands of simulated miners against any Stratum V1
//! pool, or a Stratum V2 one (`v2.rs`).
//!
//! Each simulated miner is one tokio task with its own connection (tasks are
//! cheap: thousands fit in one process). Source addresses are spread over
//! 127.0.0.0/8 so that ephemeral ports never run out on loopback. Shares are
//! either random nonces (the pool hashes and rejects them at the full cost
//! of a share, so no block storm on regtest) or real ones ground to the
//! difficulty the pool sets.
#![forbid(unsafe_code)]

mod pacer;
mod report;
mod stats;
mod v1;
mod v2;

pub use report::{Latency, LoadReport};
pub use tbg_sv2::client::ChannelChoice;
pub use v2::V2Load;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpSocket;

use pacer::{Pacer, Schedule, Slot};
use report::snapshot;
use stats::{micros, microsecond_histogram, Shared};

/// How shares are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareMode {
    /// Random nonces on the current job: hashed by the pool, rejected as
    /// "Above target" (or, rarely, accepted).
    Random,
    /// Nonces ground until the share meets the pool's difficulty.
    Real,
}

/// When a paced miner's shares fall due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Exponential gaps around the mean (a Poisson process), as a real
    /// miner's shares arrive: hashing is memoryless, and independent miners
    /// never fall into step.
    Poisson,
    /// A fixed gap of exactly 1/rate. Miners opened one ramp step apart fall
    /// into step whenever the gap is a multiple of the step (100 miners over
    /// the default 1 s ramp at 100 shares/s each submit in the same
    /// millisecond): a burst test, not a model of miners.
    Even,
}

/// Flood miners and the submits each keeps outstanding: 100 in flight in
/// all, enough to batch several lines per read and write on both sides, few
/// enough that queueing stays short (at 50,000/s, 100 in flight is 2 ms).
pub const FLOOD_MINERS: usize = 25;
pub const FLOOD_WINDOW: usize = 4;

/// A named set of parameters from the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Smoke,
    Standard,
    Stress,
    Soak,
    Flood,
}

impl Profile {
    pub fn parse(name: &str) -> Option<Profile> {
        Some(match name {
            "smoke" => Profile::Smoke,
            "standard" => Profile::Standard,
            "stress" => Profile::Stress,
            "soak" => Profile::Soak,
            "flood" => Profile::Flood,
            _ => return None,
        })
    }

    /// The plan's figures: smoke 10 miners / 30 s, standard 100 / 60 s,
    /// stress 1000 / 120 s, soak 100 / 1 h; flood submits as fast as the pool
    /// answers, `FLOOD_WINDOW` submits pipelined per miner.
    pub fn apply(self, config: &mut LoadConfig) {
        let (miners, seconds, rate) = match self {
            Profile::Smoke => (10, 30, 1.0),
            Profile::Standard => (100, 60, 1.0),
            Profile::Stress => (1000, 120, 1.0),
            Profile::Soak => (100, 3600, 1.0),
            Profile::Flood => (FLOOD_MINERS, 30, 0.0),
        };
        config.miners = miners;
        config.duration = Duration::from_secs(seconds);
        config.shares_per_second = rate;
        config.window = if self == Profile::Flood {
            FLOOD_WINDOW
        } else {
            1
        };
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub miners: usize,
    pub duration: Duration,
    /// Per miner; 0 = as fast as the pool answers (flood).
    pub shares_per_second: f64,
    /// Connections are opened evenly over this time.
    pub ramp_up: Duration,
    /// Usernames are `<address>.m<index>`, cycling through these.
    pub addresses: Vec<String>,
    pub share_mode: ShareMode,
    pub pacing: Pacing,
    /// Fraction of shares sent deliberately invalid (bad job id).
    pub invalid_fraction: f64,
    /// Spread source addresses over 127.0.0.0/8 (loopback targets only).
    pub spread_sources: bool,
    /// Difficulty to suggest (mining.suggest_difficulty), if any.
    pub suggest_difficulty: Option<f64>,
    /// Submits a miner keeps outstanding (pipelined, sent in one write);
    /// with a rate, shares that fall due while the window is full wait.
    pub window: usize,
    /// Stratum V2 instead of V1: the pool's key and the channel to open.
    pub sv2: Option<V2Load>,
}

impl LoadConfig {
    pub fn new(target: SocketAddr, addresses: Vec<String>) -> LoadConfig {
        LoadConfig {
            target,
            miners: 10,
            duration: Duration::from_secs(30),
            shares_per_second: 1.0,
            ramp_up: Duration::from_secs(1),
            addresses,
            share_mode: ShareMode::Random,
            pacing: Pacing::Poisson,
            invalid_fraction: 0.0,
            spread_sources: target.ip().is_loopback(),
            suggest_difficulty: None,
            window: 1,
            sv2: None,
        }
    }
}

/// The longest mean gap between a paced miner's shares (one a day).
const LONGEST_SHARE_GAP: Duration = Duration::from_secs(86_400);

/// The mean gap between a paced miner's shares; `None` (as fast as answered)
/// for a rate of 0. A rate so low that its gap does not fit a `Duration`
/// means one share a day, not a panic.
pub fn share_interval(shares_per_second: f64) -> Option<Duration> {
    (shares_per_second > 0.0).then(|| {
        Duration::try_from_secs_f64(1.0 / shares_per_second)
            .map_or(LONGEST_SHARE_GAP, |gap| gap.min(LONGEST_SHARE_GAP))
    })
}

/// An exponentially distributed gap with mean `mean`, from 64 random bits
/// (inverse transform sampling); capped at 20 means, so one unlucky draw
/// cannot silence a miner for the rest of a short run.
pub fn poisson_gap(mean: Duration, random: u64) -> Duration {
    // Uniform in (0, 1]: never 0, whose logarithm is infinite.
    let uniform = ((random >> 11) + 1) as f64 / (1u64 << 53) as f64;
    mean.mul_f64((-uniform.ln()).min(20.0))
}

/// xorshift64: cheap and seeded, enough for share gaps and random nonces.
/// The state must not start at 0 (it would stay 0).
struct XorShift64(u64);

impl XorShift64 {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Source address for miner `index`: 127.x.y.z, never 127.0.0.0 or .255.
fn source_ip(index: usize) -> IpAddr {
    let n = (index % (250 * 250 * 250)) as u32;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        1 + ((n / 250) % 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// Runs the load; calls `progress` about once a second with the running totals.
pub async fn run(config: LoadConfig, mut progress: impl FnMut(&LoadReport)) -> LoadReport {
    let shared = Arc::new(Shared {
        connect: Mutex::default(),
        authorize: Mutex::default(),
        round_trip: Mutex::new(microsecond_histogram()),
        pacing_late: Arc::new(Mutex::new(microsecond_histogram())),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        connected_now: AtomicU64::new(0),
        connected_total: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        rejected: Mutex::default(),
        errors: Mutex::default(),
        reconnect_requests: AtomicU64::new(0),
        notifies: Mutex::default(),
    });
    let started = Instant::now();
    let deadline = started + config.duration;
    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(config.miners);
    let ramp_step = if config.miners > 0 {
        config.ramp_up / config.miners as u32
    } else {
        Duration::ZERO
    };
    // Paced miners get their shares from the pacer thread; flood miners
    // (no rate) submit as fast as they are answered.
    let pacer = match share_interval(config.shares_per_second) {
        None => None,
        Some(interval) => {
            let schedule = Schedule {
                interval,
                pacing: config.pacing,
                start: started,
                ramp_step,
                deadline,
            };
            match Pacer::start(config.miners, schedule, shared.pacing_late.clone()) {
                Ok(pacer) => Some(pacer),
                Err(_) => {
                    // Without it paced miners would flood: report, run nothing.
                    shared.error("pacer_thread");
                    return snapshot(&shared, &config, started);
                }
            }
        }
    };
    let slots = pacer.as_ref().map(Pacer::slots);
    let spawner = {
        let shared = shared.clone();
        let config = config.clone();
        tokio::spawn(async move {
            for index in 0..config.miners {
                let shared = shared.clone();
                let config = config.clone();
                let slots = slots.clone();
                tasks.push(tokio::spawn(async move {
                    let slot = slots.as_deref().and_then(|slots| slots.get(index));
                    miner(index, config, shared, deadline, slot).await
                }));
                if !ramp_step.is_zero() {
                    // On a schedule, not a sleep per miner: sleeps round up to
                    // the timer's millisecond and would stretch the ramp.
                    let next = started + ramp_step * (index as u32 + 1);
                    if next > Instant::now() {
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut spawner = spawner;
    loop {
        tokio::select! {
            _ = &mut spawner => break,
            _ = ticker.tick() => progress(&snapshot(&shared, &config, started)),
        }
    }
    if let Some(pacer) = pacer {
        // Joins within the pacer's stop check; off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || pacer.stop()).await;
    }
    snapshot(&shared, &config, started)
}

async fn miner(
    index: usize,
    config: Arc<LoadConfig>,
    shared: Arc<Shared>,
    deadline: Instant,
    pace: Option<&Slot>,
) {
    let connect_started = Instant::now();
    let socket = match config.target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else {
        shared.error("socket");
        return;
    };
    if config.spread_sources
        && config.target.is_ipv4()
        && socket.bind(SocketAddr::new(source_ip(index), 0)).is_err()
    {
        shared.error("bind");
        return;
    }
    let stream =
        match tokio::time::timeout(Duration::from_secs(10), socket.connect(config.target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => return shared.error("connect_refused"),
            Err(_) => return shared.error("connect_timeout"),
        };
    let _ = stream.set_nodelay(true);
    shared
        .connect
        .lock()
        .push(micros(connect_started.elapsed()));
    let now_connected = shared.connected_now.fetch_add(1, Ordering::Relaxed) + 1;
    shared.connected_total.fetch_add(1, Ordering::Relaxed);
    shared.peak.fetch_max(now_connected, Ordering::Relaxed);
    let outcome = match config.sv2 {
        None => v1::session(index, &config, &shared, stream, deadline, pace).await,
        Some(v2) => v2::session(index, &config, v2, &shared, stream, deadline, pace).await,
    };
    shared.connected_now.fetch_sub(1, Ordering::Relaxed);
    if let Err(kind) = outcome {
        shared.error(kind);
    }
}

/// Resolves when a paced miner owes a share; never for a flood miner, whose
/// next share waits only for an answer.
async fn share_falls_due(pace: Option<&Slot>) {
    match pace {
        Some(slot) => slot.wait().await,
        None => std::future::pending().await,
    }
}

/// Miner `index`'s payout address: the addresses cycled over miners.
fn address_of(config: &LoadConfig, index: usize) -> &str {
    config
        .addresses
        .get(index % config.addresses.len().max(1))
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_intervals_follow_the_rate_and_never_panic() {
        assert_eq!(share_interval(100.0), Some(Duration::from_millis(10)));
        assert_eq!(share_interval(0.0), None, "0 = flood");
        assert_eq!(share_interval(f64::NAN), None);
        assert_eq!(share_interval(1e-30), Some(LONGEST_SHARE_GAP));
        assert_eq!(share_interval(f64::MIN_POSITIVE), Some(LONGEST_SHARE_GAP));
        assert_eq!(share_interval(f64::INFINITY), Some(Duration::ZERO));
    }

    #[test]
    fn poisson_gaps_average_the_interval_and_spread_like_an_exponential() {
        let mean = Duration::from_millis(10);
        let mut state = 0x1234_5678_9abc_def0u64;
        let gaps: Vec<f64> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                poisson_gap(mean, state).as_secs_f64() / mean.as_secs_f64()
            })
            .collect();
        let average = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((average - 1.0).abs() < 0.02, "mean gap {average}");
        // An exponential has P(gap > mean) = 1/e and P(gap < mean/10) = 9.5 %;
        // a fixed or uniform gap has neither.
        let longer = gaps.iter().filter(|g| **g > 1.0).count() as f64 / gaps.len() as f64;
        let short = gaps.iter().filter(|g| **g < 0.1).count() as f64 / gaps.len() as f64;
        assert!(
            (longer - (-1.0f64).exp()).abs() < 0.01,
            "P(gap > mean) {longer}"
        );
        assert!(
            (short - (1.0 - (-0.1f64).exp())).abs() < 0.01,
            "P(gap < mean/10) {short}"
        );
        assert_eq!(poisson_gap(mean, 0), poisson_gap(mean, 0), "deterministic");
        assert!(poisson_gap(mean, 0) <= mean * 20, "capped");
        assert!(poisson_gap(mean, u64::MAX) < Duration::from_micros(1));
    }
}
