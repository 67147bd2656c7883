//! Cost of stamping and serializing one share_submitted event.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tbg_events::{EventData, EventFactory};

fn share() -> EventData {
    EventData::ShareSubmitted {
        user: "bc1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es".into(),
        worker: "rig01".into(),
        client_id: 123_456,
        diff: 65_536.0,
        sdiff: 187_345.228_1,
        accepted: true,
        reject_reason: None,
        ip: "203.0.113.77".into(),
    }
}

fn bench_serialize(c: &mut Criterion) {
    let factory = EventFactory::new("eu-west", "hosted");
    let event = factory.make(share());
    c.bench_function("share_submitted to_json", |b| {
        b.iter(|| black_box(&event).to_json())
    });
    c.bench_function("share_submitted make + to_json", |b| {
        b.iter(|| factory.make(black_box(share())).to_json())
    });
}

criterion_group!(benches, bench_serialize);
criterion_main!(benches);
