//! A scripted session: a sequence of [`Action`]s (new tips, templates,
//! retargets, version rolling, shares, resends, reconnects, time) played
//! against a [`ShareValidator`], every verdict checked against an
//! independent oracle. For the unit tests, and for fuzzing: feed
//! [`decode_actions`] arbitrary bytes and call [`run_script`]; any
//! [`ScriptViolation`] is a finding.
//!
//! The oracle hashes each share itself (without the merkle-root cache) and
//! knows every hash accepted and every block claimed, so it checks: the
//! cheap rules and their order, that no block solution is ever refused
//! except as the duplicate of one already claimed, that a block is claimed
//! once, that an accepted share meets its job's difficulty and is not
//! stale, that no share is called a duplicate unless its header was
//! accepted before on that extranonce1, and that a resend (any job id,
//! retarget, resumed session) on an unchanged tip is always a duplicate.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, CompactTarget, ScriptBuf, Target};

use super::{
    AcceptedShare, FoundBlocks, KeptJob, ShareContext, ShareReject, ShareValidator, Submission,
    FOUND_BLOCKS_KEPT, JOBS_KEPT, MAX_SEEN_SHARES,
};
use crate::coinbase::build_coinbase;
use crate::job::{Job, JobTemplate};
use crate::template::Template;

/// Distinct tips a script can move between.
const TIPS: u8 = 4;
/// 2^253: one random header in eight is a block, so scripts reach blocks.
const SCRIPT_BITS: u32 = 0x2020_0000;
/// Share difficulties a retarget can pick: every header passes the first,
/// about half the second, only blocks the last.
const LEVELS: [f64; 3] = [1.0 / 8_589_934_592.0, 1.0 / 2_147_483_648.0, 1.0];
const EXTRANONCE2_LEN: usize = 8;
const NTIME_WINDOW: u32 = 7000;
const START_TIME: u32 = 1_700_000_000;
/// The pool's BIP310 mask; `Configure` grants the miner's mask within it.
const POOL_MASK: u32 = 0x1fff_e000;

/// One step of a scripted session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A block on the network: the pool moves to tip `tip % 4` (back to an
    /// earlier one is a reorg) and sends a new job.
    NewTip { tip: u8 },
    /// A new template on the same tip (new coinbase value): a new job.
    NewTemplate,
    /// Vardiff: the same template and coinbase under a new job id, at
    /// difficulty level `level % 3`.
    Retarget { level: u8 },
    /// `mining.configure` asking to roll `mask` (0 turns rolling off).
    Configure { mask: u32 },
    /// A share on the job `job` back from the newest (0: the newest; past
    /// the kept jobs: an id the session never had).
    Submit {
        job: u8,
        extranonce2: u16,
        ntime_offset: i16,
        nonce: u32,
        version_bits: Option<u32>,
        wrong_length: bool,
    },
    /// The miner sends the submission `back` from its last one again.
    Resend { back: u8 },
    /// The connection drops and the miner comes back, resuming its session
    /// (same extranonce1, its accepted shares kept) or as a new one.
    Reconnect { resume: bool },
    /// Time passes.
    Wait { secs: u16 },
}

/// A rule of the validator that a script broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step}: {rule}: {detail}")]
pub struct ScriptViolation {
    pub step: usize,
    pub rule: &'static str,
    pub detail: String,
}

/// What a script did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptOutcome {
    /// Each share's verdict, in order.
    pub verdicts: Vec<Result<AcceptedShare, ShareReject>>,
    /// Block hashes claimed for submission, in order.
    pub blocks: Vec<BlockHash>,
}

