//! Observability of the pool and the collector over HTTP: Prometheus
//! `/metrics`, `/health` (readiness), on the pool `/health/live`
//! (liveness, see [`liveness`]) and the
//! status API (`/status`, `/status/users/<address>`,
//! `/status/workers/<address>.<worker>`). With `metrics.token` set, all but
//! the health checks need `Authorization: Bearer <token>` (see [`auth`]).
//!
//! Metrics are read at scrape time from the counters the share path already
//! keeps (custom `prometheus-client` collectors), so serving them costs the
//! share path nothing. See `docs/metrics.md` for every name.
#![forbid(unsafe_code)]

mod auth;
pub mod collector;
mod encode;
mod limits;
pub mod liveness;
mod notify;
pub mod pool;
mod pool_series;
pub mod process;
pub mod region;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use collector::{CollectorSources, StatsFn};
pub use notify::NotifySources;
pub use pool::PoolSources;
pub use region::RegionSources;

/// Content type of the OpenMetrics text `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running HTTP server for `/metrics` and friends.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Serves the pool's endpoints on `bind` (`host:port`, port 0 allowed).
    pub async fn start_pool(
        bind: &str,
        sources: PoolSources,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = listen(bind).await?;
        Ok(MetricsServer::spawn(listener, pool::router(sources)))
    }

    /// Serves the collector's `/metrics` and `/health` on `bind`.
    pub async fn start_collector(
        bind: &str,
        sources: CollectorSources,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = listen(bind).await?;
        Ok(MetricsServer::spawn(listener, collector::router(sources)))
    }

    fn spawn(listener: TcpListener, app: axum::Router) -> MetricsServer {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "metrics server stopped");
            }
        });
        tracing::info!(%local_addr, "metrics and health endpoints listening");
        MetricsServer {
            local_addr,
            stop,
            task,
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits (at most 2 s) for open requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn listen(bind: &str) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(bind)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: bind.to_owned(),
            source,
        })
}

/// Encodes a registry as OpenMetrics text.
pub(crate) fn render(registry: &prometheus_client::registry::Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed",
        )
            .into_response(),
    }
}
