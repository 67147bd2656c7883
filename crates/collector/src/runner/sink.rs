//! One sink's task: waits for a batch after its cursor, writes it with the
//! cursor (splitting a batch whose data the store refuses), sizes the next
//! batch by how fast this one filled, and backs off and retries on errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::read::{read_blocking, Chunk, Prefetch};
use super::store::Store;
use super::{BatchConfig, CollectorConfig, SinkShared};
use crate::{CollectorError, EventSource, ParsedRecord};

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

pub(super) async fn run_sink<S: Store>(
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
