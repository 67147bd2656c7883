//! `[notify]`: the webhook notifier beside the pool, reading its journal.

use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::Config;
use tbg_notify::{DeliverySettings, Endpoint, Notifier, SigningKey};

/// Starts a delivery task per `[[notify.webhooks]]` entry; `None` without
/// any (or without a journal, which the config check refuses with them).
pub fn start(config: &Config) -> Result<Option<Notifier>> {
    let notify = &config.notify;
    if notify.webhooks.is_empty() || !config.journal.enabled {
        return Ok(None);
    }
    let endpoints = notify
        .webhooks
        .iter()
        .enumerate()
        .map(|(index, hook)| {
            let secret = hook.secret.as_deref().unwrap_or_default();
            let key = tbg_config::webhook_key(secret)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("notify.webhooks[{index}].secret"))?;
            Ok(Endpoint {
                name: hook.display_name(index),
                url: hook.url.clone(),
                key: SigningKey::new(key),
                kinds: hook.events.clone(),
                addresses: hook.addresses.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
    let settings = DeliverySettings {
        journal: config.journal.path.clone(),
        // Beside the journal: a restored journal and its cursors stay together.
        cursor_dir_prefix: config.journal.path.clone(),
        worker_offline_after_s: notify.worker_offline_after_s,
        retry_max: Duration::from_secs(notify.retry_max_s),
        timeout: Duration::from_secs(notify.timeout_s),
        batch: 500,
        idle_poll: Duration::from_millis(100),
    };
    let notifier = Notifier::start(endpoints, settings).context("notify")?;
    tracing::info!(webhooks = %names.join(","), "webhook notifications on");
    Ok(Some(notifier))
}
