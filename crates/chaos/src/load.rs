//! Load during a scenario, from the miners' side:
//!
//! - [`PacedMiner`]: finds real shares (hashing at the pool's difficulty) at
//!   a bounded rate, so that two of them leave the 2 cores to the pool; it
//!   reconnects by itself whenever the connection ends (`tbg_miner::run_miner`
//!   has no reconnect logic, so this reconnect loop is the harness's);
//! - [`EventLoad`]: cheap submits for an unknown job, answered (rejected) and
//!   journaled like any share: a steady event stream for the lost/duplicate
//!   accounting, and the answer latency for the CPU-stress scenario.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbg_miner::MinerJob;
use tbg_testkit::{regtest_address, AddressKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A Stratum connection whose reader runs in its own task, so that waiting
/// for a message with a timeout never loses part of a line.
pub struct StratumConn {
    writer: OwnedWriteHalf,
    /// Each message with the time it arrived.
    messages: mpsc::Receiver<(Instant, Value)>,
    reader: tokio::task::JoinHandle<()>,
    next_id: u64,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub difficulty: f64,
    pub job: Option<MinerJob>,
    /// Jobs received since the connection started.
    pub jobs_seen: u64,
    /// Where to record job arrivals, if anywhere.
    pub stats: Option<Arc<MinerStats>>,
}

impl Drop for StratumConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: Value,
    pub error: Value,
    pub latency: Duration,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        self.result == Value::Bool(true)
    }
    /// The reject wording (`[code, "text", null]` or `{message}`).
    pub fn reason(&self) -> String {
        match &self.error {
            Value::Array(parts) => parts
                .get(1)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            Value::Object(map) => map
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            Value::Null => "no error".to_string(),
            other => other.to_string(),
        }
    }
}

