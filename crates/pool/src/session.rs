//! One miner connection: bytes -> lines -> requests -> answers.
//!
//! Each connection is one task that owns its socket. It reads lines with a
//! hard length limit, answers every request in order, and pushes new work
//! when the template changes. Nothing a miner sends can panic it or reach
//! another connection; the worst a miner can do is get itself disconnected.
//! subscribe, authorize and configure are in `session/setup.rs`,
//! `mining.submit` in `session/shares.rs`, the end of a connection in
//! `session/close.rs`, a Stratum V2 channel's messages in `session/v2.rs`;
//! the share rules themselves are `tbg_work::validate`, which this module
//! only feeds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::ScriptBuf;
use serde_json::Value;
use tbg_events::EventData;
use tbg_stratum::{ClientMessage, ConfigureRequest, ConfigureResponse, RejectReason, Request};
use tbg_work::{Job, KeptJob, ShareValidator, Vardiff};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::extranonce::Allocation;
use crate::limits::ConnectionLimiter;
use crate::notify::JobInputs;
use crate::session::limits::Admit;
use crate::settings::PoolSettings;
use crate::stats::{StatsRegistry, WorkerHandle};
use crate::work_source::CurrentWork;
use crate::PoolShared;

mod close;
mod difficulty;
mod limits;
mod lines;
use lines::{read_line_limited, LineRead};
mod setup;
mod shares;
pub(crate) mod v2;

pub(crate) use setup::AuthorizeRefusal;

use difficulty::network_difficulty;

/// Worker names one connection may authorize.
pub const MAX_WORKERS_PER_CONNECTION: usize = 64;
/// How long a session still answers a miner after telling it to reconnect
/// at a graceful stop: shares already on the wire arrive within a round
/// trip; a miner that honours `client.reconnect` closes sooner.
pub const STOP_LINGER: Duration = Duration::from_millis(500);

/// A connection's write, V1 or V2: bounded by `write_timeout` (a miner
/// that reads nothing), and given up at the stop's deadline.
pub(crate) async fn write_unless_stopped<E>(
    write: impl std::future::Future<Output = Result<(), E>>,
    shared: &PoolShared,
) -> Result<(), CloseReason> {
    let write = tokio::time::timeout(shared.settings.write_timeout, write);
    tokio::select! {
        biased;
        written = write => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::IoError),
            Err(_) => Err(CloseReason::WriteTimeout),
        },
        () = shared.sessions_stop.cancelled() => Err(CloseReason::Shutdown),
    }
}

/// Each connection's read buffer.
const READ_BUFFER_BYTES: usize = 512;

/// Longest wait of a block's share answer for the block store: a disk
/// that hangs must not hold the miner (the block is submitted regardless).
const BLOCK_STORE_WAIT: Duration = Duration::from_secs(5);

/// How long a graceful stop waits for the connections once they are told
/// to end at their next wait (`PoolShared::sessions_stop`): a block share's
/// answer may be waiting for the block store.
pub(crate) const SESSION_STOP_WAIT: Duration =
    BLOCK_STORE_WAIT.saturating_add(Duration::from_secs(1));

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
    /// Past `protocol_errors_per_minute` (garbage, unknown methods,
    /// malformed requests, requests other than submits over their rate).
    TooManyErrors,
    /// The TLS port's handshake failed or timed out: no session began.
    TlsHandshake,
    /// The Stratum V2 port's Noise handshake failed or timed out.
    Sv2Handshake,
    /// A Stratum V2 frame that does not decrypt, parse or fit the size
    /// limit, or a message out of place: the connection cannot go on.
    MalformedFrame,
    /// A Stratum V2 `SetupConnection` the pool cannot serve (another
    /// protocol or version, job declaration): answered, then closed; not
    /// abuse.
    SetupRefused,
}

struct Authorized {
    address: String,
    payout: ScriptBuf,
    /// Worker names authorized on this connection, with their stats.
    workers: Vec<(String, WorkerHandle)>,
    user_sig: Option<String>,
}

