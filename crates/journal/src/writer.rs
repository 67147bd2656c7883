//! The writer: a handle that queues, and one OS thread that commits.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, OpenFlags};
use tbg_events::Event;
use tokio::sync::{oneshot, watch};

use crate::error::{classify, is_corruption, JournalError};
use crate::location::{self, StageDir};
use crate::sched;
use crate::schema::{self, Tip};
use crate::stage::{self, RecoveryStop, Stage};
use crate::{Durability, JournalConfig, RETENTION_INTERVAL};

/// How long SQLite waits on a lock held by another connection (a reader's
/// checkpoint-blocking snapshot, an operator's sqlite3 shell).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry delays after a failed commit: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// With [`Durability::ProcessCrash`], the writer pauses this long after a
/// commit: adds at most this to the collector's lag. Each commit rewrites
/// the right-hand pages of the table and its indexes and a WAL header, so
/// bigger transactions cost less per event. While the writer ran at the
/// normal policy its bigger batches delayed the sessions sharing its core
/// and 5 ms was best; at idle priority (see the `sched` module) it yields
/// to them, and 20 ms costs 2-4 µs less of the pool's core per share at
/// 10,000 shares/s than 5 ms, with the same or a better p99; 50 ms gained
/// nothing more (docs/benchmarks.md, "The journal writer at idle priority").
const STAGED_LINGER: Duration = Duration::from_millis(20);
/// On close, give up after this many consecutive failed commits.
const CLOSE_ATTEMPTS: u32 = 5;
/// Retention deletes at most this many rows per statement, so one pass never
/// builds a huge transaction.
const RETENTION_CHUNK: i64 = 20_000;

/// Rows per INSERT statement: one statement for many rows costs SQLite one
/// statement start, cursor open and halt instead of one per row (+9 %
/// committed events/s in the journal bench, docs/benchmarks.md). Batches
/// are split into power-of-two runs, so seven statements (64, 32, ... 1
/// rows) serve every batch.
const ROWS_PER_INSERT: usize = 64;
const COLUMNS_PER_ROW: usize = 7;
/// `INSERT_STATEMENTS[k]` inserts `2^k` rows.
const INSERT_SIZES: usize = ROWS_PER_INSERT.ilog2() as usize + 1;

/// `INSERT ... VALUES (...), (...) ...` for `rows` rows.
fn insert_statement(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO journal (seq, event_id, ts, event_type, region, stream_ms, payload) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?)");
    }
    sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

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
        let (stage, stage_path) = open_stage(&config, &mut stats)?;
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
        let checkpointer = spawn_checkpointer(
            &config.path,
            config.writer_cpus.clone(),
            Arc::clone(&shared),
        );
        let writer = Writer {
            checkpointer,
            db,
            shared: Arc::clone(&shared),
            committed: committed_tx,
            max_batch: config.max_batch.max(1),
            last_stream_ms: tip.last_stream_ms,
            config: config.clone(),
            needs_reopen: false,
        };
        std::thread::Builder::new()
            .name("tbg-journal".into())
            .spawn(move || writer.run())
            .map_err(JournalError::Spawn)?;
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
    /// and every [`RETENTION_INTERVAL`]); returns the rows deleted.
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

/// The connection and the file it belongs to.
struct WriterDb {
    conn: Connection,
    /// [`insert_statement`] for 1, 2, 4 ... [`ROWS_PER_INSERT`] rows, built
    /// once: the text is the key of the prepared-statement cache.
    insert_statements: [String; INSERT_SIZES],
}

