//! Found blocks: announced at once, submitted to every node in parallel,
//! outcome logged, counted and kept for the status API.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tbg_events::EventData;
use tbg_node::{NodeSet, SubmitAnswer};

use crate::PoolShared;

/// A share that meets the network target.
#[derive(Debug, Clone)]
pub struct FoundBlock {
    pub height: u32,
    pub hash: bitcoin::BlockHash,
    pub block_hex: String,
    pub user: String,
    pub worker: String,
    pub share_difficulty: f64,
    pub network_difficulty: f64,
    pub reward_sats: u64,
    pub coinbase_sig: String,
}

/// What became of a found block.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockStatus {
    Submitting,
    Accepted,
    Rejected,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockRecord {
    pub height: u32,
    pub hash: String,
    pub user: String,
    pub worker: String,
    pub reward_sats: u64,
    pub status: BlockStatus,
    /// Each node's answer, as text.
    pub answers: Vec<String>,
}

/// The last blocks found, newest last; bounded.
#[derive(Debug, Default)]
pub struct BlockLog {
    records: Mutex<Vec<BlockRecord>>,
}

const BLOCKS_KEPT: usize = 1000;

impl BlockLog {
    pub fn records(&self) -> Vec<BlockRecord> {
        self.records.lock().clone()
    }

    fn push(&self, record: BlockRecord) {
        let mut records = self.records.lock();
        if records.len() == BLOCKS_KEPT {
            records.remove(0);
        }
        records.push(record);
    }

    fn update(&self, hash: &str, status: BlockStatus, answers: Vec<String>) {
        let mut records = self.records.lock();
        if let Some(record) = records.iter_mut().rev().find(|r| r.hash == hash) {
            record.status = status;
            record.answers = answers;
        }
    }
}

/// Emits block_found and submits the block on its own task, so the share
/// that found it is answered without waiting for the nodes. Never dropped:
/// each block gets its own task.
pub(crate) fn submit(shared: &Arc<PoolShared>, nodes: Arc<NodeSet>, block: FoundBlock) {
    shared.counters.blocks_found.fetch_add(1, Ordering::Relaxed);
    shared.emit(EventData::BlockFound {
        user: block.user.clone(),
        worker: block.worker.clone(),
        height: u64::from(block.height),
        hash: block.hash.to_string(),
        diff: block.share_difficulty,
        network_diff: block.network_difficulty,
        reward_sats: block.reward_sats,
        coinbase_sig: block.coinbase_sig.clone(),
    });
    let hash = block.hash.to_string();
    shared.blocks.push(BlockRecord {
        height: block.height,
        hash: hash.clone(),
        user: block.user.clone(),
        worker: block.worker.clone(),
        reward_sats: block.reward_sats,
        status: BlockStatus::Submitting,
        answers: Vec::new(),
    });
    let tracker = shared.block_submissions.clone();
    let shared = shared.clone();
    tracker.spawn(async move {
        let outcome = nodes
            .submit_block(&block.block_hex, block.height, block.hash)
            .await;
        let answers: Vec<String> = outcome
            .answers
            .iter()
            .map(|a| {
                let answer = match &a.answer {
                    SubmitAnswer::Accepted => "accepted".to_string(),
                    SubmitAnswer::Duplicate => "duplicate".to_string(),
                    SubmitAnswer::Rejected(reason) => format!("rejected: {reason}"),
                    SubmitAnswer::Failed(error) => format!("error: {error}"),
                };
                format!("{}: {answer}", a.url)
            })
            .collect();
        let (status, counter) = if outcome.accepted {
            // Our block is the new tip: fetch work on top of it now.
            if let Some(refresh) = &shared.refresh {
                refresh.request();
            }
            tracing::info!(height = block.height, hash = %hash, user = %block.user, answers = ?answers, "block accepted");
            (BlockStatus::Accepted, &shared.counters.blocks_accepted)
        } else {
            tracing::error!(height = block.height, hash = %hash, user = %block.user, answers = ?answers, "block REJECTED by every node");
            (BlockStatus::Rejected, &shared.counters.blocks_rejected)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        shared.emit(EventData::BlockSubmitted {
            user: block.user.clone(),
            worker: block.worker.clone(),
            height: u64::from(block.height),
            hash: hash.clone(),
            accepted: outcome.accepted,
            answers: answers.clone(),
        });
        shared.blocks.update(&hash, status, answers);
    });
}
