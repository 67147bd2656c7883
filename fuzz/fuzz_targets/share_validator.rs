//! The share validator (`tbg_work::validate`) driven like a session: the
//! input is a script of actions (new previous block, new template, retarget,
//! version rolling, submits with their fields, resends, reconnects with or
//! without resume, time passing, the recorded ckpool job and its real block
//! solution), played twice:
//!
//! 1. through the crate's own script runner (`run_script`), whose oracle
//!    checks the order of the rules (any `ScriptViolation` is a finding);
//! 2. through this target's driver, which re-hashes every share that passes
//!    the cheap rules independently of the pool's hashing code: the
//!    coinbase decoded and hashed by `bitcoin`, the merkle root over the
//!    template's whole transaction list (`bitcoin::merkle_tree`) or, for the
//!    recorded job, the branch ckpool sent, the header built and hashed by
//!    `bitcoin::block::Header`.
//!
//! Asserts, besides "never panics": an accepted share has the hash computed
//! here, meets its job's difficulty when re-hashed and is not stale; a share
//! whose header meets the network target is always reported as a block
//! (accepted with `is_block`), unless that very block was already claimed,
//! and a share that is no block is never reported as one; the same header
//! is never accepted twice by one session (one extranonce1, also across a
//! resume), except as documented in `validate/seen.rs`: a header on a
//! previous block the store has since forgotten (two newer tips came in
//! between); a duplicate is only ever a header accepted before; a refusal
//! as stale or above target is true when re-hashed; the recorded solution
//! on the recorded job is the block Bitcoin Core accepted.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use bitcoin::block::{Header, Version};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{
    absolute::LockTime, transaction, Amount, BlockHash, CompactTarget, OutPoint, ScriptBuf,
    Sequence, Target, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tbg_work::validate::{decode_actions, run_script, JOBS_KEPT};
use tbg_work::{
    build_coinbase, AcceptedShare, CoinbaseParts, FoundBlocks, Job, JobTemplate, KeptJob,
    NotifyParts, ShareContext, ShareReject, ShareValidator, Submission, Template, TemplateTx,
};

const EXTRANONCE2_LEN: usize = 8;
const NTIME_WINDOW: u32 = 7000;
const START_TIME: u32 = 1_700_000_000;
const POOL_MASK: u32 = 0x1fff_e000;
/// 2^253: one header in eight is a block, so scripts find blocks.
const SCRIPT_BITS: u32 = 0x2020_0000;
/// Share difficulties a retarget picks: every header passes the first,
/// about half the second, only blocks the last two.
const LEVELS: [f64; 4] = [1.0 / 8_589_934_592.0, 1.0 / 2_147_483_648.0, 1.0, 1e6];
/// Synthetic previous blocks a script moves between.
const TIPS: u8 = 4;
/// Actions read from one input at most.
const MAX_ACTIONS: usize = 400;

/// The recorded ckpool job of one fixture case.
struct Recorded {
    job: Job,
    job_id: String,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    block_hash: BlockHash,
}

struct Fixture {
    extranonce1: Vec<u8>,
    cases: Vec<Recorded>,
    /// The synthetic templates' jobs and their transactions' txids, by
    /// (tip, transaction count, revision).
    templates: Vec<(Job, Vec<Txid>)>,
}

/// Template revisions per tip and transaction count.
const REVISIONS: u32 = 8;

