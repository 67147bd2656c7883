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
use crate::{postgres, redis_sink, CollectorError, EventSource, JournalRecord, ParsedRecord};

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
    /// Periodic upkeep (partitions); a no-op by default.
    async fn maintain(&mut self) -> Result<(), CollectorError> {
        Ok(())
    }
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

    async fn maintain(&mut self) -> Result<(), CollectorError> {
        match &mut self.client {
            Some(client) => self.writer.maintain(client).await.map(|_| ()),
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

/// What one journal read produced, parsed.
#[derive(Default)]
struct Chunk {
    parsed: Vec<ParsedRecord>,
    /// Journal rows read (parsed or not): how full the batch is.
    rows: usize,
    /// Highest seq accounted for: the last row read, or the end of a skipped
    /// unreadable region.
    through: u64,
    unparsable: u64,
    corrupt_regions: u64,
    unreadable_seqs: u64,
    journal_last_seq: Option<u64>,
}

fn is_unreadable(error: &CollectorError) -> bool {
    matches!(
        error,
        CollectorError::JournalCorrupt { .. } | CollectorError::JournalBadRow { .. }
    )
}

/// Reads and parses up to `limit` rows after `after` (blocking). Damage
/// SQLite reports is not fatal: the rows before it are returned first; when
/// the damage is right at `after`, the first readable row after it is found
/// by probing (exponential steps, then bisection: O(log gap) reads) and the
/// seqs in between are counted as unreadable and logged.
fn read_chunk(
    source: &dyn EventSource,
    sink: &'static str,
    after: u64,
    limit: usize,
) -> Result<Chunk, CollectorError> {
    // The tip is only for the lag figure: a damaged tip must not stop delivery.
    let journal_last_seq = source.last_seq().ok();
    let mut chunk = Chunk {
        through: after,
        journal_last_seq,
        ..Chunk::default()
    };
    let records = match source.read_after(after, limit) {
        Ok(records) => records,
        Err(error) if is_unreadable(&error) => {
            salvage(source, sink, after, limit, error, &mut chunk)?
        }
        Err(error) => return Err(error),
    };
    chunk.rows = records.len();
    if let Some(last) = records.last() {
        chunk.through = chunk.through.max(last.seq);
    }
    chunk.parsed.reserve(records.len());
    for record in records {
        match parse_record(record) {
            Ok(event) => chunk.parsed.push(event),
            Err(refused) => {
                chunk.unparsable += 1;
                tracing::error!(sink, seq = refused.seq, event_id = %refused.event_id, reason = %refused.reason, "skipping a journal record that does not parse");
            }
        }
    }
    Ok(chunk)
}

/// Reads row by row up to the damage; if the damage is at `after` itself,
/// skips to the first readable row beyond it.
fn salvage(
    source: &dyn EventSource,
    sink: &'static str,
    after: u64,
    limit: usize,
    first_error: CollectorError,
    chunk: &mut Chunk,
) -> Result<Vec<JournalRecord>, CollectorError> {
    let mut records: Vec<JournalRecord> = Vec::new();
    let mut position = after;
    let mut error = first_error;
    while records.len() < limit {
        match source.read_after(position, 1) {
            Ok(mut one) => match one.pop() {
                Some(record) => {
                    position = record.seq;
                    records.push(record);
                }
                None => return Ok(records),
            },
            Err(next_error) if is_unreadable(&next_error) => {
                error = next_error;
                break;
            }
            Err(other) => return Err(other),
        }
    }
    if !records.is_empty() {
        // Deliver what precedes the damage; the next read meets it at `position`.
        return Ok(records);
    }
    if let CollectorError::JournalBadRow { seq, .. } = &error {
        if *seq > position {
            chunk.corrupt_regions += 1;
            chunk.unreadable_seqs += seq - position;
            chunk.through = *seq;
            tracing::error!(sink, seq = *seq, %error, "skipping an unreadable journal row");
            return Ok(records);
        }
    }
    // Exponential probing for a readable position past the damage.
    let mut failed = position;
    let mut step = 1u64;
    let found = loop {
        let probe = position.saturating_add(step);
        match source.read_after(probe, 1) {
            Ok(mut one) => match one.pop() {
                Some(record) => break (probe, record),
                // Nothing readable up to the end of the journal: report the
                // damage and retry later (new rows may land past it).
                None => return Err(error),
            },
            Err(next_error) if is_unreadable(&next_error) => failed = probe,
            Err(other) => return Err(other),
        }
        if probe == u64::MAX {
            return Err(error);
        }
        step = step.saturating_mul(2);
    };
    // Bisection between the last failed and the first readable probe: the
    // smallest readable start gives the first row after the damage.
    let (mut readable_from, mut first_readable) = found;
    while readable_from - failed > 1 {
        let middle = failed + (readable_from - failed) / 2;
        match source.read_after(middle, 1) {
            Ok(mut one) => match one.pop() {
                Some(record) => {
                    readable_from = middle;
                    first_readable = record;
                }
                None => failed = middle,
            },
            Err(next_error) if is_unreadable(&next_error) => failed = middle,
            Err(other) => return Err(other),
        }
    }
    let unreadable = first_readable.seq.saturating_sub(position + 1);
    chunk.corrupt_regions += 1;
    chunk.unreadable_seqs += unreadable;
    tracing::error!(
        sink,
        after_seq = position,
        resumed_at_seq = first_readable.seq,
        unreadable_seqs = unreadable,
        %error,
        "journal region unreadable: skipping it"
    );
    records.push(first_readable);
    Ok(records)
}

async fn read_blocking(
    source: &Arc<dyn EventSource>,
    sink: &'static str,
    after: u64,
    limit: usize,
) -> Result<Chunk, CollectorError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || read_chunk(source.as_ref(), sink, after, limit))
        .await
        .map_err(|error| CollectorError::Source(format!("reader task failed: {error}")))?
}

