//! `tbg restore` and `tbg verify-backup`: a backup is validated against its
//! manifest (size, checksum, archive readable, required tables) before
//! anything is touched; a restore goes into an empty or new database only,
//! unless asked to replace the objects of a non-empty one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::error::SqlState;

use crate::backup::{digest_file, rfc3339, Manifest, MANIFEST_FORMAT_VERSION};
use crate::pg::{self, quote_ident, PgTarget};
use crate::retention::{manifest_path_of, parse_stamp};
use crate::OpsError;

/// Tables every tbg database has; an archive without them is not ours.
pub const REQUIRED_TABLES: &[&str] = &[
    "public.schema_migrations",
    "public.collector_cursor",
    "public.blocks",
    "public.users",
    "public.workers",
    "public.mining_events",
    "public.shares",
];

/// How long before the manifest's `created_at` a time-based replay starts
/// (manifests without a collector cursor). The collector writes an event to
/// PostgreSQL a batch wait (1 s by default, more when it lags) after the
/// event's time, so events stamped shortly before the dump can be missing
/// from it; replaying a few minutes more costs nothing (stored events are
/// skipped).
pub const REPLAY_TIME_MARGIN: Duration = Duration::from_secs(600);

/// The command that brings a restored database up to the present. With the
/// database's collector cursor it is exact: the journal from the seq after
/// the cursor (`--from seq:N`). Without one (older manifests), from
/// [`REPLAY_TIME_MARGIN`] before `created_at`.
pub fn replay_command(collector_cursor: Option<u64>, created_at: &str) -> String {
    let from = match collector_cursor {
        Some(cursor) => format!("seq:{}", cursor.saturating_add(1)),
        None => parse_created_at(created_at)
            .map(|at| rfc3339(at - REPLAY_TIME_MARGIN))
            .unwrap_or_else(|| created_at.to_string()),
    };
    format!("tbg collector --replay --from {from}")
}

/// Manifests are small; a huge "manifest" is not one.
const MANIFEST_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A backup whose file matches its manifest and lists cleanly.
#[derive(Debug, Clone)]
pub struct ValidatedBackup {
    pub dump: PathBuf,
    pub manifest: Manifest,
    /// `schema.table` of every TABLE entry of the archive.
    pub archive_tables: Vec<String>,
    /// Time since `created_at` (zero if in the future).
    pub age: Duration,
}

fn created_at_time(manifest: &Manifest) -> Option<OffsetDateTime> {
    parse_created_at(&manifest.created_at)
}

fn parse_created_at(created_at: &str) -> Option<OffsetDateTime> {
    // "2026-11-25T17:57:04Z" -> the file stamp "20261125T175704Z".
    let stamp: String = created_at
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    parse_stamp(&stamp)
}

/// `pg_restore --list` TABLE entries as `schema.table`.
fn archive_tables(listing: &str) -> Vec<String> {
    let mut tables = Vec::new();
    for line in listing.lines() {
        if line.starts_with(';') {
            continue;
        }
        // "216; 1259 16385 TABLE public blocks postgres"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(&"TABLE"), Some(schema), Some(name)) =
            (words.get(3), words.get(4), words.get(5))
        {
            if *schema != "DATA" {
                tables.push(format!("{schema}.{name}"));
            }
        }
    }
    tables.sort();
    tables.dedup();
    tables
}