/// The job of a synthetic template: tip `tip`, revision `revision`, the
/// first `transactions` of `pool`.
fn synthetic_job(tip: u8, revision: u32, pool: &[TemplateTx]) -> (Job, Vec<Txid>) {
    let bits = CompactTarget::from_consensus(SCRIPT_BITS);
    let txids = pool.iter().map(|tx| tx.txid).collect();
    let template = Arc::new(Template {
        height: 100 + u32::from(tip),
        version: 0x2000_0000,
        previous_block_hash: tip_hash(tip),
        bits,
        cur_time: START_TIME + revision,
        min_time: START_TIME,
        coinbase_value: 5_000_000_000 - u64::from(revision),
        transactions: pool.to_vec(),
        default_witness_commitment: None,
        target: Target::from_compact(bits),
    });
    let coinbase = build_coinbase(&template, &p2wpkh(0x42), "/tbg/", None, 4, 8)
        .expect("a fixed, valid coinbase");
    let job = Job {
        template: Arc::new(JobTemplate::new(template)),
        coinbase: Arc::new(coinbase),
    };
    (job, txids)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = include_str!("../../fixtures/stratum-ckpool-cpuminer-regtest.json");
        let json: Value = serde_json::from_str(text).expect("fixture");
        let extranonce1 = hex::decode(json["subscribe_result"]["result"][1].as_str().unwrap())
            .expect("extranonce1");
        let word = |v: &Value| u32::from_str_radix(v.as_str().unwrap(), 16).unwrap();
        let cases = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|case| {
                let p = &case["notify"]["params"];
                let text = |i: usize| p[i].as_str().unwrap().to_owned();
                let branch: Vec<String> = p[4]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h.as_str().unwrap().to_owned())
                    .collect();
                let (prevhash, version, nbits, ntime) = (text(1), text(5), text(6), text(7));
                let parts = NotifyParts {
                    height: case["height"].as_u64().unwrap() as u32,
                    prevhash: &prevhash,
                    merkle_branch: &branch,
                    version: &version,
                    nbits: &nbits,
                    ntime: &ntime,
                };
                let template = JobTemplate::from_notify_parts(&parts, &[]).expect("notify");
                let coinbase = CoinbaseParts::new(
                    hex::decode(text(2)).unwrap(),
                    hex::decode(text(3)).unwrap(),
                    extranonce1.len() + EXTRANONCE2_LEN,
                )
                .expect("recorded coinbase");
                let submit = &case["submit"]["params"];
                Recorded {
                    job: Job {
                        template: Arc::new(template),
                        coinbase: Arc::new(coinbase),
                    },
                    job_id: text(0),
                    extranonce2: hex::decode(submit[2].as_str().unwrap()).unwrap(),
                    ntime: word(&submit[3]),
                    nonce: word(&submit[4]),
                    block_hash: case["accepted_block_hash"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                }
            })
            .collect();
        let transactions: Vec<TemplateTx> = (1..=3u8)
            .map(|i| {
                let tx = Transaction {
                    version: transaction::Version::TWO,
                    lock_time: LockTime::ZERO,
                    input: vec![TxIn {
                        previous_output: OutPoint::new(Txid::from_byte_array([i; 32]), 0),
                        script_sig: ScriptBuf::new(),
                        sequence: Sequence::MAX,
                        witness: Witness::new(),
                    }],
                    output: vec![TxOut {
                        value: Amount::from_sat(1000 * u64::from(i)),
                        script_pubkey: p2wpkh(i),
                    }],
                };
                TemplateTx {
                    data: serialize(&tx),
                    txid: tx.compute_txid(),
                    wtxid: tx.compute_wtxid(),
                    fee: 100,
                }
            })
            .collect();
        let mut templates = Vec::new();
        for tip in 0..TIPS {
            for count in 0..4 {
                for revision in 0..REVISIONS {
                    templates.push(synthetic_job(tip, revision, &transactions[..count]));
                }
            }
        }
        Fixture {
            extranonce1,
            cases,
            templates,
        }
    })
}

fn p2wpkh(byte: u8) -> ScriptBuf {
    let mut script = vec![0x00, 0x14];
    script.extend_from_slice(&[byte; 20]);
    ScriptBuf::from_bytes(script)
}

fn tip_hash(tip: u8) -> BlockHash {
    BlockHash::from_byte_array([tip.wrapping_add(1); 32])
}

/// A job the session was sent, and what the independent re-hash needs.
#[derive(Clone)]
struct SentJob {
    kept: KeptJob,
    /// Every txid of the block after the coinbase (template jobs), or
    /// `None` for the recorded job (its branch is ckpool's).
    txids: Option<Vec<Txid>>,
    /// The fixture case this job is, if it is one.
    recorded: Option<usize>,
}

