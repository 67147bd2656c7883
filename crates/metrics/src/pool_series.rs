//! The pool's Prometheus series, computed at scrape time from the live
//! counters, the journal's stats and the node's chain info (the endpoints
//! themselves are in `pool.rs`).

use std::fmt::Error;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tbg_journal::JournalStats;
use tbg_node::{ChainInfo, NodeHealth};
use tbg_pool::counters::redact_url;
use tbg_pool::PoolCounters;
use tbg_stratum::RejectReason;

use crate::encode::{self, Labels};
use crate::pool::PoolSources;

/// Every pool metric, read from the live counters at scrape time.
#[derive(Clone)]
pub struct PoolCollector(pub PoolSources);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        encode_pool(&self.0, &mut enc)?;
        crate::region::encode_region(&self.0.region, &mut enc)?;
        crate::notify::encode_notify(&self.0.notify, &mut enc)?;
        crate::process::encode(&mut enc)
    }
}

fn encode_pool(sources: &PoolSources, enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let pool = &sources.pool;
    let c = pool.counters();
    let get = PoolCounters::get;

    encode::gauge(
        enc,
        "ckpool_uptime_seconds",
        "Seconds since the pool started.",
        pool.uptime().as_secs_f64(),
    )?;
    encode::gauge(
        enc,
        "ckpool_connections",
        "Open TCP connections of miners.",
        get(&c.connections) as f64,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_connections_opened",
        "TCP connections accepted since start.",
        get(&c.connections_total),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_connections_refused",
        "Connections refused by the limits.",
        get(&c.connections_refused),
    )?;
    encode::gauge(
        enc,
        "ckpool_connected_miners",
        "Authorized miner sessions.",
        get(&c.miners) as f64,
    )?;

    let now = Instant::now();
    let users = pool.stats().users(now);
    let workers_connected: u64 = users
        .iter()
        .flat_map(|u| u.workers.iter())
        .filter(|w| w.connections > 0)
        .count() as u64;
    let users_connected = users.iter().filter(|u| u.workers_connected > 0).count();
    encode::gauge(
        enc,
        "ckpool_connected_workers",
        "Distinct workers (address.worker) with at least one connection.",
        workers_connected as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_connected_users",
        "Distinct payout addresses with at least one connection.",
        users_connected as f64,
    )?;
    let mut hashrate = [0.0f64; 4];
    for user in &users {
        for (total, value) in hashrate.iter_mut().zip([
            user.hashrate_1m,
            user.hashrate_5m,
            user.hashrate_1h,
            user.hashrate_1d,
        ]) {
            *total += value;
        }
    }
    let windows = ["1m", "5m", "1h", "1d"];
    let series: Vec<(Labels, f64)> = windows
        .iter()
        .zip(hashrate)
        .map(|(w, h)| (vec![("window", (*w).to_owned())], h))
        .collect();
    encode::gauge_family(
        enc,
        "ckpool_pool_hashrate",
        "Pool hashrate in hashes per second, decaying average over the window.",
        &series,
    )?;

    let accepted = get(&c.shares_accepted);
    let stale = c.rejected(RejectReason::Stale);
    // Valid shares the pool could not record: the pool's fault, not the
    // miner's, so not "invalid" (they have their own reason below).
    let journal_full = c.rejected(RejectReason::JournalFull);
    let rejected = get(&c.shares_rejected);
    encode::counter_u64(enc, "ckpool_shares_valid", "Accepted shares.", accepted)?;
    encode::counter_u64(
        enc,
        "ckpool_shares_stale",
        "Shares rejected as stale (job of a previous block).",
        stale,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_shares_invalid",
        "Rejected shares other than stale ones and those refused because the journal was full.",
        rejected.saturating_sub(stale).saturating_sub(journal_full),
    )?;
    let by_reason: Vec<(Labels, u64)> = RejectReason::ALL
        .iter()
        .map(|reason| {
            (
                vec![("reason", reason.label().to_owned())],
                c.rejected(*reason),
            )
        })
        .collect();
    encode::counter_family(
        enc,
        "ckpool_shares_rejected",
        "Rejected shares and requests by reason.",
        &by_reason,
    )?;
    encode::counter(
        enc,
        "ckpool_total_diff_accepted",
        "Sum of the difficulty of accepted shares (hashrate = rate * 2^32).",
        c.accepted_difficulty.load(),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_protocol_errors",
        "Stratum lines that could not be parsed.",
        get(&c.protocol_errors),
    )?;
    crate::limits::encode_limits(c, enc)?;
    encode::counter_u64(
        enc,
        "ckpool_asicboost_miners",
        "Sessions that negotiated version rolling (ASICBoost).",
        get(&c.asicboost_miners),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_notifies_sent",
        "mining.notify messages sent.",
        get(&c.notifies_sent),
    )?;

    encode::counter_u64(
        enc,
        "ckpool_blocks_found",
        "Shares that met the network target (block candidates).",
        get(&c.blocks_found),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_submitted",
        "Found blocks whose submission settled: accepted by a node, or passed by the chain (stale, rejected).",
        get(&c.blocks_accepted) + get(&c.blocks_rejected) + get(&c.blocks_stale),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_accepted",
        "Found blocks a node accepted onto its best chain.",
        get(&c.blocks_accepted),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_rejected",
        "Found blocks never accepted that a node refused as invalid (a pool fault), once the chain passed them.",
        get(&c.blocks_rejected),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_stale",
        "Found blocks never accepted: the chain has another block at their height with more work on top.",
        get(&c.blocks_stale),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_confirmed",
        "Found blocks that reached the maturity depth (100 confirmations by default).",
        get(&c.blocks_confirmed),
    )?;
    encode::counter_u64(
        enc,
        "ckpool_blocks_orphaned",
        "Found blocks accepted, then reorganised away by another block at their height.",
        get(&c.blocks_orphaned),
    )?;
    encode::gauge(
        enc,
        "ckpool_blocks_pending",
        "Found blocks no node has taken yet (kept on disk, submitted again with backoff).",
        sources.pool.blocks_pending() as f64,
    )?;

    let template_height = get(&c.template_height);
    let tip = template_height.saturating_sub(1) as f64;
    encode::gauge(
        enc,
        "ckpool_block_height",
        "Height of the chain tip the pool mines on (0 before the first template).",
        tip,
    )?;
    encode::gauge(
        enc,
        "ckpool_bitcoin_height",
        "Same as ckpool_block_height (name of the plan).",
        tip,
    )?;
    encode::gauge(
        enc,
        "ckpool_template_height",
        "Height of the block being mined.",
        template_height as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_network_difficulty",
        "Network difficulty of the current template.",
        c.network_difficulty.load(),
    )?;
    if let Some(age) = pool.template_age() {
        encode::gauge(
            enc,
            "ckpool_template_age_seconds",
            "Seconds since the current template was fetched.",
            age.as_secs_f64(),
        )?;
    }
    let health = pool.node_health();
    let connected = matches!(health, NodeHealth::Up { .. } | NodeHealth::Behind { .. });
    encode::gauge(
        enc,
        "ckpool_bitcoin_connected",
        "1 when the last call to a node succeeded.",
        if connected { 1.0 } else { 0.0 },
    )?;
    encode::gauge(
        enc,
        "ckpool_bitcoin_behind",
        "1 while every answering node is behind the best known tip (miners keep work on it).",
        if matches!(health, NodeHealth::Behind { .. }) {
            1.0
        } else {
            0.0
        },
    )?;
    encode_chain_info(sources.chain_info.borrow().as_ref(), enc)?;
    let nodes: Vec<(Labels, f64)> = sources
        .nodes
        .status()
        .iter()
        .enumerate()
        .map(|(index, node)| {
            (
                vec![("node", index.to_string()), ("url", redact_url(&node.url))],
                if node.up { 1.0 } else { 0.0 },
            )
        })
        .collect();
    encode::gauge_family(
        enc,
        "ckpool_node_up",
        "1 while the node answers, per node (priority index).",
        &nodes,
    )?;
    let rpc = sources.rpc.snapshot();
    let latency: Vec<_> = rpc
        .iter()
        .map(|s| {
            (
                vec![("node", s.node.clone()), ("method", s.method.clone())],
                s.latency.clone(),
            )
        })
        .collect();
    encode::histogram_family(
        enc,
        "ckpool_rpc_duration_seconds",
        "Latency of RPC calls to the nodes, per node and method.",
        &latency,
    )?;
    let errors: Vec<_> = rpc
        .iter()
        .map(|s| {
            (
                vec![("node", s.node.clone()), ("method", s.method.clone())],
                s.errors,
            )
        })
        .collect();
    encode::counter_family(
        enc,
        "ckpool_rpc_errors",
        "Failed RPC calls, per node and method.",
        &errors,
    )?;

    encode::histogram(
        enc,
        "ckpool_share_processing_seconds",
        "Time to process an accepted share, from submit to answer.",
        &c.share_latency_histogram.snapshot(),
    )?;
    encode::histogram(
        enc,
        "ckpool_notify_delay_seconds",
        "Template received to notify written, per miner.",
        &c.notify_delay_histogram.snapshot(),
    )?;

    encode::counter_u64(
        enc,
        "ckpool_events_emitted",
        "Events produced by the pool.",
        get(&c.events_emitted),
    )?;
    if let Some(sink) = &sources.datagram {
        let stats = sink.stats();
        encode::counter_u64(
            enc,
            "ckpool_events_sent",
            "Events sent on the datagram socket.",
            stats.sent,
        )?;
        encode::counter_family(
            enc,
            "ckpool_events_dropped",
            "Events the datagram socket dropped, by reason.",
            &[
                (
                    vec![("reason", "no_listener".to_owned())],
                    stats.dropped_no_listener,
                ),
                (
                    vec![("reason", "queue_full".to_owned())],
                    stats.dropped_full,
                ),
                (vec![("reason", "other".to_owned())], stats.dropped_other),
            ],
        )?;
    }
    if let Some(journal) = pool.journal() {
        encode_journal(&journal.stats(), journal.is_healthy(), enc)?;
    }
    encode::gauge(
        enc,
        "ckpool_redis_up",
        "1 while the Redis of the user coinbase signatures answers.",
        if pool.redis_up() { 1.0 } else { 0.0 },
    )?;
    Ok(())
}