impl WriterDb {
    fn open_or_replace(
        config: &JournalConfig,
        stats: &mut JournalStats,
    ) -> Result<(WriterDb, Tip), JournalError> {
        match WriterDb::open(config) {
            Ok(opened) => Ok(opened),
            Err(JournalError::Corrupt { detail, .. }) => {
                let floor = best_effort_last_seq(&config.path);
                let moved_to = move_aside(&config.path)?;
                tracing::error!(
                    path = %config.path.display(),
                    moved_to = %moved_to.display(),
                    %detail,
                    recovered_last_seq = ?floor,
                    "journal is corrupt; moved it aside and starting a fresh journal"
                );
                stats.corrupt_files_moved.insert(0, moved_to);
                let (db, mut tip) = WriterDb::open(config)?;
                match floor {
                    Some(last_seq) => tip.last_seq = tip.last_seq.max(last_seq),
                    None => stats.seq_continuity_lost = true,
                }
                Ok((db, tip))
            }
            Err(other) => Err(other),
        }
    }

    fn open(config: &JournalConfig) -> Result<(WriterDb, Tip), JournalError> {
        let path = &config.path;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| JournalError::Open {
            path: path.clone(),
            source,
        })?;
        let synchronous = match config.durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(path, "setting busy_timeout", None, e))?;
        // auto_vacuum only takes effect on a database without tables, so it is
        // set before anything creates the file's first page.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(|e| classify(path, "setting auto_vacuum", None, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| classify(path, "switching to WAL", None, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                after_seq: None,
                detail: format!("journal_mode is {mode}, WAL could not be enabled"),
            });
        }
        // Checkpoints (which fsync the main file) run on the checkpointer
        // thread's own connection, off the commit path.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA wal_autocheckpoint = 0;"
        ))
        .map_err(|e| classify(path, "setting synchronous", None, e))?;
        let tip = schema::create_or_validate(&conn, path)?;
        let insert_statements = std::array::from_fn(|power| insert_statement(1 << power));
        Ok((
            WriterDb {
                conn,
                insert_statements,
            },
            tip,
        ))
    }

    fn size_bytes(&self) -> u64 {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap_or(0);
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap_or(0);
        u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0)
    }

    fn used_bytes(&self) -> u64 {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .unwrap_or(0);
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap_or(0);
        self.size_bytes()
            .saturating_sub(u64::try_from(free.saturating_mul(page_size)).unwrap_or(0))
    }

    /// One transaction for all rows. Returns (new last stream_ms, duplicates).
    fn commit(
        &mut self,
        rows: &[PendingRow],
        last_stream_ms: i64,
    ) -> Result<(i64, u64), rusqlite::Error> {
        // BEGIN and COMMIT as cached statements: `Connection::transaction`
        // parses both again for every batch.
        let conn = &self.conn;
        conn.prepare_cached("BEGIN")?.execute([])?;
        let committed = self
            .insert(rows, last_stream_ms)
            .and_then(|inserted| conn.prepare_cached("COMMIT")?.execute([]).map(|_| inserted));
        if committed.is_err() && !conn.is_autocommit() {
            // Nothing of a failed batch stays: it is retried whole.
            let _ = conn.execute_batch("ROLLBACK");
        }
        committed
    }

    /// Inserts `rows` in the open transaction. Returns (new last stream_ms,
    /// duplicates).
    fn insert(
        &self,
        rows: &[PendingRow],
        last_stream_ms: i64,
    ) -> Result<(i64, u64), rusqlite::Error> {
        let conn = &self.conn;
        let mut stream_ms = last_stream_ms;
        let mut duplicates = 0u64;
        let mut rest = rows;
        while !rest.is_empty() {
            // The largest power of two that fits, up to ROWS_PER_INSERT.
            let power = (rest.len().ilog2() as usize).min(INSERT_SIZES - 1);
            let take = 1 << power;
            let (run, after) = rest.split_at(take);
            rest = after;
            let mut insert = conn.prepare_cached(&self.insert_statements[power])?;
            for (index, row) in run.iter().enumerate() {
                // SQLite stores NaN as NULL, which NOT NULL refuses: a bad ts
                // from a producer must not wedge the whole batch. The payload
                // keeps what the producer sent.
                let ts = if row.ts.is_finite() { row.ts } else { 0.0 };
                // Float-to-int `as` saturates; stream ids only grow.
                stream_ms = stream_ms.max((ts * 1000.0) as i64);
                let first = index * COLUMNS_PER_ROW + 1;
                insert.raw_bind_parameter(first, i64::try_from(row.seq).unwrap_or(i64::MAX))?;
                insert.raw_bind_parameter(first + 1, &row.event_id)?;
                insert.raw_bind_parameter(first + 2, ts)?;
                insert.raw_bind_parameter(first + 3, row.event_type.as_ref())?;
                insert.raw_bind_parameter(first + 4, &row.region)?;
                insert.raw_bind_parameter(first + 5, stream_ms)?;
                insert.raw_bind_parameter(first + 6, &row.payload)?;
            }
            let inserted = insert.raw_execute()?;
            duplicates += (take - inserted.min(take)) as u64;
            if !rest.is_empty() {
                // A big batch is milliseconds of CPU: on a core shared with
                // the pool's sessions, let them answer shares in between
                // (the transaction stays open, so this costs no commit).
                std::thread::yield_now();
            }
        }
        Ok((stream_ms, duplicates))
    }

    /// Deletes by age, then by size, then gives the space back. Never
    /// deletes the newest row, so the seq high-water mark survives a restart.
    fn retain(&mut self, config: &JournalConfig) -> Result<u64, rusqlite::Error> {
        let mut deleted = 0u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or(0.0);
        let cutoff = now - config.retention_max_age.as_secs_f64();
        loop {
            let changed = self.conn.execute(
                "DELETE FROM journal WHERE seq IN (SELECT seq FROM journal WHERE ts < ?1
                   AND seq < (SELECT MAX(seq) FROM journal) LIMIT ?2)",
                params![cutoff, RETENTION_CHUNK],
            )?;
            deleted += changed as u64;
            if (changed as i64) < RETENTION_CHUNK {
                break;
            }
        }
        loop {
            let used = self.used_bytes();
            if used <= config.retention_max_bytes {
                break;
            }
            let rows: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM journal", [], |row| row.get(0))?;
            if rows <= 1 {
                break;
            }
            let excess = used - config.retention_max_bytes;
            let bytes_per_row = (used / rows as u64).max(1);
            // A little more than the estimate, so the loop rarely runs twice.
            let to_delete = i64::try_from(excess / bytes_per_row + 1)
                .unwrap_or(i64::MAX)
                .saturating_add(rows / 100)
                .clamp(1, RETENTION_CHUNK);
            let changed = self.conn.execute(
                "DELETE FROM journal WHERE seq IN (SELECT seq FROM journal
                   WHERE seq < (SELECT MAX(seq) FROM journal) ORDER BY seq LIMIT ?1)",
                params![to_delete],
            )?;
            deleted += changed as u64;
            if changed == 0 {
                break;
            }
        }
        if deleted > 0 {
            // Each step of this pragma frees one page: run it to the end.
            let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut steps = vacuum.query([])?;
            while steps.next()?.is_some() {}
        }
        // Folds the WAL back into the file and truncates it; a reader holding
        // an old snapshot makes this partial, which is harmless.
        let _busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(deleted)
    }
}