/// The work the pool hands out now.
struct Pool {
    tip: BlockHash,
    synthetic_tip: u8,
    revision: u32,
    level: usize,
    current: SentJob,
    next_id: u64,
    found: FoundBlocks,
    claimed: HashSet<BlockHash>,
    claims: usize,
}

impl Pool {
    fn fresh_id(&mut self) -> Arc<str> {
        self.next_id += 1;
        format!("{:016x}", self.next_id).into()
    }

    /// A new synthetic template on `tip` carrying `transactions` of the pool.
    /// A new template on `tip` carrying `transactions` of the pool. Its
    /// job is one of [`REVISIONS`] built in advance per tip and transaction
    /// count (building jobs was most of the time per input): a revision
    /// seen before comes back under a new job id, the same coinbase and
    /// header space as a retarget.
    fn publish(&mut self, tip: u8, transactions: usize) {
        self.synthetic_tip = tip;
        self.tip = tip_hash(tip);
        self.revision = (self.revision + 1) % REVISIONS;
        let (job, txids) = fixture().templates
            [(usize::from(tip) * 4 + transactions) * REVISIONS as usize + self.revision as usize]
            .clone();
        let id = self.fresh_id();
        self.current = SentJob {
            kept: KeptJob::new(id, job, LEVELS[self.level]),
            txids: Some(txids),
            recorded: None,
        };
    }

    /// The recorded ckpool job of fixture case `case` becomes the work.
    fn publish_recorded(&mut self, case: usize) {
        let recorded = &fixture().cases[case];
        self.tip = recorded.job.template.previous_block_hash;
        self.current = SentJob {
            kept: KeptJob::new(
                recorded.job_id.as_str().into(),
                recorded.job.clone(),
                LEVELS[self.level],
            ),
            txids: None,
            recorded: Some(case),
        };
    }
}

#[derive(Clone)]
struct Sent {
    job_id: Arc<str>,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
}

/// One connection of the miner, and what this target knows of it.
struct Session {
    validator: ShareValidator,
    extranonce1: Vec<u8>,
    jobs: Vec<SentJob>,
    mask: Option<u32>,
    /// Headers accepted on this extranonce1 (also before a resume).
    accepted: HashSet<BlockHash>,
    /// What the duplicate store must still hold.
    store: Store,
}

/// The duplicate store as `validate/seen.rs` documents it: the headers
/// accepted on the last two previous blocks the session was sent jobs on.
#[derive(Default)]
struct Store {
    current: (Option<BlockHash>, HashSet<BlockHash>),
    previous: (Option<BlockHash>, HashSet<BlockHash>),
}

impl Store {
    fn on_job(&mut self, prev: BlockHash) {
        if self.current.0 == Some(prev) {
            return;
        }
        if self.previous.0 == Some(prev) {
            std::mem::swap(&mut self.current, &mut self.previous);
            return;
        }
        self.previous = std::mem::take(&mut self.current);
        self.current.0 = Some(prev);
    }

    fn remembers(&self, prev: BlockHash, hash: &BlockHash) -> bool {
        [&self.current, &self.previous]
            .iter()
            .any(|(p, hashes)| *p == Some(prev) && hashes.contains(hash))
    }

    fn insert(&mut self, prev: BlockHash, hash: BlockHash) {
        for (p, hashes) in [&mut self.current, &mut self.previous] {
            if *p == Some(prev) {
                hashes.insert(hash);
            }
        }
    }
}

impl Session {
    fn push(&mut self, job: SentJob) {
        self.store.on_job(job.kept.prev_hash());
        if self.jobs.len() == JOBS_KEPT {
            self.jobs.remove(0);
        }
        self.jobs.push(job.clone());
        self.validator.push_job(job.kept);
    }
}

