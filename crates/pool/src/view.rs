//! A cheap, cloneable read-only view of a running pool, for the HTTP
//! endpoints (metrics, health, status API) that outlive a borrow of the
//! [`PoolHandle`](crate::PoolHandle).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tbg_journal::Journal;
use tbg_node::{NodeHealth, NodeSet};
use tokio::sync::watch;

use crate::{BlockRecord, CurrentWork, PoolCounters, PoolShared, StatsRegistry};

#[derive(Clone)]
pub struct PoolView {
    shared: Arc<PoolShared>,
    work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
}

impl PoolView {
    pub(crate) fn new(
        shared: Arc<PoolShared>,
        work_rx: watch::Receiver<Option<Arc<CurrentWork>>>,
    ) -> PoolView {
        PoolView { shared, work_rx }
    }

    pub fn counters(&self) -> &PoolCounters {
        &self.shared.counters
    }

    pub fn stats(&self) -> &StatsRegistry {
        &self.shared.stats
    }

    pub fn blocks(&self) -> Vec<BlockRecord> {
        self.shared.blocks.records()
    }

    /// Found blocks no node has taken yet.
    pub fn blocks_pending(&self) -> usize {
        self.shared.blocks.pending()
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.shared.journal.as_ref()
    }

    pub fn nodes(&self) -> &Arc<NodeSet> {
        &self.shared.nodes
    }

    pub fn node_health(&self) -> NodeHealth {
        self.shared.node_health.borrow().clone()
    }

    /// Time since the pool started.
    pub fn uptime(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    /// Age of the work handed to miners (`None` before the first template).
    pub fn template_age(&self) -> Option<Duration> {
        self.work_rx
            .borrow()
            .as_ref()
            .map(|work| work.received_at.elapsed())
    }

    pub fn redis_up(&self) -> bool {
        self.shared.user_sigs.redis_up()
    }

    /// Pool-wide status (same as [`PoolHandle::status`](crate::PoolHandle::status)).
    pub fn status(&self) -> PoolStatus {
        let c = &self.shared.counters;
        let health = self.node_health();
        PoolStatus {
            connections: PoolCounters::get(&c.connections),
            miners: PoolCounters::get(&c.miners),
            shares_accepted: PoolCounters::get(&c.shares_accepted),
            shares_rejected: PoolCounters::get(&c.shares_rejected),
            shares_refused_journal_full: c.rejected(tbg_stratum::RejectReason::JournalFull),
            accepted_difficulty: c.accepted_difficulty.load(),
            blocks_found: PoolCounters::get(&c.blocks_found),
            blocks_accepted: PoolCounters::get(&c.blocks_accepted),
            blocks_rejected: PoolCounters::get(&c.blocks_rejected),
            blocks_stale: PoolCounters::get(&c.blocks_stale),
            blocks_confirmed: PoolCounters::get(&c.blocks_confirmed),
            blocks_orphaned: PoolCounters::get(&c.blocks_orphaned),
            blocks_pending: self.shared.blocks.pending() as u64,
            template_height: PoolCounters::get(&c.template_height),
            network_difficulty: c.network_difficulty.load(),
            template_age_seconds: self.template_age().map(|age| age.as_secs_f64()),
            redis_up: self.redis_up(),
            node_up: !matches!(health, NodeHealth::AllDown { .. }),
            nodes_down_seconds: match health {
                NodeHealth::AllDown { since } => Some(
                    Instant::now()
                        .saturating_duration_since(since)
                        .as_secs_f64(),
                ),
                _ => None,
            },
        }
    }
}

/// Pool-wide status for the status API and tests.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub connections: u64,
    pub miners: u64,
    pub shares_accepted: u64,
    /// Every rejection, including `shares_refused_journal_full`.
    pub shares_rejected: u64,
    /// Valid shares refused because the journal could not record them
    /// (the pool's fault, not the miner's): non-zero means events are
    /// being lost upstream of the journal; see the runbook.
    pub shares_refused_journal_full: u64,
    pub accepted_difficulty: f64,
    pub blocks_found: u64,
    pub blocks_accepted: u64,
    /// Never accepted; a node refused the block itself.
    pub blocks_rejected: u64,
    /// Never accepted; the chain passed it.
    pub blocks_stale: u64,
    /// Reached the maturity depth (100 confirmations by default).
    pub blocks_confirmed: u64,
    /// Accepted, then another block at its height won.
    pub blocks_orphaned: u64,
    /// Found blocks no node has taken yet (being submitted again): anything
    /// but 0 for more than a few seconds pages the on-call.
    pub blocks_pending: u64,
    /// Height of the block being mined.
    pub template_height: u64,
    pub network_difficulty: f64,
    /// Seconds since the current template was fetched.
    pub template_age_seconds: Option<f64>,
    pub redis_up: bool,
    /// False while every node is unreachable (miners keep the last work).
    pub node_up: bool,
    /// Seconds since every node became unreachable.
    pub nodes_down_seconds: Option<f64>,
}
