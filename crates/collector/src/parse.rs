//! Turns journal records into checked events; a record that does not parse
//! is reported so the sink can skip it instead of stalling on it forever.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use tbg_events::{Event, EventData};

use crate::JournalRecord;

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
    /// Where the envelope's `data` object lies in `payload`.
    data_range: Range<usize>,
    pub event: Event,
}

impl ParsedRecord {
    /// The envelope's `data` object as JSON text (the Redis `data` field).
    pub fn data_json(&self) -> &str {
        self.payload.get(self.data_range.clone()).unwrap_or("null")
    }
}

/// The envelope read in one pass, without the buffering `Event`'s
/// `#[serde(flatten)]` costs; the same fields `Event::from_json` requires.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(borrow)]
    data: &'a RawValue,
    id: String,
    ts: f64,
    source: String,
    region: String,
}

/// Parses a payload into the event and the byte range of its `data`
/// object. The fast path reads the envelope once and the typed data from
/// its raw text; anything it does not take (unusual but valid JSON) goes
/// through `Event::from_json`, which stays the definition of a valid event.
fn parse_payload(payload: &str) -> Result<(Event, Range<usize>), serde_json::Error> {
    let fast = serde_json::from_str::<Envelope<'_>>(payload).and_then(|envelope| {
        let tagged = format!(
            "{{\"event\":{},\"data\":{}}}",
            envelope.event.get(),
            envelope.data.get()
        );
        let data: EventData = serde_json::from_str(&tagged)?;
        let event = Event {
            data,
            id: envelope.id,
            ts: envelope.ts,
            source: envelope.source,
            region: envelope.region,
        };
        Ok((event, range_in(payload, envelope.data.get())))
    });
    match fast {
        Ok(parsed) => Ok(parsed),
        Err(_) => {
            let event = Event::from_json(payload)?;
            #[derive(Deserialize)]
            struct DataOnly<'a> {
                #[serde(borrow)]
                data: &'a RawValue,
            }
            let data = serde_json::from_str::<DataOnly<'_>>(payload)?.data;
            Ok((event, range_in(payload, data.get())))
        }
    }
}

