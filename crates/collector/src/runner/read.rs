//! Reading the journal for a sink: a chunk of rows after its cursor,
//! parsed, on a blocking thread, past regions SQLite reports damaged; and
//! the read-ahead of the next batch.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::parse::parse_record;
use crate::{CollectorError, EventSource, JournalRecord, ParsedRecord};

/// What one journal read produced, parsed.
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) parsed: Vec<ParsedRecord>,
    /// Journal rows read (parsed or not): how full the batch is.
    pub(super) rows: usize,
    /// Highest seq accounted for: the last row read, or the end of a skipped
    /// unreadable region.
    pub(super) through: u64,
    pub(super) unparsable: u64,
    pub(super) corrupt_regions: u64,
    pub(super) unreadable_seqs: u64,
    pub(super) journal_last_seq: Option<u64>,
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

pub(super) async fn read_blocking(
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
pub(super) struct Prefetch {
    pub(super) after: u64,
    pub(super) task: JoinHandle<Result<Chunk, CollectorError>>,
}

impl Prefetch {
    pub(super) fn start(
        source: &Arc<dyn EventSource>,
        sink: &'static str,
        after: u64,
        limit: usize,
    ) -> Self {
        let source = source.clone();
        Prefetch {
            after,
            task: tokio::task::spawn_blocking(move || {
                read_chunk(source.as_ref(), sink, after, limit)
            }),
        }
    }
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
