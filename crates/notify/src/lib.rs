//! Notifications: signed webhooks for the moments a miner cares about (a
//! block found, what the nodes answered, its confirmation or orphaning, a
//! worker gone quiet), read from the pool's journal.
//!
//! Each endpoint has its own durable cursor over the journal: a notice is
//! retried with backoff until the endpoint answers 2xx, survives restarts,
//! and an endpoint that is down delays only its own notices. Delivery is at
//! least once; the `webhook-id` header is stable, so a receiver drops what
//! it already has. Signatures follow the Standard Webhooks specification
//! (`sign`). Nothing here is on the pool's path: the pool writes the
//! journal, the notifier reads it.
#![forbid(unsafe_code)]

pub mod deliver;
pub mod notice;
pub mod sign;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use deliver::{DeliverySettings, Endpoint, EndpointStats};
pub use notice::{notice_of, Notice, OfflineTracker};
pub use sign::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Journal(#[from] tbg_journal::JournalError),
    #[error(transparent)]
    Cursor(#[from] tbg_journal::CursorError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("notifier task: {0}")]
    Task(String),
}

/// The running notifier: one task per endpoint.
pub struct Notifier {
    stop: CancellationToken,
    drain: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    stats: Vec<(String, Arc<EndpointStats>)>,
}

impl Notifier {
    /// Starts a delivery task per endpoint. A task that fails for good (an
    /// unreadable journal or cursor) logs why; the pool goes on.
    pub fn start(
        endpoints: Vec<Endpoint>,
        settings: DeliverySettings,
    ) -> Result<Notifier, NotifyError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            // A redirect would send the signed notice somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        let stop = CancellationToken::new();
        let drain = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut stats = Vec::new();
        for endpoint in endpoints {
            let endpoint_stats = Arc::new(EndpointStats::default());
            stats.push((endpoint.name.clone(), endpoint_stats.clone()));
            let name = endpoint.name.clone();
            let delivery = deliver::Delivery {
                endpoint,
                settings: settings.clone(),
                client: client.clone(),
                stats: endpoint_stats,
                drain: drain.clone(),
            };
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(error) = delivery.run(stop).await {
                    tracing::error!(webhook = %name, %error,
                        "webhook notifications stopped; restart the pool once this is fixed");
                }
            }));
        }
        Ok(Notifier {
            stop,
            drain,
            tasks,
            stats,
        })
    }

    /// Each endpoint's name and counts.
    pub fn stats(&self) -> &[(String, Arc<EndpointStats>)] {
        &self.stats
    }

    /// Stops the deliveries (a notice being retried is retried again after
    /// the next start, from the cursor).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        futures_join(std::mem::take(&mut self.tasks)).await;
    }

    /// After the pool stopped (its journal committed): delivers what the
    /// journal still holds for at most `grace`, then stops. What is not
    /// delivered by then goes at the next start.
    pub async fn finish(mut self, grace: std::time::Duration) {
        self.drain.cancel();
        let stop = self.stop.clone();
        let all = futures_join(std::mem::take(&mut self.tasks));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "stopping with webhook notices undelivered; they go at the next start"
            );
            stop.cancel();
        }
    }
}

impl Drop for Notifier {
    /// A notifier dropped without `shutdown` stops its tasks too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits for every task (each ends by itself once drained or stopped).
async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
