//! The writer's SQLite side: the connection (WAL, no autocheckpoint), the
//! multi-row inserts of a batch, retention, and moving a corrupt file aside.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

use super::{JournalStats, PendingRow};
use crate::error::{classify, JournalError};
use crate::schema::{self, Tip};
use crate::{Durability, JournalConfig};

/// How long SQLite waits on a lock held by another connection (a reader's
/// checkpoint-blocking snapshot, an operator's sqlite3 shell).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
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

/// The connection and the file it belongs to.
pub(super) struct WriterDb {
    pub(super) conn: Connection,
    /// [`insert_statement`] for 1, 2, 4 ... [`ROWS_PER_INSERT`] rows, built
    /// once: the text is the key of the prepared-statement cache.
    insert_statements: [String; INSERT_SIZES],
}

impl WriterDb {
    pub(super) fn open_or_replace(
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

    pub(super) fn open(config: &JournalConfig) -> Result<(WriterDb, Tip), JournalError> {
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

    pub(super) fn size_bytes(&self) -> u64 {
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
    pub(super) fn commit(
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
    pub(super) fn retain(&mut self, config: &JournalConfig) -> Result<u64, rusqlite::Error> {
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
pub(super) fn move_aside(path: &Path) -> Result<PathBuf, JournalError> {
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