/// Reads the input front to back; past its end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. The crate's own scripted session and oracle.
    if let Err(violation) = run_script(&decode_actions(data)) {
        panic!("run_script: {violation}");
    }
    // 2. This target's driver, with the independent re-hash.
    drive(data);
});

fn drive(data: &[u8]) {
    let fixture = fixture();
    let mut input = Input(data);
    let mut pool = Pool {
        tip: tip_hash(0),
        synthetic_tip: 0,
        revision: 0,
        level: 0,
        // Replaced by the first template just below.
        current: SentJob {
            kept: KeptJob::new("recorded".into(), fixture.cases[0].job.clone(), LEVELS[0]),
            txids: None,
            recorded: Some(0),
        },
        next_id: 0,
        found: FoundBlocks::default(),
        claimed: HashSet::new(),
        claims: 0,
    };
    pool.publish(0, 0);
    // The recorded session's extranonce1, so its solution is a block here.
    let mut session = Session {
        validator: ShareValidator::new(),
        extranonce1: fixture.extranonce1.clone(),
        jobs: Vec::new(),
        mask: None,
        accepted: HashSet::new(),
        store: Store::default(),
    };
    session.push(pool.current.clone());
    let mut now = START_TIME;
    let mut sent: Vec<Sent> = Vec::new();
    let mut actions = 0;
    while !input.0.is_empty() && actions < MAX_ACTIONS {
        actions += 1;
        let share = match input.byte() % 12 {
            0 => {
                let tip = input.byte();
                pool.publish(tip % TIPS, usize::from(tip / TIPS) % 4);
                session.push(pool.current.clone());
                None
            }
            1 => {
                let transactions = usize::from(input.byte() % 4);
                pool.publish(pool.synthetic_tip, transactions);
                session.push(pool.current.clone());
                None
            }
            2 => {
                pool.level = usize::from(input.byte()) % LEVELS.len();
                let mut job = pool.current.clone();
                job.kept = KeptJob::new(pool.fresh_id(), job.kept.job, LEVELS[pool.level]);
                session.push(job);
                None
            }
            3 => {
                let granted = input.u32() & POOL_MASK;
                session.mask = (granted != 0).then_some(granted);
                session.validator.set_version_mask(session.mask);
                None
            }
            4 => {
                let back = usize::from(input.byte() % 4) + 1;
                sent.len().checked_sub(back).map(|i| sent[i].clone())
            }
            5 => {
                let resume = input.byte() & 1 == 0;
                let old = std::mem::take(&mut session.validator);
                if resume {
                    session.validator.resume(old.into_seen());
                } else {
                    // A new connection gets a new extranonce1.
                    for byte in session.extranonce1.iter_mut() {
                        *byte = byte.wrapping_add(1).max(1);
                    }
                    session.accepted.clear();
                    session.store = Store::default();
                }
                session.jobs.clear();
                session.mask = None;
                session.push(pool.current.clone());
                None
            }
            6 => {
                now = now.saturating_add(u32::from(input.u16()));
                None
            }
            7 => {
                let case = usize::from(input.byte()) % fixture.cases.len();
                pool.publish_recorded(case);
                session.push(pool.current.clone());
                None
            }
            8 => {
                // The recorded solution, on the newest recorded job sent.
                let job = session.jobs.iter().rev().find(|j| j.recorded.is_some());
                job.map(|job| {
                    let recorded = &fixture.cases[job.recorded.unwrap_or(0)];
                    Sent {
                        job_id: job.kept.id.clone(),
                        extranonce2: recorded.extranonce2.clone(),
                        ntime: recorded.ntime,
                        nonce: recorded.nonce,
                        version_bits: None,
                    }
                })
            }
            _ => {
                let flags = input.byte();
                let back = usize::from(input.byte() % 20) + 1;
                let job_id = session.jobs.len().checked_sub(back).map_or_else(
                    || Arc::from("ffffffffffffffff"),
                    |i| session.jobs[i].kept.id.clone(),
                );
                let base = session
                    .jobs
                    .last()
                    .map_or(START_TIME, |j| j.kept.job.template.cur_time);
                let mut extranonce2 = u64::from(input.u16()).to_le_bytes().to_vec();
                extranonce2.truncate(if flags & 0xf0 == 0xf0 {
                    4
                } else {
                    EXTRANONCE2_LEN
                });
                let offset = i32::from(input.byte() as i8) * 60;
                Some(Sent {
                    job_id,
                    extranonce2,
                    ntime: base.saturating_add_signed(offset),
                    nonce: input.u32(),
                    version_bits: (flags & 7 == 1).then(|| input.u32()),
                })
            }
        };
        let Some(share) = share else { continue };
        sent.push(share.clone());
        judge(&mut session, &mut pool, &share, now);
    }
}

