//! The share validator driven like a session, without sockets: explicit
//! scenarios with ground nonces, then random scripts checked by the
//! validator's own oracle (`run_script`, the fuzz targets' entry point).

use std::sync::Arc;

use bitcoin::hashes::Hash;
use rand::{Rng, SeedableRng};
use tbg_work::validate::{decode_actions, run_script, Action, MAX_SEEN_SHARES};
use tbg_work::{
    build_coinbase, BlockHash, CompactTarget, FoundBlocks, Job, JobTemplate, KeptJob, ScriptBuf,
    ShareContext, ShareReject, ShareValidator, Submission, Target, Template,
};

/// Regtest's bits: about half of all headers are blocks.
const EASY_BITS: u32 = 0x207f_ffff;
/// Mainnet's difficulty-1 bits: no test header is a block.
const HARD_BITS: u32 = 0x1d00_ffff;
const NTIME: u32 = 1_700_000_000;
const WINDOW: u32 = 7000;
/// Every header meets it.
const TINY: f64 = 1e-12;
const EXTRANONCE1: [u8; 4] = [9, 8, 7, 6];

fn tip(n: u8) -> BlockHash {
    BlockHash::from_byte_array([n; 32])
}

fn job(prev: BlockHash, bits: u32, coinbase_value: u64) -> Job {
    let bits = CompactTarget::from_consensus(bits);
    let template = Arc::new(Template {
        height: 500,
        version: 0x2000_0000,
        previous_block_hash: prev,
        bits,
        cur_time: NTIME,
        min_time: NTIME - 600,
        coinbase_value,
        transactions: Vec::new(),
        default_witness_commitment: None,
        target: Target::from_compact(bits),
    });
    let mut payout = vec![0x00, 0x14];
    payout.extend_from_slice(&[7; 20]);
    let coinbase = build_coinbase(
        &template,
        &ScriptBuf::from_bytes(payout),
        "/tbg/",
        None,
        4,
        8,
    )
    .unwrap();
    Job {
        template: Arc::new(JobTemplate::new(template)),
        coinbase: Arc::new(coinbase),
    }
}

fn kept(id: &str, job: &Job, difficulty: f64) -> KeptJob {
    KeptJob::new(id.into(), job.clone(), difficulty)
}

fn context(current_prev: BlockHash) -> ShareContext<'static> {
    ShareContext {
        extranonce1: &EXTRANONCE1,
        extranonce2_len: 8,
        current_prev: Some(current_prev),
        now: NTIME,
        ntime_window: WINDOW,
    }
}

fn share<'a>(job_id: &'a str, extranonce2: &'a [u8; 8], nonce: u32) -> Submission<'a> {
    Submission {
        job_id,
        extranonce2,
        ntime: NTIME,
        nonce,
        version_bits: None,
    }
}

/// The first nonce from 0 whose header is (or is not) a block.
fn nonce_where(job: &Job, extranonce2: &[u8; 8], block: bool) -> u32 {
    (0..)
        .find(|nonce| {
            job.check_share(&EXTRANONCE1, extranonce2, NTIME, *nonce, 0x2000_0000)
                .meets_network
                == block
        })
        .unwrap()
}

/// Claims through a pool-wide set, recording every claim.
struct Claims {
    found: FoundBlocks,
    calls: Vec<BlockHash>,
}

impl Claims {
    fn new() -> Claims {
        Claims {
            found: FoundBlocks::default(),
            calls: Vec::new(),
        }
    }

    fn claim(&mut self) -> impl FnMut(&BlockHash) -> bool + '_ {
        |hash| {
            self.calls.push(*hash);
            self.found.claim(hash)
        }
    }
}

