//! A region's journal published to JetStream, in journal order, from a
//! durable cursor.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tbg_journal::{JournalError, JournalReader, JournalRecord};
use tokio_util::sync::CancellationToken;

use crate::cursor::{Cursor, CursorError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("NATS: {0}")]
    Nats(String),
}

/// `events.<region>.<type>`; a character a subject token cannot hold
/// becomes `_` (the config refuses such regions; old journal rows may have
/// one).
pub fn subject(region: &str, event_type: &str) -> String {
    let token = |text: &str| -> String {
        let cleaned: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if cleaned.is_empty() {
            "_".to_owned()
        } else {
            cleaned
        }
    };
    format!("events.{}.{}", token(region), token(event_type))
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The region's journal (read only).
    pub journal: PathBuf,
    /// The cursor file.
    pub cursor: PathBuf,
    /// Events per round: published together, their acks awaited in order,
    /// then the cursor moved once.
    pub batch: usize,
    /// How often an idle publisher looks for new events.
    pub idle_poll: Duration,
    /// Longest wait between two tries while NATS fails.
    pub retry_max: Duration,
}

impl PublisherConfig {
    pub fn new(journal: PathBuf, cursor: PathBuf) -> PublisherConfig {
        PublisherConfig {
            journal,
            cursor,
            batch: 500,
            idle_poll: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// What the publisher did, for metrics and tests.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Messages JetStream stored.
    pub published: AtomicU64,
    /// Messages JetStream already had (a retry, a restart).
    pub duplicates: AtomicU64,
    /// Rounds that failed (NATS down, a timeout); each is retried.
    pub failures: AtomicU64,
    /// The cursor: every journal seq up to it is in the stream.
    pub cursor: AtomicU64,
}

pub struct Publisher {
    config: PublisherConfig,
    js: jetstream::Context,
    stats: Arc<PublisherStats>,
}

impl Publisher {
    pub fn new(config: PublisherConfig, js: jetstream::Context) -> Publisher {
        Publisher {
            config,
            js,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Publishes until `stop`. Returns an error only for what retrying
    /// cannot mend: an unreadable journal or cursor file.
    pub async fn run(self, stop: CancellationToken) -> Result<(), PublishError> {
        let reader = Arc::new(JournalReader::open(&self.config.journal)?);
        let mut cursor = Cursor::open(&self.config.cursor)?;
        self.stats.cursor.store(cursor.seq(), Ordering::Relaxed);
        let mut backoff = Duration::from_millis(250);
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let after = cursor.seq();
            let limit = self.config.batch.max(1);
            let read = reader.clone();
            let batch = tokio::task::spawn_blocking(move || read.read_after(after, limit))
                .await
                .map_err(|e| PublishError::Nats(format!("journal read task: {e}")))??;
            let Some(last) = batch.last().map(|record| record.seq) else {
                tokio::select! {
                    () = tokio::time::sleep(self.config.idle_poll) => {}
                    () = stop.cancelled() => return Ok(()),
                }
                continue;
            };
            match self.publish(&batch).await {
                Ok((stored, duplicates)) => {
                    cursor.store(last)?;
                    self.stats.published.fetch_add(stored, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(duplicates, Ordering::Relaxed);
                    self.stats.cursor.store(last, Ordering::Relaxed);
                    backoff = Duration::from_millis(250);
                }
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, after, retry_in = ?backoff, "publishing to NATS failed; the journal keeps the events");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Sends the batch, then waits for every ack in order: (stored,
    /// already there). Any failure fails the round; the next one sends the
    /// same events again under the same message ids.
    async fn publish(&self, batch: &[JournalRecord]) -> Result<(u64, u64), PublishError> {
        let mut pending = Vec::with_capacity(batch.len());
        for record in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                record.event_id.as_str(),
            );
            headers.insert("Tbg-Seq", record.seq.to_string().as_str());
            let ack = self
                .js
                .publish_with_headers(
                    subject(&record.region, &record.event_type),
                    headers,
                    bytes::Bytes::from(record.payload.clone()),
                )
                .await
                .map_err(|e| PublishError::Nats(format!("publishing: {e}")))?;
            pending.push(ack);
        }
        let (mut stored, mut duplicates) = (0, 0);
        for ack in pending {
            let ack = ack
                .await
                .map_err(|e| PublishError::Nats(format!("waiting for an ack: {e}")))?;
            if ack.duplicate {
                duplicates += 1;
            } else {
                stored += 1;
            }
        }
        Ok((stored, duplicates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_region_then_type() {
        assert_eq!(
            subject("eu-west", "share_submitted"),
            "events.eu-west.share_submitted"
        );
        assert_eq!(subject("a.b c*", ">"), "events.a_b_c_._");
        assert_eq!(subject("", "x"), "events._.x");
    }
}
