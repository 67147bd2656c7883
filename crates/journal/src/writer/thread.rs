//! The writer's threads: the one that owns the SQLite connection and
//! commits what appends staged (group commit, retries, retention, close),
//! and the checkpointer that folds the WAL into the file beside it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, watch};

use super::db::{move_aside, WriterDb};
use super::{PendingRow, Shared, LOWER_WRITER_AT};
use crate::error::{is_corruption, JournalError};
use crate::sched;
use crate::{Durability, JournalConfig, RETENTION_INTERVAL};

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
/// Rows a caught-up queue keeps room for (the room alone ~0.5 MB). A
/// backlog (a flood of shares, a slow disk) grows the queue and the heap
/// behind its rows' strings to tens of megabytes; once it is committed
/// that memory goes back to the system instead of staying in the
/// process's RSS for good.
const KEEP_QUEUED_ROWS: usize = 4096;

/// Starts the checkpointer, then the writer thread that owns `db` and
/// commits from `shared`'s queue, announcing each commit on `committed`.
pub(super) fn spawn_writer_threads(
    config: &JournalConfig,
    db: WriterDb,
    last_stream_ms: i64,
    shared: &Arc<Shared>,
    committed: watch::Sender<u64>,
) -> Result<(), JournalError> {
    let checkpointer =
        spawn_checkpointer(&config.path, config.writer_cpus.clone(), Arc::clone(shared));
    let writer = Writer {
        checkpointer,
        db,
        shared: Arc::clone(shared),
        committed,
        max_batch: config.max_batch.max(1),
        last_stream_ms,
        config: config.clone(),
        needs_reopen: false,
    };
    std::thread::Builder::new()
        .name("tbg-journal".into())
        .spawn(move || writer.run())
        .map_err(JournalError::Spawn)?;
    Ok(())
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
                            self.settle_when_caught_up(&mut pending);
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

    /// Once the ring is (nearly) empty: the memory of a backlog goes back
    /// to the allocator (which gives it back to the system: the `tbg`
    /// binary's jemalloc purges pages unused for a second), then the writer
    /// goes back to idle priority (also the first switch to idle after the
    /// start).
    ///
    /// A backlog that filled an eighth of the ring raised the writer to the
    /// normal policy, so it is still there when the backlog is committed:
    /// it shrinks both of the queue's buffers (the one it holds and the one
    /// appends fill, under the queue lock, which an idle writer must not
    /// take: it could be preempted holding it). A writer already idle only
    /// lets go of its own buffer: a backlog too small to raise it left
    /// little to give back.
    fn settle_when_caught_up(&self, pending: &mut Vec<PendingRow>) {
        let shared = &self.shared;
        let backlog = pending.capacity() > KEEP_QUEUED_ROWS;
        if shared.writer_idle.load(Ordering::Acquire) {
            if backlog {
                *pending = Vec::with_capacity(KEEP_QUEUED_ROWS);
            }
            return;
        }
        let used = {
            let mut queue = shared.queue.lock();
            let used = queue.head - queue.tail;
            if backlog && used * LOWER_WRITER_AT <= shared.stage.capacity() {
                queue.rows.shrink_to(KEEP_QUEUED_ROWS);
            }
            used
        };
        if used * LOWER_WRITER_AT > shared.stage.capacity() {
            return;
        }
        if backlog {
            *pending = Vec::with_capacity(KEEP_QUEUED_ROWS);
            tracing::debug!("journal caught up after a backlog; its queues shrunk");
        }
        if !shared.idle_available {
            return;
        }
        match sched::set_idle(sched::current_tid()) {
            Ok(()) => shared.writer_idle.store(true, Ordering::Release),
            Err(error) => {
                tracing::debug!(%error, "cannot lower the journal writer to idle priority")
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