#[test]
fn a_block_on_a_job_just_made_stale_is_accepted_and_claimed() {
    let old = job(tip(1), EASY_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("a", &old, TINY));
    let new = job(tip(2), EASY_BITS, 50);
    validator.push_job(kept("b", &new, TINY));
    let en2 = [1; 8];
    let mut claims = Claims::new();
    let block = nonce_where(&old, &en2, true);
    let verdict = validator.validate(&share("a", &en2, block), &context(tip(2)), claims.claim());
    let accepted = verdict.expect("a block whatever its job's age");
    assert!(accepted.is_block && accepted.stale, "{accepted:?}");
    assert_eq!(claims.calls, vec![accepted.hash]);
    // Sent again: claimed already, so a duplicate and never a second submission.
    let verdict = validator.validate(&share("a", &en2, block), &context(tip(2)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Duplicate));
    assert!(!claims.found.claim(&accepted.hash));
}

#[test]
fn a_stale_share_that_is_not_a_block_is_stale() {
    let old = job(tip(1), EASY_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("a", &old, TINY));
    validator.push_job(kept("b", &job(tip(2), EASY_BITS, 50), TINY));
    let en2 = [1; 8];
    let mut claims = Claims::new();
    let nonce = nonce_where(&old, &en2, false);
    let verdict = validator.validate(&share("a", &en2, nonce), &context(tip(2)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Stale));
    assert!(claims.calls.is_empty(), "only blocks are claimed");
}

#[test]
fn a_retarget_job_for_the_same_coinbase_answers_duplicate() {
    let work = job(tip(1), HARD_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("first", &work, TINY));
    let en2 = [3; 8];
    let mut claims = Claims::new();
    let accepted = validator
        .validate(&share("first", &en2, 77), &context(tip(1)), claims.claim())
        .expect("a valid share");
    assert!(!accepted.is_block);
    // Vardiff: same template and coinbase, new id, new difficulty.
    validator.push_job(kept("second", &work, TINY * 2.0));
    let verdict = validator.validate(&share("second", &en2, 77), &context(tip(1)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Duplicate));
    let verdict = validator.validate(&share("first", &en2, 77), &context(tip(1)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Duplicate));
    // Another nonce on the new job is a new share, judged at the new difficulty.
    let accepted = validator
        .validate(&share("second", &en2, 78), &context(tip(1)), claims.claim())
        .expect("a new share");
    assert_eq!(accepted.target_difficulty, TINY * 2.0);
}

#[test]
fn a_resumed_session_keeps_its_accepted_shares_and_blocks() {
    let work = job(tip(1), EASY_BITS, 50);
    let mut first = ShareValidator::new();
    first.push_job(kept("j", &work, TINY));
    let en2 = [5; 8];
    let mut claims = Claims::new();
    let plain = nonce_where(&work, &en2, false);
    let block = nonce_where(&work, &en2, true);
    first
        .validate(&share("j", &en2, plain), &context(tip(1)), claims.claim())
        .expect("a share");
    first
        .validate(&share("j", &en2, block), &context(tip(1)), claims.claim())
        .expect("a block");
    // The connection drops; the miner resumes with the same extranonce1 and
    // is sent the same job again.
    let mut resumed = ShareValidator::new();
    resumed.resume(first.into_seen());
    resumed.push_job(kept("j", &work, TINY));
    for nonce in [plain, block] {
        let verdict = resumed.validate(&share("j", &en2, nonce), &context(tip(1)), claims.claim());
        assert_eq!(verdict, Err(ShareReject::Duplicate), "nonce {nonce}");
    }
    assert_eq!(
        claims.calls.len(),
        2,
        "the block was claimed, then refused once"
    );
    // A fresh session (another extranonce1 in the pool) starts empty.
    let mut fresh = ShareValidator::new();
    fresh.push_job(kept("j", &work, TINY));
    assert!(fresh
        .validate(&share("j", &en2, plain), &context(tip(1)), claims.claim())
        .is_ok());
}