/// A read of the next batch started while the current one is written, so
/// reading and parsing overlap the store's round trips.
struct Prefetch {
    after: u64,
    task: JoinHandle<Result<Chunk, CollectorError>>,
}

impl Prefetch {
    fn start(source: &Arc<dyn EventSource>, sink: &'static str, after: u64, limit: usize) -> Self {
        let source = source.clone();
        Prefetch {
            after,
            task: tokio::task::spawn_blocking(move || {
                read_chunk(source.as_ref(), sink, after, limit)
            }),
        }
    }
}

/// A batch ready to write.
struct Batch {
    chunk: Chunk,
    /// Whether the journal already held more than another batch's worth
    /// after it when it was read (the sink is behind, not waiting for events).
    behind: bool,
    /// How soon after its first event it was full.
    fill: Fill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Within [`FAST_FILL`] (or from a backlog): events arrive at ten
    /// batches a second or more.
    Fast,
    /// Within 4 x [`FAST_FILL`]: the size suits the rate.
    Steady,
    /// Later, or not full when `max_wait` passed.
    Slow,
}

/// A batch full this soon after its first event may be twice as large
/// next time: at a high steady rate (a region catching up through the
/// ingest, which the sink keeps pace with, so it is never "behind") each
/// transaction then carries more events, and the per-batch work (the
/// aggregates' upserts, the commit) is paid less often. Doubling stops
/// once a batch takes longer than this to fill, and a batch slower than
/// four times this goes back to `max_events`, so the wait it adds stays
/// within a few times this long.
const FAST_FILL: Duration = Duration::from_millis(100);

