//! A V2 channel's messages out: its jobs, its target and its share
//! answers, queued in the order the connection must send them.

use bitcoin::hashes::Hash;
use tbg_sv2::binary_sv2::{
    B032Owned, B064KOwned, Seq0255Owned, Str0255Owned, Sv2OptionOwned, U256Owned,
};
use tbg_sv2::mining_sv2::{
    NewExtendedMiningJobOwned, NewMiningJobOwned, SetNewPrevHashOwned, SetTargetOwned,
    SubmitSharesErrorOwned, SubmitSharesSuccessOwned,
};
use tbg_sv2::parsers_sv2::{AnyMessageOwned, MiningOwned};
use tbg_work::Job;

/// What kind of channel, and so what kind of job it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    /// Header-only mining: the pool fixes the whole extranonce, the job
    /// carries its merkle root.
    Standard,
    /// The miner rolls `extranonce2_len` bytes of extranonce itself.
    Extended,
}

/// One channel's side of the wire.
#[derive(Debug)]
pub(crate) struct ChannelWire {
    pub(crate) channel_id: u32,
    pub(crate) kind: ChannelKind,
    /// The rollable extranonce's length (extended), or the length of the
    /// fixed zero bytes after the extranonce1 (standard).
    pub(crate) extranonce2_len: usize,
    next_job_id: u32,
    /// The previous block of the last job sent: a job on another one is
    /// sent as a future job followed by `SetNewPrevHash`.
    last_prev: Option<bitcoin::BlockHash>,
    pub(crate) outbox: Vec<AnyMessageOwned>,
}

/// A V2 target from a difficulty (the pool's rules cap it).
pub(crate) fn target_bytes(difficulty: f64) -> [u8; 32] {
    tbg_work::difficulty_to_target(difficulty)
        .unwrap_or(bitcoin::Target::MAX)
        .to_le_bytes()
}

/// A difficulty from a V2 target (little-endian).
pub(crate) fn difficulty_of(target: [u8; 32]) -> f64 {
    tbg_work::target_to_difficulty(&bitcoin::Target::from_le_bytes(target))
}

pub(crate) fn mining(message: MiningOwned) -> AnyMessageOwned {
    AnyMessageOwned::Mining(message)
}

/// An error code as V2 carries it (fails only past 255 bytes, which no
/// code of ours is).
pub(crate) fn error_code(code: &str) -> Result<Str0255Owned, tbg_sv2::binary_sv2::Error> {
    Str0255Owned::try_from(code.to_string())
}

impl ChannelWire {
    pub(crate) fn new(channel_id: u32, kind: ChannelKind, extranonce2_len: usize) -> ChannelWire {
        ChannelWire {
            channel_id,
            kind,
            extranonce2_len,
            next_job_id: 1,
            last_prev: None,
            outbox: Vec::new(),
        }
    }

    /// A standard channel's fixed extranonce2.
    pub(crate) fn fixed_extranonce2(&self) -> Vec<u8> {
        vec![0; self.extranonce2_len]
    }

    /// Queues `job` and returns its id as the share validator knows it.
    pub(crate) fn push_job(&mut self, job: &Job, extranonce1: &[u8]) -> std::sync::Arc<str> {
        let job_id = self.next_job_id;
        self.next_job_id = self.next_job_id.wrapping_add(1).max(1);
        let template = &job.template;
        let new_tip = self.last_prev != Some(template.previous_block_hash);
        // A job on a new previous block is a future job, activated by the
        // `SetNewPrevHash` after it (which carries its earliest ntime);
        // on the same tip it applies at once from `min_ntime`.
        let min_ntime = Sv2OptionOwned::new((!new_tip).then_some(template.cur_time));
        let message = match self.job_message(job, extranonce1, job_id, min_ntime) {
            Ok(message) => message,
            Err(error) => {
                // A coinbase part over 64 KiB or a merkle path over 255
                // steps: neither fits a block, so no template has them.
                tracing::error!(
                    ?error,
                    "cannot encode a stratum v2 job; channel keeps its previous job"
                );
                return job_id.to_string().into();
            }
        };
        self.outbox.push(mining(message));
        if new_tip {
            self.last_prev = Some(template.previous_block_hash);
            self.outbox
                .push(mining(MiningOwned::SetNewPrevHash(SetNewPrevHashOwned {
                    channel_id: self.channel_id,
                    job_id,
                    prev_hash: U256Owned::from(template.previous_block_hash.to_byte_array()),
                    min_ntime: template.cur_time,
                    nbits: template.bits.to_consensus(),
                })));
        }
        job_id.to_string().into()
    }

    fn job_message(
        &self,
        job: &Job,
        extranonce1: &[u8],
        job_id: u32,
        min_ntime: Sv2OptionOwned<u32>,
    ) -> Result<MiningOwned, tbg_sv2::binary_sv2::Error> {
        let template = &job.template;
        Ok(match self.kind {
            ChannelKind::Extended => {
                let merkle_path = template
                    .merkle_branch
                    .iter()
                    .map(|node| U256Owned::from(*node))
                    .collect();
                MiningOwned::NewExtendedMiningJob(NewExtendedMiningJobOwned {
                    channel_id: self.channel_id,
                    job_id,
                    min_ntime,
                    version: template.version,
                    version_rolling_allowed: true,
                    merkle_path: Seq0255Owned::new(merkle_path)?,
                    coinbase_tx_prefix: B064KOwned::try_from(job.coinbase.coinb1.clone())?,
                    coinbase_tx_suffix: B064KOwned::try_from(job.coinbase.coinb2.clone())?,
                })
            }
            ChannelKind::Standard => MiningOwned::NewMiningJob(NewMiningJobOwned {
                channel_id: self.channel_id,
                job_id,
                min_ntime,
                version: template.version,
                merkle_root: U256Owned::from(
                    job.merkle_root(extranonce1, &self.fixed_extranonce2()),
                ),
            }),
        })
    }

    /// Queues the channel's new target.
    pub(crate) fn set_target(&mut self, difficulty: f64) {
        self.outbox
            .push(mining(MiningOwned::SetTarget(SetTargetOwned {
                channel_id: self.channel_id,
                maximum_target: U256Owned::from(target_bytes(difficulty)),
            })));
    }

    pub(crate) fn share_accepted(&mut self, sequence_number: u32, difficulty: f64) {
        self.outbox.push(mining(MiningOwned::SubmitSharesSuccess(
            SubmitSharesSuccessOwned {
                channel_id: self.channel_id,
                last_sequence_number: sequence_number,
                new_submits_accepted_count: 1,
                // The spec's "sum of shares" is in units of difficulty.
                new_shares_sum: difficulty.max(0.0).ceil() as u64,
            },
        )));
    }

    pub(crate) fn share_refused(&mut self, sequence_number: u32, code: &str) {
        match error_code(code) {
            Ok(error_code) => self.outbox.push(mining(MiningOwned::SubmitSharesError(
                SubmitSharesErrorOwned {
                    channel_id: self.channel_id,
                    sequence_number,
                    error_code,
                },
            ))),
            Err(error) => tracing::error!(?error, code, "cannot encode a share's error code"),
        }
    }
}

/// An extranonce prefix as a V2 `B032` (the caller checked it is at most
/// 32 bytes).
pub(crate) fn extranonce_prefix(bytes: &[u8]) -> Result<B032Owned, tbg_sv2::binary_sv2::Error> {
    B032Owned::try_from(bytes.to_vec())
}
