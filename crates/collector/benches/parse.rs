//! Cost of turning one journal row into a `ParsedRecord` (done by each sink).
//! Run: cargo bench -p tbg-collector --bench parse -- --warm-up-time 1 --measurement-time 3
//! `two_pass_reference` is the former way (`Event::from_json`, whose
//! `#[serde(flatten)]` buffers the envelope, plus a second parse for `data`).

use criterion::{criterion_group, criterion_main, Criterion};
use serde::Deserialize;
use serde_json::value::RawValue;
use tbg_collector::{parse_record, JournalRecord};
use tbg_events::{Event, EventData, EventFactory};

fn share_record() -> JournalRecord {
    let event = EventFactory::new("eu", "hosted").make_at(
        EventData::ShareSubmitted {
            user: "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh".into(),
            worker: "rig01".into(),
            client_id: 42,
            diff: 1024.0,
            sdiff: 3172.25,
            accepted: true,
            reject_reason: None,
            ip: "203.0.113.7".into(),
        },
        1_764_000_000.123_456,
    );
    JournalRecord {
        seq: 1,
        event_id: event.id.clone(),
        ts: event.ts,
        event_type: event.event_type().to_string(),
        region: event.region.clone(),
        stream_id: "1764000000123-1".into(),
        payload: event.to_json(),
    }
}

#[derive(Deserialize)]
struct DataOnly<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

fn parse(c: &mut Criterion) {
    let record = share_record();
    c.bench_function("parse_record (share_submitted)", |b| {
        b.iter(|| parse_record(std::hint::black_box(record.clone())).map(|parsed| parsed.seq))
    });
    c.bench_function("two_pass_reference (share_submitted)", |b| {
        b.iter(|| {
            let record = std::hint::black_box(&record);
            let payload = record.payload.clone();
            let event = Event::from_json(&payload).ok()?;
            let data = serde_json::from_str::<DataOnly<'_>>(&payload).ok()?;
            let data_json = data.data.get().to_string();
            let kept = (
                record.event_id.clone(),
                record.region.clone(),
                record.stream_id.clone(),
            );
            Some((event.ts, data_json.len(), kept.0.len()))
        })
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