/// Pins the calling journal thread to `cpus` (checked at open, so a
/// failure here is unexpected: logged, and the thread runs unpinned).
fn pin_to(cpus: Option<&[usize]>, thread: &str) {
    if let Some(cpus) = cpus {
        if let Err(error) = sched::pin_current_thread(cpus) {
            tracing::warn!(%error, ?cpus, thread, "journal thread runs unpinned");
        }
    }
}

/// How often the checkpointer folds the WAL into the main file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Runs PASSIVE checkpoints from a second connection so the writer never
/// pays for the main file's fsync; a PASSIVE checkpoint never blocks the
/// writer or readers. Stops with the writer. Failing to start it only means
/// the WAL grows until the writer's periodic TRUNCATE checkpoint.
fn spawn_checkpointer(
    path: &Path,
    cpus: Option<Vec<usize>>,
    shared: Arc<Shared>,
) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_path_buf();
    let started = std::thread::Builder::new()
        .name("tbg-journal-ckpt".into())
        .spawn(move || {
            pin_to(cpus.as_deref(), "checkpointer");
            // Lowest priority: a checkpoint copies up to 250 ms of WAL in one
            // call (megabytes under a flood), which the pool's sessions must
            // not wait behind. Starved, it only lets the WAL grow until the
            // writer's TRUNCATE checkpoint at the next retention pass.
            let tid = sched::current_tid();
            if let Err(error) = rustix::process::setpriority_process(rustix::thread::Pid::from_raw(tid), 19)
            {
                tracing::debug!(%error, "cannot lower the journal checkpointer's priority");
            }
            shared.checkpointer_tid.store(tid, Ordering::Release);
            let conn = match Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "journal checkpointer cannot open");
                    return;
                }
            };
            loop {
                {
                    let mut stop = shared.checkpointer_stop.lock();
                    if *stop {
                        return;
                    }
                    shared.wake_checkpointer.wait_for(&mut stop, CHECKPOINT_INTERVAL);
                    if *stop {
                        return;
                    }
                }
                if shared.idle_available {
                    // Idle while the writer is (see the `sched` module). Set
                    // each pass (one cheap call every 250 ms), since the
                    // appender may have raised this thread meanwhile.
                    let _ = if shared.writer_idle.load(Ordering::Acquire) {
                        sched::set_idle(tid)
                    } else {
                        sched::set_normal(tid)
                    };
                }
                if let Err(error) =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0))
                {
                    tracing::warn!(path = %path.display(), %error, "journal checkpoint failed");
                }
            }
        });
    started
        .map_err(|error| tracing::error!(%error, "cannot start journal checkpointer thread"))
        .ok()
}

