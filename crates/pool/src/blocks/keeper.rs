//! One task per found block: store it, submit it until a node takes it or
//! the chain has passed it, then follow it to maturity or orphaning.
//!
//! Each change of status is journaled (`block_submitted`,
//! `block_confirmed`, `block_orphaned`) and, once the event is durable,
//! written to the store. A crash between the two repeats the event at the
//! next start (the collector's update is the same either way); the reverse
//! order could lose it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tbg_events::EventData;
use tbg_node::ChainPosition;

use super::store::{Loaded, StoredBlock};
use super::{BlockRecord, BlockStatus, FoundBlock};
use crate::PoolShared;

/// First wait before a block is submitted again; doubles up to the
/// `block_retry_max` setting. Short: a block that waits loses races.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// While a block stays pending, one warning per this many rounds (the
/// first failure is logged at error level).
const WARN_EVERY_ROUNDS: u32 = 20;
/// Longest wait for the block store before the first submission: a disk
/// that hangs must not keep a block from the nodes (the write goes on and
/// is checked at every later round).
const SAVE_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for a status event to be durable in the journal before the
/// store is written anyway (a failing journal must not freeze the block).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);
/// Rounds in a row in which every answering node must see another block
/// in its place before the block is called stale or orphaned: one node's
/// passing view (a lagging backup, a reorg under way) settles nothing.
const REPLACED_ROUNDS: u32 = 2;
/// A stale or orphaned block is looked at this many times less often than
/// an accepted one (it comes back only in a deep reorganisation).
const REWATCH_SLOWER: u32 = 4;
/// At a start, a stale or orphaned block found longer ago than this is not
/// watched again: 100 blocks take ~17 h on mainnet; 3 days leave a margin
/// for a chain that was slow.
const REWATCH_AFTER_START_S: u64 = 3 * 24 * 3600;
/// Below this depth an accepted block is sent again to any of our nodes
/// that does not have it (one that was down when it was found, or lost it
/// in a crash before it reached a peer).
const RESUBMIT_BELOW_CONFIRMATIONS: u64 = 6;

/// A share solved a block: announce it, store it, submit it. Returns at
/// once, with a receiver that resolves when the block is in the store (or
/// the store failed); a block already known by hash is ignored (the same
/// solution twice is one block, announced once).
pub(crate) fn found(
    shared: &Arc<PoolShared>,
    block: FoundBlock,
) -> tokio::sync::oneshot::Receiver<()> {
    crate::coalesce::hold_off(crate::coalesce::BLOCK_HOLD_OFF);
    let (stored_tx, stored_rx) = tokio::sync::oneshot::channel();
    let stored = StoredBlock {
        hash: block.hash.to_string(),
        height: block.height,
        block_hex: block.block_hex,
        user: block.user,
        worker: block.worker,
        share_difficulty: block.share_difficulty,
        network_difficulty: block.network_difficulty,
        reward_sats: block.reward_sats,
        coinbase_sig: block.coinbase_sig,
        found_at: unix_now(),
        status: BlockStatus::Pending,
        answers: Vec::new(),
        attempts: 0,
        confirmations: 0,
        replaced_by: None,
        origin: block.origin,
    };
    if !shared.blocks.insert(BlockRecord::of(&stored, false)) {
        tracing::warn!(hash = %stored.hash, "the same block solution again; submitted once");
        let _ = stored_tx.send(());
        return stored_rx;
    }
    let relayed = stored.origin.is_some();
    if relayed {
        // The relay region announced it and follows it in its own events;
        // here it is only stored and submitted to this region's nodes.
        tracing::info!(height = stored.height, hash = %stored.hash, region = ?stored.origin,
            user = %stored.user, "block from a relay region: storing and submitting it");
    } else {
        shared.counters.blocks_found.fetch_add(1, Ordering::Relaxed);
        shared.emit(EventData::BlockFound {
            user: stored.user.clone(),
            worker: stored.worker.clone(),
            height: u64::from(stored.height),
            hash: stored.hash.clone(),
            diff: stored.share_difficulty,
            network_diff: stored.network_difficulty,
            reward_sats: stored.reward_sats,
            coinbase_sig: stored.coinbase_sig.clone(),
        });
    }
    let shared = shared.clone();
    // A graceful stop waits for the store write and the first round of
    // submissions (bounded); later rounds belong to the next start.
    let tracker = shared.block_submissions.clone();
    tracker.spawn(async move {
        let mut keeper = Keeper {
            durable: false,
            pending_save: None,
            shared,
            hash: block.hash,
            block: stored,
            rounds_failed: 0,
            replaced_rounds: 0,
            back_rounds: 0,
            last_rejection: None,
        };
        keeper.save_bounded().await;
        let _ = stored_tx.send(());
        if !relayed {
            keeper.shared.forward_found_block(&keeper.block);
        }
        keeper.publish();
        keeper.submit_round().await;
        tokio::spawn(keeper.run());
    });
    stored_rx
}