/// Reads actions from arbitrary bytes (a fuzzer's input): every input is a
/// valid script, short inputs read zeros.
pub fn decode_actions(bytes: &[u8]) -> Vec<Action> {
    let mut input = bytes.iter().copied();
    let mut next = move || input.next();
    let mut actions = Vec::new();
    while let Some(op) = next() {
        let mut byte = || next().unwrap_or(0);
        let action = match op % 12 {
            0 => Action::NewTip { tip: byte() },
            1 => Action::NewTemplate,
            2 => Action::Retarget { level: byte() },
            3 => Action::Configure {
                mask: u32::from_le_bytes([byte(), byte(), byte(), byte()]),
            },
            4 => Action::Resend { back: byte() % 4 },
            5 => Action::Reconnect {
                resume: byte() & 1 == 0,
            },
            6 => Action::Wait {
                secs: u16::from_le_bytes([byte(), byte()]),
            },
            _ => {
                let flags = byte();
                Action::Submit {
                    job: byte() % 20,
                    extranonce2: u16::from_le_bytes([byte(), byte()]),
                    // Minutes either side of the job's ntime: about half
                    // inside the window, the rest on both sides of it.
                    ntime_offset: i16::from(byte() as i8) * 60,
                    nonce: u32::from_le_bytes([byte(), byte(), byte(), byte()]),
                    version_bits: (flags & 7 == 1)
                        .then(|| u32::from_le_bytes([byte(), byte(), byte(), byte()])),
                    wrong_length: flags & 0xf0 == 0xf0,
                }
            }
        };
        actions.push(action);
    }
    actions
}

struct OracleJob {
    kept: KeptJob,
}

/// The pool side of the script: the work it hands out.
struct Pool {
    tip: u8,
    revision: u32,
    level: usize,
    /// The job of the current template, as every session of the user gets it.
    template_job: KeptJob,
    next_id: u64,
    found: FoundBlocks,
    claimed: HashSet<BlockHash>,
    claims: usize,
}

fn tip_hash(tip: u8) -> BlockHash {
    BlockHash::from_byte_array([tip.wrapping_add(1); 32])
}

/// A job on tip `tip`, template revision `revision`.
fn make_job(tip: u8, revision: u32, id: Arc<str>, difficulty: f64) -> KeptJob {
    let bits = CompactTarget::from_consensus(SCRIPT_BITS);
    let template = Arc::new(Template {
        height: 100,
        version: 0x2000_0000,
        previous_block_hash: tip_hash(tip),
        bits,
        cur_time: START_TIME.saturating_add(revision),
        min_time: START_TIME,
        coinbase_value: 5_000_000_000 - u64::from(revision),
        transactions: Vec::new(),
        default_witness_commitment: None,
        target: Target::from_compact(bits),
    });
    // A P2WPKH payout; which address does not matter.
    let mut payout = vec![0x00, 0x14];
    payout.extend_from_slice(&[0x42; 20]);
    let coinbase = build_coinbase(
        &template,
        &ScriptBuf::from_bytes(payout),
        "/tbg/",
        None,
        4,
        EXTRANONCE2_LEN,
    )
    .unwrap_or_else(|_| unreachable!("a fixed, valid coinbase"));
    let job = Job {
        template: Arc::new(JobTemplate::new(template)),
        coinbase: Arc::new(coinbase),
    };
    KeptJob::new(id, job, difficulty)
}

impl Pool {
    fn new() -> Pool {
        Pool {
            tip: 0,
            revision: 0,
            level: 0,
            template_job: make_job(0, 0, "0000000000000000".into(), LEVELS[0]),
            next_id: 0,
            found: FoundBlocks::default(),
            claimed: HashSet::new(),
            claims: 0,
        }
    }

    /// A new template on `tip`: the job every session of the user gets.
    fn publish(&mut self, tip: u8) {
        self.tip = tip;
        self.revision += 1;
        let id = self.fresh_id();
        self.template_job = make_job(tip, self.revision, id, LEVELS[self.level]);
    }

