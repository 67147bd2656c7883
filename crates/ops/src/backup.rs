//! `tbg backup`: a PostgreSQL custom-format dump (compressed) plus a
//! manifest, both taken from one exported snapshot so that the row counts
//! are exactly the rows in the dump.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio_postgres::IsolationLevel;

use crate::pg::{self, PgTarget};
use crate::retention::{
    apply_retention, backup_stamp, manifest_path_of, Retention, RetentionReport,
};
use crate::{BackupLock, OpsError, DAILY_DIR};

/// Version of the manifest layout; a restore refuses other versions.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// `<stamp>.manifest.json` next to every `<stamp>.dump`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// When the snapshot was taken (RFC 3339, UTC; slightly before it).
    pub created_at: String,
    pub database: String,
    pub server_version: String,
    /// Major version of the pg_dump that wrote the archive.
    pub pg_dump_major: u32,
    /// Highest `schema_migrations.version`; `None` without that table.
    pub schema_version: Option<i32>,
    /// The TimescaleDB extension version, when installed.
    pub timescaledb_version: Option<String>,
    /// File name of the dump (same dir).
    pub dump_file: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// `schema.table` -> rows, every user table.
    pub row_counts: BTreeMap<String, i64>,
    /// The journal seq the collector had committed to PostgreSQL in the
    /// dumped snapshot (`collector_cursor`, sink `postgres`): the collector
    /// moves it in the same transaction as the events, so every event up to
    /// it is in the dump and none after it. `tbg collector --replay --from
    /// seq:<cursor + 1>` brings a restore forward. `None` without that table
    /// and in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_cursor: Option<u64>,
}

/// Settings of one PostgreSQL backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub backup_dir: PathBuf,
    pub retention: Retention,
    /// Directory of pg_dump/pg_restore to prefer.
    pub pg_bin_dir: Option<PathBuf>,
}

/// What a backup wrote and deleted.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub dump: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub retention: RetentionReport,
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// SHA-256 (hex) and size of a file.
pub(crate) async fn digest_file(path: &Path) -> Result<(String, u64), OpsError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(OpsError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .await
            .map_err(OpsError::io("cannot read", path))?;
        if read == 0 {
            break;
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
        size += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Dumps the database of `database_url` into `<backup_dir>/daily/<stamp>.dump`
/// with its manifest, then applies retention. Holds the backup-dir lock.
pub async fn backup_postgres(
    database_url: &str,
    options: &BackupOptions,
) -> Result<BackupReport, OpsError> {
    let daily_dir = options.backup_dir.join(DAILY_DIR);
    tokio::fs::create_dir_all(&daily_dir)
        .await
        .map_err(OpsError::io("cannot create", &daily_dir))?;
    let _lock = BackupLock::acquire(&options.backup_dir)?;
    let target = PgTarget::parse(database_url)?;
    let started = OffsetDateTime::now_utc();
    let stamp = backup_stamp(started);
    let dump = daily_dir.join(format!("{stamp}.dump"));
    let manifest_path = manifest_path_of(&dump);
    if dump.exists() {
        return Err(OpsError::Invalid {
            what: "backup",
            detail: format!(
                "{} already exists (two backups in one second?)",
                dump.display()
            ),
        });
    }
    let partial = daily_dir.join(format!("{stamp}.dump.partial"));

    let mut client = target.connect().await?;
    let (server_version, server_major) = pg::server_version(&client).await?;
    let pg_dump = pg::find_tool("pg_dump", server_major, options.pg_bin_dir.as_deref()).await?;
    let pg_dump_major = pg::tool_major(&pg_dump).await.unwrap_or(server_major);

    // The transaction stays open until pg_dump is done: pg_dump imports its
    // snapshot, so the dump holds exactly the rows counted here.
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(OpsError::pg("starting the snapshot transaction"))?;
    let snapshot: String = transaction
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(OpsError::pg("exporting the snapshot"))?
        .get(0);
    let tables = pg::user_tables(&transaction).await?;
    let row_counts = pg::row_counts(&transaction, &tables).await?;
    let schema_version = if tables.iter().any(|t| t == "public.schema_migrations") {
        transaction
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await
            .map_err(OpsError::pg("reading the schema version"))?
            .get::<_, Option<i32>>(0)
    } else {
        None
    };
    let timescaledb_version = pg::timescaledb_version(&transaction).await?;
    let collector_cursor = if tables.iter().any(|t| t == "public.collector_cursor") {
        pg::collector_cursor(&transaction).await?
    } else {
        None
    };

    let result = pg::run_tool(
        &pg_dump,
        target
            .command(&pg_dump)
            .arg("--format=custom")
            .arg(format!("--snapshot={snapshot}"))
            .arg("--file")
            .arg(&partial),
    )
    .await;
    let _ = transaction.commit().await;
    if let Err(error) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    let (sha256, size_bytes) = digest_file(&partial).await?;
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        created_at: rfc3339(started),
        database: target.database(),
        server_version,
        pg_dump_major,
        schema_version,
        timescaledb_version,
        dump_file: format!("{stamp}.dump"),
        size_bytes,
        sha256,
        row_counts,
        collector_cursor,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|error| OpsError::Invalid {
        what: "writing the manifest",
        detail: error.to_string(),
    })?;
    let manifest_partial = daily_dir.join(format!("{stamp}.manifest.json.partial"));
    tokio::fs::write(&manifest_partial, json)
        .await
        .map_err(OpsError::io("cannot write", &manifest_partial))?;
    // Manifest first: a dump is never visible without its manifest.
    tokio::fs::rename(&manifest_partial, &manifest_path)
        .await
        .map_err(OpsError::io("cannot rename", &manifest_path))?;
    tokio::fs::rename(&partial, &dump)
        .await
        .map_err(OpsError::io("cannot rename", &dump))?;
    let retention = apply_retention(&options.backup_dir, options.retention)?;
    Ok(BackupReport {
        dump,
        manifest_path,
        manifest,
        retention,
    })
}