/// Checks a backup file (the `.dump` or its `.manifest.json`) without
/// touching any database: exists, not empty, manifest present and of a
/// known format, size and SHA-256 as recorded, `pg_restore --list` reads
/// it, required tables present.
pub async fn validate_backup(
    file: &Path,
    pg_bin_dir: Option<&Path>,
) -> Result<ValidatedBackup, OpsError> {
    let dump = match file.file_name().and_then(|n| n.to_str()) {
        Some(name) if name.ends_with(".manifest.json") => {
            let stem = name.trim_end_matches(".manifest.json");
            file.with_file_name(format!("{stem}.dump"))
        }
        _ => file.to_path_buf(),
    };
    let metadata = match tokio::fs::metadata(&dump).await {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpsError::NotFound { path: dump })
        }
        Err(error) => {
            return Err(OpsError::Io {
                context: "cannot read",
                path: dump,
                source: error,
            })
        }
    };
    if !metadata.is_file() {
        return Err(OpsError::NotAnArchive {
            path: dump,
            detail: "not a regular file".into(),
        });
    }
    if metadata.len() == 0 {
        return Err(OpsError::EmptyFile { path: dump });
    }
    let manifest_path = manifest_path_of(&dump);
    let manifest_size = match tokio::fs::metadata(&manifest_path).await {
        Ok(metadata) => metadata.len(),
        Err(_) => {
            return Err(OpsError::ManifestMissing {
                dump,
                manifest: manifest_path,
            })
        }
    };
    if manifest_size > MANIFEST_MAX_BYTES {
        return Err(OpsError::ManifestInvalid {
            path: manifest_path,
            reason: format!("{manifest_size} bytes, too large for a manifest"),
        });
    }
    let text = tokio::fs::read(&manifest_path)
        .await
        .map_err(OpsError::io("cannot read", &manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|error| OpsError::ManifestInvalid {
            path: manifest_path.clone(),
            reason: error.to_string(),
        })?;
    if manifest.format_version != MANIFEST_FORMAT_VERSION {
        return Err(OpsError::ManifestInvalid {
            path: manifest_path,
            reason: format!(
                "format version {} (this tbg reads {MANIFEST_FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    let Some(created_at) = created_at_time(&manifest) else {
        return Err(OpsError::ManifestInvalid {
            path: manifest_path,
            reason: format!(
                "created_at {:?} is not a UTC RFC 3339 time",
                manifest.created_at
            ),
        });
    };
    if metadata.len() != manifest.size_bytes {
        return Err(OpsError::SizeMismatch {
            path: dump,
            expected: manifest.size_bytes,
            actual: metadata.len(),
        });
    }
    let (sha256, _) = digest_file(&dump).await?;
    if !sha256.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(OpsError::ChecksumMismatch {
            path: dump,
            expected: manifest.sha256.clone(),
            actual: sha256,
        });
    }
    let pg_restore = pg::find_tool("pg_restore", manifest.pg_dump_major, pg_bin_dir).await?;
    let listing = pg::run_tool(
        &pg_restore,
        tokio::process::Command::new(&pg_restore)
            .arg("--list")
            .arg(&dump)
            .stdin(std::process::Stdio::null()),
    )
    .await
    .map_err(|error| OpsError::NotAnArchive {
        path: dump.clone(),
        detail: error.to_string(),
    })?;
    let tables = archive_tables(&listing);
    let missing: Vec<String> = REQUIRED_TABLES
        .iter()
        .filter(|required| !tables.iter().any(|t| t == *required))
        .map(|t| t.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(OpsError::MissingTables {
            path: dump,
            tables: missing,
        });
    }
    let age = (OffsetDateTime::now_utc() - created_at)
        .try_into()
        .unwrap_or(Duration::ZERO);
    Ok(ValidatedBackup {
        dump,
        manifest,
        archive_tables: tables,
        age,
    })
}

/// What a restore would do; nothing has been changed to build it.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub backup: ValidatedBackup,
    pub target_database: String,
    pub target_exists: bool,
    /// User tables already in the target (empty = an empty database).
    pub target_tables: Vec<String>,
    pub timescaledb: bool,
}

impl RestorePlan {
    /// The command that brings the restored database up to the present,
    /// from the manifest (see [`replay_command`]).
    pub fn replay_command(&self) -> String {
        let manifest = &self.backup.manifest;
        replay_command(manifest.collector_cursor, &manifest.created_at)
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let manifest = &self.backup.manifest;
        writeln!(f, "backup:          {}", self.backup.dump.display())?;
        writeln!(
            f,
            "created at:      {} ({} h ago) from database {} (PostgreSQL {}), schema version {}",
            manifest.created_at,
            self.backup.age.as_secs() / 3600,
            manifest.database,
            manifest.server_version,
            manifest
                .schema_version
                .map_or("none".to_string(), |v| v.to_string())
        )?;
        writeln!(
            f,
            "checks:          size {} bytes and sha256 match the manifest; archive lists cleanly; required tables present",
            manifest.size_bytes
        )?;
        let state = match (self.target_exists, self.target_tables.len()) {
            (false, _) => "does not exist: will be created".to_string(),
            (true, 0) => "exists and is empty".to_string(),
            (true, n) => format!("exists and is NOT empty ({n} tables)"),
        };
        writeln!(f, "target database: {} ({state})", self.target_database)?;
        if self.timescaledb {
            writeln!(
                f,
                "timescaledb:     timescaledb_pre_restore() before, timescaledb_post_restore() after"
            )?;
        }
        writeln!(f, "tables and rows to restore:")?;
        for (table, rows) in &manifest.row_counts {
            writeln!(f, "  {table:<32} {rows:>12}")?;
        }
        match manifest.collector_cursor {
            Some(cursor) => writeln!(
                f,
                "collector cursor: journal seq {cursor} (the dump holds every event up to it, none after)"
            )?,
            None => writeln!(
                f,
                "collector cursor: not in the manifest: the replay starts {} min before created at (stored events are skipped); the restored database's cursor is used after the restore",
                REPLAY_TIME_MARGIN.as_secs() / 60
            )?,
        }
        write!(f, "afterwards:      {}", self.replay_command())
    }
}

/// Options of [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Replace a non-empty database: restore into a staging database, then
    /// swap names; the old database is kept under another name.
    pub clean: bool,
    pub pg_bin_dir: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub database: String,
    pub created_database: bool,
    /// With `clean`: the name the replaced database now has (kept, not dropped).
    pub previous_database: Option<String>,
    /// Rows per table after the restore (equal to the manifest's).
    pub row_counts: BTreeMap<String, i64>,
    /// The restored database's collector cursor (journal seq of the last
    /// event it holds); `None` without a `postgres` cursor row.
    pub collector_cursor: Option<u64>,
    /// The command that brings the restored database up to the present:
    /// from the seq after [`Self::collector_cursor`], else as the plan says.
    pub replay_command: String,
}