/// At start: every unsettled block of the store is submitted again (or
/// followed again); settled ones are listed for the status API.
pub(crate) fn resume(shared: &Arc<PoolShared>, loaded: Loaded) {
    for (path, reason) in &loaded.unreadable {
        tracing::error!(path = %path.display(), %reason, "block store: unreadable file left in place; check it by hand");
    }
    let unsettled = loaded
        .blocks
        .iter()
        .filter(|b| !b.status.is_settled())
        .count();
    if unsettled > 0 {
        tracing::warn!(
            blocks = unsettled,
            "block store: resuming found blocks not yet settled"
        );
    }
    for block in loaded.blocks {
        let settled = block.status.is_settled();
        shared.blocks.insert(BlockRecord::of(&block, true));
        // Recent stale and orphaned ones are watched again: a
        // reorganisation may still bring them back (the first round stops
        // a deep one). Older ones are history: the store keeps every block
        // ever found, and a keeper each would load the nodes at every start.
        let rewatched = matches!(block.status, BlockStatus::Orphaned | BlockStatus::Stale)
            && unix_now().saturating_sub(block.found_at) < REWATCH_AFTER_START_S;
        if settled && !rewatched {
            continue;
        }
        let Ok(hash) = block.hash.parse::<bitcoin::BlockHash>() else {
            tracing::error!(hash = %block.hash, "block store: a record with an invalid hash; check it by hand");
            continue;
        };
        if settled {
            tracing::debug!(height = block.height, %hash, status = ?block.status, "watching a passed block again");
        } else {
            tracing::info!(height = block.height, %hash, status = ?block.status, "resuming found block");
        }
        let keeper = Keeper {
            durable: true,
            pending_save: None,
            shared: shared.clone(),
            hash,
            block,
            rounds_failed: 0,
            replaced_rounds: 0,
            back_rounds: 0,
            last_rejection: None,
        };
        tokio::spawn(async move {
            let mut keeper = keeper;
            if keeper.block.status == BlockStatus::Pending {
                keeper.submit_round().await;
            }
            keeper.run().await;
        });
    }
}

struct Keeper {
    shared: Arc<PoolShared>,
    hash: bitcoin::BlockHash,
    block: StoredBlock,
    durable: bool,
    /// A store write that outlasted [`SAVE_WAIT`]; its result is taken at
    /// a later round.
    pending_save: Option<tokio::task::JoinHandle<bool>>,
    rounds_failed: u32,
    /// Rounds in a row that saw the block replaced.
    replaced_rounds: u32,
    /// Rounds in a row that saw a passed block on a best chain again.
    back_rounds: u32,
    /// A node's refusal of the block itself, if any round had one.
    last_rejection: Option<String>,
}

