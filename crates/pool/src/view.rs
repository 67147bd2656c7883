//! A cheap, cloneable read-only view of a running pool, for the HTTP
//! endpoints (metrics, health, status API) that outlive a borrow of the
//! [`PoolHandle`](crate::PoolHandle).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tbg_journal::Journal;
use tbg_node::{NodeHealth, NodeSet};
use tokio::sync::watch;

use crate::{BlockRecord, CurrentWork, PoolCounters, PoolShared, PoolStatus, StatsRegistry};

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