/// Waits for up to `max_events` rows after `cursor`: returns as soon as
/// the batch is full, `max_wait` passed since its first row arrived, or
/// (while nothing arrived) maintenance is due. Returns None on shutdown.
#[allow(clippy::too_many_arguments)]
async fn next_batch(
    source: &Arc<dyn EventSource>,
    sink: &'static str,
    cursor: u64,
    max_events: usize,
    batch: &BatchConfig,
    prefetched: Option<Prefetch>,
    maintenance_due: Instant,
    shared: &SinkShared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Batch>, CollectorError> {
    let mut total = Chunk {
        through: cursor,
        ..Chunk::default()
    };
    let mut first_arrival: Option<Instant> = None;
    let mut prefetched = prefetched.filter(|prefetch| prefetch.after == cursor);
    loop {
        let wanted = max_events.saturating_sub(total.rows).max(1);
        let more = match prefetched.take() {
            Some(prefetch) => prefetch.task.await.map_err(|error| {
                CollectorError::Source(format!("reader task failed: {error}"))
            })??,
            None => read_blocking(source, sink, total.through, wanted).await?,
        };
        if let Some(last_seq) = more.journal_last_seq {
            let mut stats = shared.stats.lock();
            stats.journal_last_seq = last_seq;
            stats.lag = last_seq.saturating_sub(stats.cursor);
        }
        if more.through > total.through && first_arrival.is_none() {
            first_arrival = Some(Instant::now());
        }
        total.rows += more.rows;
        total.through = total.through.max(more.through);
        total.parsed.extend(more.parsed);
        total.unparsable += more.unparsable;
        total.corrupt_regions += more.corrupt_regions;
        total.unreadable_seqs += more.unreadable_seqs;
        let full = total.rows >= max_events;
        let behind = full
            && more.journal_last_seq.is_some_and(|last_seq| {
                last_seq.saturating_sub(total.through) >= max_events as u64
            });
        let waited_enough = first_arrival.is_some_and(|start| start.elapsed() >= batch.max_wait);
        let fill = match first_arrival.map(|start| start.elapsed()) {
            Some(took) if full && took < FAST_FILL => Fill::Fast,
            Some(took) if full && took < FAST_FILL * 4 => Fill::Steady,
            _ => Fill::Slow,
        };
        if full || waited_enough {
            return Ok(Some(Batch {
                chunk: total,
                behind,
                fill,
            }));
        }
        let idle = total.through == cursor;
        if idle && (shared.rewind.lock().is_some() || Instant::now() >= maintenance_due) {
            return Ok(Some(Batch {
                chunk: total,
                behind,
                fill: Fill::Slow,
            }));
        }
        tokio::select! {
            _ = tokio::time::sleep(batch.poll_interval) => {}
            _ = shutdown.changed() => return Ok(None),
        }
    }
}

/// Per-sink loop state kept across steps and errors.
struct SinkState {
    cursor: u64,
    batch_size: usize,
    prefetch: Option<Prefetch>,
    next_maintenance: Instant,
}

async fn run_sink<S: Store>(
    mut store: S,
    source: Arc<dyn EventSource>,
    config: CollectorConfig,
    shared: Arc<SinkShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sink = S::KIND.name();
    let mut state = SinkState {
        cursor: 0,
        batch_size: config.batch.max_events.max(1),
        prefetch: None,
        next_maintenance: Instant::now() + config.maintenance_interval,
    };
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
            &mut state,
        )
        .await
        {
            Ok(true) => delay = config.backoff.initial,
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(sink, %error, retry_in_ms = delay.as_millis() as u64, "sink error");
                // A journal read error says nothing about the store.
                if !matches!(
                    error,
                    CollectorError::Source(_)
                        | CollectorError::JournalCorrupt { .. }
                        | CollectorError::JournalBadRow { .. }
                ) {
                    store.disconnect();
                }
                state.prefetch = None;
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
                    stats.up = store.connected();
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

/// One round: (re)connect if needed, apply a rewind, run due maintenance,
/// write one batch. Ok(false) means shutdown.
async fn step<S: Store>(
    store: &mut S,
    source: &Arc<dyn EventSource>,
    config: &CollectorConfig,
    shared: &SinkShared,
    shutdown: &mut watch::Receiver<bool>,
    state: &mut SinkState,
) -> Result<bool, CollectorError> {
    let sink = S::KIND.name();
    let timeout = config.backoff.write_timeout;
    let timed_out = || CollectorError::Timeout {
        sink,
        seconds: timeout.as_secs(),
    };
    if !store.connected() {
        state.prefetch = None;
        state.cursor = tokio::time::timeout(timeout, store.connect())
            .await
            .map_err(|_| timed_out())??;
        // Connecting does the maintenance.
        state.next_maintenance = Instant::now() + config.maintenance_interval;
        let mut stats = shared.stats.lock();
        stats.cursor = state.cursor;
        stats.up = true;
    }
    let rewind = *shared.rewind.lock();
    if let Some(seq) = rewind {
        state.prefetch = None;
        tokio::time::timeout(timeout, store.set_cursor(seq))
            .await
            .map_err(|_| timed_out())??;
        *shared.rewind.lock() = None;
        state.cursor = seq;
        shared.stats.lock().cursor = seq;
    }
    if Instant::now() >= state.next_maintenance {
        tokio::time::timeout(timeout, store.maintain())
            .await
            .map_err(|_| timed_out())??;
        state.next_maintenance = Instant::now() + config.maintenance_interval;
    }
    let Some(batch) = next_batch(
        source,
        sink,
        state.cursor,
        state.batch_size,
        &config.batch,
        state.prefetch.take(),
        state.next_maintenance,
        shared,
        shutdown,
    )
    .await?
    else {
        return Ok(false);
    };
    let chunk = batch.chunk;
    if chunk.through == state.cursor || shared.rewind.lock().is_some() {
        return Ok(true);
    }
    // Behind the journal, or events arriving fast: bigger batches (fewer
    // transactions); one that filled at a steady pace keeps its size; a
    // slower one goes back to `max_events`, so latency stays low.
    state.batch_size = if batch.behind || batch.fill == Fill::Fast {
        (state.batch_size * 2).min(
            config
                .batch
                .max_events_catching_up
                .max(config.batch.max_events),
        )
    } else if batch.fill == Fill::Steady {
        state.batch_size
    } else {
        config.batch.max_events.max(1)
    };
    if batch.behind {
        state.prefetch = Some(Prefetch::start(
            source,
            sink,
            chunk.through,
            state.batch_size,
        ));
    }
    {
        let mut stats = shared.stats.lock();
        stats.events_skipped += chunk.unparsable;
        stats.journal_corrupt_regions += chunk.corrupt_regions;
        stats.journal_unreadable_seqs += chunk.unreadable_seqs;
    }
    write_splitting(store, &chunk.parsed, chunk.through, timeout, shared, state).await?;
    Ok(true)
}

/// Writes `records` with the cursor `through`. When the store refuses the
/// data itself (not a connection problem), the batch is split in halves,
/// each written with its own last seq as cursor (still exactly once), until
/// the refused record is alone: it is then logged with its seq, counted and
/// skipped. Other errors are returned (the caller retries forever).
async fn write_splitting<S: Store>(
    store: &mut S,
    records: &[ParsedRecord],
    through: u64,
    timeout: Duration,
    shared: &SinkShared,
    state: &mut SinkState,
) -> Result<(), CollectorError> {
    let sink = S::KIND.name();
    let timed_out = || CollectorError::Timeout {
        sink,
        seconds: timeout.as_secs(),
    };
    // Pieces still to write, last piece first (a stack: left halves go first).
    let mut pending: Vec<(&[ParsedRecord], u64)> = vec![(records, through)];
    while let Some((piece, cursor)) = pending.pop() {
        let outcome = tokio::time::timeout(timeout, store.write(piece, cursor))
            .await
            .map_err(|_| timed_out())?;
        let mut rejected = 0u64;
        let written = match outcome {
            Ok(written) => written,
            Err(error) if error.is_data_error() && piece.len() > 1 => {
                let (left, right) = piece.split_at(piece.len() / 2);
                let left_cursor = left.last().map_or(cursor, |record| record.seq);
                tracing::warn!(sink, from_seq = piece.first().map(|r| r.seq), to_seq = cursor, %error, "store refused a batch's data: splitting it");
                pending.push((right, cursor));
                pending.push((left, left_cursor));
                continue;
            }
            Err(error) if error.is_data_error() && piece.len() == 1 => {
                if let Some(record) = piece.first() {
                    tracing::error!(sink, seq = record.seq, event_id = %record.event_id, %error, "store refused a record: skipping it");
                }
                rejected = 1;
                // Move the cursor past it alone.
                tokio::time::timeout(timeout, store.write(&[], cursor))
                    .await
                    .map_err(|_| timed_out())??
            }
            Err(error) => return Err(error),
        };
        state.cursor = cursor;
        let mut stats = shared.stats.lock();
        stats.cursor = cursor;
        stats.lag = stats.journal_last_seq.saturating_sub(cursor);
        stats.batches += 1;
        stats.events_written += written;
        let accepted = piece.len() as u64 - rejected;
        stats.events_duplicate += accepted - written.min(accepted);
        stats.events_skipped += rejected;
        stats.events_rejected += rejected;
        stats.up = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows 1..=last; reading fails like SQLite's when the read starts in
    /// or would pass through the damaged seqs.
    struct DamagedSource {
        last: u64,
        damaged: std::ops::RangeInclusive<u64>,
    }

    impl EventSource for DamagedSource {
        fn read_after(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<JournalRecord>, CollectorError> {
            let end = after.saturating_add(limit as u64).min(self.last);
            if self.damaged.contains(&after)
                || (after + 1..=end).any(|seq| self.damaged.contains(&seq))
            {
                return Err(CollectorError::JournalCorrupt {
                    after_seq: Some(after),
                    detail: "database disk image is malformed".into(),
                });
            }
            Ok((after + 1..=end)
                .map(|seq| JournalRecord {
                    seq,
                    event_id: format!("id-{seq}"),
                    ts: 1.0,
                    event_type: "share_submitted".into(),
                    region: "eu".into(),
                    stream_id: format!("1000-{seq}"),
                    payload: "not an event".into(),
                })
                .collect())
        }
        fn last_seq(&self) -> Result<u64, CollectorError> {
            Ok(self.last)
        }
        fn seq_at_time(&self, _ts: f64) -> Result<u64, CollectorError> {
            Ok(0)
        }
        fn seq_of_event(&self, _event_id: &str) -> Result<Option<u64>, CollectorError> {
            Ok(None)
        }
    }

    #[test]
    fn a_damaged_region_is_read_up_to_then_skipped_and_counted() {
        let source = DamagedSource {
            last: 1_000,
            damaged: 400..=555,
        };
        // Rows before the damage come first.
        let before = read_chunk(&source, "test", 0, 500).unwrap();
        assert_eq!((before.rows, before.through), (399, 399));
        assert_eq!(before.corrupt_regions, 0);
        // Then the damage: skipped to the first row reachable after it (the
        // row right after the region is reachable only from inside it).
        let skip = read_chunk(&source, "test", 399, 500).unwrap();
        assert_eq!(skip.through, 557);
        assert_eq!((skip.corrupt_regions, skip.unreadable_seqs), (1, 157));
        assert_eq!(skip.rows, 1);
        // And on from there.
        let after = read_chunk(&source, "test", 557, 500).unwrap();
        assert_eq!((after.rows, after.through), (443, 1_000));
    }

    #[test]
    fn damage_up_to_the_end_is_an_error_naming_the_position() {
        let source = DamagedSource {
            last: 100,
            damaged: 90..=100,
        };
        let error = read_chunk(&source, "test", 89, 50).err().unwrap();
        assert!(error.to_string().contains("after seq 89"), "{error}");
    }
}
