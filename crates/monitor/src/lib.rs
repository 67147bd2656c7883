//! The health monitor (`tbg health-monitor`): polls every region's pool
//! (its `/health` and `/status`) and NATS every `interval`, and answers
//! `GET /health` with the whole picture: `healthy` only when every region
//! is up and NATS answers (200), `degraded` otherwise (503), each region's
//! state with the reason, and NATS's. Its own `/metrics` carry the same.
//!
//! The monitor runs apart from every region (its own host, ideally), so
//! that the primary's host being gone is exactly what it reports.
#![forbid(unsafe_code)]

mod probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use probe::{NatsProbe, RegionProbe, RegionState};

/// The events stream and the primary's consumer, for the NATS probe.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub stream: String,
    pub consumer: String,
    /// TLS and credentials files beyond the URL's.
    pub access: tbg_nats::NatsAccess,
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// (name, base URL of the region pool's HTTP endpoints).
    pub regions: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub nats: Option<NatsTarget>,
    /// Bearer token of the regions' status API (their `metrics.token`).
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(String),
}

/// One region in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    pub url: String,
    #[serde(flatten)]
    pub probe: RegionProbe,
    /// Seconds since the region last answered `/health` with 200.
    pub last_up_s: Option<f64>,
}

/// `GET /health`'s body.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `healthy` or `degraded`.
    pub status: &'static str,
    pub regions: BTreeMap<String, RegionReport>,
    pub nats: NatsProbe,
    /// Unix seconds of the last poll.
    pub checked_at: Option<f64>,
}

impl Report {
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}

struct Shared {
    config: MonitorConfig,
    report: RwLock<Report>,
    last_up: RwLock<BTreeMap<String, Instant>>,
    registry: Registry,
    healthy: Gauge,
    region_up: Family<Vec<(String, String)>, Gauge>,
    nats_up: Gauge,
}

/// A running monitor.
pub struct Monitor {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    /// Binds `bind`, polls at once and then every `interval`.
    pub async fn start(config: MonitorConfig, bind: SocketAddr) -> Result<Monitor, MonitorError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| MonitorError::Client(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| MonitorError::Bind { addr: bind, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MonitorError::Bind { addr: bind, source })?;
        let mut registry = Registry::default();
        let healthy = Gauge::default();
        let region_up = Family::<Vec<(String, String)>, Gauge>::default();
        let nats_up = Gauge::default();
        registry.register(
            "ckpool_health_healthy",
            "1 when every region is up and NATS answers",
            healthy.clone(),
        );
        registry.register(
            "ckpool_health_region_up",
            "1 while the region's pool answers /health with 200",
            region_up.clone(),
        );
        registry.register(
            "ckpool_health_nats_up",
            "1 while NATS answers for the events stream (1 when not configured)",
            nats_up.clone(),
        );
        let regions = config
            .regions
            .iter()
            .map(|(name, url)| {
                (
                    name.clone(),
                    RegionReport {
                        url: url.clone(),
                        probe: RegionProbe::unknown(),
                        last_up_s: None,
                    },
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            report: RwLock::new(Report {
                status: "degraded",
                regions,
                nats: NatsProbe::not_configured(),
                checked_at: None,
            }),
            config,
            last_up: RwLock::new(BTreeMap::new()),
            registry,
            healthy,
            region_up,
            nats_up,
        });
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(shared.clone());
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(server_stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "health monitor HTTP server");
            }
        });
        let poller = tokio::spawn(poll_loop(shared.clone(), client, stop.clone()));
        Ok(Monitor {
            local_addr,
            shared,
            stop,
            tasks: vec![server, poller],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn report(&self) -> Report {
        self.shared.report.read().clone()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn poll_loop(shared: Arc<Shared>, client: reqwest::Client, stop: CancellationToken) {
    let nats = match &shared.config.nats {
        Some(target) => {
            // Connects in the background: NATS may be down right now,
            // which is what the monitor is there to say.
            let connected = tbg_nats::connect(&target.url, shared.config.timeout, &target.access)
                .await
                .map_err(|error| error.to_string());
            match connected {
                Ok(client) => Some((async_nats::jetstream::new(client), target.clone())),
                Err(error) => {
                    tracing::error!(%error, "health monitor: NATS url");
                    None
                }
            }
        }
        None => None,
    };
    let mut ticker = tokio::time::interval(shared.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let regions = futures::future::join_all(shared.config.regions.iter().map(|(name, url)| {
            let client = &client;
            let token = shared.config.token.as_deref();
            async move { (name.clone(), probe::probe_region(client, url, token).await) }
        }));
        let nats_probe = async {
            match &nats {
                Some((js, target)) => {
                    probe::probe_nats(js, &target.stream, &target.consumer, shared.config.timeout)
                        .await
                }
                None if shared.config.nats.is_some() => NatsProbe {
                    state: "down",
                    error: Some("nats url refused by the client".to_owned()),
                    stream_messages: None,
                    consumer_pending: None,
                },
                None => NatsProbe::not_configured(),
            }
        };
        let (regions, nats_probe) = tokio::join!(regions, nats_probe);
        publish(&shared, regions, nats_probe);
    }
}

fn publish(shared: &Shared, regions: Vec<(String, RegionProbe)>, nats: NatsProbe) {
    let now = Instant::now();
    let mut last_up = shared.last_up.write();
    let mut report = shared.report.write();
    for (name, probe) in regions {
        if probe.state == RegionState::Up {
            last_up.insert(name.clone(), now);
        } else {
            tracing::warn!(region = %name, state = ?probe.state, error = ?probe.error, "health monitor: region not up");
        }
        shared
            .region_up
            .get_or_create(&vec![("region".to_owned(), name.clone())])
            .set(i64::from(probe.state == RegionState::Up));
        if let Some(entry) = report.regions.get_mut(&name) {
            entry.last_up_s = last_up
                .get(&name)
                .map(|at| now.saturating_duration_since(*at).as_secs_f64());
            entry.probe = probe;
        }
    }
    if !nats.is_up() {
        tracing::warn!(error = ?nats.error, "health monitor: NATS down");
    }
    shared.nats_up.set(i64::from(nats.is_up()));
    report.nats = nats;
    let healthy = report
        .regions
        .values()
        .all(|r| r.probe.state == RegionState::Up)
        && report.nats.is_up();
    report.status = if healthy { "healthy" } else { "degraded" };
    shared.healthy.set(i64::from(healthy));
    report.checked_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let report = shared.report.read().clone();
    let code = if report.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut text = String::new();
    match encode(&mut text, &shared.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