#[test]
fn the_store_keeps_two_tips_and_frees_older_ones() {
    let en2 = [6; 8];
    let mut claims = Claims::new();
    let mut validator = ShareValidator::new();
    for (n, id) in [(1u8, "t1"), (2, "t2"), (3, "t3")] {
        let work = job(tip(n), HARD_BITS, 50);
        validator.push_job(kept(id, &work, TINY));
        validator
            .validate(&share(id, &en2, 1), &context(tip(n)), claims.claim())
            .expect("a share on the tip");
    }
    assert_eq!(validator.seen().len_for(&tip(3)), 1);
    assert_eq!(
        validator.seen().len_for(&tip(2)),
        1,
        "the tip before is kept"
    );
    assert_eq!(
        validator.seen().len_for(&tip(1)),
        0,
        "older ones are dropped"
    );
    assert_eq!(validator.seen().len(), 2);
    // A resend on the tip before is still a duplicate rather than stale.
    let verdict = validator.validate(&share("t2", &en2, 1), &context(tip(3)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Duplicate));
    let verdict = validator.validate(&share("t1", &en2, 1), &context(tip(3)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Stale));
}

#[test]
fn at_the_bound_the_store_stops_growing_and_shares_are_still_accepted() {
    let work = job(tip(1), HARD_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("j", &work, TINY));
    let en2 = [8; 8];
    let mut claims = Claims::new();
    for nonce in 0..MAX_SEEN_SHARES as u32 {
        validator
            .validate(&share("j", &en2, nonce), &context(tip(1)), claims.claim())
            .expect("a new share");
    }
    assert_eq!(validator.seen().len(), MAX_SEEN_SHARES);
    // A remembered one is still a duplicate.
    let verdict = validator.validate(&share("j", &en2, 5), &context(tip(1)), claims.claim());
    assert_eq!(verdict, Err(ShareReject::Duplicate));
    // Past the bound: accepted, not remembered, so accepted again.
    let beyond = MAX_SEEN_SHARES as u32 + 1;
    for _ in 0..2 {
        assert!(validator
            .validate(&share("j", &en2, beyond), &context(tip(1)), claims.claim())
            .is_ok());
    }
    assert_eq!(validator.seen().len(), MAX_SEEN_SHARES);
    // A new tip starts afresh.
    validator.push_job(kept("k", &job(tip(2), HARD_BITS, 50), TINY));
    assert_eq!(validator.seen().len_for(&tip(2)), 0);
}

#[test]
fn cheap_rules_unknown_job_length_ntime_version_and_target() {
    let work = job(tip(1), HARD_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("j", &work, TINY));
    let en2 = [2; 8];
    let mut claims = Claims::new();
    let ctx = context(tip(1));
    let mut judge = |validator: &mut ShareValidator, submission: Submission<'_>, ctx| {
        validator.validate(&submission, &ctx, claims.claim())
    };
    assert_eq!(
        judge(&mut validator, share("nope", &en2, 1), ctx),
        Err(ShareReject::UnknownJob)
    );
    let short = Submission {
        extranonce2: &en2[..4],
        ..share("j", &en2, 1)
    };
    assert_eq!(
        judge(&mut validator, short, ctx),
        Err(ShareReject::Nonce2Length)
    );
    for (ntime, ok) in [
        (NTIME - 1, false),
        (NTIME, true),
        (NTIME + WINDOW, true),
        (NTIME + WINDOW + 1, false),
    ] {
        let submission = Submission {
            ntime,
            nonce: ntime,
            ..share("j", &en2, 0)
        };
        let verdict = judge(&mut validator, submission, ctx);
        assert_eq!(verdict.is_ok(), ok, "ntime {ntime}: {verdict:?}");
        if !ok {
            assert_eq!(verdict, Err(ShareReject::NtimeOutOfRange));
        }
    }
    // Hours after the job (the node was unreachable): the window follows the clock.
    let later = ShareContext {
        now: NTIME + 3 * 3600,
        ..ctx
    };
    let submission = Submission {
        ntime: NTIME + 3 * 3600 + 60,
        ..share("j", &en2, 9)
    };
    assert!(judge(&mut validator, submission, later).is_ok());
    // Version bits: none negotiated, outside the mask, inside it.
    let rolled = Submission {
        version_bits: Some(0x0000_e000),
        ..share("j", &en2, 10)
    };
    assert_eq!(
        judge(&mut validator, rolled, ctx),
        Err(ShareReject::VersionMask)
    );
    validator.set_version_mask(Some(0x1fff_e000));
    let outside = Submission {
        version_bits: Some(0x4000_0000),
        ..rolled
    };
    assert_eq!(
        judge(&mut validator, outside, ctx),
        Err(ShareReject::VersionMask)
    );
    let accepted = judge(&mut validator, rolled, ctx).expect("rolled inside the mask");
    assert_eq!(accepted.version, 0x2000_e000);
    let expected = work.check_share(&EXTRANONCE1, &en2, NTIME, 10, 0x2000_e000);
    assert_eq!(
        accepted.hash, expected.hash,
        "hashed with the rolled version"
    );
    // A share below its job's difficulty.
    validator.push_job(kept("hard", &work, 1e6));
    assert_eq!(
        judge(&mut validator, share("hard", &en2, 11), ctx),
        Err(ShareReject::AboveTarget)
    );
    // Past the jobs kept, the first job is unknown.
    for n in 0..tbg_work::validate::JOBS_KEPT {
        validator.push_job(kept(&format!("x{n}"), &work, TINY));
    }
    assert_eq!(
        judge(&mut validator, share("j", &en2, 12), ctx),
        Err(ShareReject::UnknownJob)
    );
}

