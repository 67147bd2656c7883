//! Where the collector reads events from: the pool's journal, seen through a
//! small trait so sinks can be tested and benchmarked without it.

use std::collections::BTreeMap;

use parking_lot::RwLock;

use crate::CollectorError;

/// One journal row: the journal's own type, so the two cannot drift apart.
pub use tbg_journal::JournalRecord;

/// A journal, read from blocking code (the collector calls it on the
/// blocking thread pool).
pub trait EventSource: Send + Sync + 'static {
    /// Records with seq > `after`, in seq order, at most `limit`.
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<JournalRecord>, CollectorError>;
    /// Highest seq written, 0 when empty.
    fn last_seq(&self) -> Result<u64, CollectorError>;
    /// Last seq whose event time is before `ts` (0 when none).
    fn seq_at_time(&self, ts: f64) -> Result<u64, CollectorError>;
    /// Seq of an event id, if the journal still holds it.
    fn seq_of_event(&self, event_id: &str) -> Result<Option<u64>, CollectorError>;
}

/// An in-memory journal for tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemorySource {
    records: RwLock<BTreeMap<u64, JournalRecord>>,
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Appends records; their seqs must be above every seq already held.
    pub fn push(&self, records: impl IntoIterator<Item = JournalRecord>) {
        let mut held = self.records.write();
        for record in records {
            held.insert(record.seq, record);
        }
    }
}

impl EventSource for MemorySource {
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<JournalRecord>, CollectorError> {
        let held = self.records.read();
        Ok(held
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect())
    }

    fn last_seq(&self) -> Result<u64, CollectorError> {
        Ok(self.records.read().keys().next_back().copied().unwrap_or(0))
    }

    fn seq_at_time(&self, ts: f64) -> Result<u64, CollectorError> {
        Ok(self
            .records
            .read()
            .values()
            .filter(|record| record.ts < ts)
            .map(|record| record.seq)
            .max()
            .unwrap_or(0))
    }

    fn seq_of_event(&self, event_id: &str) -> Result<Option<u64>, CollectorError> {
        Ok(self
            .records
            .read()
            .values()
            .find(|record| record.event_id == event_id)
            .map(|record| record.seq))
    }
}

/// Resolves `--from <unix time | RFC 3339 time | event id>` to the cursor to
/// replay from: the sinks then re-send every event with a greater seq, so the
/// named event (or the first event at or after the time) is included.
pub fn resolve_replay_from(source: &dyn EventSource, from: &str) -> Result<u64, CollectorError> {
    let from = from.trim();
    let invalid = |reason: &str| CollectorError::InvalidReplayFrom {
        value: from.to_string(),
        reason: reason.to_string(),
    };
    if from.is_empty() {
        return Err(invalid("empty"));
    }
    if let Ok(unix_seconds) = from.parse::<f64>() {
        if !unix_seconds.is_finite() || unix_seconds < 0.0 {
            return Err(invalid("not a valid unix time"));
        }
        return source.seq_at_time(unix_seconds);
    }
    if let Ok(time) =
        time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339)
    {
        let unix_seconds = time.unix_timestamp_nanos() as f64 / 1e9;
        return source.seq_at_time(unix_seconds);
    }
    match source.seq_of_event(from)? {
        Some(seq) => Ok(seq.saturating_sub(1)),
        None => Err(invalid(
            "neither a unix time, an RFC 3339 time, nor an event id the journal holds",
        )),
    }
}

fn journal_error(error: tbg_journal::JournalError) -> CollectorError {
    match error {
        tbg_journal::JournalError::Corrupt {
            path,
            after_seq,
            detail,
        } => CollectorError::JournalCorrupt {
            after_seq,
            detail: format!("{}: {detail}", path.display()),
        },
        tbg_journal::JournalError::BadRow { seq, detail } => {
            CollectorError::JournalBadRow { seq, detail }
        }
        other => CollectorError::Source(other.to_string()),
    }
}

/// The pool's journal, opened read-only with `JournalReader::open`.
impl EventSource for tbg_journal::JournalReader {
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<JournalRecord>, CollectorError> {
        tbg_journal::JournalReader::read_after(self, after, limit).map_err(journal_error)
    }

    fn last_seq(&self) -> Result<u64, CollectorError> {
        tbg_journal::JournalReader::last_seq(self).map_err(journal_error)
    }

    fn seq_at_time(&self, ts: f64) -> Result<u64, CollectorError> {
        tbg_journal::JournalReader::seq_at_time(self, ts).map_err(journal_error)
    }

    fn seq_of_event(&self, event_id: &str) -> Result<Option<u64>, CollectorError> {
        tbg_journal::JournalReader::seq_of_event(self, event_id).map_err(journal_error)
    }
}