/// Tries to read the last seq of a damaged file so a fresh journal can
/// continue after it.
fn best_effort_last_seq(path: &Path) -> Option<u64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT MAX(seq) FROM journal", [], |row| {
        row.get::<_, Option<i64>>(0)
    })
    .ok()
    .flatten()
    .and_then(|seq| u64::try_from(seq).ok())
}

/// Renames the file (and its -wal/-shm, which belong to it) to
/// `<name>.corrupt-<unix time>`.
fn move_aside(path: &Path) -> Result<PathBuf, JournalError> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut target = with_suffix(&format!(".corrupt-{unix}"));
    let mut attempt = 1;
    while target.exists() {
        target = with_suffix(&format!(".corrupt-{unix}-{attempt}"));
        attempt += 1;
    }
    std::fs::rename(path, &target).map_err(|error| JournalError::Corrupt {
        path: path.to_path_buf(),
        after_seq: None,
        detail: format!("cannot move it aside to {}: {error}", target.display()),
    })?;
    for sidecar in ["-wal", "-shm"] {
        let from = with_suffix(sidecar);
        if from.exists() {
            let mut to = target.as_os_str().to_owned();
            to.push(sidecar);
            if let Err(error) = std::fs::rename(&from, PathBuf::from(to)) {
                tracing::error!(path = %from.display(), %error, "cannot move journal sidecar aside");
            }
        }
    }
    Ok(target)
}

/// What [`open_stage`] opened.
struct OpenedStage {
    stage: Stage,
    db: WriterDb,
    tip: Tip,
}

