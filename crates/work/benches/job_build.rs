//! JobTemplate for a 4,000-transaction template plus one user's coinbase.

use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, ScriptBuf, Target, Txid, Wtxid};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tbg_work::{build_coinbase, parse_payout_address, JobTemplate, Network, Template, TemplateTx};

fn big_template(count: u32) -> Template {
    let transactions = (0..count)
        .map(|i| {
            let seed = Txid::hash(&i.to_le_bytes());
            TemplateTx {
                // Typical 1-in 2-out segwit spend size; content does not matter here.
                data: vec![(i % 251) as u8; 225],
                txid: seed,
                wtxid: Wtxid::from_byte_array(seed.to_byte_array()),
                fee: 1_000,
            }
        })
        .collect();
    let bits = CompactTarget::from_consensus(0x1703_4219);
    let mut commitment = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
    commitment.extend_from_slice(&[7u8; 32]);
    Template {
        height: 840_000,
        version: 0x2000_0000,
        previous_block_hash: BlockHash::all_zeros(),
        bits,
        cur_time: 1_713_571_767,
        min_time: 1_713_570_000,
        coinbase_value: 312_500_000 + 4_000_000,
        transactions,
        default_witness_commitment: Some(ScriptBuf::from_bytes(commitment)),
        target: Target::from_compact(bits),
    }
}

fn job_build(c: &mut Criterion) {
    let template = Arc::new(big_template(4_000));
    let payout = parse_payout_address(
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        Network::Bitcoin,
    )
    .expect("address");
    c.bench_function("job_build", |b| {
        b.iter(|| {
            let job_template = JobTemplate::new(black_box(template.clone()));
            let coinbase =
                build_coinbase(&template, &payout, "tbg", Some("rig1"), 4, 8).expect("coinbase");
            black_box((job_template, coinbase))
        })
    });
    c.bench_function("build_coinbase", |b| {
        b.iter(|| build_coinbase(black_box(&template), &payout, "tbg", Some("rig1"), 4, 8))
    });
}

criterion_group!(benches, job_build);
criterion_main!(benches);
