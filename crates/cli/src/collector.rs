//! `tbg collector`: the journal to Redis Streams and PostgreSQL.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tbg_collector::{BatchConfig, Collector, CollectorConfig, PostgresConfig, RedisConfig};
use tbg_config::Config;
use tbg_journal::{JournalError, JournalReader};

fn collector_config(config: &Config) -> CollectorConfig {
    let section = &config.collector;
    CollectorConfig {
        postgres: section
            .postgres_url
            .clone()
            .map(|conninfo| PostgresConfig { conninfo }),
        redis: section
            .redis_url
            .clone()
            .or_else(|| config.redis.url.clone())
            .map(|url| RedisConfig {
                url,
                stream_maxlen: section.stream_maxlen,
            }),
        batch: BatchConfig {
            max_events: section.batch_max,
            max_wait: Duration::from_millis(section.batch_wait_ms),
            ..BatchConfig::default()
        },
        ..CollectorConfig::default()
    }
}

/// Longest pause between two attempts to open a journal that is not there
/// or not created yet (the pause doubles from [`JOURNAL_RETRY_FIRST`]).
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(2);
const JOURNAL_RETRY_FIRST: Duration = Duration::from_millis(50);
/// While waiting, the reason is logged again this often.
const JOURNAL_WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// What the file at the journal path is, as far as opening it goes.
enum JournalFile {
    Ready(JournalReader),
    /// No file yet: the pool has not started.
    Missing(JournalError),
    /// A SQLite file without the journal's schema and without anything
    /// else: the pool is creating it (or is about to).
    NotCreatedYet(JournalError),
}

