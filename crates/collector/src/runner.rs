//! Runs one task per sink: read a batch after the sink's cursor, write it,
//! advance; on error back off and retry while the other sink goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::parse::parse_record;
use crate::postgres::PostgresWriter;
use crate::redis_sink::RedisWriter;
use crate::{postgres, redis_sink, CollectorError, EventSource, ParsedRecord, Record};

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most events per batch (the plan: 500).
    pub max_events: usize,
    /// Longest wait for a batch to fill once its first event arrived (the plan: 1 s).
    pub max_wait: Duration,
    /// Journal poll interval while waiting for events.
    pub poll_interval: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: 500,
            max_wait: Duration::from_secs(1),
            poll_interval: Duration::from_millis(20),
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
#[derive(Debug, Clone, Default)]
pub struct CollectorConfig {
    pub postgres: Option<PostgresConfig>,
    pub redis: Option<RedisConfig>,
    pub batch: BatchConfig,
    pub backoff: BackoffConfig,
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
    /// Records skipped because their payload does not parse.
    pub events_skipped: u64,
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
            let store = PostgresStore {
                conninfo: pg.conninfo,
                client: None,
                writer: PostgresWriter::new(),
            };
            let task = tokio::spawn(run_sink(
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
            let store = RedisStore {
                url: redis.url,
                connection: None,
                writer: RedisWriter::new(redis.stream_maxlen),
            };
            let task = tokio::spawn(run_sink(
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

/// One store a sink writes to; `connect` also returns the stored cursor.
trait Store: Send + 'static {
    const KIND: SinkKind;
    fn connected(&self) -> bool;
    async fn connect(&mut self) -> Result<u64, CollectorError>;
    fn disconnect(&mut self);
    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError>;
    /// Writes the batch and the cursor atomically; returns how many events were new.
    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError>;
}

struct PostgresStore {
    conninfo: String,
    client: Option<tokio_postgres::Client>,
    writer: PostgresWriter,
}

impl Store for PostgresStore {
    const KIND: SinkKind = SinkKind::Postgres;

    fn connected(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|client| !client.is_closed())
    }

    async fn connect(&mut self) -> Result<u64, CollectorError> {
        self.client = None;
        let mut client = postgres::connect(&self.conninfo).await?;
        let cursor = self.writer.prepare(&mut client).await?;
        self.client = Some(client);
        Ok(cursor)
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.writer.reset();
    }

    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError> {
        match &self.client {
            Some(client) => postgres::set_cursor(client, seq).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }

    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError> {
        match &mut self.client {
            Some(client) => Ok(self
                .writer
                .write_batch(client, batch, cursor)
                .await?
                .inserted),
            None => Err(CollectorError::Source("not connected".into())),
        }
    }
}

struct RedisStore {
    url: String,
    connection: Option<redis::aio::MultiplexedConnection>,
    writer: RedisWriter,
}

impl Store for RedisStore {
    const KIND: SinkKind = SinkKind::Redis;

    fn connected(&self) -> bool {
        self.connection.is_some()
    }

    async fn connect(&mut self) -> Result<u64, CollectorError> {
        self.connection = None;
        let mut connection = redis_sink::connect(&self.url).await?;
        let cursor = redis_sink::read_cursor(&mut connection).await?;
        self.connection = Some(connection);
        Ok(cursor)
    }

    fn disconnect(&mut self) {
        self.connection = None;
    }

    async fn set_cursor(&mut self, seq: u64) -> Result<(), CollectorError> {
        match &mut self.connection {
            Some(connection) => redis_sink::set_cursor(connection, seq).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }

    async fn write(&mut self, batch: &[ParsedRecord], cursor: u64) -> Result<u64, CollectorError> {
        match &mut self.connection {
            Some(connection) => self.writer.write_batch(connection, batch, cursor).await,
            None => Err(CollectorError::Source("not connected".into())),
        }
    }
}

async fn read_blocking(
    source: &Arc<dyn EventSource>,
    after: u64,
    limit: usize,
) -> Result<(Vec<Record>, u64), CollectorError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let records = source.read_after(after, limit)?;
        let last = source.last_seq()?;
        Ok((records, last))
    })
    .await
    .map_err(|error| CollectorError::Source(format!("reader task failed: {error}")))?
}

/// Waits for up to `max_events` records after `cursor`: returns as soon as
/// the batch is full or `max_wait` passed since its first record arrived.
/// Returns None on shutdown.
async fn next_batch(
    source: &Arc<dyn EventSource>,
    cursor: u64,
    batch: &BatchConfig,
    shared: &SinkShared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Record>>, CollectorError> {
    let mut records: Vec<Record> = Vec::new();
    let mut first_arrival: Option<Instant> = None;
    loop {
        let after = records.last().map_or(cursor, |record| record.seq);
        let wanted = batch.max_events.saturating_sub(records.len()).max(1);
        let (more, last_seq) = read_blocking(source, after, wanted).await?;
        {
            let mut stats = shared.stats.lock();
            stats.journal_last_seq = last_seq;
            stats.lag = last_seq.saturating_sub(stats.cursor);
        }
        if !more.is_empty() && first_arrival.is_none() {
            first_arrival = Some(Instant::now());
        }
        records.extend(more);
        let waited_enough = first_arrival.is_some_and(|start| start.elapsed() >= batch.max_wait);
        if records.len() >= batch.max_events || waited_enough {
            return Ok(Some(records));
        }
        if shared.rewind.lock().is_some() && records.is_empty() {
            return Ok(Some(records));
        }
        tokio::select! {
            _ = tokio::time::sleep(batch.poll_interval) => {}
            _ = shutdown.changed() => return Ok(None),
        }
    }
}

async fn run_sink<S: Store>(
    mut store: S,
    source: Arc<dyn EventSource>,
    config: CollectorConfig,
    shared: Arc<SinkShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sink = S::KIND.name();
    let mut cursor = 0u64;
    let mut delay = config.backoff.initial;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match step(
            &mut store,
            &source,
            &config,
            &shared,
            &mut shutdown,
            &mut cursor,
        )
        .await
        {
            Ok(true) => delay = config.backoff.initial,
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(sink, %error, retry_in_ms = delay.as_millis() as u64, "sink error");
                store.disconnect();
                // Keep the lag current while the store is down (it is the outage's size).
                let journal_last_seq = {
                    let source = source.clone();
                    tokio::task::spawn_blocking(move || source.last_seq())
                        .await
                        .ok()
                        .and_then(Result::ok)
                };
                {
                    let mut stats = shared.stats.lock();
                    if let Some(last_seq) = journal_last_seq {
                        stats.journal_last_seq = last_seq;
                        stats.lag = last_seq.saturating_sub(stats.cursor);
                    }
                    stats.errors += 1;
                    stats.last_error = Some(error.to_string());
                    stats.up = false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(config.backoff.max);
            }
        }
    }
}

/// One round: (re)connect if needed, apply a rewind, write one batch.
/// Ok(false) means shutdown.
async fn step<S: Store>(
    store: &mut S,
    source: &Arc<dyn EventSource>,
    config: &CollectorConfig,
    shared: &SinkShared,
    shutdown: &mut watch::Receiver<bool>,
    cursor: &mut u64,
) -> Result<bool, CollectorError> {
    let timeout = config.backoff.write_timeout;
    let timed_out = || CollectorError::Timeout {
        sink: S::KIND.name(),
        seconds: timeout.as_secs(),
    };
    if !store.connected() {
        *cursor = tokio::time::timeout(timeout, store.connect())
            .await
            .map_err(|_| timed_out())??;
        let mut stats = shared.stats.lock();
        stats.cursor = *cursor;
        stats.up = true;
    }
    let rewind = *shared.rewind.lock();
    if let Some(seq) = rewind {
        tokio::time::timeout(timeout, store.set_cursor(seq))
            .await
            .map_err(|_| timed_out())??;
        *shared.rewind.lock() = None;
        *cursor = seq;
        shared.stats.lock().cursor = seq;
    }
    let Some(records) = next_batch(source, *cursor, &config.batch, shared, shutdown).await? else {
        return Ok(false);
    };
    let Some(last) = records.last().map(|record| record.seq) else {
        return Ok(true);
    };
    if shared.rewind.lock().is_some() {
        return Ok(true);
    }
    let mut parsed = Vec::with_capacity(records.len());
    let mut skipped = 0u64;
    for record in &records {
        match parse_record(record) {
            Ok(event) => parsed.push(event),
            Err(reason) => {
                skipped += 1;
                tracing::error!(sink = S::KIND.name(), seq = record.seq, event_id = %record.event_id, %reason, "skipping a journal record that does not parse");
            }
        }
    }
    drop(records);
    let written = tokio::time::timeout(timeout, store.write(&parsed, last))
        .await
        .map_err(|_| timed_out())??;
    *cursor = last;
    let mut stats = shared.stats.lock();
    stats.cursor = last;
    stats.lag = stats.journal_last_seq.saturating_sub(last);
    stats.batches += 1;
    stats.events_written += written;
    stats.events_duplicate += parsed.len() as u64 - written.min(parsed.len() as u64);
    stats.events_skipped += skipped;
    stats.up = true;
    Ok(true)
}
