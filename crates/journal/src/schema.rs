//! The on-disk layout, shared by the writer and the reader.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::{classify, JournalError};

/// `PRAGMA user_version` of a journal this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "
CREATE TABLE journal (
  seq        INTEGER PRIMARY KEY,
  event_id   TEXT NOT NULL UNIQUE,
  ts         REAL NOT NULL,
  event_type TEXT NOT NULL,
  region     TEXT NOT NULL,
  stream_ms  INTEGER NOT NULL,
  payload    TEXT NOT NULL
);
CREATE INDEX journal_ts ON journal(ts);
PRAGMA user_version = 1;
";

/// The newest row: where seqs and stream ids continue from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tip {
    pub last_seq: u64,
    pub last_stream_ms: i64,
}

/// Checks the version and the table, and reads the tip. The reads touch the
/// header, the schema and the rightmost b-tree path, so a garbage file or a
/// truncated tail is noticed here.
pub(crate) fn validate(conn: &Connection, path: &Path) -> Result<Tip, JournalError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| classify(path, "reading schema version", None, e))?;
    let has_table: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'journal'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|count| count > 0)
        .map_err(|e| classify(path, "reading schema", None, e))?;
    if version != SCHEMA_VERSION {
        if version == 0 && !has_table {
            return Err(JournalError::NotAJournal {
                path: path.to_path_buf(),
            });
        }
        return Err(JournalError::SchemaVersion {
            path: path.to_path_buf(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    if !has_table {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
        });
    }
    read_tip(conn, path)
}

pub(crate) fn read_tip(conn: &Connection, path: &Path) -> Result<Tip, JournalError> {
    let tip = conn
        .query_row(
            "SELECT seq, stream_ms FROM journal ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(|e| classify(path, "reading the last row", None, e))?;
    Ok(match tip {
        Some((seq, stream_ms)) => Tip {
            last_seq: u64::try_from(seq).unwrap_or(0),
            last_stream_ms: stream_ms,
        },
        None => Tip::default(),
    })
}

/// Writer side: creates the schema in an empty database, else validates.
pub(crate) fn create_or_validate(conn: &Connection, path: &Path) -> Result<Tip, JournalError> {
    let object_count: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|e| classify(path, "reading schema", None, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| classify(path, "reading schema version", None, e))?;
    if object_count == 0 && version == 0 {
        // auto_vacuum must be chosen before the first table exists; INCREMENTAL
        // lets retention hand freed pages back to the file system.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .and_then(|()| conn.execute_batch(&format!("BEGIN; {CREATE} COMMIT;")))
            .map_err(|e| classify(path, "creating the schema", None, e))?;
        return Ok(Tip::default());
    }
    validate(conn, path)
}
