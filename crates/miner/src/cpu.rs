//! The CPU miner: subscribes, authorizes, hashes every job on a blocking
//! thread and submits each share that meets the pool's difficulty.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::job::{hash_difficulty, sha256d, MinerJob};
use crate::MinerError;

/// How the miner connects and what it asks for.
#[derive(Debug, Clone)]
pub struct MinerConfig {
    pub pool: SocketAddr,
    /// Payout address, optionally `.worker`.
    pub username: String,
    pub password: String,
    pub user_agent: String,
    /// Difficulty to suggest after subscribing (`mining.suggest_difficulty`).
    pub suggest_difficulty: Option<f64>,
    /// Stop after this many accepted shares.
    pub max_accepted: Option<u64>,
    /// Stop after this many blocks (shares meeting the network target).
    pub max_blocks: Option<u64>,
    /// Nonces hashed between two looks at the pool's messages.
    pub chunk: u32,
    /// Local address to connect from (tests of per-source limits); `None`:
    /// the system's choice.
    pub local_ip: Option<std::net::IpAddr>,
    /// Stratum over TLS (`stratum+ssl://`); `None`: plain TCP.
    pub tls: Option<crate::MinerTls>,
}

impl MinerConfig {
    pub fn new(pool: SocketAddr, username: impl Into<String>) -> MinerConfig {
        MinerConfig {
            pool,
            username: username.into(),
            password: "x".into(),
            user_agent: "tbg-miner/0.1".into(),
            suggest_difficulty: None,
            max_accepted: None,
            max_blocks: None,
            chunk: 50_000,
            local_ip: None,
            tls: None,
        }
    }
}

/// What the miner saw, for tests and for `tbg devnet --miner` output.
#[derive(Debug, Clone, PartialEq)]
pub enum MinerEvent {
    Subscribed {
        extranonce1: String,
        extranonce2_size: usize,
    },
    Authorized,
    Difficulty(f64),
    Job {
        job_id: String,
        clean: bool,
    },
    ShareAccepted {
        job_id: String,
        share_difficulty: f64,
        block_candidate: bool,
        hash: String,
    },
    ShareRejected {
        job_id: String,
        reason: String,
    },
}

/// Totals when the miner stops.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinerSummary {
    pub accepted: u64,
    pub rejected: u64,
    pub block_candidates: u64,
    /// Shares sent whose answer had not arrived when the miner stopped
    /// (the pool may still have credited them).
    pub unanswered: u64,
}

struct Found {
    job_id: String,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    hash: [u8; 32],
    difficulty: f64,
    block_candidate: bool,
}

/// Network target check: the header hash (little endian) at or below the
/// target encoded in nbits.
pub fn meets_nbits(hash: &[u8; 32], nbits: u32) -> bool {
    let target = bitcoin::CompactTarget::from_consensus(nbits);
    let target = bitcoin::Target::from_compact(target);
    let hash_value = bitcoin::Target::from_le_bytes(*hash);
    hash_value <= target
}

fn grind(
    job: &MinerJob,
    extranonce1: &[u8],
    extranonce2: &[u8],
    difficulty: f64,
    start_nonce: u32,
    count: u32,
    cancel: &AtomicBool,
) -> Option<Found> {
    let root = job.merkle_root(extranonce1, extranonce2);
    let mut header = job.header(&root, job.ntime, 0, job.version);
    let end = start_nonce.saturating_add(count);
    for nonce in start_nonce..end {
        if nonce % 4096 == 0 && cancel.load(Ordering::Relaxed) {
            return None;
        }
        header[76..80].copy_from_slice(&nonce.to_le_bytes());
        let hash = sha256d(&header);
        let share_difficulty = hash_difficulty(&hash);
        if share_difficulty >= difficulty {
            return Some(Found {
                job_id: job.job_id.clone(),
                extranonce2: extranonce2.to_vec(),
                ntime: job.ntime,
                nonce,
                hash,
                difficulty: share_difficulty,
                block_candidate: meets_nbits(&hash, job.nbits),
            });
        }
    }
    None
}

fn display_hash(hash: &[u8; 32]) -> String {
    let mut reversed = *hash;
    reversed.reverse();
    hex::encode(reversed)
}

