//! `tbg publisher`: this region's journal to NATS JetStream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tbg_config::Config;
use tbg_nats::{Publisher, PublisherConfig, ReconcileConfig, StreamSettings};
use tokio_util::sync::CancellationToken;

/// The `[nats]` section's TLS and credentials files, for the client.
pub(crate) fn nats_access(nats: &tbg_config::NatsSection) -> tbg_nats::NatsAccess {
    tbg_nats::NatsAccess {
        tls_ca_file: nats.tls_ca_file.clone(),
        tls_client: nats.tls_cert_file.clone().zip(nats.tls_key_file.clone()),
        creds_file: nats.creds_file.clone(),
    }
}

/// How long one dial of a NATS server may take before the next is tried.
pub(crate) const NATS_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

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
        max_age: Duration::from_secs(nats.max_age_s),
        max_bytes: nats.max_bytes,
        duplicate_window: Duration::from_secs(nats.duplicate_window_s),
    };
    // NATS may be down when the publisher starts: it connects when it can,
    // and the journal keeps the events meanwhile.
    let client = tbg_nats::connect(&url, NATS_DIAL_TIMEOUT, &nats_access(nats))
        .await
        .with_context(|| format!("nats.url {}", tbg_config::redact_url(&url)))?;
    let js = async_nats::jetstream::new(client);
    // Started before the pool has created its journal (boot order): wait,
    // as the collector does.
    drop(crate::collector::open_journal(config).await?);
    // A cluster still electing its JetStream leader (or a NATS outage at
    // boot) is waited out.
    let stop = CancellationToken::new();
    let ready = tokio::select! {
        ready = tbg_nats::wait_for_stream(&js, &settings, &stop) => ready,
        () = crate::shutdown_signal() => false,
    };
    if !ready {
        return Ok(());
    }
    let mut publisher_config =
        PublisherConfig::new(config.journal.path.clone(), cursor_path(config));
    // The primary's receipts say what JetStream lost after acking it.
    publisher_config.reconcile = Some(ReconcileConfig {
        every: Duration::from_secs(nats.receipts_interval_s),
        grace: Duration::from_secs(nats.resend_after_s),
        ..ReconcileConfig::new(&config.events.region)
    });
    tracing::info!(
        journal = %publisher_config.journal.display(),
        cursor = %publisher_config.cursor.display(),
        stream = %settings.name,
        region = %config.events.region,
        "publishing the journal to NATS JetStream"
    );
    let task = tokio::spawn(Publisher::new(publisher_config, js).run(stop.clone()));
    crate::shutdown_signal().await;
    stop.cancel();
    task.await.context("publisher task")??;
    Ok(())
}
