//! Cost of turning one typical mining.submit line into a typed message.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tbg_stratum::{parse_request, response_ok, ClientMessage};

const SUBMIT_LINE: &[u8] = br#"{"params":["bcrt1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es.vec","6b07109300000003","0000000000000000","6b0710cf","ae95368c"],"id":4,"method":"mining.submit"}
"#;

fn bench_submit(c: &mut Criterion) {
    c.bench_function("parse_request + from_request (mining.submit)", |b| {
        b.iter(|| {
            let request = parse_request(black_box(SUBMIT_LINE)).ok();
            request.and_then(|r| ClientMessage::from_request(&r).ok())
        })
    });
    c.bench_function("response_ok(true)", |b| {
        b.iter(|| {
            response_ok(
                black_box(&serde_json::json!(4)),
                serde_json::Value::Bool(true),
            )
        })
    });
}

criterion_group!(benches, bench_submit);
criterion_main!(benches);