pub(crate) struct Session {
    pub(crate) shared: Arc<PoolShared>,
    client_id: u64,
    pub(crate) peer: SocketAddr,
    connected_at: Instant,
    user_agent: String,
    allocation: Option<Allocation>,
    extranonce_subscribed: bool,
    authorized: Option<Authorized>,
    /// The mask the miner asked to roll, once version rolling was granted
    /// (the granted mask is the validator's): for `asicboost_detected`.
    asicboost_mask: Option<u32>,
    suggested_difficulty: Option<f64>,
    difficulty: f64,
    vardiff: Option<Vardiff>,
    /// The jobs sent, the version mask, the shares accepted: what the share
    /// rules (`tbg_work::validate`) judge a submit by.
    shares: ShareValidator,
    work_generation_sent: u64,
    shares_session: u64,
    best_session: f64,
    invalid_window: (Instant, u32),
    last_activity: Instant,
    last_hashrate_event: Instant,
    /// Highest journal seq of this connection's events: answers wait until
    /// it is durable.
    pending_seq: AtomicU64,
    /// Resolves when the block this connection just found is on disk.
    block_stored: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// The connection's request rates (`limits.rs`).
    limiter: ConnectionLimiter,
    /// The live settings as of `live_generation`; re-read when a reload
    /// bumps the pool's generation.
    live: Arc<PoolSettings>,
    live_generation: u64,
    /// A Stratum V2 channel's own wire state (`crate::sv2`); `None` on a
    /// V1 connection. Jobs, difficulty changes and share answers go to
    /// its outbox instead of the V1 text.
    pub(crate) wire: Option<Box<crate::sv2::ChannelWire>>,
    /// The difficulty to start at instead of `start_difficulty` when
    /// nothing was earned yet (a V2 channel's nominal hash rate).
    pub(crate) start_hint: Option<f64>,
}

impl Session {
    pub(crate) fn new(shared: Arc<PoolShared>, client_id: u64, peer: SocketAddr) -> Session {
        let now = Instant::now();
        let live_generation = shared.live_generation.load(Ordering::Acquire);
        let live = shared.live();
        let difficulty = live.start_difficulty;
        Session {
            shared,
            client_id,
            peer,
            connected_at: now,
            user_agent: String::new(),
            allocation: None,
            extranonce_subscribed: false,
            authorized: None,
            asicboost_mask: None,
            suggested_difficulty: None,
            difficulty,
            vardiff: None,
            shares: ShareValidator::new(),
            work_generation_sent: 0,
            shares_session: 0,
            best_session: 0.0,
            invalid_window: (now, 0),
            last_activity: now,
            last_hashrate_event: now,
            pending_seq: AtomicU64::new(0),
            block_stored: Vec::new(),
            limiter: ConnectionLimiter::new(now),
            live,
            live_generation,
            wire: None,
            start_hint: None,
        }
    }

    /// The extranonce2 (V2: rollable extranonce) length of this session's
    /// jobs.
    pub(crate) fn extranonce2_len(&self) -> usize {
        self.wire
            .as_ref()
            .map_or(self.shared.settings.extranonce2_len, |wire| {
                wire.extranonce2_len
            })
    }