/// A connection to the server's maintenance database (to create or drop one).
async fn admin_client(target: &PgTarget) -> Result<tokio_postgres::Client, OpsError> {
    match target.with_database("postgres").connect().await {
        Ok(client) => Ok(client),
        Err(_) => target.with_database("template1").connect().await,
    }
}

fn is_missing_database(error: &OpsError) -> bool {
    matches!(error, OpsError::Postgres { source, .. }
        if source.code() == Some(&SqlState::INVALID_CATALOG_NAME))
}

/// Validates `file` and looks at the target; changes nothing.
pub async fn plan_restore(
    file: &Path,
    database_url: &str,
    pg_bin_dir: Option<&Path>,
) -> Result<RestorePlan, OpsError> {
    let backup = validate_backup(file, pg_bin_dir).await?;
    let target = PgTarget::parse(database_url)?;
    let (target_exists, target_tables, target_timescaledb) = match target.connect().await {
        Ok(client) => (
            true,
            pg::user_tables(&client).await?,
            pg::timescaledb_version(&client).await?.is_some(),
        ),
        Err(error) if is_missing_database(&error) => (false, Vec::new(), false),
        Err(error) => return Err(error),
    };
    Ok(RestorePlan {
        timescaledb: target_timescaledb || backup.manifest.timescaledb_version.is_some(),
        backup,
        target_database: target.database(),
        target_exists,
        target_tables,
    })
}