/// diff1 / hash, computed here from the hash's 32 bytes.
fn difficulty_of(hash: &BlockHash) -> f64 {
    let value = hash
        .as_byte_array()
        .iter()
        .rev()
        .fold(0.0f64, |acc, byte| acc * 256.0 + f64::from(*byte));
    let diff1 = f64::from(0xffffu32) * 2f64.powi(208);
    if value == 0.0 {
        f64::INFINITY
    } else {
        diff1 / value
    }
}

/// The header hash of a share, computed without the pool's hashing code.
fn rehash(job: &SentJob, extranonce1: &[u8], share: &Sent, version: u32) -> BlockHash {
    let parts = &job.kept.job.coinbase;
    let mut bytes = parts.coinb1.clone();
    bytes.extend_from_slice(extranonce1);
    bytes.extend_from_slice(&share.extranonce2);
    bytes.extend_from_slice(&parts.coinb2);
    let coinbase: Transaction = deserialize(&bytes).expect("the coinbase decodes");
    let coinbase_txid = coinbase.compute_txid();
    let template = &job.kept.job.template;
    let merkle_root = match &job.txids {
        Some(txids) => {
            let all = std::iter::once(coinbase_txid)
                .chain(txids.iter().copied())
                .map(|txid| txid.to_raw_hash());
            TxMerkleNode::from_raw_hash(bitcoin::merkle_tree::calculate_root(all).expect("one tx"))
        }
        None => {
            let mut root = coinbase_txid.to_byte_array();
            for sibling in &template.merkle_branch {
                let mut pair = root.to_vec();
                pair.extend_from_slice(sibling);
                root = sha256d::Hash::hash(&pair).to_byte_array();
            }
            TxMerkleNode::from_byte_array(root)
        }
    };
    Header {
        version: Version::from_consensus(version as i32),
        prev_blockhash: template.previous_block_hash,
        merkle_root,
        time: share.ntime,
        bits: template.bits,
        nonce: share.nonce,
    }
    .block_hash()
}