/// Writes one line and pushes it out (TLS keeps written data in its
/// session until flushed when the socket is full).
async fn write_line<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    line: String,
) -> Result<(), MinerError> {
    writer
        .write_all(line.as_bytes())
        .await
        .map_err(MinerError::Io)?;
    writer.flush().await.map_err(MinerError::Io)
}

/// Runs until `shutdown` turns true, the pool closes the connection, or a
/// configured maximum is reached.
pub async fn run_miner(
    config: MinerConfig,
    mut shutdown: watch::Receiver<bool>,
    events: Option<mpsc::Sender<MinerEvent>>,
) -> Result<MinerSummary, MinerError> {
    let stream =
        crate::transport::Transport::connect(config.pool, config.local_ip, config.tls.as_ref())
            .await?;
    let (read_half, mut write_half) = tokio::io::split(stream);

    // The reader task forwards each line; when the channel is full it stops
    // reading, which pushes back on the pool through TCP.
    let (line_tx, mut line_rx) = mpsc::channel::<Value>(1024);
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read_half).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if line_tx.send(value).await.is_err() {
                break;
            }
        }
    });

    let emit = |event: MinerEvent| {
        let events = events.clone();
        async move {
            if let Some(events) = events {
                let _ = events.send(event).await;
            }
        }
    };

    let send = |id: u64, method: &str, params: Value| {
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        line
    };
    write_line(
        &mut write_half,
        send(1, "mining.subscribe", json!([config.user_agent])),
    )
    .await?;
    write_line(
        &mut write_half,
        send(
            2,
            "mining.authorize",
            json!([config.username, config.password]),
        ),
    )
    .await?;
    if let Some(diff) = config.suggest_difficulty {
        write_line(
            &mut write_half,
            send(3, "mining.suggest_difficulty", json!([diff])),
        )
        .await?;
    }

    let mut summary = MinerSummary::default();
    let mut extranonce1: Vec<u8> = Vec::new();
    let mut extranonce2_size = 0usize;
    let mut difficulty = 1.0f64;
    let mut job: Option<Arc<MinerJob>> = None;
    let mut extranonce2_counter: u64 = 0;
    let mut next_nonce: u32 = 0;
    let mut next_id: u64 = 10;
    // Submissions awaiting an answer: id -> (job id, difficulty, candidate, hash).
    let mut in_flight: std::collections::HashMap<u64, (String, f64, bool, String)> =
        Default::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut grinding: Option<tokio::task::JoinHandle<Option<Found>>> = None;
    let started = Instant::now();

    let outcome = loop {
        if grinding.is_none() {
            if let (Some(current), false) = (job.clone(), extranonce1.is_empty()) {
                if next_nonce == u32::MAX {
                    extranonce2_counter += 1;
                    next_nonce = 0;
                }
                let mut extranonce2 = extranonce2_counter.to_le_bytes().to_vec();
                extranonce2.resize(extranonce2_size, 0);
                let start = next_nonce;
                let count = config.chunk.min(u32::MAX - start);
                next_nonce = start.saturating_add(count);
                let en1 = extranonce1.clone();
                let cancel = cancel.clone();
                cancel.store(false, Ordering::Relaxed);
                grinding = Some(tokio::task::spawn_blocking(move || {
                    grind(
                        &current,
                        &en1,
                        &extranonce2,
                        difficulty,
                        start,
                        count,
                        &cancel,
                    )
                }));
            }
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break Ok(()); }
            }
            message = line_rx.recv() => {
                let Some(message) = message else { break Err(MinerError::Closed) };
                match message.get("method").and_then(Value::as_str) {
                    Some("mining.notify") => {
                        let new_job = MinerJob::from_notify_params(message.get("params").unwrap_or(&Value::Null))?;
                        emit(MinerEvent::Job { job_id: new_job.job_id.clone(), clean: new_job.clean_jobs }).await;
                        job = Some(Arc::new(new_job));
                        next_nonce = 0;
                        extranonce2_counter += 1;
                        cancel.store(true, Ordering::Relaxed);
                    }
                    Some("mining.set_difficulty") => {
                        if let Some(d) = message.pointer("/params/0").and_then(Value::as_f64) {
                            difficulty = d;
                            emit(MinerEvent::Difficulty(d)).await;
                        }
                    }
                    Some("mining.set_extranonce") => {
                        if let Some(en1) = message.pointer("/params/0").and_then(Value::as_str) {
                            extranonce1 = hex::decode(en1).map_err(|_| MinerError::Protocol("bad extranonce1".into()))?;
                        }
                        if let Some(size) = message.pointer("/params/1").and_then(Value::as_u64) {
                            extranonce2_size = usize::try_from(size).unwrap_or(0).min(16);
                        }
                    }
                    Some("client.reconnect") => break Ok(()),
                    Some(_) => {}
                    None => {
                        let id = message.get("id").and_then(Value::as_u64).unwrap_or(0);
                        let error = message.get("error").cloned().unwrap_or(Value::Null);
                        match id {
                            1 => {
                                let result = message.get("result").cloned().unwrap_or(Value::Null);
                                let en1 = result.get(1).and_then(Value::as_str)
                                    .ok_or_else(|| MinerError::Protocol("subscribe: no extranonce1".into()))?;
                                extranonce1 = hex::decode(en1).map_err(|_| MinerError::Protocol("bad extranonce1".into()))?;
                                extranonce2_size = result.get(2).and_then(Value::as_u64).map(|s| s.min(16) as usize)
                                    .ok_or_else(|| MinerError::Protocol("subscribe: no extranonce2 size".into()))?;
                                emit(MinerEvent::Subscribed { extranonce1: en1.to_string(), extranonce2_size }).await;
                            }
                            2 => {
                                if message.get("result") == Some(&Value::Bool(true)) {
                                    emit(MinerEvent::Authorized).await;
                                } else {
                                    break Err(MinerError::Rejected(format!("authorize refused: {error}")));
                                }
                            }
                            _ => {
                                if let Some((job_id, share_difficulty, block_candidate, hash)) = in_flight.remove(&id) {
                                    if message.get("result") == Some(&Value::Bool(true)) {
                                        summary.accepted += 1;
                                        if block_candidate { summary.block_candidates += 1; }
                                        emit(MinerEvent::ShareAccepted { job_id, share_difficulty, block_candidate, hash }).await;
                                    } else {
                                        summary.rejected += 1;
                                        let reason = crate::client::Reply { result: Value::Null, error }.error_message().unwrap_or_default();
                                        emit(MinerEvent::ShareRejected { job_id, reason }).await;
                                    }
                                    let accepted_enough = config.max_accepted.is_some_and(|max| summary.accepted >= max);
                                    let blocks_enough = config.max_blocks.is_some_and(|max| summary.block_candidates >= max);
                                    if accepted_enough || blocks_enough { break Ok(()); }
                                }
                            }
                        }
                    }
                }
            }
            found = async { grinding.as_mut().expect("guarded by the if").await }, if grinding.is_some() => {
                grinding = None;
                if let Ok(Some(found)) = found {
                    // A share for a job the pool has since replaced is still sent:
                    // the pool answers Stale and the miner moves on.
                    let id = next_id;
                    next_id += 1;
                    let params = json!([
                        config.username,
                        found.job_id,
                        hex::encode(&found.extranonce2),
                        format!("{:08x}", found.ntime),
                        format!("{:08x}", found.nonce),
                    ]);
                    write_line(&mut write_half, send(id, "mining.submit", params)).await?;
                    in_flight.insert(id, (found.job_id, found.difficulty, found.block_candidate, display_hash(&found.hash)));
                    next_nonce = found.nonce.saturating_add(1);
                }
            }
        }
    };
    cancel.store(true, Ordering::Relaxed);
    reader.abort();
    summary.unanswered = in_flight.len() as u64;
    tracing::debug!(elapsed = ?started.elapsed(), ?summary, "miner stopped");
    outcome.map(|()| summary)
}

/// Convenience for tests: mine until `accepted` shares are accepted or `limit` passes.
pub async fn mine_shares(
    config: MinerConfig,
    limit: Duration,
) -> Result<(MinerSummary, Vec<MinerEvent>), MinerError> {
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (event_tx, mut event_rx) = mpsc::channel(4096);
    let run = tokio::time::timeout(limit, run_miner(config, stop_rx, Some(event_tx)));
    let summary = run.await.map_err(|_| MinerError::Timeout)??;
    let mut events = Vec::new();
    while let Ok(event) = event_rx.try_recv() {
        events.push(event);
    }
    Ok((summary, events))
}
