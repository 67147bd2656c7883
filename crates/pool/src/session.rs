//! One miner connection: bytes -> lines -> requests -> answers.
//!
//! Each connection is one task that owns its socket. It reads lines with a
//! hard length limit, answers every request in order, and pushes new work
//! when the template changes. Nothing a miner sends can panic it or reach
//! another connection; the worst a miner can do is get itself disconnected.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::ScriptBuf;
use serde_json::Value;
use tbg_events::EventData;
use tbg_stratum::{
    ClientMessage, ConfigureRequest, ConfigureResponse, RejectReason, Request, Submit,
};
use tbg_work::{Job, Vardiff};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::extranonce::Allocation;
use crate::notify::JobInputs;
use crate::stats::{StatsRegistry, WorkerHandle};
use crate::work_source::CurrentWork;
use crate::PoolShared;

/// Worker names one connection may authorize.
pub const MAX_WORKERS_PER_CONNECTION: usize = 64;
/// Jobs a session remembers; older ones answer "Invalid JobID".
const JOBS_KEPT: usize = 16;
/// How long a session still answers a miner after telling it to reconnect
/// at a graceful stop: shares already on the wire arrive within a round
/// trip; a miner that honours `client.reconnect` closes sooner.
pub const STOP_LINGER: Duration = Duration::from_millis(500);
/// Shares remembered per job for duplicate detection; past this, the oldest
/// job's set stops growing (the miner should have had new work long before).
const MAX_SHARES_REMEMBERED_PER_JOB: usize = 200_000;

/// Why a connection ended, for logs and the disconnect event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    LineTooLong,
    AuthorizeTimeout,
    IdleTimeout,
    WriteTimeout,
    TooManyInvalidShares,
    Shutdown,
    IoError,
    ServerFull,
}

struct SessionJob {
    /// Shared with the user's other sessions (same template, same job).
    id: Arc<str>,
    job: Job,
    prev_hash: bitcoin::BlockHash,
    difficulty: f64,
    ntime: u32,
    reward_sats: u64,
    seen: HashSet<(u64, u32, u32, u32)>,
    /// Merkle root of the last extranonce2 seen on this job: miners send
    /// many shares per extranonce2, and the root is most of the hashing.
    last_root: Option<(u64, [u8; 32])>,
}

struct Authorized {
    address: String,
    payout: ScriptBuf,
    /// Worker names authorized on this connection, with their stats.
    workers: Vec<(String, WorkerHandle)>,
    user_sig: Option<String>,
}