/// The journal's metrics, from one stats snapshot.
pub(crate) fn encode_journal(
    stats: &JournalStats,
    healthy: bool,
    enc: &mut DescriptorEncoder,
) -> Result<(), Error> {
    encode::counter_u64(
        enc,
        "ckpool_events_journaled",
        "Events committed to the journal.",
        stats.committed,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_journal_appended",
        "Events appended to the journal.",
        stats.appended,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_backlog_events",
        "Events appended but not yet committed.",
        stats.backlog as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_committed_seq",
        "Every journal seq up to this one is durable.",
        stats.committed_seq as f64,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_journal_batches",
        "Journal transactions committed.",
        stats.batches,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_last_batch_size",
        "Events in the last journal transaction.",
        stats.last_batch_size as f64,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_journal_errors",
        "Failed journal commits (retried).",
        stats.errors,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_bytes",
        "Journal database size.",
        stats.bytes as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_healthy",
        "1 while journal commits succeed.",
        if healthy { 1.0 } else { 0.0 },
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_stage_capacity_bytes",
        "Size of the journal's staging ring: events wait there until SQLite commits them.",
        stats.stage_capacity_bytes as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_stage_in_memory",
        "1 when the staging ring is in a tmpfs (memory; lost at a reboot), 0 on disk.",
        if stats.stage_in_memory { 1.0 } else { 0.0 },
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_stage_used_bytes",
        "Staging ring bytes holding events not yet committed to SQLite.",
        stats.stage_used_bytes as f64,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_journal_stage_refused_full",
        "Events refused because the staging ring was full (their shares were refused).",
        stats.rejected_full,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_journal_stage_write_errors",
        "Events refused because the staging file could not be written.",
        stats.stage_write_errors,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_stage_recovered_events",
        "Events a previous process had staged but not committed, recovered at start.",
        stats.stage_recovered as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_journal_stage_refusing",
        "1 while the journal refuses events (ring full or staging file failing): shares are refused.",
        if stats.stage_refusing { 1.0 } else { 0.0 },
    )?;
    Ok(())
}

/// The node's view of the chain; nothing is written for what is unknown,
/// so an alert on it cannot fire on a made-up zero.
pub(crate) fn encode_chain_info(
    info: Option<&ChainInfo>,
    enc: &mut DescriptorEncoder,
) -> Result<(), Error> {
    let Some(info) = info else {
        return Ok(());
    };
    encode::gauge(
        enc,
        "ckpool_bitcoin_blocks",
        "Validated chain height of the node the pool uses (getblockchaininfo blocks).",
        info.blocks as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_bitcoin_headers",
        "Best header height known to that node (getblockchaininfo headers).",
        info.headers as f64,
    )?;
    encode::gauge(
        enc,
        "ckpool_bitcoin_initial_block_download",
        "1 while that node is in initial block download.",
        if info.initial_block_download {
            1.0
        } else {
            0.0
        },
    )?;
    encode::gauge(
        enc,
        "ckpool_bitcoin_verification_progress",
        "That node's verification progress estimate, 0 to 1.",
        info.verification_progress,
    )?;
    if let Some(peers) = info.connections {
        encode::gauge(
            enc,
            "ckpool_bitcoin_peers",
            "Peer connections of that node (getnetworkinfo connections).",
            peers as f64,
        )?;
    }
    Ok(())
}