impl Keeper {
    /// Retries while pending, follows while accepted; returns when the
    /// block is settled or the pool stops.
    async fn run(mut self) {
        let stopping = self.shared.stopping.clone();
        loop {
            let wait = match self.block.status {
                BlockStatus::Pending => self.retry_delay(),
                BlockStatus::Accepted => self.shared.settings.block_follow_interval,
                BlockStatus::Orphaned | BlockStatus::Stale => {
                    // Spread by the hash: the blocks resumed at one start
                    // do not all ask the nodes at once.
                    let interval = self.shared.settings.block_follow_interval;
                    let spread = u32::from(bitcoin::hashes::Hash::as_byte_array(&self.hash)[0] % 8);
                    interval * REWATCH_SLOWER + interval * spread / 8
                }
                BlockStatus::Confirmed | BlockStatus::Rejected => return,
            };
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.block.status {
                BlockStatus::Pending => self.submit_round().await,
                BlockStatus::Accepted => self.follow_round().await,
                BlockStatus::Orphaned | BlockStatus::Stale => {
                    if !self.rewatch_round().await {
                        return;
                    }
                }
                BlockStatus::Confirmed | BlockStatus::Rejected => return,
            }
        }
    }

    fn retry_delay(&self) -> Duration {
        let max = self.shared.settings.block_retry_max.max(FIRST_RETRY);
        let doublings = self.rounds_failed.saturating_sub(1).min(16);
        FIRST_RETRY.saturating_mul(1 << doublings).min(max)
    }

