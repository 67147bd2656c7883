//! The HTTP endpoints (`/metrics`, `/health`, status API) beside the pool
//! and the collector.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::Config;
use tbg_events::DatagramSink;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_pool::PoolService;

/// The pool with its metrics server.
pub struct RunningPool {
    service: PoolService,
    metrics: MetricsServer,
    datagram: Arc<DatagramSink>,
    region: crate::region::RunningRegion,
}

impl std::ops::Deref for RunningPool {
    type Target = PoolService;
    fn deref(&self) -> &PoolService {
        &self.service
    }
}

impl RunningPool {
    /// The compatibility datagram socket the pool's events also go to.
    pub fn event_socket(&self) -> &DatagramSink {
        &self.datagram
    }

    /// Stops the HTTP endpoints and the links to other regions; returns
    /// the pool to stop it. (A relay's blocks found from here on go to the
    /// primary from the block store at its next start.)
    pub async fn stop_metrics(self) -> PoolService {
        self.metrics.shutdown().await;
        self.region.stop().await;
        self.service
    }
}

/// Starts the pool's endpoints on `metrics.bind`; stops the pool if that fails.
pub async fn with_metrics(
    config: &Config,
    service: PoolService,
    datagram: Arc<DatagramSink>,
    region: crate::region::RunningRegion,
) -> Result<RunningPool> {
    let sources = PoolSources::new(&service, Some(datagram.clone()))
        .with_max_template_age(Duration::from_secs(config.metrics.max_template_age_secs))
        .with_region(region.sources())
        .with_operator_token(config.metrics.token.clone());
    match MetricsServer::start_pool(&config.metrics.bind, sources).await {
        Ok(metrics) => Ok(RunningPool {
            service,
            metrics,
            datagram,
            region,
        }),
        Err(error) => {
            region.stop().await;
            service.shutdown(Duration::from_millis(500)).await;
            Err(error).context("metrics.bind")
        }
    }
}
