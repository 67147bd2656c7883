//! `tbg health-monitor`: every region of `[health_monitor]` and NATS.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::Config;

pub async fn run(config: &Config) -> Result<()> {
    let section = &config.health_monitor;
    if section.regions.is_empty() {
        anyhow::bail!("health_monitor.regions is empty: no region to watch");
    }
    let bind: SocketAddr = section
        .bind
        .parse()
        .with_context(|| format!("health_monitor.bind {:?}: must be ip:port", section.bind))?;
    let monitor_config = tbg_monitor::MonitorConfig {
        regions: section
            .regions
            .iter()
            .map(|r| (r.name.clone(), r.url.clone()))
            .collect(),
        interval: Duration::from_secs(section.interval_s),
        timeout: Duration::from_secs(section.timeout_s),
        nats: section
            .nats_url
            .clone()
            .or_else(|| config.nats.url.clone())
            .map(|url| tbg_monitor::NatsTarget {
                url,
                stream: config.nats.stream.clone(),
                consumer: config.nats.consumer.clone(),
                access: crate::publisher::nats_access(&config.nats),
            }),
        // One operator token for every region: theirs is the same secret.
        token: config.metrics.token.clone(),
    };
    let monitor = tbg_monitor::Monitor::start(monitor_config, bind)
        .await
        .context("health_monitor.bind")?;
    tracing::info!(addr = %monitor.local_addr(), regions = section.regions.len(), "health monitor serving /health and /metrics");
    crate::shutdown_signal().await;
    monitor.stop().await;
    Ok(())
}
