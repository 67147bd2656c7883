//! The pool's `/metrics`, `/health` and status API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;
use tbg_events::DatagramSink;
use tbg_journal::JournalStats;
use tbg_node::{ChainInfo, NodeHealth, NodeSet};
use tbg_pool::counters::{redact_url, RpcMetrics};
use tbg_pool::{PoolService, PoolView};
use tokio::sync::watch;

pub use crate::pool_series::PoolCollector;

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
    /// The webhooks' delivery counts.
    pub notify: crate::NotifySources,
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
            notify: Vec::new(),
        }
    }

    /// The webhooks' counts, for their metrics.
    pub fn with_notify(mut self, notify: crate::NotifySources) -> PoolSources {
        self.notify = notify;
        self
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
    use crate::pool_series::{encode_chain_info, encode_journal};
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::DescriptorEncoder;
    use std::fmt::Error;

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
