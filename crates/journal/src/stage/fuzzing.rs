//! Not an API: the stage ring's encoder and its recovery on bytes in memory,
//! for the fuzz targets in `fuzz/` (`journal_ring`). Hidden from the docs;
//! the pool never calls it. Recovery here is [`super::recover`] itself, on
//! a ring image instead of the file.

use super::{encode, recover, seal, RecoveryStop, RECORD_HEADER_BYTES, RECORD_MAGIC, WRAP_MAGIC};

/// One recovered record, as the writer would commit it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: u64,
    /// Ring position after the record.
    pub end: u64,
    pub event_id: String,
    pub ts: f64,
    pub event_type: String,
    pub region: String,
    pub payload: String,
}

/// Why recovery stopped (see the ring layout in the `stage` module).
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    End,
    Invalid { file_offset: u64, detail: String },
}

/// What recovery found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub rows: Vec<Row>,
    pub already_committed: u64,
    pub stop: Option<Stop>,
    pub unusable_header: Option<String>,
}

/// Recovers the records of a whole stage file's bytes (`image`) with seq
/// above `committed_seq`, as a journal opening that file would.
pub fn recover_image(image: &[u8], committed_seq: u64) -> Recovery {
    let recovered = recover(image, committed_seq);
    Recovery {
        rows: recovered
            .rows
            .into_iter()
            .map(|row| Row {
                seq: row.seq,
                end: row.end,
                event_id: row.event_id,
                ts: row.ts,
                event_type: row.event_type.into_owned(),
                region: row.region,
                payload: row.payload,
            })
            .collect(),
        already_committed: recovered.already_committed,
        stop: recovered.stop.map(|stop| match stop {
            RecoveryStop::End => Stop::End,
            RecoveryStop::Invalid {
                file_offset,
                detail,
            } => Stop::Invalid {
                file_offset,
                detail,
            },
        }),
        unusable_header: recovered.unusable_header,
    }
}

/// A record exactly as an append writes it (padded to 8 bytes).
pub fn record(
    generation: u64,
    seq: u64,
    event_id: &str,
    ts: f64,
    event_type: &str,
    region: &str,
    json: &str,
) -> Vec<u8> {
    let mut bytes = encode(generation, event_id, ts, event_type, region, json);
    seal(&mut bytes, RECORD_MAGIC, seq, generation);
    bytes
}

/// A wrap marker exactly as an append writes it.
pub fn wrap_marker(generation: u64, next_seq: u64) -> [u8; RECORD_HEADER_BYTES as usize] {
    let mut marker = [0u8; RECORD_HEADER_BYTES as usize];
    seal(&mut marker, WRAP_MAGIC, next_seq, generation);
    marker
}