#[test]
fn a_block_below_the_miners_difficulty_is_still_a_block() {
    let work = job(tip(1), EASY_BITS, 50);
    let mut validator = ShareValidator::new();
    validator.push_job(kept("j", &work, 1e12));
    let en2 = [4; 8];
    let mut claims = Claims::new();
    let block = nonce_where(&work, &en2, true);
    let accepted = validator
        .validate(&share("j", &en2, block), &context(tip(1)), claims.claim())
        .expect("a block");
    assert!(accepted.is_block && !accepted.stale);
    assert!(accepted.share_difficulty < accepted.target_difficulty);
}

#[test]
fn scripted_resends_across_retargets_reconnects_and_tips() {
    let submit = |nonce| Action::Submit {
        job: 0,
        extranonce2: 1,
        ntime_offset: 0,
        nonce,
        version_bits: None,
        wrong_length: false,
    };
    let script = [
        submit(1),
        Action::Resend { back: 0 },
        Action::Retarget { level: 0 },
        Action::Resend { back: 0 },
        Action::Reconnect { resume: true },
        Action::Resend { back: 0 },
        Action::NewTip { tip: 1 },
        Action::Resend { back: 0 },
        Action::Reconnect { resume: false },
        submit(1),
    ];
    let outcome = run_script(&script).expect("every rule holds");
    let verdicts = &outcome.verdicts;
    assert_eq!(verdicts.len(), 6);
    assert!(verdicts[0].is_ok());
    for verdict in &verdicts[1..4] {
        assert_eq!(*verdict, Err(ShareReject::Duplicate));
    }
    // On the new tip the old job's resend is a duplicate of the tip before
    // (kept), unless the share was a block, claimed already.
    assert!(
        verdicts[4] == Err(ShareReject::Duplicate),
        "{:?}",
        verdicts[4]
    );
    // Another extranonce1, another header: judged afresh.
    assert!(verdicts[5].is_ok(), "{:?}", verdicts[5]);
}

#[test]
fn random_scripts_keep_every_rule() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut seen = [false; 8];
    for round in 0..300 {
        let len = rng.gen_range(1..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let outcome = run_script(&decode_actions(&bytes))
            .unwrap_or_else(|violation| panic!("round {round}: {violation}"));
        for verdict in &outcome.verdicts {
            let kind = match verdict {
                Ok(share) if share.is_block && share.stale => 0,
                Ok(share) if share.is_block => 1,
                Ok(_) => 2,
                Err(ShareReject::Duplicate) => 3,
                Err(ShareReject::Stale) => 4,
                Err(ShareReject::AboveTarget) => 5,
                Err(ShareReject::NtimeOutOfRange) => 6,
                Err(_) => 7,
            };
            seen[kind] = true;
        }
    }
    assert_eq!(seen, [true; 8], "the scripts reach every verdict");
}