pub(crate) struct Session {
    shared: Arc<PoolShared>,
    client_id: u64,
    peer: SocketAddr,
    connected_at: Instant,
    user_agent: String,
    allocation: Option<Allocation>,
    extranonce_subscribed: bool,
    authorized: Option<Authorized>,
    version_mask: Option<u32>,
    suggested_difficulty: Option<f64>,
    difficulty: f64,
    vardiff: Option<Vardiff>,
    jobs: VecDeque<SessionJob>,
    work_generation_sent: u64,
    shares_session: u64,
    best_session: f64,
    invalid_window: (Instant, u32),
    last_activity: Instant,
    last_hashrate_event: Instant,
    /// Highest journal seq of this connection's events: answers wait until
    /// it is durable.
    pending_seq: AtomicU64,
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one '\n'-terminated line into `buf` (without the newline), never
/// holding more than `max` bytes. Partial data stays in `buf`, so the call
/// can be cancelled in a `select!` and resumed.
async fn read_line_limited<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            if buf.len() + pos > max {
                return Ok(LineRead::TooLong);
            }
            buf.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            return Ok(LineRead::Line);
        }
        let len = available.len();
        if buf.len() + len > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(available);
        reader.consume(len);
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<PoolShared>, client_id: u64, peer: SocketAddr) -> Session {
        let now = Instant::now();
        let difficulty = shared.live().start_difficulty;
        Session {
            shared,
            client_id,
            peer,
            connected_at: now,
            user_agent: String::new(),
            allocation: None,
            extranonce_subscribed: false,
            authorized: None,
            version_mask: None,
            suggested_difficulty: None,
            difficulty,
            vardiff: None,
            jobs: VecDeque::with_capacity(JOBS_KEPT),
            work_generation_sent: 0,
            shares_session: 0,
            best_session: 0.0,
            invalid_window: (now, 0),
            last_activity: now,
            last_hashrate_event: now,
            pending_seq: AtomicU64::new(0),
        }
    }

    /// Serves the connection until it closes; never returns an error: every
    /// way a connection can end is a `CloseReason`.
    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        stream: S,
        mut work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        // One stream for both directions, not `tokio::io::split`: reads and
        // writes alternate in this loop, and split's halves take a lock on
        // every poll (1.4 % of the pool's time in a 10,000-miner fan-out).
        // `BufReader` passes writes straight through to the stream.
        // Stratum requests are 100-250 bytes: 1 KiB holds several, and
        // every connection pays for it (10 MB per 10,000 miners); a longer
        // line is gathered in `line` across reads.
        let mut stream = BufReader::with_capacity(1024, stream);
        let mut line = Vec::with_capacity(512);
        let max_line = self.shared.settings.max_line_bytes;
        let mut out = String::with_capacity(1024);
        let mut vardiff_tick = tokio::time::interval(
            self.shared
                .live()
                .share_interval
                .max(Duration::from_secs(1)),
        );
        vardiff_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the authorize and idle timeouts, re-armed only when
        // it fires early (activity moved the deadline) or the deadline moved
        // earlier: a timer registered and cancelled on every pass of the
        // loop cost each share and each notify a trip through the timer wheel.
        let mut armed = self.timeout_deadline();
        let timeout = tokio::time::sleep_until(armed.into());
        tokio::pin!(timeout);
        let reason = loop {
            let deadline = self.timeout_deadline();
            if deadline < armed {
                armed = deadline;
                timeout.as_mut().reset(armed.into());
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    out.push_str(&tbg_stratum::client_reconnect(None, None, None));
                    if self.flush(&mut stream, &mut out).await.is_ok() {
                        self.answer_until_closed(&mut stream, &mut line, &mut out, &work_rx).await;
                    }
                    break CloseReason::Shutdown;
                }
                read = read_line_limited(&mut stream, &mut line, max_line) => {
                    match read {
                        Ok(LineRead::Line) => {
                            self.last_activity = Instant::now();
                            let keep = self.handle_line(&line, &mut out, &work_rx);
                            line.clear();
                            if let Err(reason) = keep {
                                let _ = self.flush(&mut stream, &mut out).await;
                                break reason;
                            }
                            // Answer everything already buffered before writing.
                            if stream.buffer().contains(&b'\n') { continue; }
                        }
                        Ok(LineRead::Eof) => break CloseReason::ClientClosed,
                        Ok(LineRead::TooLong) => {
                            out.push_str(&tbg_stratum::response_error(&Value::Null, -32700, "line too long"));
                            let _ = self.flush(&mut stream, &mut out).await;
                            break CloseReason::LineTooLong;
                        }
                        Err(_) => break CloseReason::IoError,
                    }
                }
                changed = work_rx.changed() => {
                    if changed.is_err() {
                        // The pool is stopping: the miner should go elsewhere.
                        out.push_str(&tbg_stratum::client_reconnect(None, None, None));
                        let _ = self.flush(&mut stream, &mut out).await;
                        break CloseReason::Shutdown;
                    }
                    let work = work_rx.borrow_and_update().clone();
                    // Authorize may already have sent this generation.
                    if let Some(work) = work.filter(|w| w.generation != self.work_generation_sent) {
                        self.push_job(&work, &mut out);
                    }
                }
                _ = vardiff_tick.tick() => self.poll_vardiff(&mut out, &work_rx),
                () = &mut timeout => {
                    if Instant::now() >= deadline {
                        break if self.authorized.is_none() { CloseReason::AuthorizeTimeout } else { CloseReason::IdleTimeout };
                    }
                    armed = deadline;
                    timeout.as_mut().reset(armed.into());
                }
            }
            if !out.is_empty() {
                if let Err(reason) = self.flush(&mut stream, &mut out).await {
                    break reason;
                }
            }
        };
        self.finish(reason);
        reason
    }

    /// After `client.reconnect` at a graceful stop: answers what the miner
    /// had already sent (its shares crossed the reconnect on the wire; one
    /// may be a block) until it closes the connection, at most
    /// [`STOP_LINGER`]. No new work is sent.
    async fn answer_until_closed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut BufReader<S>,
        line: &mut Vec<u8>,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let until = Instant::now() + STOP_LINGER;
        let max_line = self.shared.settings.max_line_bytes;
        while let Ok(Ok(LineRead::Line)) =
            tokio::time::timeout_at(until.into(), read_line_limited(stream, line, max_line)).await
        {
            let keep = self.handle_line(line, out, work_rx);
            line.clear();
            if self.flush(stream, out).await.is_err() || keep.is_err() {
                return;
            }
        }
    }

    /// When the connection is closed for silence: the authorize timeout
    /// until the miner authorizes, then the idle timeout.
    fn timeout_deadline(&self) -> Instant {
        if self.authorized.is_none() {
            self.connected_at + self.shared.settings.authorize_timeout
        } else {
            self.last_activity + self.shared.settings.idle_timeout
        }
    }

    /// Records an event; false when the journal refused it.
    fn emit(&self, data: EventData) -> bool {
        match self.shared.try_emit(data) {
            Some(seq) => {
                self.pending_seq.fetch_max(seq, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        if out.is_empty() {
            return Ok(());
        }
        // Nothing is confirmed to the miner before its events are durable.
        if let Some(journal) = &self.shared.journal {
            let seq = self.pending_seq.load(Ordering::Relaxed);
            if seq > journal.durable_seq() && journal.wait_durable(seq).await.is_err() {
                return Err(CloseReason::Shutdown);
            }
        }
        let write = tokio::time::timeout(
            self.shared.settings.write_timeout,
            writer.write_all(out.as_bytes()),
        );
        let result = match write.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::IoError),
            Err(_) => Err(CloseReason::WriteTimeout),
        };
        out.clear();
        result
    }

    /// Handles one line; `Err` closes the connection after flushing `out`.
    fn handle_line(
        &mut self,
        line: &[u8],
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let request = match tbg_stratum::parse_request_with_limit(
            trimmed,
            self.shared.settings.max_line_bytes,
        ) {
            Ok(request) => request,
            Err(error) => {
                self.shared.counters.protocol_error(error.label());
                let id = error.request_id().cloned().unwrap_or(Value::Null);
                out.push_str(&tbg_stratum::response_error(
                    &id,
                    error.code(),
                    &error.to_string(),
                ));
                return Ok(());
            }
        };
        let message = match ClientMessage::from_request(&request) {
            Ok(message) => message,
            Err(reason) => {
                if request.method == "mining.submit" {
                    self.reject_share(&request, None, reason, out)?;
                } else {
                    out.push_str(&tbg_stratum::response_reject(&request.id, reason));
                }
                return Ok(());
            }
        };
        match message {
            ClientMessage::Subscribe {
                user_agent,
                session_id,
            } => {
                self.subscribe(&request, user_agent, session_id, out)?;
            }
            ClientMessage::Authorize { username, .. } => {
                self.authorize(&request, &username, out, work_rx)
            }
            ClientMessage::Submit(submit) => self.submit(&request, &submit, out, work_rx)?,
            ClientMessage::Configure { extensions, params } => {
                self.configure(&request, &extensions, &params, out);
            }
            ClientMessage::SuggestDifficulty(difficulty) => {
                self.suggest_difficulty(&request, difficulty, out, work_rx);
            }
            ClientMessage::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
            }
            ClientMessage::Unknown(method) => {
                tracing::debug!(client = self.client_id, method = %method, "unknown method");
                self.shared.counters.protocol_error("unknown_method");
                out.push_str(&tbg_stratum::response_reject(
                    &request.id,
                    RejectReason::UnknownMethod,
                ));
            }
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        request: &Request,
        user_agent: Option<String>,
        session_id: Option<String>,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        if let Some(agent) = user_agent {
            self.user_agent = agent;
        }
        if self.allocation.is_none() {
            let now = Instant::now();
            match self.shared.extranonces.allocate(session_id.as_deref(), now) {
                Some(allocation) => self.allocation = Some(allocation),
                None => {
                    out.push_str(&tbg_stratum::response_error(&request.id, 20, "server full"));
                    return Err(CloseReason::ServerFull);
                }
            }
        }
        let Some(allocation) = &self.allocation else {
            return Ok(());
        };
        let result = tbg_stratum::subscribe_result(
            &allocation.session_id,
            &hex::encode(&allocation.extranonce1),
            self.shared.settings.extranonce2_len,
        );
        out.push_str(&tbg_stratum::response_ok(&request.id, result));
        Ok(())
    }

    fn authorize(
        &mut self,
        request: &Request,
        username: &str,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let (address, worker) = split_address_worker(username);
        let worker = worker.unwrap_or("default").to_string();
        let payout = match tbg_work::parse_payout_address(address, self.shared.settings.network) {
            Ok(script) => script,
            Err(error) => {
                tracing::info!(client = self.client_id, %error, "authorize refused: invalid payout address");
                self.shared.counters.protocol_error("invalid_address");
                out.push_str(&tbg_stratum::response_error(
                    &request.id,
                    RejectReason::InvalidAddress.code(),
                    &format!("Invalid address: {error}"),
                ));
                return;
            }
        };
        if let Some(existing) = &self.authorized {
            if existing.address != address {
                // Coinbase outputs are per connection: one payout address each.
                out.push_str(&tbg_stratum::response_error(
                    &request.id,
                    RejectReason::WorkerMismatch.code(),
                    "Worker mismatch: one payout address per connection",
                ));
                return;
            }
            if existing.workers.iter().any(|(name, _)| *name == worker) {
                out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
                return;
            }
            if existing.workers.len() >= MAX_WORKERS_PER_CONNECTION {
                // Each worker has stats kept for a day: bound what one connection can create.
                out.push_str(&tbg_stratum::response_error(
                    &request.id,
                    RejectReason::Unauthorized.code(),
                    "Too many workers on this connection",
                ));
                return;
            }
        }
        let now = Instant::now();
        let handle = self.shared.stats.attach(address, &worker, now);
        let first_authorize = self.authorized.is_none();
        match &mut self.authorized {
            Some(existing) => existing.workers.push((worker.clone(), handle)),
            None => {
                let user_sig = self.shared.user_sigs.get(address);
                self.shared.request_user_sig(address);
                self.authorized = Some(Authorized {
                    address: address.to_string(),
                    payout,
                    workers: vec![(worker.clone(), handle)],
                    user_sig,
                });
            }
        }
        out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
        if !first_authorize {
            return;
        }
        self.shared.counters.miner_connected();
        // Difficulty: a remembered one (reconnect), else the start difficulty,
        // raised to whatever the miner asked for.
        let remembered = self.shared.difficulty_memory.recall(address, &worker, now);
        self.difficulty = remembered.unwrap_or(self.shared.live().start_difficulty);
        let mut vardiff = Vardiff::new(
            self.vardiff_config(self.difficulty),
            self.shared.seconds(now),
        );
        if let Some(floor) = self.suggested_difficulty {
            vardiff.suggest_difficulty(floor, self.shared.seconds(now));
        }
        self.difficulty = vardiff.difficulty();
        self.vardiff = Some(vardiff);
        self.emit(EventData::MinerConnected {
            user: address.to_string(),
            worker: worker.clone(),
            client_id: self.client_id,
            ip: self.peer.ip().to_string(),
            useragent: self.user_agent.clone(),
            initial_diff: self.difficulty,
        });
        out.push_str(&tbg_stratum::set_difficulty(self.difficulty));
        let work = work_rx.borrow().clone();
        if let Some(work) = work {
            self.push_job(&work, out);
        }
    }

    fn vardiff_config(&self, start: f64) -> tbg_work::VardiffConfig {
        let settings = self.shared.live();
        tbg_work::VardiffConfig {
            target_interval_secs: settings.share_interval.as_secs_f64(),
            retarget_window_secs: settings.share_interval.as_secs_f64() * 6.0,
            min_difficulty: settings.min_difficulty,
            max_difficulty: settings.max_difficulty.unwrap_or(f64::MAX),
            start_difficulty: start,
        }
    }

    fn configure(
        &mut self,
        request: &Request,
        extensions: &[String],
        params: &serde_json::Map<String, Value>,
        out: &mut String,
    ) {
        let parsed = match ConfigureRequest::from_parts(extensions, params) {
            Ok(parsed) => parsed,
            Err(reason) => {
                out.push_str(&tbg_stratum::response_reject(&request.id, reason));
                return;
            }
        };
        let mut response = ConfigureResponse::default();
        if let Some(rolling) = parsed.version_rolling {
            response.version_rolling_requested = true;
            let mask = rolling.negotiate(self.shared.settings.version_mask);
            if mask.count_ones() >= rolling.min_bit_count && mask != 0 {
                self.version_mask = Some(mask);
                response.version_mask = Some(mask);
                if let Some(user) = &self.authorized {
                    self.emit(EventData::AsicboostDetected {
                        user: user.address.clone(),
                        worker: user
                            .workers
                            .first()
                            .map(|(w, _)| w.clone())
                            .unwrap_or_default(),
                        pool_mask: format!("{:08x}", self.shared.settings.version_mask),
                        miner_mask: format!("{:08x}", rolling.mask),
                    });
                }
                self.shared.counters.asicboost_miner();
            }
        }
        if let Some(minimum) = parsed.minimum_difficulty {
            // A floor like suggest_difficulty; applied at authorize when it comes first.
            self.suggested_difficulty = Some(
                self.suggested_difficulty
                    .map_or(minimum, |s| s.max(minimum)),
            );
            response.minimum_difficulty = Some(true);
        }
        out.push_str(&tbg_stratum::response_ok(
            &request.id,
            tbg_stratum::configure_result(&response),
        ));
    }

    fn suggest_difficulty(
        &mut self,
        request: &Request,
        difficulty: f64,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        self.suggested_difficulty = Some(difficulty);
        out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
        let now = Instant::now();
        let seconds = self.shared.seconds(now);
        let changed = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.suggest_difficulty(difficulty, seconds));
        if let Some(new) = changed {
            self.retarget(new, now, out, work_rx);
        }
    }

    fn change_difficulty(&mut self, new: f64, now: Instant, out: &mut String) {
        let old = self.difficulty;
        self.difficulty = new;
        out.push_str(&tbg_stratum::set_difficulty(new));
        if let Some(user) = &self.authorized {
            for (worker, _) in &user.workers {
                self.shared
                    .difficulty_memory
                    .remember(&user.address, worker, new, now);
                self.emit(EventData::DiffUpdated {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    client_id: self.client_id,
                    old_diff: old,
                    new_diff: new,
                });
            }
        }
    }

    /// Sends a job for `work` (coinbase built for this user).
    fn push_job(&mut self, work: &Arc<CurrentWork>, out: &mut String) {
        let Some(user) = &mut self.authorized else {
            return;
        };
        let Some(allocation) = &self.allocation else {
            return;
        };
        // A new signature from Redis is picked up with the next job.
        user.user_sig = self.shared.user_sigs.get(&user.address);
        // Same generation again (a retarget): a job with a new id, so that
        // shares on it are judged at the new difficulty. Otherwise the job
        // every session of this user gets for this template.
        let retarget = work.generation == self.work_generation_sent;
        let live = self.shared.live();
        let inputs = JobInputs {
            template: &work.template,
            job_template: &work.job_template,
            payout: &user.payout,
            pool_tag: &live.pool_tag,
            user_sig: user.user_sig.as_deref(),
            extranonce1_len: allocation.extranonce1.len(),
            extranonce2_len: self.shared.settings.extranonce2_len,
            clean_jobs: work.clean_jobs && !retarget,
        };
        let built = if retarget {
            crate::notify::build_user_job(&inputs, self.shared.next_job_id()).map(Arc::new)
        } else {
            work.notifies
                .get_or_build(&inputs, || self.shared.next_job_id())
        };
        let user_job = match built {
            Ok(user_job) => user_job,
            Err(error) => {
                tracing::error!(%error, "cannot build a coinbase; miner keeps its previous job");
                return;
            }
        };
        self.work_generation_sent = work.generation;
        out.push_str(&user_job.line);
        let id = user_job.id.clone();
        let job = Job {
            template: work.job_template.clone(),
            coinbase: user_job.coinbase.clone(),
        };
        if self.jobs.len() == JOBS_KEPT {
            self.jobs.pop_front();
        }
        self.jobs.push_back(SessionJob {
            id,
            ntime: work.job_template.cur_time,
            prev_hash: work.template.previous_block_hash,
            difficulty: self.difficulty,
            reward_sats: work.template.coinbase_value,
            job,
            seen: HashSet::new(),
            last_root: None,
        });
        self.shared.counters.notify_sent(work.received_at);
    }

    /// Answers a refused share and accounts for it.
    fn reject_share(
        &mut self,
        request: &Request,
        submit: Option<&Submit>,
        reason: RejectReason,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        out.push_str(&tbg_stratum::response_reject(&request.id, reason));
        self.shared.counters.share_rejected(reason);
        let worker = submit.map(|s| {
            split_address_worker(&s.worker)
                .1
                .unwrap_or("default")
                .to_string()
        });
        if let Some(user) = &self.authorized {
            let worker_name = worker.unwrap_or_default();
            if let Some((_, handle)) = user.workers.iter().find(|(name, _)| *name == worker_name) {
                handle.lock().record_rejected();
            }
            self.emit(EventData::ShareSubmitted {
                user: user.address.clone(),
                worker: worker_name,
                client_id: self.client_id,
                diff: self.difficulty,
                sdiff: 0.0,
                accepted: false,
                reject_reason: Some(reason.message().to_string()),
                ip: self.peer.ip().to_string(),
            });
        }
        let now = Instant::now();
        let (window_start, count) = &mut self.invalid_window;
        if now.saturating_duration_since(*window_start) > Duration::from_secs(60) {
            *window_start = now;
            *count = 0;
        }
        *count += 1;
        if *count > self.shared.live().max_invalid_shares_per_minute {
            tracing::info!(client = self.client_id, peer = %self.peer, "too many invalid shares; closing");
            return Err(CloseReason::TooManyInvalidShares);
        }
        Ok(())
    }

    fn submit(
        &mut self,
        request: &Request,
        submit: &Submit,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> Result<(), CloseReason> {
        let started = Instant::now();
        let verdict = self.check_submit(submit, work_rx, started);
        match verdict {
            Err(reason) => self.reject_share(request, Some(submit), reason, out),
            Ok(accepted) => {
                let reply_at = out.len();
                let journaled = self.account_accepted(accepted, started, out, work_rx);
                // A share is confirmed only once its event is journaled; when
                // the journal refuses it (full), the miner hears an error
                // at once rather than waiting on a journal that may not
                // recover soon. A block in it was still submitted.
                let reply = if journaled {
                    tbg_stratum::response_ok(&request.id, Value::Bool(true))
                } else {
                    tbg_stratum::response_reject(&request.id, RejectReason::JournalFull)
                };
                out.insert_str(reply_at, &reply);
                if journaled {
                    self.shared.counters.share_latency(started.elapsed());
                }
                Ok(())
            }
        }
    }

    fn check_submit(
        &mut self,
        submit: &Submit,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
        now: Instant,
    ) -> Result<AcceptedShare, RejectReason> {
        let Some(allocation) = &self.allocation else {
            return Err(RejectReason::NotSubscribed);
        };
        let Some(user) = &self.authorized else {
            return Err(RejectReason::Unauthorized);
        };
        let (address, worker) = split_address_worker(&submit.worker);
        let worker = worker.unwrap_or("default");
        if address != user.address {
            return Err(RejectReason::WorkerMismatch);
        }
        let Some(worker_index) = user.workers.iter().position(|(name, _)| name == worker) else {
            return Err(RejectReason::Unauthorized);
        };
        let Some(job_index) = self.jobs.iter().position(|job| *job.id == *submit.job_id) else {
            return Err(RejectReason::InvalidJobId);
        };
        let current_prev = work_rx
            .borrow()
            .as_ref()
            .map(|work| work.template.previous_block_hash);
        let job = &self.jobs[job_index];
        if current_prev.is_some_and(|prev| prev != job.prev_hash) {
            return Err(RejectReason::Stale);
        }
        let extranonce2 = submit.extranonce2_bytes()?;
        if extranonce2.len() != self.shared.settings.extranonce2_len {
            return Err(RejectReason::InvalidNonce2Length);
        }
        let ntime = submit.ntime_u32()?;
        let nonce = submit.nonce_u32()?;
        let window =
            u32::try_from(self.shared.settings.ntime_future_window.as_secs()).unwrap_or(u32::MAX);
        if ntime < job.ntime || ntime > job.ntime.saturating_add(window) {
            return Err(RejectReason::NtimeOutOfRange);
        }
        let base_version = job.job.template.version;
        let version = match submit.version_bits_u32()? {
            None => base_version,
            Some(bits) => {
                let mask = self.version_mask.unwrap_or(0);
                if bits & !mask != 0 {
                    return Err(RejectReason::InvalidVersionMask);
                }
                (base_version & !mask) | (bits & mask)
            }
        };
        let mut en2_key = [0u8; 8];
        let take = extranonce2.len().min(8);
        en2_key[..take].copy_from_slice(&extranonce2[..take]);
        let key = (u64::from_le_bytes(en2_key), ntime, nonce, version);
        if self.jobs[job_index].seen.contains(&key) {
            return Err(RejectReason::Duplicate);
        }
        let job = &mut self.jobs[job_index];
        let root = match job.last_root {
            Some((cached_en2, root)) if cached_en2 == key.0 && extranonce2.len() <= 8 => root,
            _ => {
                let root = job.job.merkle_root(&allocation.extranonce1, &extranonce2);
                job.last_root = Some((key.0, root));
                root
            }
        };
        let check = job.job.check_share_with_root(&root, ntime, nonce, version);
        if check.share_difficulty < job.difficulty && !check.meets_network {
            return Err(RejectReason::AboveTarget);
        }
        if job.seen.len() < MAX_SHARES_REMEMBERED_PER_JOB {
            job.seen.insert(key);
        }
        let _ = now;
        Ok(AcceptedShare {
            job_index,
            worker_index,
            extranonce2,
            ntime,
            nonce,
            version,
            hash: check.hash,
            share_difficulty: check.share_difficulty,
            target_difficulty: job.difficulty,
            is_block: check.meets_network,
        })
    }

    fn account_accepted(
        &mut self,
        share: AcceptedShare,
        now: Instant,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> bool {
        let Some(user) = &self.authorized else {
            return true;
        };
        let Some(allocation) = &self.allocation else {
            return true;
        };
        // `worker_index` came from `position` over this very list.
        let Some((worker, handle)) = user.workers.get(share.worker_index) else {
            return true;
        };
        // The share's event first: only a share the journal took is
        // credited. One it refused (full) is counted as rejected with its
        // own reason, so no counter, status or best difficulty shows a share
        // the miner was told was refused.
        let journaled = self.emit(EventData::ShareSubmitted {
            user: user.address.clone(),
            worker: worker.clone(),
            client_id: self.client_id,
            diff: share.target_difficulty,
            sdiff: share.share_difficulty,
            accepted: true,
            reject_reason: None,
            ip: self.peer.ip().to_string(),
        });
        if journaled {
            self.shares_session += 1;
            self.shared.counters.share_accepted(share.target_difficulty);
            let previous_best =
                handle
                    .lock()
                    .record_accepted(share.target_difficulty, share.share_difficulty, now);
            if let Some(prev_best) = previous_best {
                self.emit(EventData::ShareBestDiff {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    new_best: share.share_difficulty,
                    prev_best,
                    timeframe: "alltime".to_string(),
                });
            }
            self.best_session = self.best_session.max(share.share_difficulty);
        } else {
            // Not counted towards the invalid-shares limit: the pool is at
            // fault, not the miner.
            self.shared
                .counters
                .share_rejected(RejectReason::JournalFull);
            handle.lock().record_rejected();
        }
        if share.is_block {
            let job = &self.jobs[share.job_index];
            let block_hex = job.job.block_hex(
                &allocation.extranonce1,
                &share.extranonce2,
                share.ntime,
                share.nonce,
                share.version,
            );
            let template = &job.job.template;
            tracing::info!(
                height = template.height,
                hash = %share.hash,
                user = %user.address,
                worker = %worker,
                "BLOCK FOUND"
            );
            self.shared.block_found(crate::blocks::FoundBlock {
                height: template.height,
                hash: share.hash,
                block_hex,
                user: user.address.clone(),
                worker: worker.clone(),
                share_difficulty: share.share_difficulty,
                network_difficulty: tbg_work::target_to_difficulty(&template.network_target),
                reward_sats: job.reward_sats,
                coinbase_sig: user.user_sig.clone().unwrap_or_default(),
            });
        }
        if journaled
            && now.saturating_duration_since(self.last_hashrate_event)
                >= self.shared.settings.hashrate_event_interval
        {
            self.last_hashrate_event = now;
            let stats = handle.lock();
            let [h1m, h5m, h1h, h1d] = stats.rates.hashrates(now);
            drop(stats);
            self.emit(EventData::HashrateUpdate {
                user: user.address.clone(),
                worker: worker.clone(),
                hashrate_1m: h1m,
                hashrate_5m: h5m,
                hashrate_1h: h1h,
                hashrate_1d: h1d,
            });
        }
        // Vardiff still counts a refused share: it measures the miner's
        // rate, which the journal does not change.
        let seconds = self.shared.seconds(now);
        let retarget = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.on_share(seconds));
        if let Some(new) = retarget {
            self.retarget(new, now, out, work_rx);
        }
        journaled
    }

    /// A new difficulty from vardiff: tell the miner, then give it a job
    /// issued at that difficulty (miners apply it from the next job).
    fn retarget(
        &mut self,
        new: f64,
        now: Instant,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        if (new - self.difficulty).abs() <= f64::EPSILON * new {
            return;
        }
        self.change_difficulty(new, now, out);
        let work = work_rx.borrow().clone();
        if let Some(work) = work {
            self.push_job(&work, out);
        }
    }

    /// Periodic vardiff check, so a miner whose shares stopped gets an easier difficulty.
    fn poll_vardiff(
        &mut self,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let now = Instant::now();
        let seconds = self.shared.seconds(now);
        if let Some(new) = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.poll(seconds))
        {
            self.retarget(new, now, out, work_rx);
        }
    }

    /// Accounting when the connection ends.
    fn finish(&mut self, reason: CloseReason) {
        let now = Instant::now();
        if let Some(allocation) = &self.allocation {
            self.shared.extranonces.release(&allocation.session_id, now);
        }
        if let Some(user) = self.authorized.take() {
            self.shared.counters.miner_disconnected();
            for (worker, handle) in &user.workers {
                self.shared
                    .difficulty_memory
                    .remember(&user.address, worker, self.difficulty, now);
                StatsRegistry::detach(handle);
                self.emit(EventData::MinerDisconnected {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    client_id: self.client_id,
                    ip: self.peer.ip().to_string(),
                    session_duration: now
                        .saturating_duration_since(self.connected_at)
                        .as_secs_f64(),
                    shares_session: self.shares_session,
                });
            }
        }
        tracing::debug!(client = self.client_id, peer = %self.peer, ?reason, "connection closed");
    }
}

struct AcceptedShare {
    job_index: usize,
    worker_index: usize,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version: u32,
    hash: bitcoin::BlockHash,
    share_difficulty: f64,
    target_difficulty: f64,
    is_block: bool,
}

/// `address.worker` or `address_worker` (ckpool accepts both; neither '.'
/// nor '_' can appear in a Bitcoin address).
pub fn split_address_worker(username: &str) -> (&str, Option<&str>) {
    match username.find(['.', '_']) {
        Some(pos) => {
            let worker = &username[pos + 1..];
            (
                &username[..pos],
                if worker.is_empty() {
                    None
                } else {
                    Some(worker)
                },
            )
        }
        None => (username, None),
    }
}