/// Opens SQLite and the ring: every ring of this journal an earlier process
/// may have left (under this configuration or an earlier one, see
/// [`location::candidates`]) is locked, committed to SQLite and, unless it
/// is the one used now, removed; then this process's ring is created.
fn open_stage(
    config: &JournalConfig,
    stats: &mut JournalStats,
) -> Result<(OpenedStage, PathBuf), JournalError> {
    let stage_error = |path: &Path, detail: String| JournalError::Stage {
        path: path.to_path_buf(),
        detail,
    };
    let lock_error =
        |path: &Path, failure: stage::LockFailure| stage_error(path, failure.to_string());
    let memory_dir = Path::new(location::DEFAULT_MEMORY_STAGE_DIR);
    let configured_dir = config.stage_dir.dir().filter(|dir| *dir != memory_dir);
    for dir in [configured_dir, Some(memory_dir)].into_iter().flatten() {
        for removed in location::remove_orphans(dir) {
            tracing::info!(path = %removed.display(),
                "removed the stage ring of a journal that no longer exists");
        }
    }
    let candidates = location::candidates(&config.path, &config.stage_dir);
    let beside = location::beside_journal(&config.path);
    // Locked first: nothing of the journal is touched by a second writer. A
    // preferred directory that is missing or unwritable fails here.
    let target = candidates
        .first()
        .cloned()
        .unwrap_or_else(|| beside.clone());
    let (target, target_file) = match (stage::open_locked(&target), &config.stage_dir) {
        (Ok(file), _) => (target, file),
        // "in use" is the same journal's lock wherever the ring is.
        (Err(stage::LockFailure::Other(detail)), StageDir::Preferred(dir)) if target != beside => {
            tracing::warn!(dir = %dir.display(), %detail,
                "cannot open the stage ring there; it goes beside the journal");
            let file =
                stage::open_locked(&beside).map_err(|failure| lock_error(&beside, failure))?;
            (beside.clone(), file)
        }
        (Err(failure), _) => return Err(lock_error(&target, failure)),
    };
    let mut others = Vec::new();
    for path in candidates.iter().filter(|path| **path != target) {
        if path.is_file() {
            match stage::open_locked(path) {
                Ok(file) => others.push((path.clone(), file)),
                Err(stage::LockFailure::InUse) => {
                    return Err(lock_error(path, stage::LockFailure::InUse))
                }
                // Not a ring this process may trust or use: nothing of ours
                // can be in it.
                Err(stage::LockFailure::Other(detail)) => {
                    tracing::warn!(path = %path.display(), %detail,
                        "ignoring a file where an earlier stage ring may have been");
                }
            }
        }
    }
    let (mut db, mut tip) = WriterDb::open_or_replace(config, stats)?;
    let rings = others.iter().map(|(path, file)| (path, file));
    for (path, file) in rings.chain(std::iter::once((&target, &target_file))) {
        recover_staged(config, path, file, &mut db, &mut tip, stats)?;
    }
    for (path, _file) in others {
        // Committed above; the lock goes with the file after the removal.
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove an old stage ring");
        }
    }
    let journal = location::absolute_journal_path(&config.path);
    let created = Stage::create(target_file, &target, config.stage_bytes, &journal);
    let (stage, path) = match (created, &config.stage_dir) {
        (Ok(stage), _) => (stage, target),
        (Err(detail), StageDir::Preferred(dir)) if target != beside => {
            tracing::warn!(dir = %dir.display(), %detail,
                "cannot create the stage ring there; it goes beside the journal");
            let _ = std::fs::remove_file(&target);
            let file =
                stage::open_locked(&beside).map_err(|failure| lock_error(&beside, failure))?;
            let stage = Stage::create(file, &beside, config.stage_bytes, &journal)
                .map_err(|detail| stage_error(&beside, detail))?;
            (stage, beside)
        }
        (Err(detail), _) => return Err(stage_error(&target, detail)),
    };
    tracing::info!(path = %path.display(), in_memory = stage.in_memory(),
        capacity_bytes = stage.capacity(), "journal stage ring ready");
    Ok((OpenedStage { stage, db, tip }, path))
}

