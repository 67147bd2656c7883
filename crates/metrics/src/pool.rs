//! The pool's `/metrics`, `/health` and status API.

use std::fmt::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;
use tbg_events::DatagramSink;
use tbg_journal::JournalStats;
use tbg_node::{ChainInfo, NodeHealth, NodeSet};
use tbg_pool::counters::{redact_url, RpcMetrics};
use tbg_pool::{PoolCounters, PoolService, PoolView};
use tbg_stratum::RejectReason;
use tokio::sync::watch;

use crate::encode::{self, Labels};

/// What the pool's endpoints read.
#[derive(Clone)]
pub struct PoolSources {
    pub pool: PoolView,
    pub nodes: Arc<NodeSet>,
    pub rpc: Arc<RpcMetrics>,
    /// The node's blocks, headers and peers (`None` while unknown).
    pub chain_info: watch::Receiver<Option<ChainInfo>>,
    /// The datagram event socket, when the pool sends to one.
    pub datagram: Option<Arc<DatagramSink>>,
    /// `/health` is not ready when the template is older than this.
    pub max_template_age: Duration,
    /// The pool's Stratum address, which `/health/live` probes.
    pub stratum: std::net::SocketAddr,
    /// The relay link and the NATS ingest, for one region of several.
    pub region: crate::RegionSources,
    /// Bearer token of `/metrics` and the status API (`metrics.token`).
    pub operator_token: Option<String>,
}

impl PoolSources {
    pub fn new(service: &PoolService, datagram: Option<Arc<DatagramSink>>) -> PoolSources {
        PoolSources {
            pool: service.pool.view(),
            nodes: service.nodes.clone(),
            rpc: service.rpc_metrics.clone(),
            chain_info: service.chain_info.clone(),
            datagram,
            max_template_age: Duration::from_secs(180),
            stratum: service.pool.local_addr(),
            region: crate::RegionSources::default(),
            operator_token: None,
        }
    }

    /// `/metrics` and the status API need this bearer token.
    pub fn with_operator_token(mut self, token: Option<String>) -> PoolSources {
        self.operator_token = token;
        self
    }

    pub fn with_region(mut self, region: crate::RegionSources) -> PoolSources {
        self.region = region;
        self
    }

    pub fn with_max_template_age(mut self, max_template_age: Duration) -> PoolSources {
        self.max_template_age = max_template_age;
        self
    }
}

impl std::fmt::Debug for PoolSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSources").finish_non_exhaustive()
    }
}

struct AppState {
    sources: PoolSources,
    registry: Registry,
    /// Datagram drops seen at the previous `/health`, to report new drops.
    last_drops: Mutex<Option<(Instant, u64)>>,
    liveness: crate::liveness::Liveness,
}

