//! The share verdict: every rule a submitted share is judged by, in one
//! place, with no I/O and no clock of its own.
//!
//! A session keeps a [`ShareValidator`] (the jobs it handed out and the
//! shares it accepted) and asks it about each `mining.submit`, passing what
//! is not the session's own in a [`ShareContext`]: the tip the pool mines
//! on now, the time, the extranonce1. The answer is an [`AcceptedShare`]
//! (hash, difficulty, whether it is a block) or a [`ShareReject`].
//!
//! Order of the checks, and why:
//! 1. job id, extranonce2 length, ntime window, version bits: cheap, and a
//!    share failing one cannot be hashed as the miner hashed it;
//! 2. the header is hashed *before* any staleness check: a share that meets
//!    its own job's network target is a block and is accepted whatever the
//!    job's age (item 2 of issue 16): when the tip just moved, the block
//!    that replaced our job's parent may still lose the race to ours;
//! 3. duplicates, by the header's hash (so across jobs, retargets and
//!    resumed sessions, see [`SeenShares`]); a block's duplicate is decided
//!    by the caller's pool-wide claim on the full hash, so a block is never
//!    refused on a truncated key;
//! 4. stale, then the share target (a resend is called a duplicate first).

mod script;
mod seen;

use std::collections::VecDeque;

use bitcoin::BlockHash;

use crate::job::Job;

pub use script::{decode_actions, run_script, Action, ScriptOutcome, ScriptViolation};
pub use seen::{SeenShares, MAX_SEEN_SHARES};

/// Jobs a session remembers; a share on an older one is "unknown job".
pub const JOBS_KEPT: usize = 16;

/// Block hashes [`FoundBlocks`] remembers. A solution can only arrive again
/// on a job some session still keeps, and every session drops a job after
/// [`JOBS_KEPT`] newer ones, so 256 blocks back is far beyond any resend.
pub const FOUND_BLOCKS_KEPT: usize = 256;

/// Why a share was refused. The protocol layer maps each to its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ShareReject {
    #[error("unknown job id")]
    UnknownJob,
    #[error("extranonce2 of the wrong length")]
    Nonce2Length,
    #[error("ntime out of range")]
    NtimeOutOfRange,
    #[error("version bits outside the negotiated mask")]
    VersionMask,
    #[error("duplicate share")]
    Duplicate,
    #[error("job of a previous block")]
    Stale,
    #[error("above the share target")]
    AboveTarget,
}

/// A job a session handed out, as the validator needs it.
#[derive(Debug, Clone)]
pub struct KeptJob {
    /// The job id sent in `mining.notify`.
    pub id: std::sync::Arc<str>,
    pub job: Job,
    /// The difficulty the miner was asked for when this job was sent:
    /// shares on it are judged at that difficulty, not a later one.
    pub difficulty: f64,
    /// Merkle root of the last extranonce2 seen on this job: miners send
    /// many shares per extranonce2, and the root is most of the hashing.
    last_root: Option<(u64, [u8; 32])>,
}

impl KeptJob {
    pub fn new(id: std::sync::Arc<str>, job: Job, difficulty: f64) -> KeptJob {
        KeptJob {
            id,
            job,
            difficulty,
            last_root: None,
        }
    }

    /// The previous block this job builds on.
    pub fn prev_hash(&self) -> BlockHash {
        self.job.template.previous_block_hash
    }

    fn merkle_root(&mut self, extranonce1: &[u8], extranonce2: &[u8]) -> [u8; 32] {
        // Pools allow at most 8 bytes of extranonce2 (ckpool's nonce2length);
        // a longer one is still checked, only never cached.
        let key = extranonce2_key(extranonce2);
        match self.last_root {
            Some((cached, root)) if cached == key && extranonce2.len() <= 8 => root,
            _ => {
                let root = self.job.merkle_root(extranonce1, extranonce2);
                self.last_root = Some((key, root));
                root
            }
        }
    }
}

fn extranonce2_key(extranonce2: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let take = extranonce2.len().min(8);
    bytes[..take].copy_from_slice(&extranonce2[..take]);
    u64::from_le_bytes(bytes)
}

/// What the miner sent, decoded (hex is the protocol layer's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission<'a> {
    pub job_id: &'a str,
    pub extranonce2: &'a [u8],
    /// As the miner wrote it (big-endian hex read as a number).
    pub ntime: u32,
    pub nonce: u32,
    /// BIP310 rolled bits, when the miner sent a sixth parameter.
    pub version_bits: Option<u32>,
}

/// What a share is judged against besides the session's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareContext<'a> {
    /// The session's extranonce1.
    pub extranonce1: &'a [u8],
    /// The extranonce2 length the pool told the miner.
    pub extranonce2_len: usize,
    /// The previous block of the work the pool hands out now (`None` before
    /// the first template): a job on another one is stale.
    pub current_prev: Option<BlockHash>,
    /// The pool's clock, unix seconds.
    pub now: u32,
    /// How far past the job's ntime (or past `now`, when later) a share's
    /// ntime may be; ckpool's 7000 s, inside the node's 2 h future limit.
    pub ntime_window: u32,
}

/// A share that passed every rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptedShare {
    /// Index of its job for [`ShareValidator::job`], valid until the next
    /// [`ShareValidator::push_job`].
    pub job: usize,
    pub hash: BlockHash,
    pub share_difficulty: f64,
    /// The job's difficulty, the one the share is credited at.
    pub target_difficulty: f64,
    pub ntime: u32,
    pub nonce: u32,
    /// The header's version after rolling.
    pub version: u32,
    /// It meets the network target, and its hash was claimed for the first
    /// time: the caller submits it.
    pub is_block: bool,
    /// Its job's previous block is no longer the tip (only ever true for a
    /// block: a stale share that is not a block is refused).
    pub stale: bool,
}