/// Commits what a previous process staged but did not commit, so SQLite
/// is complete before the ring is reset for this process.
fn recover_staged(
    config: &JournalConfig,
    stage_path: &Path,
    stage_file: &std::fs::File,
    db: &mut WriterDb,
    tip: &mut Tip,
    stats: &mut JournalStats,
) -> Result<(), JournalError> {
    let recovered = stage::recover(stage_file, tip.last_seq);
    if let Some(problem) = &recovered.unusable_header {
        tracing::warn!(path = %stage_path.display(), %problem,
            "journal stage file unusable; starting a fresh one (nothing to recover from it)");
        stats.stage_ignored = Some(problem.clone());
    }
    if let Some(RecoveryStop::Invalid {
        file_offset,
        detail,
    }) = &recovered.stop
    {
        tracing::warn!(path = %stage_path.display(), file_offset, %detail,
            recovered = recovered.rows.len(),
            "journal stage recovery stopped at a damaged record (written when the process died; never acknowledged)");
        stats.stage_recovery_stopped_at = Some((*file_offset, detail.clone()));
    }
    let mut stream_ms = tip.last_stream_ms;
    for batch in recovered.rows.chunks(config.max_batch.max(1)) {
        let (batch_stream_ms, _duplicates) = db
            .commit(batch, stream_ms)
            .map_err(|error| classify(&config.path, "recovering staged events", None, error))?;
        stream_ms = batch_stream_ms;
    }
    if let Some(last) = recovered.rows.last() {
        tracing::info!(path = %stage_path.display(), events = recovered.rows.len(),
            first_seq = recovered.rows[0].seq, last_seq = last.seq,
            "recovered staged journal events into SQLite");
        tip.last_seq = tip.last_seq.max(last.seq);
        tip.last_stream_ms = stream_ms;
        stats.stage_recovered += recovered.rows.len() as u64;
        stats.bytes = db.size_bytes();
    }
    Ok(())
}

struct Writer {
    checkpointer: Option<std::thread::JoinHandle<()>>,
    db: WriterDb,
    shared: Arc<Shared>,
    committed: watch::Sender<u64>,
    max_batch: usize,
    last_stream_ms: i64,
    config: JournalConfig,
    needs_reopen: bool,
}