/// One attempt (blocking: SQLite). A foreign database, a damaged file or a
/// newer schema is an error; an empty file or one whose schema is half
/// created is [`JournalFile::NotCreatedYet`].
fn try_open_journal(path: &Path) -> Result<JournalFile, JournalError> {
    match JournalReader::open(path) {
        Ok(reader) => Ok(JournalFile::Ready(reader)),
        Err(error) if !path.exists() => Ok(JournalFile::Missing(error)),
        Err(error @ JournalError::NotAJournal { .. })
        | Err(error @ JournalError::SchemaVersion { found: 0, .. }) => {
            match only_journal_objects(path) {
                Ok(true) => Ok(JournalFile::NotCreatedYet(error)),
                // Another program's tables, or unreadable now: the reader's
                // own error says what the file is.
                Ok(false) | Err(_) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// Whether the SQLite file at `path` holds nothing but (part of) the
/// journal's schema: no table or index of another program.
fn only_journal_objects(path: &Path) -> rusqlite::Result<bool> {
    let connection = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(1))?;
    let others: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_master
         WHERE name NOT IN ('journal', 'journal_ts') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |row| row.get(0),
    )?;
    Ok(others == 0)
}

/// Opens the journal, waiting (bounded backoff) while the pool has not
/// created it: no file yet, an empty file, or a schema not yet committed.
pub(crate) async fn open_journal(config: &Config) -> Result<JournalReader> {
    let path = config.journal.path.clone();
    let mut pause = JOURNAL_RETRY_FIRST;
    let mut last_logged: Option<(bool, Instant)> = None;
    loop {
        let attempt_path = path.clone();
        let attempt = tokio::task::spawn_blocking(move || try_open_journal(&attempt_path))
            .await
            .context("journal open task")?;
        let (missing, error) = match attempt {
            Ok(JournalFile::Ready(reader)) => {
                if last_logged.is_some() {
                    tracing::info!(path = %path.display(), "journal is ready");
                }
                return Ok(reader);
            }
            Ok(JournalFile::Missing(error)) => (true, error),
            Ok(JournalFile::NotCreatedYet(error)) => (false, error),
            Err(error) => return Err(error).with_context(|| format!("journal {}", path.display())),
        };
        let log_now = match last_logged {
            None => true,
            Some((was_missing, at)) => {
                was_missing != missing || at.elapsed() >= JOURNAL_WAIT_LOG_EVERY
            }
        };
        if log_now {
            if missing {
                tracing::warn!(path = %path.display(), %error, "journal not there yet; waiting for the pool to create it");
            } else {
                tracing::info!(path = %path.display(), %error, "journal file exists but its schema is not created yet; waiting for the pool");
            }
            last_logged = Some((missing, Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = crate::shutdown_signal() => bail!("stopped before the journal was created"),
        }
        pause = (pause * 2).min(JOURNAL_RETRY_MAX);
    }
}

/// `--from seq:N`, the form `tbg restore` prints: every event from journal
/// seq N on is re-sent (the cursors are set to N - 1). Other forms (time,
/// event id) are resolved by the collector. Blocking (SQLite).
fn resolve_from(reader: &JournalReader, from: &str) -> Result<u64> {
    let Some(number) = from.trim().strip_prefix("seq:") else {
        return Ok(tbg_collector::resolve_replay_from(reader, from)?);
    };
    let seq: u64 = match number.trim().parse() {
        Ok(seq) if seq >= 1 => seq,
        _ => bail!("{number:?} is not a journal seq (seq:N with N >= 1)"),
    };
    let cursor = seq - 1;
    let last = reader.last_seq()?;
    if cursor > last {
        bail!(
            "the journal ends at seq {last}, before seq {seq}: is this the journal the database was filled from?"
        );
    }
    if let Some(first) = reader.read_after(cursor, 1)?.first() {
        if first.seq > seq {
            tracing::warn!(
                from = seq,
                first_held = first.seq,
                "the journal no longer holds seqs {seq}..{} (retention): those events cannot be replayed",
                first.seq - 1
            );
        }
    }
    Ok(cursor)
}

/// `reload`: SIGHUP re-checks the config file and names what a restart
/// would change (the sinks are built at start).
pub async fn run(
    config: &Config,
    replay_from: Option<String>,
    dry_run: bool,
    reload: (crate::reload::Reloader, Option<tokio::signal::unix::Signal>),
) -> Result<()> {
    let (mut reloader, mut hangup) = reload;
    let collector_config = collector_config(config);
    if collector_config.postgres.is_none() && collector_config.redis.is_none() {
        bail!(tbg_config::ConfigError {
            key: "collector.postgres_url".into(),
            value: String::new(),
            reason:
                "no sink configured: set collector.postgres_url (TBG_POSTGRES_URL) and/or redis.url"
                    .into(),
        });
    }
    if dry_run {
        let Some(postgres) = &collector_config.postgres else {
            bail!("--dry-run checks PostgreSQL migrations: no postgres_url configured");
        };
        let client = tbg_collector::postgres::connect(&postgres.conninfo)
            .await
            .context("PostgreSQL")?;
        let pending = tbg_collector::migrations::pending_migrations(&client).await?;
        if pending.is_empty() {
            println!("database schema is up to date");
        }
        for migration in pending {
            println!(
                "pending: {:03}_{} (sha256 {})",
                migration.version,
                migration.name,
                migration.checksum()
            );
        }
        return Ok(());
    }
    let reader = Arc::new(open_journal(config).await?);
    if let Some(from) = replay_from {
        let resolving = Arc::clone(&reader);
        let resolving_from = from.clone();
        let seq = tokio::task::spawn_blocking(move || resolve_from(&resolving, &resolving_from))
            .await
            .context("resolving --from")?
            .with_context(|| format!("--from {from}"))?;
        tbg_collector::replay_from(&collector_config, seq)
            .await
            .context("setting the replay cursors")?;
        tracing::info!(from = %from, after_seq = seq, "replaying the journal into the sinks");
    }
    let collector = Arc::new(Collector::start(collector_config, reader));
    // Weak: the server must not keep the collector from shutting down.
    let stats_of = Arc::downgrade(&collector);
    let metrics = tbg_metrics::MetricsServer::start_collector(
        &config.metrics.collector_bind,
        tbg_metrics::CollectorSources::new(
            Arc::new(move || stats_of.upgrade().map(|c| c.stats()).unwrap_or_default()),
            config.metrics.max_collector_lag,
        )
        .with_operator_token(config.metrics.token.clone()),
    )
    .await
    .context("metrics.collector_bind")?;
    tracing::info!(journal = %config.journal.path.display(), "collector running");
    let mut report = tokio::time::interval(Duration::from_secs(30));
    report.tick().await;
    loop {
        tokio::select! {
            _ = crate::shutdown_signal() => break,
            _ = crate::reload::next_hangup(&mut hangup) => reloader.reload_collector(),
            _ = report.tick() => {
                for stats in collector.stats() {
                    tracing::info!(
                        sink = stats.sink.name(),
                        cursor = stats.cursor,
                        lag = stats.lag,
                        written = stats.events_written,
                        errors = stats.errors,
                        up = stats.up,
                        "collector progress"
                    );
                }
            }
        }
    }
    tracing::info!("collector stopping");
    metrics.shutdown().await;
    match Arc::try_unwrap(collector) {
        Ok(collector) => collector.shutdown().await,
        Err(_) => tracing::warn!("collector still referenced; its sinks stop with the process"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &Path, sql: &str) {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection.execute_batch(sql).unwrap();
    }

    fn state(path: &Path) -> &'static str {
        match try_open_journal(path) {
            Ok(JournalFile::Ready(_)) => "ready",
            Ok(JournalFile::Missing(_)) => "missing",
            Ok(JournalFile::NotCreatedYet(_)) => "not created yet",
            Err(JournalError::NotAJournal { .. }) => "foreign",
            Err(JournalError::SchemaVersion { .. }) => "other version",
            Err(_) => "other error",
        }
    }

    #[test]
    fn a_journal_being_created_is_waited_for_a_foreign_or_newer_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);

        assert_eq!(state(&path("none.db")), "missing");

        std::fs::write(path("empty.db"), b"").unwrap();
        assert_eq!(state(&path("empty.db")), "not created yet");

        // A SQLite header but no schema: the pool opened it, has not created it.
        sqlite(
            &path("blank.db"),
            "CREATE TABLE scratch (x); DROP TABLE scratch;",
        );
        assert_eq!(state(&path("blank.db")), "not created yet");

        // The table but still version 0: read between the two parts of the
        // pool's schema commit.
        sqlite(
            &path("half.db"),
            "CREATE TABLE journal (seq INTEGER PRIMARY KEY);",
        );
        assert_eq!(state(&path("half.db")), "not created yet");

        sqlite(&path("foreign.db"), "CREATE TABLE accounts (id INTEGER);");
        assert_eq!(state(&path("foreign.db")), "foreign");

        sqlite(
            &path("newer.db"),
            "CREATE TABLE journal (seq INTEGER PRIMARY KEY); PRAGMA user_version = 2;",
        );
        assert_eq!(state(&path("newer.db")), "other version");

        std::fs::write(path("garbage.db"), vec![0x5a; 4096]).unwrap();
        assert_eq!(state(&path("garbage.db")), "other error");

        let journal =
            tbg_journal::Journal::open(tbg_journal::JournalConfig::new(path("journal.db")))
                .unwrap();
        assert_eq!(state(&path("journal.db")), "ready");
        drop(journal);
    }
}