    /// Serves the connection until it closes; never returns an error: every
    /// way a connection can end is a `CloseReason`. Boxed: the task's
    /// future holds a pointer, not a copy of the session per await state.
    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self: Box<Self>,
        stream: S,
        mut work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        // One stream for both directions, not `tokio::io::split`: reads and
        // writes alternate in this loop, and split's halves take a lock on
        // every poll (1.4 % of the pool's time in a 10,000-miner fan-out).
        // `BufReader` passes writes straight through to the stream.
        // Every connection pays for the read buffer (5 MB per 10,000 miners).
        // Stratum requests are 100-250 bytes: 512 bytes hold two or three,
        // and a line is handled where it lies in it; one that spans reads
        // is gathered in `line`. `line` and `out` are empty between uses
        // and hold no memory then (`take_line`, `flush`).
        let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let mut line = Vec::new();
        let max_line = self.shared.settings.max_line_bytes;
        let mut out = String::new();
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
            self.refresh_live();
            let deadline = self.timeout_deadline();
            if deadline < armed {
                armed = deadline;
                timeout.as_mut().reset(armed.into());
            }
            tokio::select! {
                biased;
                // The stop's `sessions_stop` needs no branch here: it comes
                // after `shutdown`, which ends this loop, and the waits of
                // `flush` and `answer_until_closed` honour it.
                _ = shutdown.changed() => {
                    out.push_str(&tbg_stratum::client_reconnect(None, None, None));
                    if self.flush(&mut stream, &mut out).await.is_ok() {
                        // Boxed: once per connection, and its waits would
                        // otherwise be in every connection's future.
                        Box::pin(self.answer_until_closed(&mut stream, &mut line, &mut out, &work_rx)).await;
                    }
                    break CloseReason::Shutdown;
                }
                read = read_line_limited(&mut stream, &mut line, max_line) => {
                    match read {
                        Ok(LineRead::Line(at)) => {
                            // Activity (the idle timer) is set in
                            // `handle_line`, by work-related requests only.
                            let keep = self.take_line(&mut stream, &mut line, at, &mut out, &work_rx);
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

    /// When the connection is closed for silence: the authorize timeout
    /// until the miner authorizes, then the idle timeout.
    fn timeout_deadline(&self) -> Instant {
        if self.authorized.is_none() {
            self.connected_at + self.live.authorize_timeout
        } else {
            self.last_activity + self.live.idle_timeout
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
        &mut self,
        writer: &mut W,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        if out.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        // The flush is a no-op on TCP; on TLS it pushes out ciphertext a
        // full socket left in the TLS session.
        let write = async {
            writer.write_all(out.as_bytes()).await?;
            writer.flush().await
        };
        let result = write_unless_stopped(write, &self.shared).await;
        // Let go of the buffer: an idle miner keeps none (most of the
        // buffer memory of a busy pool was answers and jobs already sent),
        // and the next answer's allocation costs ~50 ns of a share's ~20 us.
        *out = String::new();
        result
    }

    /// Waits until what this session is about to confirm holds: a block's
    /// share is answered once the block is in the block store (or the
    /// store failed, logged with the hex), so "accepted" for a block means
    /// it survives a crash of the pool; and nothing is confirmed before
    /// its events are durable.
    pub(crate) async fn settle(&mut self) -> Result<(), CloseReason> {
        if !self.block_stored.is_empty() {
            let stored = futures::future::join_all(self.block_stored.drain(..));
            let _ = tokio::time::timeout(BLOCK_STORE_WAIT, stored).await;
        }
        // The waits are polled first (`biased`): a write that is ready at
        // once, as nearly every one is, never registers with the stop token.
        let stop = &self.shared.sessions_stop;
        if let Some(journal) = &self.shared.journal {
            let seq = self.pending_seq.load(Ordering::Relaxed);
            if seq > journal.durable_seq() {
                let durable = tokio::select! {
                    biased;
                    durable = journal.wait_durable(seq) => durable.is_ok(),
                    () = stop.cancelled() => false,
                };
                if !durable {
                    return Err(CloseReason::Shutdown);
                }
            }
        }
        Ok(())
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
        let now = Instant::now();
        self.refresh_live();
        let request = match tbg_stratum::parse_request_with_limit(
            trimmed,
            self.shared.settings.max_line_bytes,
        ) {
            Ok(request) => request,
            Err(error) => {
                self.shared.counters.protocol_error(error.label());
                let id = error.request_id().cloned().unwrap_or(Value::Null);
                let reply = tbg_stratum::response_error(&id, error.code(), &error.to_string());
                return self.protocol_error(now, &id, reply, out);
            }
        };
        // Before anything is looked at: a refused request costs no share
        // check and writes no event. A submit over its rate is still
        // judged (it may be a block) but writes no share event.
        let over_submit_rate = match self.within_limits(&request, now, out)? {
            Admit::Handle => false,
            Admit::OverSubmitRate => true,
            Admit::Refused => return Ok(()),
        };
        let message = match ClientMessage::from_request(&request) {
            Ok(message) => message,
            Err(reason) => {
                if request.method == "mining.submit" {
                    self.reject_share(&request, None, reason, !over_submit_rate, out)?;
                } else {
                    let reply = tbg_stratum::response_reject(&request.id, reason);
                    return self.protocol_error(now, &request.id, reply, out);
                }
                return Ok(());
            }
        };
        // Only well-formed work requests keep a connection alive (the idle
        // timeout): garbage, unknown methods and refused requests do not.
        match message {
            ClientMessage::Subscribe {
                user_agent,
                session_id,
            } => {
                self.last_activity = now;
                self.subscribe(&request, user_agent, session_id, out)?;
            }
            ClientMessage::Authorize { username, .. } => {
                self.last_activity = now;
                self.authorize(&request, &username, out, work_rx)
            }
            ClientMessage::Submit(submit) => {
                self.last_activity = now;
                self.submit(&request, &submit, over_submit_rate, out, work_rx)?
            }
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
                // Counted against the protocol-error allowance in `within_limits`.
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

    /// Sends a job for `work` (coinbase built for this user).
    fn push_job(&mut self, work: &Arc<CurrentWork>, out: &mut String) {
        let extranonce2_len = self.extranonce2_len();
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
        // The shared per-user job fits only sessions with the pool's
        // extranonce2 length (a V2 channel may ask for more).
        let shareable = !retarget && extranonce2_len == self.shared.settings.extranonce2_len;
        let live = self.shared.live();
        let inputs = JobInputs {
            template: &work.template,
            job_template: &work.job_template,
            payout: &user.payout,
            pool_tag: &live.pool_tag,
            user_sig: user.user_sig.as_deref(),
            extranonce1_len: allocation.extranonce1.len(),
            extranonce2_len,
            clean_jobs: work.clean_jobs && !retarget,
        };
        let built = if !shareable {
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
        let job = Job {
            template: work.job_template.clone(),
            coinbase: user_job.coinbase.clone(),
        };
        let id = match &mut self.wire {
            None => {
                out.push_str(&user_job.line);
                user_job.id.clone()
            }
            Some(wire) => wire.push_job(&job, &allocation.extranonce1),
        };
        self.shares.push_job(KeptJob::new(id, job, self.difficulty));
        self.shared.counters.notify_sent(work.received_at);
    }
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