    /// One submitblock to every node, then the verdict.
    async fn submit_round(&mut self) {
        self.keep_trying_to_store().await;
        let nodes = self.shared.nodes.clone();
        let answers = nodes.submit_block_to_all(&self.block.block_hex).await;
        self.block.attempts = self.block.attempts.saturating_add(1);
        self.block.answers = answers
            .iter()
            .map(|a| format!("{}: {}", a.url, a.answer.describe()))
            .collect();
        if let Some(rejection) = answers.iter().find(|a| a.answer.is_rejection()) {
            self.last_rejection = Some(rejection.answer.describe());
        }
        let position = if answers.iter().any(|a| a.answer.is_accepted()) {
            ChainPosition::InBestChain { confirmations: 1 }
        } else {
            // Duplicate, inconclusive, refused or unreachable everywhere:
            // the chain says whether it made it after all, or was passed.
            nodes.chain_position(self.hash, self.block.height).await
        };
        let position = self.replaced_twice(position);
        match position {
            ChainPosition::InBestChain { confirmations } => {
                self.block.confirmations = confirmations;
                self.accepted().await;
            }
            ChainPosition::Replaced { by, .. } => {
                self.block.replaced_by = Some(by.to_string());
                self.passed().await;
            }
            ChainPosition::Undecided { .. } => {
                self.rounds_failed += 1;
                self.publish();
                let unreachable = answers.iter().all(|a| a.answer.is_unreachable());
                if self.rounds_failed == 1 {
                    tracing::error!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
                        answers = ?self.block.answers, durable = self.durable,
                        "block NOT YET ACCEPTED by any node; submitting again until one takes it");
                } else if self.rounds_failed.is_multiple_of(WARN_EVERY_ROUNDS) {
                    tracing::warn!(height = self.block.height, hash = %self.block.hash, rounds = self.rounds_failed,
                        every_node_unreachable = unreachable, answers = ?self.block.answers,
                        "block still pending");
                }
            }
        }
    }

    /// On a best chain: tell the nodes' watcher, announce, store.
    async fn accepted(&mut self) {
        self.block.status = BlockStatus::Accepted;
        self.count(&self.shared.counters.blocks_accepted);
        // Our block is the new tip: fetch work on top of it now.
        if let Some(refresh) = &self.shared.refresh {
            refresh.request();
        }
        tracing::info!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
            attempts = self.block.attempts, answers = ?self.block.answers, "block accepted");
        self.announce(self.submitted_event()).await;
        self.settle().await;
    }

    /// Never accepted, and the chain has another block at its height with
    /// more work on top.
    async fn passed(&mut self) {
        let (status, counter) = match &self.last_rejection {
            Some(_) => (BlockStatus::Rejected, &self.shared.counters.blocks_rejected),
            None => (BlockStatus::Stale, &self.shared.counters.blocks_stale),
        };
        self.block.status = status;
        self.count(counter);
        tracing::error!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
            status = ?status, replaced_by = ?self.block.replaced_by, rejection = ?self.last_rejection,
            answers = ?self.block.answers, "found block lost: the chain has another block at its height");
        self.announce(self.submitted_event()).await;
        self.settle().await;
    }

    /// Where the accepted block stands now; sent again to our nodes that
    /// lack it while it is shallow.
    async fn follow_round(&mut self) {
        self.keep_trying_to_store().await;
        let nodes = self.shared.nodes.clone();
        let report = nodes.chain_report(self.hash, self.block.height).await;
        let shallow = self.block.confirmations < RESUBMIT_BELOW_CONFIRMATIONS;
        if shallow && !report.missing_on.is_empty() {
            let answers = nodes
                .submit_block_to(&self.block.block_hex, &report.missing_on)
                .await;
            tracing::info!(hash = %self.block.hash, answers = ?answers.iter().map(|a| format!("{}: {}", a.url, a.answer.describe())).collect::<Vec<_>>(),
                "accepted block sent again to nodes that did not have it");
        } else if matches!(report.position, ChainPosition::Undecided { .. }) {
            // On no node's best chain any more and not yet passed: it may
            // be gone from the node that took it (a crash before it
            // reached a peer). Sending it again costs one RPC per node.
            nodes.submit_block_to_all(&self.block.block_hex).await;
        }
        match self.replaced_twice(report.position) {
            ChainPosition::InBestChain { confirmations } => {
                if confirmations == self.block.confirmations {
                    return;
                }
                self.block.confirmations = confirmations;
                if confirmations < u64::from(self.shared.settings.block_maturity) {
                    self.publish();
                    return;
                }
                self.block.status = BlockStatus::Confirmed;
                self.count(&self.shared.counters.blocks_confirmed);
                tracing::info!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
                    confirmations, "block confirmed");
                self.announce(EventData::BlockConfirmed {
                    user: self.block.user.clone(),
                    worker: self.block.worker.clone(),
                    height: u64::from(self.block.height),
                    hash: self.block.hash.clone(),
                    confirmations,
                })
                .await;
                self.settle().await;
            }
            ChainPosition::Replaced { by, .. } => {
                self.block.status = BlockStatus::Orphaned;
                self.block.replaced_by = Some(by.to_string());
                self.count(&self.shared.counters.blocks_orphaned);
                tracing::error!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
                    replaced_by = %by, "block ORPHANED: another block at its height is on the best chain");
                self.announce(EventData::BlockOrphaned {
                    user: self.block.user.clone(),
                    worker: self.block.worker.clone(),
                    height: u64::from(self.block.height),
                    hash: self.block.hash.clone(),
                    replaced_by: by.to_string(),
                })
                .await;
                self.settle().await;
            }
            ChainPosition::Undecided { .. } => {}
        }
    }

    /// A block the chain passed (stale or orphaned) is watched until the
    /// best chain is the maturity depth past it: a deeper reorganisation
    /// can put it back, and then it is accepted again (journaled as a new
    /// `block_submitted`) and followed to maturity like any other. False
    /// once it cannot come back.
    async fn rewatch_round(&mut self) -> bool {
        let report = self
            .shared
            .nodes
            .chain_report(self.hash, self.block.height)
            .await;
        match report.position {
            // As for calling it passed, one round of one node's view (a
            // backup back from a restart on its old chain) settles nothing.
            ChainPosition::InBestChain { .. } if self.back_rounds + 1 < REPLACED_ROUNDS => {
                self.back_rounds += 1;
                true
            }
            ChainPosition::InBestChain { confirmations } => {
                self.back_rounds = 0;
                let was = self.block.status;
                self.block.status = BlockStatus::Accepted;
                self.block.confirmations = confirmations;
                self.block.replaced_by = None;
                self.replaced_rounds = 0;
                tracing::warn!(height = self.block.height, hash = %self.block.hash, user = %self.block.user,
                    confirmations, was = ?was, "found block back on the best chain after a reorganisation");
                self.announce(self.submitted_event()).await;
                self.settle().await;
                true
            }
            ChainPosition::Replaced { best_height, .. } => {
                self.back_rounds = 0;
                let past = best_height.saturating_sub(u64::from(self.block.height));
                past < u64::from(self.shared.settings.block_maturity)
            }
            ChainPosition::Undecided { .. } => {
                self.back_rounds = 0;
                true
            }
        }
    }

    fn submitted_event(&self) -> EventData {
        let status = match self.block.status {
            BlockStatus::Stale => "stale",
            BlockStatus::Rejected => "rejected",
            _ => "accepted",
        };
        EventData::BlockSubmitted {
            user: self.block.user.clone(),
            worker: self.block.worker.clone(),
            height: u64::from(self.block.height),
            hash: self.block.hash.clone(),
            accepted: status == "accepted",
            answers: self.block.answers.clone(),
            status: status.to_string(),
        }
    }

    /// A replaced verdict counts only once it held [`REPLACED_ROUNDS`]
    /// rounds in a row; until then it is undecided.
    fn replaced_twice(&mut self, position: ChainPosition) -> ChainPosition {
        if !matches!(position, ChainPosition::Replaced { .. }) {
            self.replaced_rounds = 0;
            return position;
        }
        self.replaced_rounds += 1;
        if self.replaced_rounds >= REPLACED_ROUNDS {
            position
        } else {
            ChainPosition::Undecided { nodes_answered: 0 }
        }
    }

    /// Counts a change of status in this pool's metrics: a relay region's
    /// block counts in that region's (each block once across regions).
    fn count(&self, counter: &std::sync::atomic::AtomicU64) {
        if self.block.origin.is_none() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Journals a change of status and waits (bounded) until it is
    /// durable, so the store is not ahead of the journal. A relay region's
    /// block is evented by that region alone.
    async fn announce(&self, event: EventData) {
        if self.block.origin.is_some() {
            return;
        }
        match self.shared.try_emit(event) {
            Some(seq) => {
                if let Some(journal) = &self.shared.journal {
                    match tokio::time::timeout(ANNOUNCE_WAIT, journal.wait_durable(seq)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::error!(%error, hash = %self.block.hash, "block event not confirmed durable")
                        }
                        Err(_) => tracing::error!(hash = %self.block.hash,
                            "block event not durable in time; the block store is written anyway"),
                    }
                }
            }
            None => {
                tracing::error!(hash = %self.block.hash, "block event refused by the journal (see the log line above)")
            }
        }
    }

    /// The new status into the store (bounded wait) and the status API.
    async fn settle(&mut self) {
        self.save_bounded().await;
        self.publish();
    }

    fn publish(&self) {
        self.shared
            .blocks
            .update(BlockRecord::of(&self.block, self.durable));
    }

    /// Writes the block as it is now, waiting at most [`SAVE_WAIT`]: before
    /// the first submission, the block then goes to the nodes whatever the
    /// disk does.
    async fn save_bounded(&mut self) {
        let Some(mut write) = self.spawn_save() else {
            return;
        };
        match tokio::time::timeout(SAVE_WAIT, &mut write).await {
            Ok(result) => {
                self.durable = result.unwrap_or(false);
                self.pending_save = None;
            }
            Err(_) => {
                tracing::error!(hash = %self.block.hash, block_hex = %self.block.block_hex,
                    "block store write still not done; submitting the block without waiting");
                self.pending_save = Some(write);
            }
        }
    }

    /// Until the block is in the store: takes the result of a slow write,
    /// or writes again after a failed one (a disk that was full).
    async fn keep_trying_to_store(&mut self) {
        if self.durable {
            return;
        }
        match self.pending_save.take() {
            Some(write) if write.is_finished() => self.durable = write.await.unwrap_or(false),
            Some(write) => self.pending_save = Some(write),
            None => {
                if let Some(write) = self.spawn_save() {
                    self.pending_save = Some(write);
                }
            }
        }
    }

    /// Writes the block to the store off the async threads; the result is
    /// false when it failed (logged with the block's hex, the one copy
    /// left outside this process). `None` without a store.
    fn spawn_save(&self) -> Option<tokio::task::JoinHandle<bool>> {
        let store = self.shared.block_store.clone()?;
        let block = self.block.clone();
        Some(tokio::task::spawn_blocking(move || {
            match store.save(&block) {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(%error, height = block.height, hash = %block.hash,
                    block_hex = %block.block_hex,
                    "block NOT written to the block store; submitting it anyway");
                    false
                }
            }
        }))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
