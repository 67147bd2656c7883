//! Mining-work core of a solo Stratum V1 pool: getblocktemplate answers become
//! per-template job data, per-user coinbases, share checks and full blocks,
//! plus difficulty math, vardiff and the share verdict (`validate`). No I/O,
//! no clocks.
#![forbid(unsafe_code)]

mod address;
mod coinbase;
mod difficulty;
mod hashing;
mod job;
mod template;
pub mod validate;
mod vardiff;

pub use address::{parse_payout_address, AddressError, MAX_ADDRESS_LEN};
pub use bitcoin::{BlockHash, CompactTarget, Network, ScriptBuf, Target};
pub use coinbase::{build_coinbase, CoinbaseParts, MAX_COINBASE_SCRIPT_SIG_LEN};
pub use difficulty::{
    difficulty_to_target, hash_meets_target, share_difficulty, target_to_difficulty,
    DifficultyError, DIFF1_TARGET,
};
pub use job::{Job, JobTemplate, NotifyParts, ShareCheck, WorkError};
pub use template::{Template, TemplateError, TemplateTx};
pub use validate::{
    AcceptedShare, FoundBlocks, KeptJob, SeenShares, ShareContext, ShareReject, ShareValidator,
    Submission,
};
pub use vardiff::{Vardiff, VardiffConfig, MAX_DIFFICULTY};
