//! The writer: the [`Journal`] handle that stages and queues events, and
//! the state it shares with the writer's threads. The OS thread that
//! commits to SQLite (and the checkpointer) is in `thread`, the SQLite side
//! in `db`, what opening does (recovery of staged events included) in
//! `open`.

mod db;
mod open;
mod thread;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tbg_events::Event;
use tokio::sync::{oneshot, watch};

use crate::error::JournalError;
use crate::sched;
use crate::stage::{self, Stage};
use crate::{Durability, JournalConfig};

/// A snapshot of the journal's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalStats {
    /// Events accepted by `append` since open.
    pub appended: u64,
    /// Events committed since open (including ignored duplicates).
    pub committed: u64,
    /// The last seq handed out by `append`.
    pub last_appended_seq: u64,
    /// Every seq up to this one is durable.
    pub committed_seq: u64,
    /// Appended but not yet committed to SQLite. Bounded by the stage ring:
    /// when the ring is full, `append` refuses events (`rejected_full`).
    pub backlog: u64,
    /// Transactions committed.
    pub batches: u64,
    pub last_batch_size: u64,
    pub largest_batch_size: u64,
    /// Appends whose event id was already in the journal (stored once).
    pub duplicates_ignored: u64,
    /// Failed commits (each is retried with backoff; nothing is dropped).
    pub errors: u64,
    /// Failed commits since the last successful one; non-zero means not ready.
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    /// Database size in bytes (page_count * page_size), WAL excluded.
    pub bytes: u64,
    pub retention_runs: u64,
    pub retention_deleted: u64,
    /// Events appended after `close`; they are never written.
    pub dropped_after_close: u64,
    /// Where a corrupt journal file was moved to, most recent first.
    pub corrupt_files_moved: Vec<PathBuf>,
    /// Set when a corrupt file was moved aside and its last seq could not be
    /// read, so seqs restarted at 1: a reader's cursor beyond `last_seq`
    /// must be reset.
    pub seq_continuity_lost: bool,
    /// The staging ring file (see [`crate::StageDir`]).
    pub stage_path: PathBuf,
    /// The ring is in a tmpfs, written through a memory mapping.
    pub stage_in_memory: bool,
    /// Ring size in bytes.
    pub stage_capacity_bytes: u64,
    /// Ring bytes holding events not yet committed to SQLite.
    pub stage_used_bytes: u64,
    /// Every seq up to this one is in the stage file (durable against a
    /// crash of the process).
    pub staged_seq: u64,
    /// Appends refused because the ring was full.
    pub rejected_full: u64,
    /// Appends refused because the stage file could not be written.
    pub stage_write_errors: u64,
    /// The last append was refused (ring full or write error) and no space
    /// was reclaimed since: events are being lost; not ready.
    pub stage_refusing: bool,
    /// Events a previous process had staged but not committed, moved into
    /// SQLite at open.
    pub stage_recovered: u64,
    /// Where recovery at open met a damaged record (the file offset and what
    /// was wrong): the process died while writing it, so it was never
    /// acknowledged. Records after it are not read.
    pub stage_recovery_stopped_at: Option<(u64, String)>,
    /// The stage file found at open was unusable (and replaced): why.
    pub stage_ignored: Option<String>,
    /// The writer thread runs at idle priority now (it is raised to normal
    /// while the ring is more than an eighth full).
    pub writer_idle_priority: bool,
    /// Idle priority is in use at all: configured, `ProcessCrash`
    /// durability, and this process may raise the thread back
    /// (`CAP_SYS_NICE` or `RLIMIT_NICE` >= 20, systemd `LimitNICE=+0`).
    pub writer_idle_priority_available: bool,
    /// The writer thread's id (as in `top -H`, `/proc/<pid>/task`); 0 until
    /// it started.
    pub writer_thread_id: i32,
    /// The checkpointer thread's id (0 until it started): it follows the
    /// writer to idle priority and back.
    pub checkpointer_thread_id: i32,
}

/// One queued event, serialized by the caller so the writer thread only writes.
#[derive(Debug)]
pub(crate) struct PendingRow {
    pub(crate) seq: u64,
    /// Ring position after this event's record: the tail once it is committed.
    pub(crate) end: u64,
    pub(crate) event_id: String,
    pub(crate) ts: f64,
    pub(crate) event_type: Cow<'static, str>,
    pub(crate) region: String,
    pub(crate) payload: String,
}