impl Writer {
    fn run(mut self) {
        pin_to(self.config.writer_cpus.as_deref(), "writer");
        self.shared
            .writer_tid
            .store(sched::current_tid(), Ordering::Release);
        let mut pending: Vec<PendingRow> = Vec::new();
        self.retention_pass(Vec::new());
        let mut next_retention = Instant::now() + RETENTION_INTERVAL;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = BACKOFF_FIRST;
        let mut close_failures = 0u32;
        let mut last_error = String::new();
        loop {
            let (closing, retention_requests) = {
                let mut queue = self.shared.queue.lock();
                loop {
                    let now = Instant::now();
                    // After a failure nothing is committed before the backoff ends.
                    let can_commit = !matches!(retry_at, Some(at) if now < at);
                    let has_work = (can_commit
                        && (!queue.rows.is_empty() || !pending.is_empty() || queue.closing))
                        || !queue.retention_requests.is_empty()
                        || now >= next_retention;
                    if has_work {
                        break;
                    }
                    let deadline = retry_at.map_or(next_retention, |at| at.min(next_retention));
                    self.shared.wake.wait_until(&mut queue, deadline);
                }
                if pending.is_empty() {
                    // Swap whole: the caller side gets back an empty Vec with
                    // the previous round's capacity.
                    std::mem::swap(&mut pending, &mut queue.rows);
                } else {
                    pending.append(&mut queue.rows);
                }
                (queue.closing, std::mem::take(&mut queue.retention_requests))
            };
            if closing {
                // Flush at full speed: the pool is stopping.
                self.shared.raise_writer();
            }
            if !matches!(retry_at, Some(at) if Instant::now() < at) {
                retry_at = None;
                match self.commit_all(&mut pending) {
                    Ok(()) => {
                        backoff = BACKOFF_FIRST;
                        close_failures = 0;
                        if !closing {
                            self.lower_when_caught_up();
                        }
                        if self.config.durability == Durability::ProcessCrash && !closing {
                            // Nobody waits for these commits (the stage made
                            // the events durable): let a batch gather instead
                            // of being woken by every append, which costs the
                            // appenders a wake-up and the pool a context switch
                            // and a transaction per few events.
                            std::thread::sleep(STAGED_LINGER);
                        }
                    }
                    Err(error) => {
                        last_error = error;
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        if closing {
                            close_failures += 1;
                        }
                    }
                }
            }
            if !retention_requests.is_empty() || Instant::now() >= next_retention {
                self.retention_pass(retention_requests);
                next_retention = Instant::now() + RETENTION_INTERVAL;
            }
            if closing && (pending.is_empty() || close_failures >= CLOSE_ATTEMPTS) {
                let (waiters, unwritten) = {
                    let mut queue = self.shared.queue.lock();
                    if !queue.rows.is_empty() && close_failures < CLOSE_ATTEMPTS {
                        continue; // appended just before close: flush them too
                    }
                    queue.writer_stopped = true;
                    let unwritten = (pending.len() + queue.rows.len()) as u64;
                    queue.rows.clear();
                    (std::mem::take(&mut queue.close_waiters), unwritten)
                };
                let path = self.config.path.clone();
                if unwritten > 0 {
                    tracing::error!(path = %path.display(), unwritten, error = %last_error,
                        "journal closed with events not written to SQLite; they stay in the stage file and are recovered at the next open");
                }
                if unwritten == 0 && self.shared.stage.in_memory() {
                    // Everything is in SQLite: free the ring's memory.
                    if let Err(error) = std::fs::remove_file(self.shared.stage.path()) {
                        tracing::warn!(path = %self.shared.stage.path().display(), %error,
                            "cannot remove the in-memory stage ring");
                    }
                }
                // Close the connection (checkpointing the WAL into the file)
                // before telling anyone the journal is closed.
                // Stop the checkpointer and wait for it: its connection must
                // be closed too, so nothing holds the file afterwards.
                *self.shared.checkpointer_stop.lock() = true;
                self.shared.wake_checkpointer.notify_all();
                if let Some(checkpointer) = self.checkpointer.take() {
                    let _ = checkpointer.join();
                }
                drop(self);
                for waiter in waiters {
                    let result = if unwritten == 0 {
                        Ok(())
                    } else {
                        Err(JournalError::Unflushed {
                            path: path.clone(),
                            unwritten,
                            detail: last_error.clone(),
                        })
                    };
                    let _ = waiter.send(result);
                }
                return;
            }
        }
    }

    /// Back to idle priority once the ring is (nearly) empty; also the
    /// first switch to idle after the start.
    fn lower_when_caught_up(&self) {
        let shared = &self.shared;
        if !shared.idle_available || shared.writer_idle.load(Ordering::Acquire) {
            return;
        }
        let used = {
            let queue = shared.queue.lock();
            queue.head - queue.tail
        };
        if used * LOWER_WRITER_AT <= shared.stage.capacity() {
            match sched::set_idle(sched::current_tid()) {
                Ok(()) => shared.writer_idle.store(true, Ordering::Release),
                Err(error) => {
                    tracing::debug!(%error, "cannot lower the journal writer to idle priority")
                }
            }
        }
    }