fn judge(session: &mut Session, pool: &mut Pool, share: &Sent, now: u32) {
    let context = ShareContext {
        extranonce1: &session.extranonce1,
        extranonce2_len: EXTRANONCE2_LEN,
        current_prev: Some(pool.tip),
        now,
        ntime_window: NTIME_WINDOW,
    };
    let submission = Submission {
        job_id: &share.job_id,
        extranonce2: &share.extranonce2,
        ntime: share.ntime,
        nonce: share.nonce,
        version_bits: share.version_bits,
    };
    let mut claim: Option<(BlockHash, bool)> = None;
    let found = &mut pool.found;
    let verdict = session.validator.validate(&submission, &context, |hash| {
        let first = found.claim(hash);
        claim = Some((*hash, first));
        first
    });

    // The cheap rules, in their order.
    let job = session
        .jobs
        .iter()
        .rev()
        .find(|j| *j.kept.id == *share.job_id)
        .cloned();
    let mask = session.mask.unwrap_or(0);
    let cheap = match &job {
        None => Some(ShareReject::UnknownJob),
        Some(_) if share.extranonce2.len() != EXTRANONCE2_LEN => Some(ShareReject::Nonce2Length),
        Some(job) => {
            let ntime = job.kept.job.template.cur_time;
            let latest = ntime.max(now).saturating_add(NTIME_WINDOW);
            if share.ntime < ntime || share.ntime > latest {
                Some(ShareReject::NtimeOutOfRange)
            } else if share.version_bits.is_some_and(|bits| bits & !mask != 0) {
                Some(ShareReject::VersionMask)
            } else {
                None
            }
        }
    };
    let (Some(job), None) = (job, cheap) else {
        assert_eq!(verdict.err(), cheap, "cheap rules");
        assert!(
            claim.is_none(),
            "a block claimed before the cheap rules passed"
        );
        return;
    };

    let base = job.kept.job.template.version;
    let version = share
        .version_bits
        .map_or(base, |bits| (base & !mask) | (bits & mask));
    let hash = rehash(&job, &session.extranonce1, share, version);
    let target = Target::from_compact(job.kept.job.template.bits);
    let is_block = target.is_met_by(hash);
    let difficulty = difficulty_of(&hash);
    let prev = job.kept.prev_hash();
    let stale = prev != pool.tip;
    let required = job.kept.difficulty;

    if let Some(case) = job.recorded {
        let recorded = &fixture().cases[case];
        let same = share.extranonce2 == recorded.extranonce2
            && (share.ntime, share.nonce, version) == (recorded.ntime, recorded.nonce, base)
            && session.extranonce1 == fixture().extranonce1;
        if same {
            assert_eq!(
                hash, recorded.block_hash,
                "the recorded solution is Core's block"
            );
            assert!(is_block);
        }
    }

    let remembered = session.store.remembers(prev, &hash);
    match verdict {
        Ok(accepted) => {
            check_accepted(
                &accepted, hash, is_block, stale, version, required, difficulty,
            );
            if is_block {
                let forgotten = pool.claims > 256;
                assert!(
                    !pool.claimed.contains(&hash) || forgotten,
                    "a block claimed twice"
                );
                pool.claimed.insert(hash);
                pool.claims += 1;
                assert_eq!(claim, Some((hash, true)), "a block is claimed by its hash");
            } else {
                assert!(claim.is_none(), "only blocks are claimed");
                assert!(!remembered, "the same header accepted twice: {hash}");
            }
            session.accepted.insert(hash);
            session.store.insert(prev, hash);
        }
        Err(ShareReject::Duplicate) => {
            if is_block {
                assert!(
                    pool.claimed.contains(&hash),
                    "a block solution refused as a duplicate"
                );
                assert_eq!(claim, Some((hash, false)));
            } else {
                assert!(
                    session.accepted.contains(&hash),
                    "a false duplicate: {hash}"
                );
            }
        }
        Err(ShareReject::Stale) => {
            assert!(!is_block, "a block solution refused as stale");
            assert!(stale, "refused as stale on the current tip");
            assert!(!remembered, "a resend not called a duplicate");
        }
        Err(ShareReject::AboveTarget) => {
            assert!(!is_block, "a block solution refused above target");
            assert!(!stale);
            assert!(
                difficulty < required * (1.0 + 1e-9),
                "refused above target at difficulty {difficulty} of {required}"
            );
            assert!(!remembered, "a resend not called a duplicate");
        }
        Err(other) => panic!("{other:?} after the cheap rules passed"),
    }
}

fn check_accepted(
    accepted: &AcceptedShare,
    hash: BlockHash,
    is_block: bool,
    stale: bool,
    version: u32,
    required: f64,
    difficulty: f64,
) {
    assert_eq!(
        accepted.hash, hash,
        "the pool's hash differs from the re-hash"
    );
    assert_eq!(
        accepted.is_block, is_block,
        "block flag against the re-hash"
    );
    assert_eq!(accepted.version, version);
    assert_eq!(accepted.target_difficulty, required);
    if !is_block {
        assert!(!stale, "a stale share accepted");
        assert!(
            difficulty >= required * (1.0 - 1e-9),
            "accepted at difficulty {difficulty} below {required}"
        );
    }
    assert_eq!(accepted.stale, stale);
}