pub(crate) fn router(sources: PoolSources) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PoolCollector(sources.clone())));
    let token = sources.operator_token.clone();
    let state = Arc::new(AppState {
        liveness: crate::liveness::Liveness::new(sources.stratum),
        sources,
        registry,
        last_drops: Mutex::new(None),
    });
    let router = Router::new()
        .route("/metrics", get(metrics))
        // Readiness; `/health/ready` is the same, named next to liveness.
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(live))
        .route("/status", get(status))
        .route("/status/users/:address", get(user_status))
        .route("/status/workers/:worker", get(worker_status))
        .with_state(state);
    crate::auth::protect(router, token.as_deref())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::render(&state.registry)
}

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
fn encode_journal(
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
fn encode_chain_info(info: Option<&ChainInfo>, enc: &mut DescriptorEncoder) -> Result<(), Error> {
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

/// The answer of `/health` (readiness).
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The HTTP server answers (always true when there is an answer); the
    /// liveness check proper, which probes the Stratum port, is
    /// `/health/live`.
    pub live: bool,
    /// Miners can be served fresh work and their shares are recorded.
    pub ready: bool,
    /// Why the pool is not ready (empty when ready).
    pub reasons: Vec<String>,
    /// Problems that do not stop mining.
    pub warnings: Vec<String>,
    pub template_age_seconds: Option<f64>,
    pub nodes_up: usize,
    pub nodes: usize,
}

fn pool_health(state: &AppState) -> HealthReport {
    let sources = &state.sources;
    let pool = &sources.pool;
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    match pool.node_health() {
        NodeHealth::AllDown { since } => reasons.push(format!(
            "no node reachable for {:.0} s",
            since.elapsed().as_secs_f64()
        )),
        // Answering nodes, but none on the best tip: the work handed out
        // may be stale, so not ready (the pool does not pretend).
        NodeHealth::Behind { since } => reasons.push(format!(
            "every answering node is behind the best known tip for {:.0} s",
            since.elapsed().as_secs_f64()
        )),
        NodeHealth::Starting if pool.template_age().is_none() => {
            reasons.push("no template fetched yet".to_owned())
        }
        _ => {}
    }
    let template_age = pool.template_age();
    if let Some(age) = template_age {
        if age > sources.max_template_age {
            reasons.push(format!(
                "template is {:.0} s old (limit {} s)",
                age.as_secs_f64(),
                sources.max_template_age.as_secs()
            ));
        }
    }
    if let Some(journal) = pool.journal() {
        let (reason, warning) = journal_health(&journal.stats(), journal.is_healthy());
        reasons.extend(reason);
        warnings.extend(warning);
    }
    if let Some(sink) = &sources.datagram {
        let dropped = sink.stats().dropped_total();
        let mut last = state.last_drops.lock();
        let new_drops = last.map_or(0, |(_, before)| dropped.saturating_sub(before));
        *last = Some((Instant::now(), dropped));
        if new_drops > 0 {
            let message = format!("event socket dropped {new_drops} events since the last check");
            if pool.journal().is_some() {
                // The journal keeps every event; the socket is best-effort.
                warnings.push(message);
            } else {
                reasons.push(format!("{message} and there is no journal: they are lost"));
            }
        }
    }
    let nodes = sources.nodes.status();
    if nodes.iter().any(|n| !n.up) && nodes.iter().any(|n| n.up) {
        warnings.push("some nodes are down (failover in use)".to_owned());
    }
    HealthReport {
        live: true,
        ready: reasons.is_empty(),
        reasons,
        warnings,
        template_age_seconds: template_age.map(|a| a.as_secs_f64()),
        nodes_up: nodes.iter().filter(|n| n.up).count(),
        nodes: nodes.len(),
    }
}

/// What `/health` says about the journal: a reason (not ready) and/or a
/// warning.
fn journal_health(stats: &JournalStats, healthy: bool) -> (Option<String>, Option<String>) {
    let last_error = stats.last_error.as_deref().unwrap_or("none recorded");
    let staged = format!(
        "{} of {} bytes staged",
        stats.stage_used_bytes, stats.stage_capacity_bytes
    );
    let half_full = stats.stage_used_bytes.saturating_mul(2) > stats.stage_capacity_bytes;
    // The stats do not say which refusal came last: a ring that refused for
    // lack of room and is at least half used is full (a record is tiny next
    // to the ring); otherwise the staging file itself fails.
    let full = stats.rejected_full > 0 && (stats.stage_write_errors == 0 || half_full);
    let reason = if stats.stage_refusing && full {
        Some(format!(
            "journal full: {staged}, shares are refused until the journal can write again (last error: {last_error})"
        ))
    } else if stats.stage_refusing {
        Some(format!(
            "journal staging file {} cannot be written: shares are refused until the journal can write again (last error: {last_error})",
            stats.stage_path.display()
        ))
    } else if !healthy {
        Some(format!(
            "journal not writable: {} failed commits, last error: {last_error}",
            stats.consecutive_failures
        ))
    } else {
        None
    };
    // Filling while commits succeed: SQLite is slower than the share rate.
    let warning = (reason.is_none() && half_full)
        .then(|| format!("journal staging ring more than half used: {staged}, SQLite is behind"));
    (reason, warning)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let report = pool_health(&state);
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

/// Liveness: 200 while the pool can serve miners, 503 when a restart is
/// the cure (see `liveness.rs`). systemd restarts the pool on this alone.
async fn live(State(state): State<Arc<AppState>>) -> Response {
    let report = state.liveness.report().await;
    let code = if report.live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let pool = &state.sources.pool;
    let now = Instant::now();
    let users = pool.stats().users(now);
    let sum = |f: fn(&tbg_pool::UserSnapshot) -> f64| users.iter().map(f).sum::<f64>();
    let nodes: Vec<_> = state
        .sources
        .nodes
        .status()
        .into_iter()
        .map(|node| {
            json!({
                "url": redact_url(&node.url),
                "up": node.up,
                "last_error": node.last_error,
                "seconds_since_last_ok": node.last_ok.map(|t| now.saturating_duration_since(t).as_secs_f64()),
                "rpc_latency_seconds": node.rpc_latency.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    Json(json!({
        "pool": pool.status(),
        "uptime_seconds": pool.uptime().as_secs_f64(),
        "hashrate_1m": sum(|u| u.hashrate_1m),
        "hashrate_5m": sum(|u| u.hashrate_5m),
        "hashrate_1h": sum(|u| u.hashrate_1h),
        "hashrate_1d": sum(|u| u.hashrate_1d),
        "users": users.len(),
        "users_connected": users.iter().filter(|u| u.workers_connected > 0).count(),
        "workers_connected": users.iter().map(|u| u64::from(u.workers_connected)).sum::<u64>(),
        "nodes": nodes,
        "blocks": pool.blocks(),
        "region": state.sources.region.status(),
    }))
    .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

async fn user_status(State(state): State<Arc<AppState>>, Path(address): Path<String>) -> Response {
    match state.sources.pool.stats().user(&address, Instant::now()) {
        Some(user) => Json(user).into_response(),
        None => not_found("unknown user"),
    }
}

/// `<address>.<worker>`: the worker name is what follows the first dot, as
/// in the stratum username.
async fn worker_status(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let Some((address, worker)) = name.split_once('.') else {
        return not_found("expected <address>.<worker>");
    };
    let Some(user) = state.sources.pool.stats().user(address, Instant::now()) else {
        return not_found("unknown user");
    };
    match user.workers.into_iter().find(|w| w.worker == worker) {
        Some(snapshot) => Json(json!({
            "address": address,
            "worker": snapshot,
            "user_workers_connected": user.workers_connected,
        }))
        .into_response(),
        None => not_found("unknown worker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the chain-info gauges, rendered as Prometheus would read them.
    #[derive(Debug)]
    struct ChainInfoOnly(Option<ChainInfo>);

    impl Collector for ChainInfoOnly {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
            encode_chain_info(self.0.as_ref(), &mut enc)
        }
    }

    fn exposition(info: Option<ChainInfo>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ChainInfoOnly(info)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn info(connections: Option<u64>) -> ChainInfo {
        ChainInfo {
            node_index: 0,
            blocks: 800_000,
            headers: 800_005,
            initial_block_download: false,
            verification_progress: 0.99,
            connections,
            fetched_at: Instant::now(),
        }
    }

    #[test]
    fn chain_info_gauges_carry_the_node_values() {
        let text = exposition(Some(info(Some(2))));
        assert!(text.contains("\nckpool_bitcoin_blocks 800000"), "{text}");
        assert!(text.contains("\nckpool_bitcoin_headers 800005"), "{text}");
        assert!(text.contains("\nckpool_bitcoin_peers 2"), "{text}");
        assert!(text.contains("\nckpool_bitcoin_initial_block_download 0"));
    }

    fn ring(used: u64, rejected_full: u64, write_errors: u64, refusing: bool) -> JournalStats {
        JournalStats {
            stage_path: "/var/lib/tbg/events.db.stage".into(),
            stage_capacity_bytes: 1000,
            stage_used_bytes: used,
            rejected_full,
            stage_write_errors: write_errors,
            stage_refusing: refusing,
            last_error: Some("commit of 3 events failed: database or disk is full".into()),
            ..JournalStats::default()
        }
    }

    #[test]
    fn a_full_ring_is_a_plain_reason() {
        let (reason, warning) = journal_health(&ring(990, 4, 0, true), false);
        assert_eq!(
            reason.as_deref(),
            Some(
                "journal full: 990 of 1000 bytes staged, shares are refused until the journal \
                 can write again (last error: commit of 3 events failed: database or disk is full)"
            )
        );
        assert_eq!(warning, None);
    }

    #[test]
    fn a_failing_stage_file_is_not_called_full() {
        let (reason, _) = journal_health(&ring(10, 0, 2, true), false);
        let reason = reason.unwrap();
        assert!(
            reason
                .starts_with("journal staging file /var/lib/tbg/events.db.stage cannot be written"),
            "{reason}"
        );
    }

    #[test]
    fn a_filling_ring_warns_and_an_empty_one_is_silent() {
        let (reason, warning) = journal_health(&ring(600, 0, 0, false), true);
        assert_eq!(reason, None);
        assert_eq!(
            warning.as_deref(),
            Some("journal staging ring more than half used: 600 of 1000 bytes staged, SQLite is behind")
        );
        assert_eq!(journal_health(&ring(0, 0, 0, false), true), (None, None));
    }

    #[derive(Debug)]
    struct JournalOnly(JournalStats);

    impl Collector for JournalOnly {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
            encode_journal(&self.0, !self.0.stage_refusing, &mut enc)
        }
    }

    #[test]
    fn the_ring_is_exported() {
        let mut stats = ring(990, 4, 1, true);
        stats.stage_recovered = 7;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(JournalOnly(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "\nckpool_journal_stage_capacity_bytes 1000",
            "\nckpool_journal_stage_used_bytes 990",
            "\nckpool_journal_stage_refused_full_total 4",
            "\nckpool_journal_stage_write_errors_total 1",
            "\nckpool_journal_stage_recovered_events 7",
            "\nckpool_journal_stage_refusing 1",
            "\nckpool_journal_healthy 0",
            "# TYPE ckpool_journal_stage_refused_full counter",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
    }

    #[test]
    fn unknown_chain_info_is_absent_not_zero() {
        let text = exposition(Some(info(None)));
        assert!(text.contains("ckpool_bitcoin_blocks"), "{text}");
        assert!(!text.contains("ckpool_bitcoin_peers"), "{text}");
        let text = exposition(None);
        assert!(!text.contains("ckpool_bitcoin_"), "{text}");
    }
}
