//! One share validation against a job from Core's real template.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::Value;
use tbg_work::{build_coinbase, parse_payout_address, Job, JobTemplate, Network, Template};

fn gbt() -> Value {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/bitcoin-core-rpc-regtest.json"
    ));
    let all: Value = serde_json::from_str(text).expect("fixture is JSON");
    all["calls"][0]["response"]["result"].clone()
}

/// A job for Core's regtest template, its one transaction repeated to
/// `transactions` (None: the template as recorded).
fn job_for(transactions: Option<usize>) -> (Arc<Template>, Job) {
    let mut template = Template::from_gbt(&gbt()).expect("template");
    if let Some(count) = transactions {
        let tx = template.transactions[0].clone();
        template.transactions = vec![tx; count];
    }
    let template = Arc::new(template);
    let payout = parse_payout_address(
        "bcrt1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es",
        Network::Regtest,
    )
    .expect("address");
    let coinbase = build_coinbase(&template, &payout, "tbg", Some("rig1"), 4, 8).expect("coinbase");
    let job = Job {
        template: Arc::new(JobTemplate::new(template.clone())),
        coinbase: Arc::new(coinbase),
    };
    (template, job)
}

fn share_check(c: &mut Criterion) {
    let (template, job) = job_for(None);
    let extranonce1 = [1u8, 2, 3, 4];
    let extranonce2 = [0u8; 8];
    let mut nonce = 0u32;
    c.bench_function("share_check", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            black_box(job.check_share(
                black_box(&extranonce1),
                black_box(&extranonce2),
                template.cur_time,
                nonce,
                0x2000_0000,
            ))
        })
    });
}

/// The same check with a 12-level merkle branch (a 4,000-transaction block).
fn share_check_deep_branch(c: &mut Criterion) {
    let (template, job) = job_for(Some(4_000));
    assert_eq!(job.template.merkle_branch.len(), 12);
    let mut nonce = 0u32;
    c.bench_function("share_check_4000tx", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            black_box(job.check_share(
                &[1, 2, 3, 4],
                &[0; 8],
                template.cur_time,
                nonce,
                0x2000_0000,
            ))
        })
    });
}

/// What the pool does for the second and later shares of one extranonce2
/// (miners roll nonce and version many times per extranonce2): the merkle
/// root is reused, only the header is hashed.
fn share_check_cached_root(c: &mut Criterion) {
    let (template, job) = job_for(Some(4_000));
    let root = job.merkle_root(&[1, 2, 3, 4], &[0; 8]);
    let mut nonce = 0u32;
    c.bench_function("share_check_4000tx_cached_root", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            black_box(job.check_share_with_root(
                black_box(&root),
                template.cur_time,
                nonce,
                0x2000_0000,
            ))
        })
    });
}

/// The session's whole verdict (`ShareValidator::validate`: job lookup,
/// ntime, version, cached root, hash, duplicate store, target) for the same
/// shares as `share_check_4000tx_cached_root`: the difference is what the
/// rules cost on top of the hashing. No share is a block (mainnet bits).
fn share_validate(c: &mut Criterion) {
    use tbg_work::{CompactTarget, KeptJob, ShareContext, ShareValidator, Submission, Target};
    let mut template = Template::from_gbt(&gbt()).expect("template");
    let tx = template.transactions[0].clone();
    template.transactions = vec![tx; 4_000];
    template.bits = CompactTarget::from_consensus(0x1d00_ffff);
    template.target = Target::from_compact(template.bits);
    let template = Arc::new(template);
    let payout = parse_payout_address(
        "bcrt1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es",
        Network::Regtest,
    )
    .expect("address");
    let coinbase = build_coinbase(&template, &payout, "tbg", Some("rig1"), 4, 8).expect("coinbase");
    let job = Job {
        template: Arc::new(JobTemplate::new(template.clone())),
        coinbase: Arc::new(coinbase),
    };
    let mut validator = ShareValidator::new();
    for n in 0..16 {
        validator.push_job(KeptJob::new(format!("{n:016x}").into(), job.clone(), 1e-12));
    }
    let context = ShareContext {
        extranonce1: &[1, 2, 3, 4],
        extranonce2_len: 8,
        current_prev: Some(template.previous_block_hash),
        now: template.cur_time,
        ntime_window: 7000,
    };
    let mut nonce = 0u32;
    c.bench_function("share_validate_4000tx", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            let share = Submission {
                job_id: "000000000000000f",
                extranonce2: &[0; 8],
                ntime: template.cur_time,
                nonce,
                version_bits: None,
            };
            black_box(validator.validate(&share, &context, |_| true))
        })
    });
}

/// sha2 (SHA-NI when present) against bitcoin_hashes for one merkle node.
fn sha256d_64_bytes(c: &mut Criterion) {
    use bitcoin::hashes::{sha256d, Hash};
    use sha2::{Digest, Sha256};
    let node = [7u8; 64];
    c.bench_function("sha256d_64B_sha2", |b| {
        b.iter(|| Sha256::digest(Sha256::digest(black_box(&node))))
    });
    c.bench_function("sha256d_64B_bitcoin_hashes", |b| {
        b.iter(|| sha256d::Hash::hash(black_box(&node)))
    });
}

criterion_group!(
    benches,
    share_check,
    share_check_deep_branch,
    share_check_cached_root,
    share_validate,
    sha256d_64_bytes
);
criterion_main!(benches);
