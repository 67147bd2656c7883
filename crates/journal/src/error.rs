use std::path::PathBuf;

/// Everything that can go wrong with a journal. Messages name the file and,
/// where SQLite said something, what it said.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open journal {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a SQLite database, or SQLite found it damaged
    /// (truncated, overwritten). `after_seq` is the read position when the
    /// damage was met (the seq the read started after), when known.
    #[error("journal {path} is corrupt{}: {detail}", after_seq.map(|seq| format!(" (reading after seq {seq})")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        after_seq: Option<u64>,
        detail: String,
    },
    /// A valid SQLite database that is not a journal (no `journal` table).
    #[error("{path} is a sqlite database but not an event journal")]
    NotAJournal { path: PathBuf },
    #[error("journal {path} has schema version {found}, this build reads version {expected}")]
    SchemaVersion {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    #[error("journal {path}: {operation} failed: {source}")]
    Sqlite {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row whose payload is not a valid event; the collector logs
    /// it and moves on to `seq + 1`.
    #[error("journal row seq {seq} does not parse as an event: {detail}")]
    BadRow { seq: u64, detail: String },
    #[error("seq {seq} was never appended (last appended seq is {last_appended})")]
    UnknownSeq { seq: u64, last_appended: u64 },
    /// The stage ring has no room: SQLite has not kept up (disk full,
    /// failing or too slow) for as long as the ring lasts. Nothing was
    /// stored; appends succeed again once the writer commits and reclaims.
    #[error("journal is full: the stage ring holds {used_bytes} of {capacity_bytes} bytes not yet in SQLite, no room for a {record_bytes}-byte event")]
    Full {
        capacity_bytes: u64,
        used_bytes: u64,
        record_bytes: u64,
    },
    /// The stage file cannot be created or written.
    #[error("journal stage file {path}: {detail}")]
    Stage { path: PathBuf, detail: String },
    /// `append` after `close` (through another handle): nothing was stored.
    #[error("journal is closed; the event was not journaled")]
    AppendAfterClose,
    #[error("journal writer has stopped before seq {seq} was committed")]
    Closed { seq: u64 },
    #[error("journal {path}: {detail}")]
    Retention { path: PathBuf, detail: String },
    #[error("cannot start journal writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("journal writer cannot run on CPUs {cpus:?}: {source}")]
    WriterCpus {
        cpus: Vec<usize>,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} closed with {unwritten} events not written: {detail}")]
    Unflushed {
        path: PathBuf,
        unwritten: u64,
        detail: String,
    },
}

/// Whether SQLite says the file is damaged or not a database at all.
pub(crate) fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

/// Maps a SQLite error to `Corrupt` when it is corruption, else `Sqlite`.
pub(crate) fn classify(
    path: &std::path::Path,
    operation: &'static str,
    after_seq: Option<u64>,
    source: rusqlite::Error,
) -> JournalError {
    if is_corruption(&source) {
        JournalError::Corrupt {
            path: path.to_path_buf(),
            after_seq,
            detail: format!("{operation}: {source}"),
        }
    } else {
        JournalError::Sqlite {
            path: path.to_path_buf(),
            operation,
            source,
        }
    }
}
