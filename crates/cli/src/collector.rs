//! `tbg collector`: the journal to Redis Streams and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tbg_collector::{BatchConfig, Collector, CollectorConfig, PostgresConfig, RedisConfig};
use tbg_config::Config;
use tbg_journal::JournalReader;

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

/// Opens the journal, waiting for the pool to create it if needed.
async fn open_journal(config: &Config) -> Result<JournalReader> {
    let path = &config.journal.path;
    let mut warned = false;
    loop {
        match JournalReader::open(path) {
            Ok(reader) => return Ok(reader),
            Err(error) if !path.exists() => {
                if !warned {
                    tracing::warn!(path = %path.display(), %error, "journal not there yet; waiting for the pool to create it");
                    warned = true;
                }
            }
            Err(error) => return Err(error).with_context(|| format!("journal {}", path.display())),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = crate::shutdown_signal() => bail!("stopped before the journal appeared"),
        }
    }
}

pub async fn run(config: &Config, replay_from: Option<String>, dry_run: bool) -> Result<()> {
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
    let reader = open_journal(config).await?;
    if let Some(from) = replay_from {
        let seq = tbg_collector::resolve_replay_from(&reader, &from)
            .with_context(|| format!("--from {from}"))?;
        tbg_collector::replay_from(&collector_config, seq)
            .await
            .context("setting the replay cursors")?;
        tracing::info!(from = %from, after_seq = seq, "replaying the journal into the sinks");
    }
    let collector = Arc::new(Collector::start(collector_config, Arc::new(reader)));
    // Weak: the server must not keep the collector from shutting down.
    let stats_of = Arc::downgrade(&collector);
    let metrics = tbg_metrics::MetricsServer::start_collector(
        &config.metrics.collector_bind,
        tbg_metrics::CollectorSources::new(
            Arc::new(move || stats_of.upgrade().map(|c| c.stats()).unwrap_or_default()),
            config.metrics.max_collector_lag,
        ),
    )
    .await
    .context("metrics.collector_bind")?;
    tracing::info!(journal = %config.journal.path.display(), "collector running");
    let mut report = tokio::time::interval(Duration::from_secs(30));
    report.tick().await;
    loop {
        tokio::select! {
            _ = crate::shutdown_signal() => break,
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
