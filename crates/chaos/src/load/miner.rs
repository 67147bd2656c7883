//! [`PacedMiner`]: real shares at a bounded rate over a connection it makes
//! again whenever it ends, and the [`MinerStats`] it shares with the
//! scenario.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tbg_miner::MinerJob;

use super::{join_within, Answer, StratumConn};

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a miner saw, shared with the scenario while it runs.
#[derive(Debug)]
pub struct MinerStats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub connects: AtomicU64,
    pub errors: AtomicU64,
    accept_times: Mutex<Vec<Instant>>,
    /// Each accepted share's time and when its connection was established.
    accepts_by_connection: Mutex<Vec<(Instant, Instant)>>,
    /// Each job's arrival and its previous-block hash.
    jobs: Mutex<Vec<(Instant, String)>>,
    reject_reasons: Mutex<BTreeMap<String, u64>>,
    last_error: Mutex<String>,
}

impl Default for MinerStats {
    fn default() -> Self {
        MinerStats {
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            accept_times: Mutex::new(Vec::new()),
            accepts_by_connection: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
            reject_reasons: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(String::new()),
        }
    }
}

impl MinerStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// The first accepted share at or after `since`.
    pub fn first_accept_after(&self, since: Instant) -> Option<Instant> {
        let times = self.accept_times.lock().unwrap_or_else(|e| e.into_inner());
        times.iter().copied().find(|t| *t >= since)
    }
    /// The first accepted share on a connection established at or after
    /// `since` (an answer from a process killed before `since` cannot count).
    pub fn first_accept_on_connection_after(&self, since: Instant) -> Option<Instant> {
        let accepts = self
            .accepts_by_connection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        accepts
            .iter()
            .filter(|(_, connected)| *connected >= since)
            .map(|(accepted, _)| *accepted)
            .min()
    }
    /// The previous-block hash of the latest job received.
    pub fn last_prevhash(&self) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.last().map(|(_, prevhash)| prevhash.clone())
    }
    /// When the first job on a different previous block than `prevhash`
    /// arrived at or after `since` (a fresh template after a new block).
    pub fn first_new_tip_after(&self, since: Instant, prevhash: &str) -> Option<Instant> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .find(|(at, hash)| *at >= since && hash != prevhash)
            .map(|(at, _)| *at)
    }
    /// When the first job arrived at or after `since`.
    pub fn first_job_after(&self, since: Instant) -> Option<Instant> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().map(|(at, _)| *at).find(|at| *at >= since)
    }
    pub(super) fn record_job(&self, at: Instant, prevhash: &str) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, prevhash.to_string()));
    }
    pub fn accepted_since(&self, since: Instant) -> usize {
        let times = self.accept_times.lock().unwrap_or_else(|e| e.into_inner());
        times.iter().filter(|t| **t >= since).count()
    }
    pub fn reject_reasons(&self) -> BTreeMap<String, u64> {
        self.reject_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn record_answer(&self, answer: &Answer, connected: Instant) {
        if answer.accepted() {
            let now = Instant::now();
            self.accepted.fetch_add(1, Ordering::Relaxed);
            self.accept_times
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now);
            self.accepts_by_connection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((now, connected));
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            *self
                .reject_reasons
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(answer.reason())
                .or_default() += 1;
        }
    }
    fn record_error(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// A miner finding real shares, one every `pause` at most, reconnecting by itself.
pub struct PacedMiner {
    pub username: String,
    pub stats: Arc<MinerStats>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PacedMiner {
    pub fn start(pool: SocketAddr, username: String, pause: Duration) -> PacedMiner {
        let stats = Arc::new(MinerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(mine_forever(
            pool,
            username.clone(),
            pause,
            stats.clone(),
            stop.clone(),
        ));
        PacedMiner {
            username,
            stats,
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            join_within(task, Duration::from_secs(15), "paced miner").await;
        }
    }
}

impl Drop for PacedMiner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn mine_forever(
    pool: SocketAddr,
    username: String,
    pause: Duration,
    stats: Arc<MinerStats>,
    stop: Arc<AtomicBool>,
) {
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = mine_session(pool, &username, pause, &stats, &stop, &mut counter).await
        {
            stats.record_error(error);
            // A quick retry: miners reconnect within a fraction of a second.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn mine_session(
    pool: SocketAddr,
    username: &str,
    pause: Duration,
    stats: &Arc<MinerStats>,
    stop_flag: &Arc<AtomicBool>,
    counter: &mut u64,
) -> Result<(), String> {
    let stop = stop_flag.as_ref();
    let timeout = Duration::from_secs(5);
    let connecting = Instant::now();
    let mut conn = StratumConn::connect(pool, timeout).await?;
    conn.stats = Some(stats.clone());
    conn.handshake(username, timeout).await?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        let job = conn.job.clone().ok_or("no job")?;
        *counter += 1;
        let mut extranonce2 = counter.to_le_bytes().to_vec();
        extranonce2.resize(conn.extranonce2_size, 0);
        let extranonce1 = conn.extranonce1.clone();
        let difficulty = conn.difficulty;
        let search_job = job.clone();
        let search_extranonce2 = extranonce2.clone();
        let cancel = stop_flag.clone();
        let found = tokio::task::spawn_blocking(move || {
            grind(
                &search_job,
                &extranonce1,
                &search_extranonce2,
                difficulty,
                &cancel,
            )
        })
        .await
        .map_err(|e| format!("hashing task: {e}"))?;
        let Some(nonce) = found else {
            continue;
        };
        let jobs_before = conn.jobs_seen;
        let params = json!([
            username,
            job.job_id,
            encode_hex(&extranonce2),
            format!("{:08x}", job.ntime),
            format!("{nonce:08x}"),
        ]);
        let answer = conn.request("mining.submit", params, timeout).await?;
        stats.record_answer(&answer, connecting);
        // On regtest every share is a block: wait briefly for the next job so
        // that the next share is not stale (the pool may be cut from its
        // node, then the old job stays valid).
        if answer.accepted() {
            conn.wait_for_job(jobs_before, Duration::from_millis(500))
                .await?;
        }
        if !pause.is_zero() {
            conn.wait_for_job(conn.jobs_seen, pause).await?;
        }
    }
    Ok(())
}

/// Searches nonces for a header meeting `difficulty`; gives up when
/// `cancel` is set (checked every 4096 hashes) or the nonce space of this
/// extranonce2 is exhausted.
fn grind(
    job: &MinerJob,
    extranonce1: &[u8],
    extranonce2: &[u8],
    difficulty: f64,
    cancel: &AtomicBool,
) -> Option<u32> {
    let root = job.merkle_root(extranonce1, extranonce2);
    let mut header = job.header(&root, job.ntime, 0, job.version);
    for nonce in 0..=u32::MAX {
        if nonce & 4095 == 0 && cancel.load(Ordering::Relaxed) {
            return None;
        }
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        if tbg_miner::hash_difficulty(&tbg_miner::sha256d(&header)) >= difficulty {
            return Some(nonce);
        }
    }
    None
}
