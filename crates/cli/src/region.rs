//! One region of several, wired around the pool from `[region]` and
//! `[nats]`: a relay's link to its primary (template route and block tap,
//! before the pool starts), a primary's relay link listener and its
//! consumer of the other regions' events (after).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::{Config, RegionMode};
use tbg_metrics::RegionSources;
use tbg_nats::{Ingest, IngestConfig, IngestStats, StreamSettings};
use tbg_pool::{PoolService, RegionWiring};
use tbg_relay::{PrimaryConfig, PrimaryLink, RelayConfig, RelayLink};
use tokio_util::sync::CancellationToken;

/// How many found blocks wait for the relay link; more go from the block
/// store at the next connect.
const BLOCK_TAP_CAPACITY: usize = 64;

/// Before the pool starts: a relay's route and tap.
pub fn prepare(config: &Config) -> Result<(RegionWiring, Option<Arc<RelayLink>>)> {
    let region = &config.region;
    if region.mode != RegionMode::Relay {
        return Ok((RegionWiring::default(), None));
    }
    // The config check made sure these are set for a relay.
    let primary = region
        .primary_url
        .clone()
        .context("region.primary_url is required for a relay")?;
    let secret = region
        .relay_secret
        .clone()
        .context("region.relay_secret is required for a relay")?;
    let instance_id = region
        .instance_id
        .context("region.instance_id is required for a relay")?;
    let mut link_config = RelayConfig::new(
        &primary,
        secret.as_bytes(),
        &config.events.region,
        instance_id,
    );
    link_config.heartbeat = Duration::from_secs(region.heartbeat_s);
    link_config.failover_timeout = Duration::from_secs(region.failover_timeout_s);
    link_config.failback_after = Duration::from_secs(region.failback_after_s);
    let (tap, blocks) = tokio::sync::mpsc::channel(BLOCK_TAP_CAPACITY);
    let link = RelayLink::start(link_config, blocks);
    tracing::info!(%primary, region = %config.events.region, instance_id, "relay region: following the primary");
    Ok((
        RegionWiring {
            route_templates: Some(link.router()),
            block_tap: Some(tap),
        },
        Some(link),
    ))
}

/// The region's parts beside a started pool.
#[derive(Default)]
pub struct RunningRegion {
    primary: Option<Arc<PrimaryLink>>,
    relay: Option<Arc<RelayLink>>,
    ingest: Option<(
        Arc<IngestStats>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
    mode: &'static str,
    name: String,
}

impl RunningRegion {
    /// For `/metrics` and `/status`.
    pub fn sources(&self) -> RegionSources {
        RegionSources {
            mode: self.mode,
            name: self.name.clone(),
            primary: self.primary.clone(),
            relay: self.relay.clone(),
            ingest: self.ingest.as_ref().map(|(stats, _, _)| stats.clone()),
        }
    }

    pub async fn stop(self) {
        if let Some(relay) = &self.relay {
            relay.stop().await;
        }
        if let Some(primary) = self.primary {
            match Arc::try_unwrap(primary) {
                Ok(primary) => primary.stop().await,
                Err(_) => tracing::warn!("relay link still in use at stop"),
            }
        }
        if let Some((_, stop, task)) = self.ingest {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// After the pool started: the relay attached; a primary's listener and
/// ingest started.
pub async fn start(
    config: &Config,
    service: &PoolService,
    relay: Option<Arc<RelayLink>>,
) -> Result<RunningRegion> {
    let region = &config.region;
    let mut running = RunningRegion {
        mode: region.mode.as_str(),
        name: config.events.region.clone(),
        ..RunningRegion::default()
    };
    if let Some(relay) = relay {
        relay.attach(service.pool.link());
        running.relay = Some(relay);
        return Ok(running);
    }
    if let Some(secret) = &region.relay_secret {
        let bind = region
            .relay_bind
            .parse()
            .with_context(|| format!("region.relay_bind {:?}", region.relay_bind))?;
        let mut link_config = PrimaryConfig::new(bind, secret.as_bytes(), &config.events.region);
        link_config.instance_id = region.instance_id;
        link_config.heartbeat = Duration::from_secs(region.heartbeat_s);
        link_config.peer_timeout = Duration::from_secs(region.failover_timeout_s);
        let link = PrimaryLink::start(link_config, service.templates.clone(), service.pool.link())
            .await
            .with_context(|| format!("region.relay_bind {bind}: cannot listen"))?;
        running.primary = Some(Arc::new(link));
    }
    if let Some(url) = &config.nats.url {
        running.ingest = Some(start_ingest(config, service, url).context("nats")?);
    }
    Ok(running)
}

#[allow(clippy::type_complexity)]
fn start_ingest(
    config: &Config,
    service: &PoolService,
    url: &str,
) -> Result<(
    Arc<IngestStats>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let journal = service
        .pool
        .journal()
        .cloned()
        .context("the primary consumes the regions' events into its journal: [journal] must be enabled with nats.url")?;
    let nats = &config.nats;
    let settings = StreamSettings {
        name: nats.stream.clone(),
        replicas: nats.replicas,
        max_age: Duration::from_secs(nats.max_age_s),
        max_bytes: nats.max_bytes,
        duplicate_window: Duration::from_secs(nats.duplicate_window_s),
    };
    let mut ingest_config = IngestConfig::new(&nats.stream, &nats.consumer, &config.events.region);
    // Beside the journal, so that a restored journal and its receipts stay
    // together.
    let mut receipts = config.journal.path.clone().into_os_string();
    receipts.push(".receipts");
    ingest_config.receipts = Some(receipts.into());
    let url = url.to_owned();
    let access = crate::publisher::nats_access(nats);
    let stop = CancellationToken::new();
    let stats = Arc::new(IngestStats::default());
    let task_stats = stats.clone();
    let task_stop = stop.clone();
    let task = tokio::spawn(async move {
        // NATS may be down when the pool starts: connect in the background,
        // the ingest retries until it answers.
        let connected = tbg_nats::connect(&url, crate::publisher::NATS_DIAL_TIMEOUT, &access).await;
        let client = match connected {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "nats.url: the regions' events wait in JetStream");
                return;
            }
        };
        let js = async_nats::jetstream::new(client);
        let ingest = Ingest::new(ingest_config, js.clone(), journal).with_stats(task_stats);
        if !tbg_nats::wait_for_stream(&js, &settings, &task_stop).await {
            return;
        }
        tracing::info!(stream = %settings.name, "consuming the other regions' events from NATS JetStream");
        ingest.run(task_stop).await;
    });
    Ok((stats, stop, task))
}