    fn fresh_id(&mut self) -> Arc<str> {
        self.next_id += 1;
        format!("{:016x}", self.next_id).into()
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

/// The miner's connection and what the oracle knows of it.
struct Connection {
    validator: ShareValidator,
    extranonce1: [u8; 4],
    jobs: VecDeque<OracleJob>,
    mask: Option<u32>,
    /// Every hash accepted on this extranonce1, for any tip.
    accepted: HashSet<BlockHash>,
    /// Hashes accepted on this extranonce1 since the tip last changed.
    accepted_on_tip: HashSet<BlockHash>,
}

impl Connection {
    fn push(&mut self, kept: KeptJob) {
        if self.jobs.len() == JOBS_KEPT {
            self.jobs.pop_front();
        }
        self.jobs.push_back(OracleJob { kept: kept.clone() });
        self.validator.push_job(kept);
    }
}

/// Plays `actions` against a validator and checks every verdict; the first
/// broken rule is returned.
pub fn run_script(actions: &[Action]) -> Result<ScriptOutcome, ScriptViolation> {
    let mut pool = Pool::new();
    let mut connection = Connection {
        validator: ShareValidator::new(),
        extranonce1: [0, 0, 0, 1],
        jobs: VecDeque::new(),
        mask: None,
        accepted: HashSet::new(),
        accepted_on_tip: HashSet::new(),
    };
    connection.push(pool.template_job.clone());
    let mut now = START_TIME;
    let mut sent: Vec<Sent> = Vec::new();
    let mut outcome = ScriptOutcome::default();
    for (step, action) in actions.iter().enumerate() {
        let share = match *action {
            Action::NewTip { tip } => {
                let tip = tip % TIPS;
                if tip != pool.tip {
                    connection.accepted_on_tip.clear();
                }
                pool.publish(tip);
                connection.push(pool.template_job.clone());
                None
            }
            Action::NewTemplate => {
                pool.publish(pool.tip);
                connection.push(pool.template_job.clone());
                None
            }
            Action::Retarget { level } => {
                pool.level = usize::from(level) % LEVELS.len();
                let job = pool.template_job.job.clone();
                connection.push(KeptJob::new(pool.fresh_id(), job, LEVELS[pool.level]));
                None
            }
            Action::Configure { mask } => {
                let granted = mask & POOL_MASK;
                connection.mask = (granted != 0).then_some(granted);
                connection.validator.set_version_mask(connection.mask);
                None
            }
            Action::Submit {
                job,
                extranonce2,
                ntime_offset,
                nonce,
                version_bits,
                wrong_length,
            } => {
                let job_id = usize::from(job)
                    .checked_add(1)
                    .and_then(|back| connection.jobs.len().checked_sub(back))
                    .and_then(|index| connection.jobs.get(index))
                    .map_or_else(|| Arc::from("ffffffffffffffff"), |j| j.kept.id.clone());
                let base_ntime = connection
                    .jobs
                    .back()
                    .map_or(START_TIME, |j| j.kept.job.template.cur_time);
                let mut bytes = u64::from(extranonce2).to_le_bytes().to_vec();
                bytes.resize(if wrong_length { 4 } else { EXTRANONCE2_LEN }, 0);
                Some(Sent {
                    job_id,
                    extranonce2: bytes,
                    ntime: base_ntime.saturating_add_signed(i32::from(ntime_offset)),
                    nonce,
                    version_bits,
                })
            }
            Action::Resend { back } => usize::from(back)
                .checked_add(1)
                .and_then(|back| sent.len().checked_sub(back))
                .and_then(|index| sent.get(index))
                .cloned(),
            Action::Reconnect { resume } => {
                let old = std::mem::take(&mut connection.validator);
                if resume {
                    connection.validator.resume(old.into_seen());
                } else {
                    connection.extranonce1 = connection
                        .extranonce1
                        .map(|b| b.wrapping_add(1))
                        .map(|b| b.max(1));
                    connection.accepted.clear();
                    connection.accepted_on_tip.clear();
                }
                connection.jobs.clear();
                connection.mask = None;
                // Authorize sends the user's job for the current template.
                let mut kept = pool.template_job.clone();
                kept.difficulty = LEVELS[pool.level];
                connection.push(kept);
                None
            }
            Action::Wait { secs } => {
                now = now.saturating_add(u32::from(secs));
                None
            }
        };
        let Some(share) = share else { continue };
        sent.push(share.clone());
        let verdict = judge(&mut connection, &mut pool, &share, now, step)?;
        if let Ok(accepted) = &verdict {
            if accepted.is_block {
                outcome.blocks.push(accepted.hash);
            }
        }
        outcome.verdicts.push(verdict);
    }
    Ok(outcome)
}

/// One share through the validator, checked against the oracle.
fn judge(
    connection: &mut Connection,
    pool: &mut Pool,
    share: &Sent,
    now: u32,
    step: usize,
) -> Result<Result<AcceptedShare, ShareReject>, ScriptViolation> {
    let violation = |rule: &'static str, detail: String| ScriptViolation { step, rule, detail };
    let current_prev = tip_hash(pool.tip);
    let context = ShareContext {
        extranonce1: &connection.extranonce1,
        extranonce2_len: EXTRANONCE2_LEN,
        current_prev: Some(current_prev),
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
    let mut claimed_now = None;
    let found = &mut pool.found;
    let verdict = connection
        .validator
        .validate(&submission, &context, |hash| {
            let first = found.claim(hash);
            claimed_now = Some((*hash, first));
            first
        });
    // The oracle's own verdict on the cheap rules, in their order.
    let job = connection
        .jobs
        .iter()
        .find(|j| *j.kept.id == *share.job_id)
        .map(|j| j.kept.clone());
    let expected_cheap = match &job {
        None => Some(ShareReject::UnknownJob),
        Some(_) if share.extranonce2.len() != EXTRANONCE2_LEN => Some(ShareReject::Nonce2Length),
        Some(job) => {
            let ntime = job.job.template.cur_time;
            let latest = ntime.max(now).saturating_add(NTIME_WINDOW);
            let mask = connection.mask.unwrap_or(0);
            if share.ntime < ntime || share.ntime > latest {
                Some(ShareReject::NtimeOutOfRange)
            } else if share.version_bits.is_some_and(|bits| bits & !mask != 0) {
                Some(ShareReject::VersionMask)
            } else {
                None
            }
        }
    };
    let (Some(job), None) = (job, expected_cheap) else {
        return match verdict {
            Err(reason) if Some(reason) == expected_cheap => Ok(verdict),
            other => Err(violation(
                "cheap rules",
                format!("expected {expected_cheap:?}, got {other:?}"),
            )),
        };
    };
    let base = job.job.template.version;
    let mask = connection.mask.unwrap_or(0);
    let version = share
        .version_bits
        .map_or(base, |bits| (base & !mask) | (bits & mask));
    let check = job.job.check_share(
        &connection.extranonce1,
        &share.extranonce2,
        share.ntime,
        share.nonce,
        version,
    );
    let stale = job.prev_hash() != current_prev;
    if check.meets_network {
        let seen_before = pool.claimed.contains(&check.hash);
        // Once the pool-wide set has forgotten a hash, a second claim may pass.
        let forgotten = pool.claims > FOUND_BLOCKS_KEPT;
        match &verdict {
            Ok(accepted) if accepted.is_block && accepted.hash == check.hash => {
                if seen_before && !forgotten {
                    return Err(violation("a block is claimed once", check.hash.to_string()));
                }
                if accepted.stale != stale {
                    return Err(violation("stale flag", format!("{accepted:?}")));
                }
                pool.claimed.insert(check.hash);
                pool.claims += 1;
                connection.accepted.insert(check.hash);
                connection.accepted_on_tip.insert(check.hash);
            }
            Err(ShareReject::Duplicate) if seen_before => {}
            other => {
                return Err(violation(
                    "no block solution is lost",
                    format!("{} (stale: {stale}): {other:?}", check.hash),
                ))
            }
        }
        if claimed_now.is_none_or(|(hash, _)| hash != check.hash) {
            return Err(violation(
                "block claimed by its hash",
                format!("{claimed_now:?}"),
            ));
        }
        return Ok(verdict);
    }
    if claimed_now.is_some() {
        return Err(violation("only blocks are claimed", check.hash.to_string()));
    }
    let resend_on_tip = connection.accepted_on_tip.contains(&check.hash)
        && connection.validator.seen().len_for(&current_prev) < MAX_SEEN_SHARES;
    match &verdict {
        Err(ShareReject::Duplicate) => {
            if !connection.accepted.contains(&check.hash) {
                return Err(violation("no false duplicate", check.hash.to_string()));
            }
        }
        _ if resend_on_tip => {
            return Err(violation(
                "a resend on the same tip is a duplicate",
                format!("{verdict:?}"),
            ))
        }
        Err(ShareReject::Stale) if stale => {}
        Err(ShareReject::AboveTarget) if !stale && check.share_difficulty < job.difficulty => {}
        Ok(accepted)
            if !stale
                && !accepted.is_block
                && accepted.hash == check.hash
                && check.share_difficulty >= job.difficulty
                && accepted.target_difficulty == job.difficulty =>
        {
            connection.accepted.insert(check.hash);
            connection.accepted_on_tip.insert(check.hash);
        }
        other => {
            return Err(violation(
                "stale, target, accept",
                format!(
                    "stale {stale}, difficulty {} of {}: {other:?}",
                    check.share_difficulty, job.difficulty
                ),
            ))
        }
    }
    Ok(verdict)
}