/// Carries out a plan: creates the database if needed and restores into it.
/// A non-empty database is refused unless `clean`; then the backup goes into
/// a staging database first, and only once it is complete and its row
/// counts match does the staging database take the target's name (the old
/// one is kept, renamed, in [`RestoreReport::previous_database`]).
/// Row counts are checked against the manifest.
pub async fn restore(
    plan: &RestorePlan,
    database_url: &str,
    options: &RestoreOptions,
) -> Result<RestoreReport, OpsError> {
    let target = PgTarget::parse(database_url)?;
    let database = target.database();
    let existing_tables = match target.connect().await {
        Ok(client) => Some(pg::user_tables(&client).await?),
        Err(error) if is_missing_database(&error) => None,
        Err(error) => return Err(error),
    };
    let replace = match &existing_tables {
        Some(tables) if !tables.is_empty() => {
            if !options.clean {
                return Err(OpsError::TargetNotEmpty {
                    database,
                    tables: tables.clone(),
                });
            }
            true
        }
        _ => false,
    };
    let (into, created_database) = if replace {
        let prefix: String = database.chars().take(40).collect();
        let staging = format!("{prefix}_restore_{:08x}", rand::random::<u32>());
        create_database(&target, &staging).await?;
        (staging, true)
    } else if existing_tables.is_none() {
        create_database(&target, &database).await?;
        (database.clone(), true)
    } else {
        (database.clone(), false)
    };
    let result = restore_into(&plan.backup, &target.with_database(&into), options).await;
    let restored = match result {
        Ok(restored) => restored,
        Err(error) => {
            if created_database {
                // A failed restore must not leave a half-made database behind.
                drop_database(&target, &into).await;
            }
            return Err(error);
        }
    };
    let previous_database = if replace {
        let prefix: String = database.chars().take(40).collect();
        let previous = format!(
            "{prefix}_before_restore_{}",
            crate::retention::backup_stamp(OffsetDateTime::now_utc()).to_lowercase()
        );
        if let Err(error) = swap_databases(&target, &database, &into, &previous).await {
            drop_database(&target, &into).await;
            return Err(error);
        }
        Some(previous)
    } else {
        None
    };
    let manifest = &plan.backup.manifest;
    Ok(RestoreReport {
        database,
        created_database,
        previous_database,
        row_counts: restored.row_counts,
        collector_cursor: restored.collector_cursor,
        replay_command: replay_command(
            restored.collector_cursor.or(manifest.collector_cursor),
            &manifest.created_at,
        ),
    })
}

async fn create_database(target: &PgTarget, database: &str) -> Result<(), OpsError> {
    let admin = admin_client(target).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
        .map_err(OpsError::pg(format!("creating database {database}")))
}

