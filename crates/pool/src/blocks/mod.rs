//! Found blocks, from the share that solved one to 100 confirmations.
//!
//! A block is announced (`block_found`) the moment its share arrives, then
//! written and fsynced to the block store ([`store`]) before it is
//! submitted, so neither a node outage nor a crash of the pool loses it.
//! The keeper ([`keeper`]) submits it to every node in parallel and again,
//! with backoff, until a node takes it or the chain has moved past it; then
//! follows it on the best chain until it is confirmed or orphaned. A pool
//! that restarts resumes every block the store holds unsettled.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub(crate) mod keeper;
pub mod relayed;
pub mod store;

pub use relayed::{RelayedBlock, RelayedBlockError};
pub use store::{BlockStore, BlockStoreError, StoredBlock};

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
    /// The relay region whose miner found it, for a block a relay sent
    /// over the relay link; `None` for this pool's own miners' blocks.
    pub origin: Option<String>,
}

/// Where a found block is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockStatus {
    /// No node has taken it yet (unreachable, inconclusive, or not yet
    /// answered): submitted again with backoff.
    Pending,
    /// On a node's best chain; followed until confirmed or orphaned.
    Accepted,
    /// Reached the maturity depth (100 confirmations by default): the
    /// reward can be spent.
    Confirmed,
    /// Was accepted, then another block at its height won.
    Orphaned,
    /// Never accepted, and the chain has another block at its height with
    /// more work on top (it lost the race, or no node could be reached in
    /// time).
    Stale,
    /// Never accepted, the chain has moved past it, and a node refused the
    /// block itself (such as `bad-txnmrklroot`): a fault of the pool.
    Rejected,
}

impl BlockStatus {
    /// Nothing more will happen to it.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            BlockStatus::Confirmed
                | BlockStatus::Orphaned
                | BlockStatus::Stale
                | BlockStatus::Rejected
        )
    }
}

/// A found block as the status API shows it (the store's record without
/// the block's hex).
#[derive(Debug, Clone, Serialize)]
pub struct BlockRecord {
    pub height: u32,
    pub hash: String,
    pub user: String,
    pub worker: String,
    pub reward_sats: u64,
    /// Unix seconds.
    pub found_at: u64,
    pub status: BlockStatus,
    /// Each node's last answer, as `url: answer`.
    pub answers: Vec<String>,
    /// submitblock rounds so far.
    pub attempts: u32,
    /// On the best chain: its confirmations (1 = the tip).
    pub confirmations: u64,
    /// Stale or orphaned: the block that took its height.
    pub replaced_by: Option<String>,
    /// Written to the block store (false: only in this process's memory,
    /// because the store could not be written; see the log).
    pub durable: bool,
    /// The relay region that found it (sent over the relay link); `None`
    /// when this pool's miner did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl BlockRecord {
    pub(crate) fn of(block: &StoredBlock, durable: bool) -> BlockRecord {
        BlockRecord {
            height: block.height,
            hash: block.hash.clone(),
            user: block.user.clone(),
            worker: block.worker.clone(),
            reward_sats: block.reward_sats,
            found_at: block.found_at,
            status: block.status,
            answers: block.answers.clone(),
            attempts: block.attempts,
            confirmations: block.confirmations,
            replaced_by: block.replaced_by.clone(),
            durable,
            origin: block.origin.clone(),
        }
    }
}

/// The blocks of this pool, newest last; bounded. Every unsettled block is
/// in it (and in the store); settled ones are dropped oldest first when it
/// is full, and stay in the store.
#[derive(Debug, Default)]
pub struct BlockLog {
    records: Mutex<Vec<BlockRecord>>,
}

const BLOCKS_KEPT: usize = 1000;

impl BlockLog {
    pub fn records(&self) -> Vec<BlockRecord> {
        self.records.lock().clone()
    }

    /// Blocks no node has taken yet.
    pub fn pending(&self) -> usize {
        self.records
            .lock()
            .iter()
            .filter(|r| r.status == BlockStatus::Pending)
            .count()
    }

    /// Adds a block; false when a block with that hash is already known
    /// (the same solution sent twice is one block).
    pub(crate) fn insert(&self, record: BlockRecord) -> bool {
        let mut records = self.records.lock();
        if records.iter().any(|r| r.hash == record.hash) {
            return false;
        }
        if records.len() >= BLOCKS_KEPT {
            let drop_at = records
                .iter()
                .position(|r| r.status.is_settled())
                .unwrap_or(0);
            records.remove(drop_at);
        }
        records.push(record);
        true
    }

    pub(crate) fn update(&self, record: BlockRecord) {
        let mut records = self.records.lock();
        if let Some(slot) = records.iter_mut().rev().find(|r| r.hash == record.hash) {
            *slot = record;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, status: BlockStatus) -> BlockRecord {
        BlockRecord {
            height: 1,
            hash: hash.to_string(),
            user: String::new(),
            worker: String::new(),
            reward_sats: 0,
            found_at: 0,
            status,
            answers: Vec::new(),
            attempts: 0,
            confirmations: 0,
            replaced_by: None,
            durable: true,
            origin: None,
        }
    }

    #[test]
    fn the_same_block_twice_is_one_block() {
        let log = BlockLog::default();
        assert!(log.insert(record("aa", BlockStatus::Pending)));
        assert!(!log.insert(record("aa", BlockStatus::Pending)));
        assert_eq!(log.records().len(), 1);
        assert_eq!(log.pending(), 1);
    }

    #[test]
    fn a_full_log_drops_settled_blocks_first_and_keeps_every_unsettled_one() {
        let log = BlockLog::default();
        assert!(log.insert(record("pending", BlockStatus::Pending)));
        for i in 1..BLOCKS_KEPT {
            assert!(log.insert(record(&format!("old{i}"), BlockStatus::Confirmed)));
        }
        assert!(log.insert(record("new", BlockStatus::Accepted)));
        let records = log.records();
        assert_eq!(records.len(), BLOCKS_KEPT);
        assert!(records.iter().any(|r| r.hash == "pending"));
        assert!(
            !records.iter().any(|r| r.hash == "old1"),
            "oldest settled one dropped"
        );
        assert_eq!(records.last().unwrap().hash, "new");
    }
}
