//! `tbg loadtest`: thousands of simulated miners against any Stratum V1 pool.
//!
//! Each simulated miner is one tokio task with its own connection (tasks are
//! cheap: thousands fit in one process). Source addresses are spread over
//! 127.0.0.0/8 so that ephemeral ports never run out on loopback. Shares are
//! either random nonces (the pool hashes and rejects them at the full cost
//! of a share, so no block storm on regtest) or real ones ground to the
//! difficulty the pool sets.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

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
    /// stress 1000 / 120 s, soak 100 / 1 h; flood submits as fast as the pool answers.
    pub fn apply(self, config: &mut LoadConfig) {
        let (miners, seconds, rate) = match self {
            Profile::Smoke => (10, 30, 1.0),
            Profile::Standard => (100, 60, 1.0),
            Profile::Stress => (1000, 120, 1.0),
            Profile::Soak => (100, 3600, 1.0),
            Profile::Flood => (200, 30, 0.0),
        };
        config.miners = miners;
        config.duration = Duration::from_secs(seconds);
        config.shares_per_second = rate;
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
    /// Fraction of shares sent deliberately invalid (bad job id).
    pub invalid_fraction: f64,
    /// Spread source addresses over 127.0.0.0/8 (loopback targets only).
    pub spread_sources: bool,
    /// Difficulty to suggest (mining.suggest_difficulty), if any.
    pub suggest_difficulty: Option<f64>,
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
            invalid_fraction: 0.0,
            spread_sources: target.ip().is_loopback(),
            suggest_difficulty: None,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub miners: usize,
    pub duration_s: f64,
    pub connected: u64,
    pub peak_connections: u64,
    pub connect: Latency,
    pub subscribe_authorize: Latency,
    pub share_round_trip: Latency,
    pub shares_sent: u64,
    pub shares_answered: u64,
    pub shares_per_second: f64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// For each new block seen: time from the first miner's `mining.notify`
    /// (clean_jobs) to the last one's.
    pub new_block_notify_spread: Latency,
}

impl LoadReport {
    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let lat = |l: &Latency| {
            format!(
                "n={} p50={:.3}ms p95={:.3}ms p99={:.3}ms max={:.3}ms",
                l.count,
                l.p50_us as f64 / 1000.0,
                l.p95_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0,
                l.max_us as f64 / 1000.0
            )
        };
        let mut text = String::new();
        text.push_str(&format!(
            "miners {} (connected {}, peak {}), {:.1} s\n",
            self.miners, self.connected, self.peak_connections, self.duration_s
        ));
        text.push_str(&format!("connect            {}\n", lat(&self.connect)));
        text.push_str(&format!(
            "subscribe+authorize {}\n",
            lat(&self.subscribe_authorize)
        ));
        text.push_str(&format!(
            "share round trip   {}\n",
            lat(&self.share_round_trip)
        ));
        text.push_str(&format!(
            "shares sent {} answered {} ({:.0}/s), accepted {}\n",
            self.shares_sent, self.shares_answered, self.shares_per_second, self.accepted
        ));
        for (reason, count) in &self.rejected {
            text.push_str(&format!("  rejected {reason}: {count}\n"));
        }
        for (kind, count) in &self.errors {
            text.push_str(&format!("  error {kind}: {count}\n"));
        }
        text.push_str(&format!(
            "new block -> last notify {}\n",
            lat(&self.new_block_notify_spread)
        ));
        text
    }
}

struct Shared {
    connect: Mutex<Vec<u64>>,
    authorize: Mutex<Vec<u64>>,
    round_trip: Mutex<hdrhistogram::Histogram<u64>>,
    sent: AtomicU64,
    answered: AtomicU64,
    accepted: AtomicU64,
    connected_now: AtomicU64,
    connected_total: AtomicU64,
    peak: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// prevhash -> (first notify, last notify)
    notifies: Mutex<BTreeMap<String, (Instant, Instant)>>,
}

impl Shared {
    fn error(&self, kind: &str) {
        *self.errors.lock().entry(kind.to_string()).or_default() += 1;
    }
}