struct Queue {
    /// Staged, not yet taken by the writer. Every row's record is in the
    /// ring, so the ring's capacity bounds this.
    rows: Vec<PendingRow>,
    next_seq: u64,
    /// Ring positions: records in [tail, head) are not yet in SQLite.
    head: u64,
    tail: u64,
    closing: bool,
    writer_stopped: bool,
    retention_requests: Vec<oneshot::Sender<Result<u64, String>>>,
    close_waiters: Vec<oneshot::Sender<Result<(), JournalError>>>,
}

struct Shared {
    queue: Mutex<Queue>,
    stage: Stage,
    durability: Durability,
    /// Every seq up to this one is in the stage file. Stored under the
    /// queue lock after the write, read without it.
    staged_seq: AtomicU64,
    wake: Condvar,
    /// Set when the writer stops; the checkpointer waits on it (not on the
    /// queue lock, which a low-priority thread must never hold: appends
    /// would wait for it to be scheduled).
    checkpointer_stop: Mutex<bool>,
    /// Wakes the checkpointer early when the writer stops.
    wake_checkpointer: Condvar,
    stats: Mutex<JournalStats>,
    /// The writer thread's id (0 until it started).
    writer_tid: AtomicI32,
    /// The checkpointer thread's id (0 until it started): it follows the
    /// writer's priority.
    checkpointer_tid: AtomicI32,
    /// The writer runs at idle priority (see the `sched` module).
    writer_idle: AtomicBool,
    /// Idle priority may be used (configured, and reversible here).
    idle_available: bool,
}

/// The appender raises an idle writer to normal once this fraction of the
/// ring is in use...
const RAISE_WRITER_AT: u64 = 8;
/// ...and the writer goes back to idle once no more than this is.
const LOWER_WRITER_AT: u64 = 64;