/// The byte range of `part`, a slice borrowed from `whole`.
fn range_in(whole: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// A record that cannot be stored, and why.
#[derive(Debug)]
pub struct Unparsable {
    pub seq: u64,
    pub event_id: String,
    pub reason: String,
}

/// Parses one record, taking its strings; the error says why it cannot be stored.
pub fn parse_record(record: JournalRecord) -> Result<ParsedRecord, Unparsable> {
    let JournalRecord {
        seq,
        event_id,
        ts,
        region,
        stream_id,
        payload,
        ..
    } = record;
    let refuse = |reason: String| Unparsable {
        seq,
        event_id: event_id.clone(),
        reason,
    };
    if !ts.is_finite() || !(0.0..=MAX_UNIX_SECONDS).contains(&ts) {
        return Err(refuse(format!("timestamp {ts} is out of range")));
    }
    let payload = if payload.contains("\\u0000") {
        payload.replace("\\u0000", "\\ufffd")
    } else {
        payload
    };
    let (mut event, data_range) =
        parse_payload(&payload).map_err(|error| refuse(format!("payload: {error}")))?;
    if event.id != event_id {
        return Err(refuse(format!(
            "payload id {} differs from the journal's event id",
            event.id
        )));
    }
    strip_nul(&mut event);
    Ok(ParsedRecord {
        seq,
        event_id,
        ts,
        time: UNIX_EPOCH + Duration::from_secs_f64(ts),
        region,
        stream_id,
        payload,
        data_range,
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
        BlockConfirmed {
            user, worker, hash, ..
        } => {
            clean(user);
            clean(worker);
            clean(hash);
        }
        BlockOrphaned {
            user,
            worker,
            hash,
            replaced_by,
            ..
        } => {
            clean(user);
            clean(worker);
            clean(hash);
            clean(replaced_by);
        }
        RegionFailover {
            primary, reason, ..
        } => {
            clean(primary);
            clean(reason);
        }
        RegionFailback { primary, .. } => clean(primary),
        NewBlockNetwork { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbg_events::EventFactory;

    fn every_event_type() -> Vec<EventData> {
        let user = || "bc1quser\u{e9}\"q".to_string();
        let worker = || "rig\\1".to_string();
        vec![
            EventData::ShareSubmitted {
                user: user(),
                worker: worker(),
                client_id: 7,
                diff: 1.5,
                sdiff: f64::NAN,
                accepted: false,
                reject_reason: Some("Stale".into()),
                ip: "10.0.0.1".into(),
            },
            EventData::BlockFound {
                user: user(),
                worker: worker(),
                height: 840_000,
                hash: "00ab".into(),
                diff: 1e12,
                network_diff: 8e11,
                reward_sats: 312_500_000,
                coinbase_sig: "/tbg/".into(),
            },
            EventData::BlockSubmitted {
                user: user(),
                worker: worker(),
                height: 840_000,
                hash: "00ab".into(),
                accepted: true,
                answers: vec!["http://node: null".into(), "http://other: duplicate".into()],
                status: "accepted".into(),
            },
            EventData::BlockConfirmed {
                user: user(),
                worker: worker(),
                height: 840_000,
                hash: "00ab".into(),
                confirmations: 100,
            },
            EventData::BlockOrphaned {
                user: user(),
                worker: worker(),
                height: 840_000,
                hash: "00ab".into(),
                replaced_by: "00cd".into(),
            },
            EventData::RegionFailover {
                primary: "us-east\u{e9}".into(),
                silent_s: 10.5,
                reason: "no heartbeat for 10 s".into(),
            },
            EventData::RegionFailback {
                primary: "us-east".into(),
                failed_over_s: 120.0,
                steady_s: 30.0,
            },
            EventData::MinerConnected {
                user: user(),
                worker: worker(),
                client_id: 1,
                ip: "::1".into(),
                useragent: "cgminer/4.12 {x}".into(),
                initial_diff: 1.0,
            },
            EventData::MinerDisconnected {
                user: user(),
                worker: worker(),
                client_id: 1,
                ip: "::1".into(),
                session_duration: 12.5,
                shares_session: 3,
            },
            EventData::DiffUpdated {
                user: user(),
                worker: worker(),
                client_id: 1,
                old_diff: 1.0,
                new_diff: 2.0,
            },
            EventData::HashrateUpdate {
                user: user(),
                worker: worker(),
                hashrate_1m: 1e9,
                hashrate_5m: f64::INFINITY,
                hashrate_1h: 3e9,
                hashrate_1d: 4e9,
            },
            EventData::NewBlockNetwork {
                height: 1,
                hash: "00cd".into(),
                diff: 1.0,
                prev_hash: "00ef".into(),
            },
            EventData::ShareBestDiff {
                user: user(),
                worker: worker(),
                new_best: 9.0,
                prev_best: 3.0,
                timeframe: "week".into(),
            },
            EventData::AsicboostDetected {
                user: user(),
                worker: worker(),
                pool_mask: "1fffe000".into(),
                miner_mask: "00ffe000".into(),
            },
        ]
    }

    #[test]
    fn the_one_pass_parse_gives_what_event_from_json_gives_for_every_type() {
        let factory = EventFactory::new("eu", "hosted");
        let events = every_event_type();
        assert_eq!(events.len(), tbg_events::EVENT_TYPES.len());
        for data in events {
            let payload = factory.make_at(data, 1_764_000_000.123_456).to_json();
            let (event, range) = parse_payload(&payload).unwrap();
            let reference = Event::from_json(&payload).unwrap();
            // Compared as JSON: NaN != NaN.
            assert_eq!(event.to_json(), reference.to_json());
            let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let data: serde_json::Value = serde_json::from_str(&payload[range]).unwrap();
            assert_eq!(data, value["data"], "{payload}");
        }
    }

    #[test]
    fn other_key_orders_and_extra_keys_parse_like_event_from_json() {
        let payload = r#"{"ts":1.5,"region":"eu","extra":[1,{"a":2}],"data":{"height":1,"hash":"00","diff":2.0,"prev_hash":"01"},"source":"hosted","id":"x","event":"new_block_network"}"#;
        let (event, range) = parse_payload(payload).unwrap();
        assert_eq!(event, Event::from_json(payload).unwrap());
        assert_eq!(
            &payload[range],
            r#"{"height":1,"hash":"00","diff":2.0,"prev_hash":"01"}"#
        );
    }

    #[test]
    fn what_event_from_json_refuses_is_refused() {
        for payload in [
            "",
            "not json",
            r#"{"event":"share_submitted","data":{"user":"#,
            r#"{"event":"no_such_type","data":{},"id":"x","ts":1.0,"source":"s","region":"r"}"#,
            r#"{"event":"new_block_network","data":{"height":1},"id":"x","ts":1.0,"source":"s","region":"r"}"#,
            r#"{"event":"new_block_network","data":{"height":1,"hash":"00","diff":2.0,"prev_hash":"01"},"ts":1.0,"source":"s","region":"r"}"#,
        ] {
            assert!(Event::from_json(payload).is_err(), "{payload}");
            assert!(parse_payload(payload).is_err(), "{payload}");
        }
    }

    #[test]
    fn a_record_is_refused_with_its_seq_and_id_and_nul_is_replaced() {
        let factory = EventFactory::new("eu", "hosted");
        let event = factory.make_at(
            EventData::NewBlockNetwork {
                height: 1,
                hash: "00\u{0}ab".into(),
                diff: 1.0,
                prev_hash: "00".into(),
            },
            1_764_000_000.0,
        );
        let record = JournalRecord {
            seq: 9,
            event_id: event.id.clone(),
            ts: event.ts,
            event_type: "new_block_network".into(),
            region: "eu".into(),
            stream_id: "1764000000000-9".into(),
            payload: event.to_json(),
        };
        let parsed = parse_record(record.clone()).unwrap();
        assert!(!parsed.payload.contains("\\u0000"));
        assert!(
            matches!(&parsed.event.data, EventData::NewBlockNetwork { hash, .. } if hash == "00\u{fffd}ab")
        );
        assert!(parsed.data_json().contains("00\\ufffdab"));
        let refused = parse_record(JournalRecord {
            event_id: "another id".into(),
            ..record
        })
        .unwrap_err();
        assert_eq!((refused.seq, refused.event_id.as_str()), (9, "another id"));
        assert!(refused.reason.contains("differs"), "{}", refused.reason);
    }
}
