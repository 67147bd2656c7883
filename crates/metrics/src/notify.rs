//! The webhooks' metrics: notices delivered, failed attempts, and how long
//! the notice being retried has waited, per endpoint name (never its URL).

use std::fmt::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::DescriptorEncoder;
use tbg_notify::EndpointStats;

use crate::encode::{self, Labels};

/// Each endpoint's name and counts (empty without `[[notify.webhooks]]`).
pub type NotifySources = Vec<(String, Arc<EndpointStats>)>;

pub(crate) fn encode_notify(
    sources: &NotifySources,
    enc: &mut DescriptorEncoder,
) -> Result<(), Error> {
    if sources.is_empty() {
        return Ok(());
    }
    let series = |read: &dyn Fn(&EndpointStats) -> u64| -> Vec<(Labels, u64)> {
        sources
            .iter()
            .map(|(name, stats)| (vec![("webhook", name.clone())], read(stats)))
            .collect()
    };
    encode::counter_family(
        enc,
        "tbg_webhook_delivered",
        "Notices an endpoint took (answered 2xx).",
        &series(&|s| s.delivered.load(Ordering::Relaxed)),
    )?;
    encode::counter_family(
        enc,
        "tbg_webhook_failed_attempts",
        "Deliveries that failed (no answer, an error status); each notice is retried until taken.",
        &series(&|s| s.failed_attempts.load(Ordering::Relaxed)),
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let waiting: Vec<(Labels, f64)> = sources
        .iter()
        .map(|(name, stats)| {
            let since = stats.waiting_since.load(Ordering::Relaxed);
            let seconds = if since == 0 {
                0
            } else {
                now.saturating_sub(since)
            };
            (vec![("webhook", name.clone())], seconds as f64)
        })
        .collect();
    encode::gauge_family(
        enc,
        "tbg_webhook_waiting_seconds",
        "How long the notice an endpoint has not taken yet has waited (0: nothing waiting); the endpoint's later notices wait behind it.",
        &waiting,
    )
}
