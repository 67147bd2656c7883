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
    /// The public dashboard (`None` with `web.enabled = false`).
    web: Option<tbg_web::WebServer>,
    datagram: Arc<DatagramSink>,
    region: crate::region::RunningRegion,
    /// The webhooks (`None` without `[[notify.webhooks]]`).
    notifier: Option<tbg_notify::Notifier>,
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
        if let Some(web) = self.web {
            web.shutdown().await;
        }
        self.region.stop().await;
        self.service
    }

    /// The webhooks, which stop after the pool (they deliver what its
    /// last moments journaled).
    pub fn take_notifier(&mut self) -> Option<tbg_notify::Notifier> {
        self.notifier.take()
    }
}

/// Starts the pool's endpoints on `metrics.bind` and the dashboard on
/// `web.bind`; stops the pool if either fails.
pub async fn with_metrics(
    config: &Config,
    service: PoolService,
    datagram: Arc<DatagramSink>,
    region: crate::region::RunningRegion,
    notifier: Option<tbg_notify::Notifier>,
) -> Result<RunningPool> {
    let notify_stats = notifier
        .as_ref()
        .map(|n| n.stats().to_vec())
        .unwrap_or_default();
    let sources = PoolSources::new(&service, Some(datagram.clone()))
        .with_notify(notify_stats)
        .with_max_template_age(Duration::from_secs(config.metrics.max_template_age_secs))
        .with_region(region.sources())
        .with_operator_token(config.metrics.token.clone());
    let metrics = match MetricsServer::start_pool(&config.metrics.bind, sources).await {
        Ok(metrics) => metrics,
        Err(error) => {
            region.stop().await;
            service.shutdown(Duration::from_millis(500)).await;
            return Err(error).context("metrics.bind");
        }
    };
    let web = if config.web.enabled {
        let sources = tbg_web::WebSources {
            pool: service.pool.view(),
            network: config.network.as_str().to_owned(),
            sample_interval: Duration::from_secs(config.web.sample_interval_s),
            state_file: Some(config.web.state_file.clone()),
            postgres: config.collector.postgres_url.clone(),
        };
        match tbg_web::WebServer::start(&config.web.bind, sources).await {
            Ok(web) => Some(web),
            // The default port is often someone else's (8080): the pool
            // mines on without its pages rather than not at all. A bind the
            // operator chose is theirs to fix.
            Err(error) if config.web.bind == tbg_config::WebSection::default().bind => {
                tracing::warn!(%error, "dashboard not started: set web.bind to a free address (or web.enabled = false)");
                None
            }
            Err(error) => {
                metrics.shutdown().await;
                region.stop().await;
                service.shutdown(Duration::from_millis(500)).await;
                return Err(error).context("web.bind");
            }
        }
    } else {
        None
    };
    Ok(RunningPool {
        service,
        metrics,
        web,
        datagram,
        region,
        notifier,
    })
}
