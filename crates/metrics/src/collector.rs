//! The collector's `/metrics` and `/health`.

use std::fmt::Error;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tbg_collector::SinkStats;

use crate::encode::{self, Labels};

/// Reads the sinks' stats (e.g. `move || collector.stats()`).
pub type StatsFn = Arc<dyn Fn() -> Vec<SinkStats> + Send + Sync>;

/// What the collector's endpoints read.
#[derive(Clone)]
pub struct CollectorSources {
    pub stats: StatsFn,
    /// `/health` is not ready when a sink lags more events than this.
    pub max_lag: u64,
    pub started: Instant,
    /// Bearer token of `/metrics` (`metrics.token`).
    pub operator_token: Option<String>,
}

impl CollectorSources {
    pub fn new(stats: StatsFn, max_lag: u64) -> CollectorSources {
        CollectorSources {
            stats,
            max_lag,
            started: Instant::now(),
            operator_token: None,
        }
    }

    /// `/metrics` needs this bearer token.
    pub fn with_operator_token(mut self, token: Option<String>) -> CollectorSources {
        self.operator_token = token;
        self
    }
}

struct CollectorMetrics(CollectorSources);

impl std::fmt::Debug for CollectorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CollectorMetrics")
    }
}

impl Collector for CollectorMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        let sources = &self.0;
        encode::gauge(
            &mut enc,
            "ckpool_collector_uptime_seconds",
            "Seconds since the collector started.",
            sources.started.elapsed().as_secs_f64(),
        )?;
        let stats = (sources.stats)();
        let labels = |s: &SinkStats| -> Labels { vec![("sink", s.sink.name().to_owned())] };
        let gauges = |f: fn(&SinkStats) -> f64| -> Vec<(Labels, f64)> {
            stats.iter().map(|s| (labels(s), f(s))).collect()
        };
        let counters = |f: fn(&SinkStats) -> u64| -> Vec<(Labels, u64)> {
            stats.iter().map(|s| (labels(s), f(s))).collect()
        };
        encode::gauge_family(
            &mut enc,
            "ckpool_collector_sink_up",
            "1 while the sink is connected and its last write succeeded.",
            &gauges(|s| if s.up { 1.0 } else { 0.0 }),
        )?;
        encode::gauge_family(
            &mut enc,
            "ckpool_collector_sink_lag_events",
            "Journal events not yet written to the sink.",
            &gauges(|s| s.lag as f64),
        )?;
        encode::gauge_family(
            &mut enc,
            "ckpool_collector_sink_cursor",
            "Last journal seq the sink confirmed written.",
            &gauges(|s| s.cursor as f64),
        )?;
        encode::gauge_family(
            &mut enc,
            "ckpool_collector_journal_last_seq",
            "Last journal seq at the sink's last poll.",
            &gauges(|s| s.journal_last_seq as f64),
        )?;
        encode::counter_family(
            &mut enc,
            "ckpool_collector_batches",
            "Batches written, per sink.",
            &counters(|s| s.batches),
        )?;
        encode::counter_family(
            &mut enc,
            "ckpool_collector_events_written",
            "Events new to the store, per sink.",
            &counters(|s| s.events_written),
        )?;
        encode::counter_family(
            &mut enc,
            "ckpool_collector_events_duplicate",
            "Events the store already held (replays), per sink.",
            &counters(|s| s.events_duplicate),
        )?;
        encode::counter_family(
            &mut enc,
            "ckpool_collector_events_skipped",
            "Journal records skipped as unparsable, per sink.",
            &counters(|s| s.events_skipped),
        )?;
        encode::counter_family(
            &mut enc,
            "ckpool_collector_sink_errors",
            "Failed connections or writes (retried), per sink.",
            &counters(|s| s.errors),
        )?;
        crate::process::encode(&mut enc)
    }
}

pub(crate) fn router(sources: CollectorSources) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CollectorMetrics(sources.clone())));
    let token = sources.operator_token.clone();
    let state = Arc::new((sources, registry));
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state);
    crate::auth::protect(router, token.as_deref())
}

type AppState = Arc<(CollectorSources, Registry)>;

async fn metrics(State(state): State<AppState>) -> Response {
    crate::render(&state.1)
}

/// The answer of the collector's `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorHealth {
    pub live: bool,
    pub ready: bool,
    pub reasons: Vec<String>,
    pub sinks: Vec<SinkHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkHealth {
    pub sink: &'static str,
    pub up: bool,
    pub lag: u64,
    pub cursor: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Not ready when a sink is down or lags more than `max_lag` events.
pub fn collector_health(sources: &CollectorSources) -> CollectorHealth {
    let stats = (sources.stats)();
    let mut reasons = Vec::new();
    for sink in &stats {
        if !sink.up {
            reasons.push(format!(
                "sink {} down: {}",
                sink.sink.name(),
                sink.last_error
                    .clone()
                    .unwrap_or_else(|| "not connected yet".to_owned())
            ));
        }
        if sink.lag > sources.max_lag {
            reasons.push(format!(
                "sink {} lags {} events (limit {})",
                sink.sink.name(),
                sink.lag,
                sources.max_lag
            ));
        }
    }
    if stats.is_empty() {
        reasons.push("no sink configured".to_owned());
    }
    CollectorHealth {
        live: true,
        ready: reasons.is_empty(),
        reasons,
        sinks: stats
            .into_iter()
            .map(|s| SinkHealth {
                sink: s.sink.name(),
                up: s.up,
                lag: s.lag,
                cursor: s.cursor,
                errors: s.errors,
                last_error: s.last_error,
            })
            .collect(),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let report = collector_health(&state.0);
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}