impl StratumConn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<StratumConn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        // Bounded: when the harness does not keep up, the reader stops and TCP
        // pushes back on the pool, as a slow miner would.
        let (sender, messages) = mpsc::channel(1024);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if sender.send((Instant::now(), value)).await.is_err() {
                    break;
                }
            }
        });
        Ok(StratumConn {
            writer,
            messages,
            reader,
            next_id: 1,
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            difficulty: 1.0,
            job: None,
            jobs_seen: 0,
            stats: None,
        })
    }

    fn apply_push(&mut self, arrived: Instant, message: &Value) -> Result<(), String> {
        match message.get("method").and_then(Value::as_str) {
            Some("mining.notify") => {
                let job =
                    MinerJob::from_notify_params(message.get("params").unwrap_or(&Value::Null))
                        .map_err(|e| format!("bad job: {e}"))?;
                if let Some(stats) = &self.stats {
                    stats.record_job(arrived, &job.prevhash_hex);
                }
                self.job = Some(job);
                self.jobs_seen += 1;
            }
            Some("mining.set_difficulty") => {
                if let Some(difficulty) = message.pointer("/params/0").and_then(Value::as_f64) {
                    self.difficulty = difficulty;
                }
            }
            Some("client.reconnect") => return Err("the pool asked to reconnect".into()),
            _ => {}
        }
        Ok(())
    }

    /// Next message within `timeout`: `Ok(None)` on timeout, `Err` when closed.
    async fn next_message(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Instant, Value)>, String> {
        match tokio::time::timeout(timeout, self.messages.recv()).await {
            Ok(Some(message)) => Ok(Some(message)),
            Ok(None) => Err("the pool closed the connection".into()),
            Err(_) => Ok(None),
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        let sent = Instant::now();
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let deadline = sent + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((arrived, message)) = self.next_message(left).await? else {
                return Err(format!("no answer to {method} within {timeout:?}"));
            };
            if message.get("method").is_some_and(|m| !m.is_null()) {
                self.apply_push(arrived, &message)?;
                continue;
            }
            if message.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(Answer {
                    result: message.get("result").cloned().unwrap_or(Value::Null),
                    error: message.get("error").cloned().unwrap_or(Value::Null),
                    latency: arrived.saturating_duration_since(sent),
                });
            }
        }
    }

    /// Handles pushes for up to `timeout`, returning early once a job newer
    /// than `jobs_before` arrived.
    pub async fn wait_for_job(
        &mut self,
        jobs_before: u64,
        timeout: Duration,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        while self.jobs_seen <= jobs_before {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if let Some((arrived, message)) = self.next_message(left).await? {
                self.apply_push(arrived, &message)?;
            }
        }
        Ok(true)
    }

    /// subscribe + authorize, then waits for the first job.
    pub async fn handshake(&mut self, username: &str, timeout: Duration) -> Result<(), String> {
        let subscribed = self
            .request("mining.subscribe", json!(["tbg-chaos/1.0"]), timeout)
            .await?;
        let extranonce1 = subscribed
            .result
            .get(1)
            .and_then(Value::as_str)
            .ok_or("subscribe: no extranonce1")?;
        self.extranonce1 = decode_hex(extranonce1).ok_or("subscribe: bad extranonce1")?;
        self.extranonce2_size = subscribed
            .result
            .get(2)
            .and_then(Value::as_u64)
            .ok_or("subscribe: no extranonce2 size")?
            .min(16) as usize;
        let authorized = self
            .request("mining.authorize", json!([username, "x"]), timeout)
            .await?;
        if !authorized.accepted() {
            return Err(format!("authorize refused: {}", authorized.error));
        }
        if self.job.is_none() && !self.wait_for_job(0, timeout).await? {
            return Err("no job after authorize".into());
        }
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 == 1 {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

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
    fn record_job(&self, at: Instant, prevhash: &str) {
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

/// Waits for a stopping task; one that does not end within `timeout` is
/// left running (detached), with a warning.
async fn join_within(task: tokio::task::JoinHandle<()>, timeout: Duration, what: &str) {
    if tokio::time::timeout(timeout, task).await.is_err() {
        tracing::warn!("{what} did not stop in time");
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

/// Answer latencies with the time they were measured.
#[derive(Debug, Default)]
pub struct LatencyLog {
    samples: Mutex<Vec<(Instant, Duration)>>,
    pub answered: AtomicU64,
    pub failures: AtomicU64,
}

impl LatencyLog {
    fn record(&self, latency: Duration) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), latency));
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The latency quantile `q` (0..1) of answers between `from` and `to`.
    pub fn quantile(&self, from: Instant, to: Instant, q: f64) -> Option<Duration> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut window: Vec<Duration> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, latency)| *latency)
            .collect();
        if window.is_empty() {
            return None;
        }
        window.sort();
        let index = ((window.len() as f64 - 1.0) * q).round() as usize;
        window.get(index.min(window.len() - 1)).copied()
    }

    pub fn count_between(&self, from: Instant, to: Instant) -> usize {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .count()
    }
}

/// `count` worker names for an [`EventLoad`]: `<regtest address>.load<i>`.
pub fn load_usernames(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| {
            let (address, _) = regtest_address(AddressKind::P2wpkh);
            format!("{address}.load{index}")
        })
        .collect()
}

/// Clients submitting shares for an unknown job every `interval`.
pub struct EventLoad {
    pub latencies: Arc<LatencyLog>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EventLoad {
    pub fn start(pool: SocketAddr, usernames: Vec<String>, interval: Duration) -> EventLoad {
        let latencies = Arc::new(LatencyLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = usernames
            .into_iter()
            .map(|username| {
                let latencies = latencies.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let timeout = Duration::from_secs(5);
                    let mut nonce = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let session = async {
                            let mut conn = StratumConn::connect(pool, timeout).await?;
                            conn.handshake(&username, timeout).await?;
                            while !stop.load(Ordering::Relaxed) {
                                nonce = nonce.wrapping_add(1);
                                let params = json!([
                                    username,
                                    "00000000deadbeef",
                                    "0000000000000000",
                                    "60000000",
                                    format!("{nonce:08x}")
                                ]);
                                let answer = conn.request("mining.submit", params, timeout).await?;
                                latencies.record(answer.latency);
                                tokio::time::sleep(interval).await;
                            }
                            Ok::<(), String>(())
                        };
                        if session.await.is_err() {
                            latencies.failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        EventLoad {
            latencies,
            stop,
            tasks,
        }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            join_within(task, Duration::from_secs(10), "event load client").await;
        }
    }
}

impl Drop for EventLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}