impl Shared {
    /// An idle writer is raised to the normal policy, so nothing else on
    /// the machine can starve it while the ring fills; the checkpointer
    /// too, since the writer's checkpoint at a retention pass waits for one
    /// in progress.
    fn raise_writer(&self) {
        if self.writer_idle.swap(false, Ordering::AcqRel) {
            let tid = self.writer_tid.load(Ordering::Acquire);
            if let Err(error) = sched::set_normal(tid) {
                tracing::warn!(%error, "cannot raise the journal writer to normal priority");
            }
            let checkpointer = self.checkpointer_tid.load(Ordering::Acquire);
            if checkpointer != 0 {
                // Its nice 19 stays: it only must not be starved.
                let _ = sched::set_normal(checkpointer);
            }
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    committed: watch::Receiver<u64>,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the writer flush what is queued and stop.
        self.shared.queue.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

/// Cheap, cloneable handle to the journal's writer thread.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .field("committed_seq", &self.committed_seq())
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal and starts its writer thread. A file
    /// that SQLite reports as corrupt or not a database is renamed to
    /// `<name>.corrupt-<unix time>` and a fresh journal started in its place.
    ///
    /// Events a previous process staged (`<journal>.stage`) but did not
    /// commit are committed first; if that fails the open fails and the
    /// stage file is left as it is, so nothing is lost.
    pub fn open(config: JournalConfig) -> Result<Journal, JournalError> {
        if let Some(cpus) = &config.writer_cpus {
            sched::check_pinnable(cpus).map_err(|source| JournalError::WriterCpus {
                cpus: cpus.clone(),
                source,
            })?;
        }
        let mut stats = JournalStats::default();
        let (stage, stage_path) = open::open_stage(&config, &mut stats)?;
        let (db, tip) = (stage.db, stage.tip);
        let stage = stage.stage;
        let (committed_tx, committed_rx) = watch::channel(tip.last_seq);
        stats.committed_seq = tip.last_seq;
        stats.last_appended_seq = tip.last_seq;
        stats.stage_path = stage_path;
        stats.stage_capacity_bytes = stage.capacity();
        stats.stage_in_memory = stage.in_memory();
        let shared = Arc::new(Shared {
            stage,
            durability: config.durability,
            staged_seq: AtomicU64::new(tip.last_seq),
            queue: Mutex::new(Queue {
                rows: Vec::new(),
                head: 0,
                tail: 0,
                next_seq: tip.last_seq + 1,
                closing: false,
                writer_stopped: false,
                retention_requests: Vec::new(),
                close_waiters: Vec::new(),
            }),
            wake: Condvar::new(),
            checkpointer_stop: Mutex::new(false),
            wake_checkpointer: Condvar::new(),
            stats: Mutex::new(stats),
            writer_tid: AtomicI32::new(0),
            checkpointer_tid: AtomicI32::new(0),
            writer_idle: AtomicBool::new(false),
            idle_available: config.idle_writer
                && config.durability == Durability::ProcessCrash
                && sched::idle_is_reversible(),
        });
        thread::spawn_writer_threads(&config, db, tip.last_stream_ms, &shared, committed_tx)?;
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                committed: committed_rx,
                path: config.path,
            }),
        })
    }

    /// Stages an event and returns its seq. Never waits for SQLite: the
    /// record is copied into the stage file (one `pwrite` into the page
    /// cache) under the queue lock, so with [`Durability::ProcessCrash`] the
    /// event is durable when this returns. Fails, storing nothing, when the
    /// ring is full ([`JournalError::Full`]: SQLite is behind or failing),
    /// the stage file cannot be written, or the journal is closed.
    pub fn append(&self, event: &Event) -> Result<u64, JournalError> {
        self.append_serialized(event, &event.to_json())
    }

    /// [`Journal::append`] for a caller that already serialized the event:
    /// `json` must be its [`Event::to_json`] (stored as the payload).
    pub fn append_serialized(&self, event: &Event, json: &str) -> Result<u64, JournalError> {
        // Encode and checksum outside the lock: callers run in parallel.
        let shared = &self.inner.shared;
        let payload = json.to_owned();
        let event_type = event.event_type();
        let mut record = stage::encode(
            shared.stage.generation(),
            &event.id,
            event.ts,
            event_type,
            &event.region,
            &payload,
        );
        let record_bytes = record.len() as u64;
        // The row too, so the lock is held only for placing and writing.
        let row = PendingRow {
            seq: 0,
            end: 0,
            event_id: event.id.clone(),
            ts: event.ts,
            event_type: Cow::Borrowed(event_type),
            region: event.region.clone(),
            payload,
        };
        let mut used_after = 0;
        let outcome = {
            let mut queue = shared.queue.lock();
            if queue.writer_stopped || queue.closing {
                Err(JournalError::AppendAfterClose)
            } else {
                match shared.stage.place(queue.head, queue.tail, record_bytes) {
                    None => Err(JournalError::Full {
                        capacity_bytes: shared.stage.capacity(),
                        used_bytes: queue.head - queue.tail,
                        record_bytes,
                    }),
                    Some(placement) => {
                        // Assigned under the lock so ring order and queue order
                        // are seq order: a batch never commits seq n+1 before n.
                        let seq = queue.next_seq;
                        let written = placement
                            .wrap_marker_at
                            .map_or(Ok(()), |at| shared.stage.write_wrap_marker(at, seq))
                            .and_then(|()| {
                                shared.stage.write_record(&mut record, seq, placement.start)
                            });
                        match written {
                            Ok(()) => {
                                queue.next_seq += 1;
                                queue.head = placement.end;
                                used_after = queue.head - queue.tail;
                                queue.rows.push(PendingRow {
                                    seq,
                                    end: placement.end,
                                    ..row
                                });
                                shared.staged_seq.store(seq, Ordering::Release);
                                Ok(seq)
                            }
                            Err(error) => Err(JournalError::Stage {
                                path: shared.stage.path().to_path_buf(),
                                detail: format!("cannot write seq {seq}: {error}"),
                            }),
                        }
                    }
                }
            }
        };
        let mut stats = shared.stats.lock();
        match &outcome {
            Ok(seq) => {
                stats.appended += 1;
                // Parallel appends may reach this line out of seq order.
                stats.last_appended_seq = stats.last_appended_seq.max(*seq);
                if stats.stage_refusing {
                    stats.stage_refusing = false;
                    tracing::warn!(path = %self.inner.path.display(), "journal accepts events again");
                }
                drop(stats);
                if used_after * RAISE_WRITER_AT >= shared.stage.capacity()
                    && shared.writer_idle.load(Ordering::Relaxed)
                {
                    shared.raise_writer();
                }
                shared.wake.notify_one();
            }
            Err(JournalError::AppendAfterClose) => stats.dropped_after_close += 1,
            Err(error) => {
                if matches!(error, JournalError::Full { .. }) {
                    stats.rejected_full += 1;
                } else {
                    stats.stage_write_errors += 1;
                }
                if !stats.stage_refusing {
                    stats.stage_refusing = true;
                    stats.last_error = Some(error.to_string());
                    tracing::error!(path = %self.inner.path.display(), %error,
                        "journal refuses events until space is reclaimed");
                }
            }
        }
        outcome
    }

    /// Resolves once `seq` (and every seq before it) is durable at the
    /// configured level: at once for [`Durability::ProcessCrash`] (append
    /// staged it), after the SQLite commit for [`Durability::PowerLoss`].
    /// While commits fail the latter keeps waiting (the writer retries).
    pub async fn wait_durable(&self, seq: u64) -> Result<(), JournalError> {
        let staged = self.inner.shared.staged_seq.load(Ordering::Acquire);
        if seq > staged {
            return Err(JournalError::UnknownSeq {
                seq,
                last_appended: staged,
            });
        }
        match self.inner.shared.durability {
            Durability::ProcessCrash => Ok(()),
            Durability::PowerLoss => self.wait_committed(seq).await,
        }
    }

    /// Resolves once `seq` (and every seq before it) is committed to SQLite,
    /// where [`crate::JournalReader`] sees it; at once if it already is.
    pub async fn wait_committed(&self, seq: u64) -> Result<(), JournalError> {
        if seq <= *self.inner.committed.borrow() {
            return Ok(());
        }
        let staged = self.inner.shared.staged_seq.load(Ordering::Acquire);
        if seq > staged {
            return Err(JournalError::UnknownSeq {
                seq,
                last_appended: staged,
            });
        }
        let mut committed = self.inner.committed.clone();
        committed
            .wait_for(|committed| *committed >= seq)
            .await
            .map(|_| ())
            .map_err(|_| JournalError::Closed { seq })
    }

    /// Every seq up to this one is durable at the configured level (what
    /// [`Journal::wait_durable`] waits for).
    pub fn durable_seq(&self) -> u64 {
        match self.inner.shared.durability {
            Durability::ProcessCrash => self.inner.shared.staged_seq.load(Ordering::Acquire),
            Durability::PowerLoss => self.committed_seq(),
        }
    }

    /// Every seq up to this one is committed to SQLite.
    pub fn committed_seq(&self) -> u64 {
        *self.inner.committed.borrow()
    }

    pub fn stats(&self) -> JournalStats {
        let (queue_next, used) = {
            let queue = self.inner.shared.queue.lock();
            (queue.next_seq, queue.head - queue.tail)
        };
        let mut stats = self.inner.shared.stats.lock().clone();
        stats.committed_seq = self.committed_seq();
        stats.backlog = queue_next
            .saturating_sub(1)
            .saturating_sub(stats.committed_seq);
        stats.stage_used_bytes = used;
        stats.staged_seq = self.inner.shared.staged_seq.load(Ordering::Acquire);
        stats.writer_idle_priority = self.inner.shared.writer_idle.load(Ordering::Acquire);
        stats.writer_idle_priority_available = self.inner.shared.idle_available;
        stats.writer_thread_id = self.inner.shared.writer_tid.load(Ordering::Acquire);
        stats.checkpointer_thread_id = self.inner.shared.checkpointer_tid.load(Ordering::Acquire);
        stats
    }

    /// True while commits succeed (no failure since the last success) and
    /// appends are accepted (the ring is not full).
    pub fn is_healthy(&self) -> bool {
        let stats = self.inner.shared.stats.lock();
        stats.consecutive_failures == 0 && !stats.stage_refusing
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs a retention pass now on the writer thread (it also runs at open
    /// and every [`RETENTION_INTERVAL`](crate::RETENTION_INTERVAL)); returns the rows deleted.
    pub async fn enforce_retention(&self) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.inner.shared.queue.lock();
            if queue.writer_stopped {
                return Err(JournalError::Closed { seq: 0 });
            }
            queue.retention_requests.push(reply);
        }
        self.inner.shared.wake.notify_one();
        match answer.await {
            Ok(Ok(deleted)) => Ok(deleted),
            Ok(Err(detail)) => Err(JournalError::Retention {
                path: self.inner.path.clone(),
                detail,
            }),
            Err(_) => Err(JournalError::Closed { seq: 0 }),
        }
    }

    /// Commits everything queued, then stops the writer thread. Appends made
    /// after this (through other clones) are counted and dropped.
    pub async fn close(self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.inner.shared.queue.lock();
            if queue.writer_stopped {
                return Ok(());
            }
            queue.closing = true;
            queue.close_waiters.push(reply);
        }
        self.inner.shared.wake.notify_one();
        answer.await.unwrap_or(Ok(()))
    }
}
