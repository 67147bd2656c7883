//! Runs one task per sink: read a batch after the sink's cursor, write it,
//! advance; on error back off and retry while the other sink goes on.
//!
//! Here: the configuration, the stats and the [`Collector`] handle. A
//! sink's task is in `sink`, its journal reads in `read`, the stores it
//! writes to in `store`.

mod read;
mod sink;
mod store;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{postgres, redis_sink, CollectorError, EventSource};

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most events per batch (the plan: 500).
    pub max_events: usize,
    /// Longest wait for a batch to fill once its first event arrived (the plan: 1 s).
    pub max_wait: Duration,
    /// Journal poll interval while waiting for events.
    pub poll_interval: Duration,
    /// Largest batch while catching up: while the journal holds more than a
    /// batch beyond the one read, each batch doubles the next one's size from
    /// `max_events` up to this (fewer, larger transactions while lagging);
    /// once caught up it is `max_events` again, so latency stays low.
    pub max_events_catching_up: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: 500,
            max_wait: Duration::from_secs(1),
            poll_interval: Duration::from_millis(20),
            max_events_catching_up: 10_000,
        }
    }
}

/// Retry delays after a failed write or connection.
#[derive(Debug, Clone)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    /// A write that takes longer counts as failed (the connection is dropped).
    pub write_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// libpq-style connection string, e.g. "host=127.0.0.1 port=5432 user=tbg dbname=tbg".
    pub conninfo: String,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// e.g. "redis://127.0.0.1:6379/".
    pub url: String,
    /// Approximate stream length (`MAXLEN ~`), default 100000.
    pub stream_maxlen: u64,
}

/// Sinks to run; a sink left `None` is not run.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub postgres: Option<PostgresConfig>,
    pub redis: Option<RedisConfig>,
    pub batch: BatchConfig,
    pub backoff: BackoffConfig,
    /// How often the PostgreSQL sink creates day partitions ahead and drops
    /// expired ones (also done on every connect). Default: hourly.
    pub maintenance_interval: Duration,
}

impl Default for CollectorConfig {
    fn default() -> CollectorConfig {
        CollectorConfig {
            postgres: None,
            redis: None,
            batch: BatchConfig::default(),
            backoff: BackoffConfig::default(),
            maintenance_interval: Duration::from_secs(3_600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkKind {
    Postgres,
    Redis,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
            SinkKind::Redis => "redis",
        }
    }
}

/// A snapshot of one sink, ready to export as metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkStats {
    pub sink: SinkKind,
    /// Last journal seq confirmed written.
    pub cursor: u64,
    /// Journal last seq at the last poll.
    pub journal_last_seq: u64,
    /// journal_last_seq - cursor.
    pub lag: u64,
    pub batches: u64,
    /// Events that were new to the store.
    pub events_written: u64,
    /// Events the store already held (replays).
    pub events_duplicate: u64,
    /// Records skipped because their payload does not parse, or because the
    /// store refused them for a data reason (see `events_rejected`).
    pub events_skipped: u64,
    /// Of `events_skipped`: records the store refused on their own (a data
    /// error that splitting the batch traced to them), logged with their seq.
    pub events_rejected: u64,
    /// Journal regions SQLite reported damaged that the sink skipped.
    pub journal_corrupt_regions: u64,
    /// Seqs skipped inside those regions (unreadable, so not delivered).
    pub journal_unreadable_seqs: u64,
    /// Failed connections or writes (each retried).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Connected and the last write succeeded.
    pub up: bool,
}

impl SinkStats {
    fn new(sink: SinkKind) -> SinkStats {
        SinkStats {
            sink,
            cursor: 0,
            journal_last_seq: 0,
            lag: 0,
            batches: 0,
            events_written: 0,
            events_duplicate: 0,
            events_skipped: 0,
            events_rejected: 0,
            journal_corrupt_regions: 0,
            journal_unreadable_seqs: 0,
            errors: 0,
            last_error: None,
            up: false,
        }
    }
}

struct SinkShared {
    stats: Mutex<SinkStats>,
    /// A replay request: the task sets its stored cursor to this before its next batch.
    rewind: Mutex<Option<u64>>,
}

/// A running collector: one task per configured sink.
pub struct Collector {
    sinks: Vec<(Arc<SinkShared>, JoinHandle<()>)>,
    shutdown: watch::Sender<bool>,
}

impl Collector {
    /// Starts the configured sinks reading from `source`. Must be called
    /// inside a tokio runtime. Connection failures are retried, never fatal.
    pub fn start(config: CollectorConfig, source: Arc<dyn EventSource>) -> Collector {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut sinks = Vec::new();
        if let Some(pg) = config.postgres.clone() {
            let shared = new_shared(SinkKind::Postgres);
            let store = store::PostgresStore::new(pg.conninfo);
            let task = tokio::spawn(sink::run_sink(
                store,
                source.clone(),
                config.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            ));
            sinks.push((shared, task));
        }
        if let Some(redis) = config.redis.clone() {
            let shared = new_shared(SinkKind::Redis);
            let store = store::RedisStore::new(redis.url, redis.stream_maxlen);
            let task = tokio::spawn(sink::run_sink(
                store,
                source.clone(),
                config.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            ));
            sinks.push((shared, task));
        }
        Collector { sinks, shutdown }
    }

    /// Stats of every running sink.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|(shared, _)| shared.stats.lock().clone())
            .collect()
    }

    /// Stats of one sink, if it runs.
    pub fn sink_stats(&self, sink: SinkKind) -> Option<SinkStats> {
        self.stats().into_iter().find(|stats| stats.sink == sink)
    }

    /// Rewinds every sink so it re-sends the events after `seq` (the write
    /// is idempotent, so already stored events are not duplicated). Takes
    /// effect before each sink's next batch, including while it is retrying.
    pub fn replay_from(&self, seq: u64) {
        for (shared, _) in &self.sinks {
            *shared.rewind.lock() = Some(seq);
        }
    }

    /// Stops the sinks after their current batch.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for (_, task) in self.sinks {
            let _ = task.await;
        }
    }
}

/// Sets both stored cursors to `seq` while no collector runs (`--replay
/// --from`): the next run re-sends every event after `seq`.
pub async fn replay_from(config: &CollectorConfig, seq: u64) -> Result<(), CollectorError> {
    if let Some(pg) = &config.postgres {
        let mut client = postgres::connect(&pg.conninfo).await?;
        crate::migrations::apply_migrations(&mut client).await?;
        postgres::set_cursor(&client, seq).await?;
    }
    if let Some(redis) = &config.redis {
        let mut connection = redis_sink::connect(&redis.url).await?;
        redis_sink::set_cursor(&mut connection, seq).await?;
    }
    Ok(())
}

fn new_shared(sink: SinkKind) -> Arc<SinkShared> {
    Arc::new(SinkShared {
        stats: Mutex::new(SinkStats::new(sink)),
        rewind: Mutex::new(None),
    })
}