/// `database` -> `previous`, `staging` -> `database`, in one transaction;
/// the sessions on `database` are ended first (a rename needs it unused).
async fn swap_databases(
    target: &PgTarget,
    database: &str,
    staging: &str,
    previous: &str,
) -> Result<(), OpsError> {
    let mut admin = admin_client(target).await?;
    let mut last_error = None;
    // A client may reconnect between the terminate and the rename: retry.
    for _ in 0..5 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map_err(OpsError::pg(format!("ending the sessions on {database}")))?;
        let transaction = admin
            .transaction()
            .await
            .map_err(OpsError::pg("starting the rename transaction"))?;
        let renamed = transaction
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}",
                quote_ident(database),
                quote_ident(previous),
                quote_ident(staging),
                quote_ident(database)
            ))
            .await;
        match renamed {
            Ok(()) => {
                return transaction
                    .commit()
                    .await
                    .map_err(OpsError::pg(format!("renaming {staging} to {database}")));
            }
            Err(error) => {
                let _ = transaction.rollback().await;
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    match last_error {
        Some(source) => Err(OpsError::Postgres {
            context: format!("renaming {staging} to {database}"),
            source,
        }),
        None => Err(OpsError::Invalid {
            what: "restore",
            detail: format!("could not rename {staging} to {database}"),
        }),
    }
}

async fn drop_database(target: &PgTarget, database: &str) {
    if let Ok(admin) = admin_client(target).await {
        let name = quote_ident(database);
        if admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .is_err()
        {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await;
        }
    }
}

/// What [`restore_into`] found in the restored database.
struct Restored {
    row_counts: BTreeMap<String, i64>,
    collector_cursor: Option<u64>,
}

/// pg_restore into `target` (which exists), then compares row counts and
/// reads the collector cursor.
async fn restore_into(
    backup: &ValidatedBackup,
    target: &PgTarget,
    options: &RestoreOptions,
) -> Result<Restored, OpsError> {
    let database = target.database();
    let client = target.connect().await?;
    let timescaledb = backup.manifest.timescaledb_version.is_some()
        || pg::timescaledb_version(&client).await?.is_some();
    if timescaledb {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await
            .map_err(OpsError::pg("creating the timescaledb extension"))?;
        client
            .batch_execute("SELECT timescaledb_pre_restore()")
            .await
            .map_err(OpsError::pg("timescaledb_pre_restore()"))?;
    }
    let pg_restore = pg::find_tool(
        "pg_restore",
        backup.manifest.pg_dump_major,
        options.pg_bin_dir.as_deref(),
    )
    .await?;
    let mut command = target.command(&pg_restore);
    // A conninfo `dbname`: a plain name containing '=' would be misread.
    command.arg(format!(
        "--dbname=dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    ));
    command.args(["--no-owner", "--exit-on-error", "--single-transaction"]);
    command.arg(&backup.dump);
    let restored = pg::run_tool(&pg_restore, &mut command).await;
    if timescaledb {
        client
            .batch_execute("SELECT timescaledb_post_restore()")
            .await
            .map_err(OpsError::pg("timescaledb_post_restore()"))?;
    }
    restored?;
    let tables: Vec<String> = backup.manifest.row_counts.keys().cloned().collect();
    let counts = pg::row_counts(&client, &tables).await?;
    let mismatches: Vec<String> = backup
        .manifest
        .row_counts
        .iter()
        .filter_map(|(table, expected)| {
            let actual = counts.get(table).copied().unwrap_or(-1);
            (actual != *expected).then(|| format!("{table}: {actual} rows, manifest {expected}"))
        })
        .collect();
    if !mismatches.is_empty() {
        return Err(OpsError::RowCountMismatch {
            database,
            mismatches,
        });
    }
    // The table is required (validate_backup), so it was restored.
    let collector_cursor = pg::collector_cursor(&client).await?;
    Ok(Restored {
        row_counts: counts,
        collector_cursor,
    })
}

/// What `verify-backup` checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub backup: ValidatedBackup,
    pub scratch_database: String,
    /// Rows per table in the scratch restore (equal to the manifest's).
    pub row_counts: BTreeMap<String, i64>,
}

/// The plan's checks (exists, size, age, archive lists, required tables),
/// then a restore into a scratch database `tbg_verify_<random>` on the
/// server of `database_url`, row counts compared with the manifest, and
/// the scratch database dropped whatever happened.
pub async fn verify_backup(
    file: &Path,
    database_url: &str,
    max_age: Option<Duration>,
    pg_bin_dir: Option<&Path>,
) -> Result<VerifyReport, OpsError> {
    let backup = validate_backup(file, pg_bin_dir).await?;
    if let Some(max_age) = max_age {
        if backup.age > max_age {
            return Err(OpsError::TooOld {
                path: backup.dump.clone(),
                age_hours: backup.age.as_secs() / 3600,
                max_hours: max_age.as_secs() / 3600,
            });
        }
    }
    let server = PgTarget::parse(database_url)?;
    let scratch_database = format!("tbg_verify_{:016x}", rand::random::<u64>());
    let scratch = server.with_database(&scratch_database);
    let admin = admin_client(&server).await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {}",
            quote_ident(&scratch_database)
        ))
        .await
        .map_err(OpsError::pg(format!(
            "creating scratch database {scratch_database}"
        )))?;
    let options = RestoreOptions {
        clean: false,
        pg_bin_dir: pg_bin_dir.map(Path::to_path_buf),
    };
    let result = restore_into(&backup, &scratch, &options).await;
    drop_database(&server, &scratch_database).await;
    Ok(VerifyReport {
        row_counts: result?.row_counts,
        backup,
        scratch_database,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_listing_yields_tables_not_data_entries() {
        let listing = ";\n; Archive created at 2026-11-25\n215; 1259 16390 TABLE public blocks postgres\n3350; 0 16390 TABLE DATA public blocks postgres\n216; 1259 16391 INDEX public blocks_user postgres\n";
        assert_eq!(archive_tables(listing), vec!["public.blocks".to_string()]);
    }

    #[test]
    fn replay_starts_after_the_cursor_or_a_margin_before_the_backup_time() {
        assert_eq!(
            replay_command(Some(1097), "2026-11-25T20:35:31Z"),
            "tbg collector --replay --from seq:1098"
        );
        assert_eq!(
            replay_command(Some(0), "2026-11-25T20:35:31Z"),
            "tbg collector --replay --from seq:1"
        );
        assert_eq!(
            replay_command(None, "2026-11-25T20:35:31Z"),
            "tbg collector --replay --from 2026-11-25T20:25:31Z"
        );
    }
}