    /// Commits `pending` in transactions of at most `max_batch`; on failure
    /// leaves the uncommitted rows in `pending` and returns the error text.
    fn commit_all(&mut self, pending: &mut Vec<PendingRow>) -> Result<(), String> {
        if self.needs_reopen && !self.reopen() {
            self.shared.stats.lock().errors += 1;
            return Err("cannot create a fresh journal after moving a corrupt one aside".into());
        }
        while !pending.is_empty() {
            let count = pending.len().min(self.max_batch);
            let batch = &pending[..count];
            let last_seq = batch.last().map_or(0, |row| row.seq);
            let committed_end = batch.last().map_or(0, |row| row.end);
            match self.db.commit(batch, self.last_stream_ms) {
                Ok((stream_ms, duplicates)) => {
                    self.last_stream_ms = stream_ms;
                    pending.drain(..count);
                    self.reclaim(committed_end);
                    let bytes = self.db.size_bytes();
                    let mut stats = self.shared.stats.lock();
                    stats.committed += count as u64;
                    stats.batches += 1;
                    stats.last_batch_size = count as u64;
                    stats.largest_batch_size = stats.largest_batch_size.max(count as u64);
                    stats.duplicates_ignored += duplicates;
                    stats.consecutive_failures = 0;
                    stats.bytes = bytes;
                    drop(stats);
                    // Stats first, so a waiter that wakes sees them updated.
                    self.committed.send_replace(last_seq);
                }
                Err(error) => {
                    let text = format!("commit of {count} events failed: {error}");
                    tracing::error!(path = %self.config.path.display(), %error, "journal commit failed; retrying");
                    {
                        let mut stats = self.shared.stats.lock();
                        stats.errors += 1;
                        stats.consecutive_failures += 1;
                        stats.last_error = Some(text.clone());
                    }
                    if is_corruption(&error) {
                        self.replace_corrupt_file(&error);
                    }
                    return Err(text);
                }
            }
        }
        Ok(())
    }

    /// Hands the ring space of committed records back to appends. The
    /// file's tail is written first, so it is never behind the space that
    /// appends may overwrite; if it cannot be written the space stays taken
    /// (a full ring is reported) rather than risk a restart reading records
    /// that were overwritten.
    fn reclaim(&self, committed_end: u64) {
        if let Err(error) = self.shared.stage.write_tail(committed_end) {
            tracing::error!(path = %self.shared.stage.path().display(), %error,
                "cannot record the stage tail; ring space not reclaimed");
            return;
        }
        let freed = {
            let mut queue = self.shared.queue.lock();
            let freed = committed_end > queue.tail;
            queue.tail = queue.tail.max(committed_end);
            freed
        };
        if freed {
            let mut stats = self.shared.stats.lock();
            if stats.stage_refusing {
                stats.stage_refusing = false;
                tracing::warn!(path = %self.config.path.display(), "journal ring has room again");
            }
        }
    }

    /// The file went bad under us: move it aside and continue in a fresh one,
    /// keeping seqs and stream ids going from where we are.
    fn replace_corrupt_file(&mut self, error: &rusqlite::Error) {
        let fresh = self.config.path.clone();
        // Swap in a throwaway connection so the damaged one is closed before
        // its file is renamed.
        let Ok(placeholder) = Connection::open_in_memory() else {
            return;
        };
        let old = std::mem::replace(&mut self.db.conn, placeholder);
        drop(old);
        let moved_to = match move_aside(&fresh) {
            Ok(moved_to) => moved_to,
            Err(move_error) => {
                tracing::error!(%move_error, "cannot move corrupt journal aside");
                return;
            }
        };
        tracing::error!(path = %fresh.display(), moved_to = %moved_to.display(), %error,
            "journal became corrupt; moved it aside and continuing in a fresh journal");
        self.shared
            .stats
            .lock()
            .corrupt_files_moved
            .insert(0, moved_to);
        self.needs_reopen = true;
        self.reopen();
    }

    /// Opens the fresh journal after a corrupt one was moved aside.
    fn reopen(&mut self) -> bool {
        match WriterDb::open(&self.config) {
            Ok((db, _tip)) => {
                self.db = db;
                self.needs_reopen = false;
                true
            }
            Err(open_error) => {
                tracing::error!(%open_error, "cannot create a fresh journal; will retry");
                false
            }
        }
    }

    fn retention_pass(&mut self, requests: Vec<oneshot::Sender<Result<u64, String>>>) {
        let result = self.db.retain(&self.config).map_err(|error| {
            tracing::error!(path = %self.config.path.display(), %error, "journal retention failed");
            format!("retention failed: {error}")
        });
        {
            let mut stats = self.shared.stats.lock();
            stats.retention_runs += 1;
            if let Ok(deleted) = result {
                stats.retention_deleted += deleted;
            }
            stats.bytes = self.db.size_bytes();
        }
        for request in requests {
            let _ = request.send(result.clone());
        }
    }
}
