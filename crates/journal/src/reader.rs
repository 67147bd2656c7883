//! Read-only access for the collector (another process). WAL lets it read
//! while the pool writes; each call sees a consistent snapshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tbg_events::Event;

use crate::error::{classify, JournalError};
use crate::schema;

/// Waits this long for a lock (WAL recovery by another connection).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored event as the collector reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRecord {
    pub seq: u64,
    pub event_id: String,
    pub ts: f64,
    pub event_type: String,
    pub region: String,
    /// Redis stream id `"<stream_ms>-<seq>"`: strictly increasing with seq.
    pub stream_id: String,
    /// The whole event as JSON (`Event::to_json`).
    pub payload: String,
}

impl JournalRecord {
    /// Parses the payload; a row that does not parse is an error naming its seq.
    pub fn event(&self) -> Result<Event, JournalError> {
        Event::from_json(&self.payload).map_err(|error| JournalError::BadRow {
            seq: self.seq,
            detail: error.to_string(),
        })
    }
}

/// A read-only view of a journal file.
pub struct JournalReader {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("path", &self.path)
            .finish()
    }
}

impl JournalReader {
    /// Opens read-only. A missing file, a file that is not a SQLite database,
    /// a damaged one or another program's database is an error naming the path.
    pub fn open(path: &Path) -> Result<JournalReader, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(path, "setting busy_timeout", None, e))?;
        schema::validate(&conn, path)?;
        Ok(JournalReader {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `limit` records with seq greater than `seq`, in seq order. Rows
    /// are returned even when their payload is damaged (see
    /// [`JournalRecord::event`]); damage SQLite itself detects is
    /// [`JournalError::Corrupt`] with `after_seq`, and a later position may
    /// still be readable.
    pub fn read_after(&self, seq: u64, limit: usize) -> Result<Vec<JournalRecord>, JournalError> {
        let conn = self.conn.lock();
        let fail = |e| classify(&self.path, "reading rows", Some(seq), e);
        let mut statement = conn
            .prepare_cached(
                "SELECT seq, event_id, ts, event_type, region, stream_ms, payload
                 FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map(
                params![
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                record_from_row,
            )
            .map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    /// The cursor from which a replay covers every event with `ts >= ts`:
    /// the seq just before the first such event (the last seq when none).
    /// Events are stamped before they are queued, so ts is only roughly
    /// ordered by seq; starting here may replay a few older events, which
    /// the sinks ignore as duplicates, and never skips a newer one.
    pub fn seq_at_time(&self, ts: f64) -> Result<u64, JournalError> {
        let conn = self.conn.lock();
        let first: Option<i64> = conn
            .query_row(
                "SELECT MIN(seq) FROM journal WHERE ts >= ?1",
                params![ts],
                |row| row.get(0),
            )
            .map_err(|e| classify(&self.path, "finding a time", None, e))?;
        drop(conn);
        match first {
            Some(seq) => Ok(u64::try_from(seq).unwrap_or(0).saturating_sub(1)),
            None => self.last_seq(),
        }
    }

    pub fn seq_of_event(&self, event_id: &str) -> Result<Option<u64>, JournalError> {
        let conn = self.conn.lock();
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM journal WHERE event_id = ?1",
                params![event_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| classify(&self.path, "finding an event id", None, e))?;
        Ok(seq.and_then(|seq| u64::try_from(seq).ok()))
    }

    /// The newest seq (0 when empty).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        let conn = self.conn.lock();
        schema::read_tip(&conn, &self.path).map(|tip| tip.last_seq)
    }

    /// The oldest seq still stored (0 when empty): a cursor below it means
    /// retention removed events the reader never saw.
    pub fn first_seq(&self) -> Result<u64, JournalError> {
        let conn = self.conn.lock();
        let seq: Option<i64> = conn
            .query_row("SELECT MIN(seq) FROM journal", [], |row| row.get(0))
            .map_err(|e| classify(&self.path, "reading the first row", None, e))?;
        Ok(seq.and_then(|seq| u64::try_from(seq).ok()).unwrap_or(0))
    }
}

/// Builds a record without failing on odd column types, so one damaged row
/// is reported by `JournalRecord::event` instead of hiding the rows after it.
fn record_from_row(row: &Row<'_>) -> rusqlite::Result<JournalRecord> {
    let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
    let stream_ms = integer_lossy(row.get_ref(5)?);
    Ok(JournalRecord {
        seq,
        event_id: text_lossy(row.get_ref(1)?),
        ts: match row.get_ref(2)? {
            ValueRef::Real(value) => value,
            ValueRef::Integer(value) => value as f64,
            _ => 0.0,
        },
        event_type: text_lossy(row.get_ref(3)?),
        region: text_lossy(row.get_ref(4)?),
        stream_id: format!("{stream_ms}-{seq}"),
        payload: text_lossy(row.get_ref(6)?),
    })
}

fn text_lossy(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        ValueRef::Integer(value) => value.to_string(),
        ValueRef::Real(value) => value.to_string(),
        ValueRef::Null => String::new(),
    }
}

fn integer_lossy(value: ValueRef<'_>) -> i64 {
    match value {
        ValueRef::Integer(value) => value,
        ValueRef::Real(value) => value as i64,
        _ => 0,
    }
}
