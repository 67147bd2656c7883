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
    #[error("{sink} write timed out after {seconds} s")]
    Timeout { sink: &'static str, seconds: u64 },
}

impl CollectorError {
    pub(crate) fn pg(
        context: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> CollectorError {
        move |source| CollectorError::Postgres { context, source }
    }

    pub(crate) fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> CollectorError {
        move |source| CollectorError::Redis { context, source }
    }
}