/// One session's share-judging state: the jobs it was sent, its version
/// mask, the shares it already accepted. Small: a handful of `Arc`s per job
/// and the duplicate store, which is empty until shares arrive.
#[derive(Debug, Default)]
pub struct ShareValidator {
    jobs: VecDeque<KeptJob>,
    version_mask: Option<u32>,
    seen: SeenShares,
}

impl ShareValidator {
    pub fn new() -> ShareValidator {
        ShareValidator::default()
    }

    /// A session resumed with the same extranonce1 takes over the shares
    /// its previous connection accepted: they stay duplicates.
    pub fn resume(&mut self, seen: SeenShares) {
        self.seen = seen;
    }

    /// The negotiated BIP310 mask (`None`: no version rolling).
    pub fn set_version_mask(&mut self, mask: Option<u32>) {
        self.version_mask = mask;
    }

    pub fn version_mask(&self) -> Option<u32> {
        self.version_mask
    }

    /// Records a job sent to the miner; the oldest past [`JOBS_KEPT`] is
    /// forgotten. A job on a new previous block moves the duplicate store on.
    pub fn push_job(&mut self, job: KeptJob) {
        self.seen.on_job(job.prev_hash());
        if self.jobs.len() == JOBS_KEPT {
            self.jobs.pop_front();
        }
        self.jobs.push_back(job);
    }

    /// A job by the index an [`AcceptedShare`] carries.
    pub fn job(&self, index: usize) -> Option<&KeptJob> {
        self.jobs.get(index)
    }

    /// A job by the id it was sent with, newest first.
    pub fn find(&self, id: &str) -> Option<&KeptJob> {
        self.jobs.iter().rev().find(|job| *job.id == *id)
    }

    /// The duplicate store, to hand on to a resumed session.
    pub fn into_seen(self) -> SeenShares {
        self.seen
    }

    pub fn seen(&self) -> &SeenShares {
        &self.seen
    }

    /// Judges one share. `claim_block` is asked once, only for a share that
    /// meets the network target, whether its hash is new pool-wide (true:
    /// submit it); a second claim of one hash makes the share a duplicate,
    /// so a block is submitted once however often it arrives.
    pub fn validate(
        &mut self,
        share: &Submission<'_>,
        context: &ShareContext<'_>,
        claim_block: impl FnOnce(&BlockHash) -> bool,
    ) -> Result<AcceptedShare, ShareReject> {
        let index = self
            .jobs
            .iter()
            // Newest first: most shares are on the latest job.
            .rposition(|job| *job.id == *share.job_id)
            .ok_or(ShareReject::UnknownJob)?;
        if share.extranonce2.len() != context.extranonce2_len {
            return Err(ShareReject::Nonce2Length);
        }
        let kept = &mut self.jobs[index];
        let job_ntime = kept.job.template.cur_time;
        // Relative to the job, as ckpool; from `now` when the job is older
        // than the window (the node was unreachable for hours and the pool
        // kept serving its last work), since miners roll ntime with the clock.
        let latest = job_ntime
            .max(context.now)
            .saturating_add(context.ntime_window);
        if share.ntime < job_ntime || share.ntime > latest {
            return Err(ShareReject::NtimeOutOfRange);
        }
        let base_version = kept.job.template.version;
        let version = match share.version_bits {
            None => base_version,
            Some(bits) => {
                let mask = self.version_mask.unwrap_or(0);
                if bits & !mask != 0 {
                    return Err(ShareReject::VersionMask);
                }
                (base_version & !mask) | (bits & mask)
            }
        };
        let root = kept.merkle_root(context.extranonce1, share.extranonce2);
        let check = kept
            .job
            .check_share_with_root(&root, share.ntime, share.nonce, version);
        let prev = kept.prev_hash();
        let target_difficulty = kept.difficulty;
        let stale = context.current_prev.is_some_and(|tip| tip != prev);
        let accepted = AcceptedShare {
            job: index,
            hash: check.hash,
            share_difficulty: check.share_difficulty,
            target_difficulty,
            ntime: share.ntime,
            nonce: share.nonce,
            version,
            is_block: check.meets_network,
            stale,
        };
        if check.meets_network {
            // Whatever the job's age, and whatever the share difficulty.
            if !claim_block(&check.hash) {
                return Err(ShareReject::Duplicate);
            }
            self.seen.insert(prev, &check.hash);
            return Ok(accepted);
        }
        // A resend is a duplicate before anything else; on the hot path (a
        // new share meeting its target) the store is probed once.
        let refused = if stale {
            Some(ShareReject::Stale)
        } else if check.share_difficulty < target_difficulty {
            Some(ShareReject::AboveTarget)
        } else {
            None
        };
        match refused {
            Some(_) if self.seen.contains(prev, &check.hash) => Err(ShareReject::Duplicate),
            Some(reason) => Err(reason),
            None if !self.seen.insert(prev, &check.hash) => Err(ShareReject::Duplicate),
            None => Ok(accepted),
        }
    }
}

/// Block hashes already claimed for submission, pool-wide: one solution is
/// submitted once, however many connections or jobs it arrives on. Kept
/// behind the pool's lock; only block shares touch it.
#[derive(Debug, Default)]
pub struct FoundBlocks {
    recent: VecDeque<BlockHash>,
}

impl FoundBlocks {
    /// True the first time `hash` is claimed (the last
    /// [`FOUND_BLOCKS_KEPT`] claims are remembered).
    pub fn claim(&mut self, hash: &BlockHash) -> bool {
        if self.recent.contains(hash) {
            return false;
        }
        if self.recent.len() == FOUND_BLOCKS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(*hash);
        true
    }
}