fn latency(samples: &[u64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let pick = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    Latency {
        count: sorted.len() as u64,
        p50_us: pick(0.50),
        p95_us: pick(0.95),
        p99_us: pick(0.99),
        max_us: *sorted.last().unwrap_or(&0),
    }
}

fn histogram_latency(histogram: &hdrhistogram::Histogram<u64>) -> Latency {
    Latency {
        count: histogram.len(),
        p50_us: histogram.value_at_quantile(0.50),
        p95_us: histogram.value_at_quantile(0.95),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
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

struct Job {
    id: String,
    miner_job: Option<tbg_miner::MinerJob>,
}

/// Runs the load; calls `progress` about once a second with the running totals.
pub async fn run(config: LoadConfig, mut progress: impl FnMut(&LoadReport)) -> LoadReport {
    let shared = Arc::new(Shared {
        connect: Mutex::default(),
        authorize: Mutex::default(),
        // 1 µs .. 60 s at 3 significant digits: fixed bounds, cannot fail.
        round_trip: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
                hdrhistogram::Histogram::new(3)
                    .unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
            }),
        ),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        connected_now: AtomicU64::new(0),
        connected_total: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        rejected: Mutex::default(),
        errors: Mutex::default(),
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
    let spawner = {
        let shared = shared.clone();
        let config = config.clone();
        tokio::spawn(async move {
            for index in 0..config.miners {
                let shared = shared.clone();
                let config = config.clone();
                tasks.push(tokio::spawn(async move {
                    miner(index, config, shared, deadline).await
                }));
                if !ramp_step.is_zero() {
                    tokio::time::sleep(ramp_step).await;
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
    snapshot(&shared, &config, started)
}

fn snapshot(shared: &Shared, config: &LoadConfig, started: Instant) -> LoadReport {
    let elapsed = started.elapsed().as_secs_f64();
    let answered = shared.answered.load(Ordering::Relaxed);
    let spreads: Vec<u64> = shared
        .notifies
        .lock()
        .values()
        .map(|(first, last)| micros(last.saturating_duration_since(*first)))
        .collect();
    LoadReport {
        miners: config.miners,
        duration_s: elapsed,
        connected: shared.connected_total.load(Ordering::Relaxed),
        peak_connections: shared.peak.load(Ordering::Relaxed),
        connect: latency(&shared.connect.lock()),
        subscribe_authorize: latency(&shared.authorize.lock()),
        share_round_trip: histogram_latency(&shared.round_trip.lock()),
        shares_sent: shared.sent.load(Ordering::Relaxed),
        shares_answered: answered,
        shares_per_second: if elapsed > 0.0 {
            answered as f64 / elapsed
        } else {
            0.0
        },
        accepted: shared.accepted.load(Ordering::Relaxed),
        rejected: shared.rejected.lock().clone(),
        errors: shared.errors.lock().clone(),
        new_block_notify_spread: latency(&spreads),
    }
}

async fn miner(index: usize, config: Arc<LoadConfig>, shared: Arc<Shared>, deadline: Instant) {
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
    let outcome = session(index, &config, &shared, stream, deadline).await;
    shared.connected_now.fetch_sub(1, Ordering::Relaxed);
    if let Err(kind) = outcome {
        shared.error(kind);
    }
}

async fn session(
    index: usize,
    config: &LoadConfig,
    shared: &Shared,
    stream: tokio::net::TcpStream,
    deadline: Instant,
) -> Result<(), &'static str> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let address = config
        .addresses
        .get(index % config.addresses.len().max(1))
        .cloned()
        .unwrap_or_default();
    let username = format!("{address}.m{index}");
    let started = Instant::now();
    let send = |id: u64, method: &str, params: Value| {
        let mut text = json!({"id": id, "method": method, "params": params}).to_string();
        text.push('\n');
        text
    };
    let mut hello = send(1, "mining.subscribe", json!(["tbg-loadtest/0.1"]));
    hello.push_str(&send(2, "mining.authorize", json!([username, "x"])));
    if let Some(diff) = config.suggest_difficulty {
        hello.push_str(&send(3, "mining.suggest_difficulty", json!([diff])));
    }
    write
        .write_all(hello.as_bytes())
        .await
        .map_err(|_| "write")?;

    let mut extranonce1 = Vec::new();
    let mut extranonce2_size = 4usize;
    let mut difficulty = 1.0f64;
    let mut job: Option<Job> = None;
    let mut authorized = false;
    let mut next_id = 10u64;
    let mut in_flight: Option<(u64, Instant)> = None;
    let interval = if config.shares_per_second > 0.0 {
        Some(Duration::from_secs_f64(1.0 / config.shares_per_second))
    } else {
        None
    };
    let mut next_share = Instant::now();
    let mut counter = 0u64;
    let mut rng_state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next_random = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };

    loop {
        let ready = authorized && job.is_some() && in_flight.is_none() && !extranonce1.is_empty();
        let wait_until = if ready { next_share } else { deadline };
        if Instant::now() >= deadline {
            return Ok(());
        }
        tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), reader.read_line(&mut line)) => {
                let Ok(read) = read else { return Ok(()) };
                match read {
                    Ok(0) => return Err("closed_by_pool"),
                    Err(_) => return Err("read"),
                    Ok(_) => {}
                }
                let received = Instant::now();
                let message: Value = serde_json::from_str(line.trim()).map_err(|_| "bad_json")?;
                line.clear();
                match message.get("method").and_then(Value::as_str) {
                    Some("mining.notify") => {
                        let params = message.get("params").cloned().unwrap_or(Value::Null);
                        let prevhash = params.get(1).and_then(Value::as_str).unwrap_or("").to_string();
                        // A miner's first job tells nothing about block propagation.
                        if job.is_some() && params.get(8).and_then(Value::as_bool) == Some(true) {
                            let mut notifies = shared.notifies.lock();
                            let entry = notifies.entry(prevhash.clone()).or_insert((received, received));
                            entry.1 = entry.1.max(received);
                        }
                        let miner_job = tbg_miner::MinerJob::from_notify_params(&params).ok();
                        job = Some(Job {
                            id: params.get(0).and_then(Value::as_str).unwrap_or("").to_string(),
                            miner_job,
                        });
                    }
                    Some("mining.set_difficulty") => {
                        difficulty = message.pointer("/params/0").and_then(Value::as_f64).unwrap_or(difficulty);
                    }
                    Some(_) => {}
                    None => {
                        let id = message.get("id").and_then(Value::as_u64).unwrap_or(0);
                        match id {
                            1 => {
                                let result = message.get("result").cloned().unwrap_or(Value::Null);
                                extranonce1 = result.get(1).and_then(Value::as_str).and_then(|h| hex::decode(h).ok()).unwrap_or_default();
                                extranonce2_size = result.get(2).and_then(Value::as_u64).unwrap_or(4).min(16) as usize;
                            }
                            2 => {
                                if message.get("result") != Some(&Value::Bool(true)) {
                                    return Err("authorize_refused");
                                }
                                authorized = true;
                                shared.authorize.lock().push(micros(started.elapsed()));
                            }
                            _ => {
                                if let Some((sent_id, sent_at)) = in_flight {
                                    if sent_id == id {
                                        in_flight = None;
                                        let rtt = micros(received.saturating_duration_since(sent_at)).max(1);
                                        let _ = shared.round_trip.lock().record(rtt);
                                        shared.answered.fetch_add(1, Ordering::Relaxed);
                                        if message.get("result") == Some(&Value::Bool(true)) {
                                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                                        } else {
                                            let reason = reject_reason(&message);
                                            *shared.rejected.lock().entry(reason).or_default() += 1;
                                        }
                                        next_share = match interval {
                                            Some(interval) => (next_share + interval).max(Instant::now() - interval),
                                            None => Instant::now(),
                                        };
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wait_until.into()), if ready => {
                let Some(current) = &job else { continue };
                counter += 1;
                let mut extranonce2 = counter.to_le_bytes().to_vec();
                extranonce2.resize(extranonce2_size, 0);
                let invalid = config.invalid_fraction > 0.0
                    && (next_random() % 10_000) as f64 / 10_000.0 < config.invalid_fraction;
                let ntime = job_ntime(&current.miner_job);
                let (job_id, nonce) = match (&current.miner_job, invalid, config.share_mode) {
                    (_, true, _) => ("ffffffffffffffff".to_string(), 0u32),
                    (Some(miner_job), false, ShareMode::Real) => {
                        let found = miner_job.find_nonce(&extranonce1, &extranonce2, ntime, miner_job.version, difficulty, 0);
                        (current.id.clone(), found.map_or(0, |(nonce, _)| nonce))
                    }
                    (Some(miner_job), false, ShareMode::Random) => {
                        // A random nonce that is not a block: on regtest half of all
                        // hashes meet the network target, and a load test must not
                        // turn into a block storm.
                        let root = miner_job.merkle_root(&extranonce1, &extranonce2);
                        let mut nonce = next_random() as u32;
                        for _ in 0..64 {
                            let header = miner_job.header(&root, ntime, nonce, miner_job.version);
                            if !tbg_miner::meets_nbits(&tbg_miner::sha256d(&header), miner_job.nbits) {
                                break;
                            }
                            nonce = next_random() as u32;
                        }
                        (current.id.clone(), nonce)
                    }
                    _ => (current.id.clone(), next_random() as u32),
                };
                let id = next_id;
                next_id += 1;
                let request = send(id, "mining.submit", json!([
                    username, job_id, hex::encode(&extranonce2), format!("{ntime:08x}"), format!("{nonce:08x}")
                ]));
                in_flight = Some((id, Instant::now()));
                shared.sent.fetch_add(1, Ordering::Relaxed);
                write.write_all(request.as_bytes()).await.map_err(|_| "write")?;
            }
        }
    }
}

/// ntime for random shares: the job's when known, else the current time.
fn job_ntime(job: &Option<tbg_miner::MinerJob>) -> u32 {
    job.as_ref().map(|j| j.ntime).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0)
    })
}

fn reject_reason(message: &Value) -> String {
    match message.get("error") {
        Some(Value::Array(parts)) => parts
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        Some(Value::Object(map)) => map
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        _ => "rejected".to_string(),
    }
}
