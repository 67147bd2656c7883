use std::path::PathBuf;

/// Every failure of the operations toolkit; messages say what and where.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("postgres: {context}: {source}")]
    Postgres {
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("invalid database url: {0}")]
    BadDatabaseUrl(String),
    #[error("{tool} not found (need major version >= {min_major}; looked in {searched})")]
    ToolMissing {
        tool: String,
        min_major: u32,
        searched: String,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{} is locked{}: another tbg process (backup or service) is running", path.display(), holder.as_deref().map(|pid| format!(" by pid {pid}")).unwrap_or_default())]
    Locked {
        path: PathBuf,
        holder: Option<String>,
    },
    #[error("{}: no such file", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: empty file", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{}: no manifest next to it ({} missing); not a tbg backup or an incomplete one", dump.display(), manifest.display())]
    ManifestMissing { dump: PathBuf, manifest: PathBuf },
    #[error("{}: invalid manifest: {reason}", path.display())]
    ManifestInvalid { path: PathBuf, reason: String },
    #[error("{}: size {actual} bytes, manifest says {expected}: truncated or replaced", path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{}: sha256 {actual}, manifest says {expected}: corrupt or replaced", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{}: not a readable PostgreSQL custom-format archive: {detail}", path.display())]
    NotAnArchive { path: PathBuf, detail: String },
    #[error("{}: archive lacks required tables: {}", path.display(), tables.join(", "))]
    MissingTables { path: PathBuf, tables: Vec<String> },
    #[error("{}: backup is {age_hours} h old, more than the allowed {max_hours} h", path.display())]
    TooOld {
        path: PathBuf,
        age_hours: u64,
        max_hours: u64,
    },
    #[error("target database {database} is not empty ({} tables, e.g. {}); restore into a new database, or pass --clean to replace its objects", tables.len(), tables.iter().take(3).cloned().collect::<Vec<_>>().join(", "))]
    TargetNotEmpty {
        database: String,
        tables: Vec<String>,
    },
    #[error("row counts differ from the manifest after restore into {database}: {}", mismatches.join("; "))]
    RowCountMismatch {
        database: String,
        mismatches: Vec<String>,
    },
    #[error("{what} failed: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl OpsError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> OpsError {
        let path = path.into();
        move |source| OpsError::Io {
            context,
            path,
            source,
        }
    }

    pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
        let context = context.into();
        move |source| OpsError::Postgres { context, source }
    }
}
