use thiserror::Error;

/// Errors of the collector; every message names what it was doing.
#[derive(Debug, Error)]
pub enum CollectorError {
    #[error("postgresql: {context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("redis: {context}: {source}")]
    Redis {
        context: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("journal: {0}")]
    Source(String),
    /// SQLite found the journal damaged while reading after `after_seq`
    /// (when known); later positions may still be readable.
    #[error("journal is corrupt{}: {detail}", after_seq.map(|seq| format!(" (reading after seq {seq})")).unwrap_or_default())]
    JournalCorrupt {
        after_seq: Option<u64>,
        detail: String,
    },
    /// One journal row that cannot be read; the rows around it can.
    #[error("journal row seq {seq} cannot be read: {detail}")]
    JournalBadRow { seq: u64, detail: String },
    #[error("migration {file} was changed after it was applied (recorded checksum {recorded}, embedded checksum {embedded})")]
    MigrationChanged {
        file: String,
        recorded: String,
        embedded: String,
    },
    #[error("database has migration {version} ({name}) which this collector does not know: it is newer than this binary")]
    MigrationUnknown { version: i32, name: String },
    #[error("invalid --from value {value:?}: {reason}")]
    InvalidReplayFrom { value: String, reason: String },
    /// The second lane found the stored cursor not where the first lane left it.
    #[error(
        "postgresql cursor is not at seq {expected} where the first half of the batch left it"
    )]
    CursorConflict { expected: u64 },
    #[error("{sink} write timed out after {seconds} s")]
    Timeout { sink: &'static str, seconds: u64 },
}

impl CollectorError {
    /// Whether the store refused the data itself (the same write would fail
    /// again however often it is retried), as opposed to a connection or
    /// server problem that a retry outlives.
    pub fn is_data_error(&self) -> bool {
        match self {
            CollectorError::Postgres { source, .. } => source.code().is_some_and(|code| {
                // 22: data exception, 23: integrity constraint violation,
                // 54: program limit exceeded (e.g. an index row too large).
                let class = code.code().get(..2).unwrap_or("");
                matches!(class, "22" | "23" | "54")
            }),
            CollectorError::Redis { source, .. } => {
                source.kind() == redis::ErrorKind::ResponseError
                    && source.to_string().contains("Invalid stream ID")
            }
            _ => false,
        }
    }

    pub(crate) fn pg(
        context: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> CollectorError {
        move |source| CollectorError::Postgres { context, source }
    }

    pub(crate) fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> CollectorError {
        move |source| CollectorError::Redis { context, source }
    }
}
