//! Turns journal records into checked events; a record that does not parse
//! is reported so the sink can skip it instead of stalling on it forever.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use tbg_events::Event;

use crate::Record;

/// Latest event time accepted (year ~3058): PostgreSQL's timestamptz range
/// and `SystemTime` arithmetic are safe below it.
const MAX_UNIX_SECONDS: f64 = 34_359_738_368.0;

/// A journal record whose payload parsed into an [`Event`].
#[derive(Debug, Clone)]
pub struct ParsedRecord {
    pub seq: u64,
    pub event_id: String,
    /// From the journal record, so it is identical on every replay.
    pub ts: f64,
    pub time: SystemTime,
    pub region: String,
    pub stream_id: String,
    /// The payload, with NUL characters (which PostgreSQL text and jsonb refuse) replaced.
    pub payload: String,
    /// The envelope's `data` object as JSON text (the Redis `data` field).
    pub data_json: String,
    pub event: Event,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Parses one record; the error says why it cannot be stored.
pub(crate) fn parse_record(record: &Record) -> Result<ParsedRecord, String> {
    if !record.ts.is_finite() || record.ts < 0.0 || record.ts > MAX_UNIX_SECONDS {
        return Err(format!("timestamp {} is out of range", record.ts));
    }
    let payload = if record.payload.contains("\\u0000") {
        record.payload.replace("\\u0000", "\\ufffd")
    } else {
        record.payload.clone()
    };
    let mut event = Event::from_json(&payload).map_err(|error| format!("payload: {error}"))?;
    let envelope: Envelope<'_> =
        serde_json::from_str(&payload).map_err(|error| format!("payload: {error}"))?;
    if event.id != record.event_id {
        return Err(format!(
            "payload id {} differs from the journal's event id",
            event.id
        ));
    }
    strip_nul(&mut event);
    Ok(ParsedRecord {
        seq: record.seq,
        event_id: record.event_id.clone(),
        ts: record.ts,
        time: UNIX_EPOCH + Duration::from_secs_f64(record.ts),
        region: record.region.clone(),
        stream_id: record.stream_id.clone(),
        data_json: envelope.data.get().to_string(),
        payload,
        event,
    })
}

/// PostgreSQL text cannot hold NUL; the payload was already escaped-replaced,
/// this covers the typed fields copied into columns.
fn strip_nul(event: &mut Event) {
    fn clean(text: &mut String) {
        if text.contains('\0') {
            *text = text.replace('\0', "\u{fffd}");
        }
    }
    clean(&mut event.source);
    clean(&mut event.region);
    use tbg_events::EventData::*;
    match &mut event.data {
        ShareSubmitted {
            user,
            worker,
            reject_reason,
            ip,
            ..
        } => {
            clean(user);
            clean(worker);
            clean(ip);
            if let Some(reason) = reject_reason {
                clean(reason);
            }
        }
        BlockFound {
            user,
            worker,
            hash,
            coinbase_sig,
            ..
        } => {
            clean(user);
            clean(worker);
            clean(hash);
            clean(coinbase_sig);
        }
        MinerConnected {
            user,
            worker,
            ip,
            useragent,
            ..
        } => {
            clean(user);
            clean(worker);
            clean(ip);
            clean(useragent);
        }
        MinerDisconnected {
            user, worker, ip, ..
        } => {
            clean(user);
            clean(worker);
            clean(ip);
        }
        DiffUpdated { user, worker, .. }
        | HashrateUpdate { user, worker, .. }
        | ShareBestDiff { user, worker, .. }
        | AsicboostDetected { user, worker, .. } => {
            clean(user);
            clean(worker);
        }
        BlockSubmitted {
            user,
            worker,
            hash,
            answers,
            ..
        } => {
            clean(user);
            clean(worker);
            clean(hash);
            answers.iter_mut().for_each(clean);
        }
        NewBlockNetwork { .. } => {}
    }
}
