//! `tbg publisher`: this region's journal to NATS JetStream.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tbg_config::Config;
use tbg_nats::{ensure_stream, Publisher, PublisherConfig, StreamSettings};
use tokio_util::sync::CancellationToken;

/// Where the cursor lives: beside the journal, so that a restored journal
/// and its cursor stay together.
fn cursor_path(config: &Config) -> PathBuf {
    let mut path = config.journal.path.clone().into_os_string();
    path.push(".nats-cursor");
    PathBuf::from(path)
}

pub async fn run(config: &Config) -> Result<()> {
    let Some(url) = config.nats.url.clone() else {
        bail!("nats.url is not set (or TBG_NATS_URL): nowhere to publish");
    };
    let nats = &config.nats;
    let settings = StreamSettings {
        name: nats.stream.clone(),
        replicas: nats.replicas,
        max_age: std::time::Duration::from_secs(nats.max_age_s),
        max_bytes: nats.max_bytes,
        duplicate_window: std::time::Duration::from_secs(nats.duplicate_window_s),
    };
    // NATS may be down when the publisher starts: it connects when it can,
    // and the journal keeps the events meanwhile.
    let servers = tbg_nats::server_addrs(&url).context("nats.url")?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS {}", tbg_config::redact_url(&url)))?;
    let js = async_nats::jetstream::new(client);
    // Started before the pool has created its journal (boot order): wait,
    // as the collector does.
    drop(crate::collector::open_journal(config).await?);
    // A cluster still electing its JetStream leader (or a NATS outage at
    // boot) is waited out, as systemd would restart us anyway.
    let mut backoff = std::time::Duration::from_millis(250);
    while let Err(error) = ensure_stream(&js, &settings).await {
        tracing::warn!(%error, retry_in = ?backoff, "NATS: the events stream is not ready");
        tokio::select! {
            () = crate::shutdown_signal() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
    let publisher_config = PublisherConfig::new(config.journal.path.clone(), cursor_path(config));
    tracing::info!(
        journal = %publisher_config.journal.display(),
        cursor = %publisher_config.cursor.display(),
        stream = %settings.name,
        region = %config.events.region,
        "publishing the journal to NATS JetStream"
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(Publisher::new(publisher_config, js).run(stop.clone()));
    crate::shutdown_signal().await;
    stop.cancel();
    task.await.context("publisher task")??;
    Ok(())
}
