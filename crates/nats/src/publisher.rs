//! A region's journal published to JetStream, in journal order, from a
//! durable cursor.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use tbg_journal::{JournalError, JournalReader, JournalRecord};
use tokio_util::sync::CancellationToken;

use tbg_journal::{Cursor, CursorError};

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
    /// Events per batch: published together, their acks awaited in order,
    /// then the cursor moved once; up to [`IN_FLIGHT`] batches at a time.
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
    ///
    /// Up to [`IN_FLIGHT`] batches are on the wire at once: the next is
    /// sent while the acks of the one before are awaited (a catch-up is not
    /// one replication round trip per batch). The cursor moves in order,
    /// past a batch once all of its acks are in; any failure sends again
    /// from the cursor, under the same message ids.
    pub async fn run(self, stop: CancellationToken) -> Result<(), PublishError> {
        let reader = Arc::new(JournalReader::open(&self.config.journal)?);
        let mut cursor = Cursor::open(&self.config.cursor)?;
        self.stats.cursor.store(cursor.seq(), Ordering::Relaxed);
        let mut backoff = Duration::from_millis(250);
        let mut in_flight: VecDeque<SentBatch> = VecDeque::with_capacity(IN_FLIGHT);
        let mut sent_up_to = cursor.seq();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if in_flight.len() < IN_FLIGHT {
                let limit = self.config.batch.max(1);
                let read = reader.clone();
                let batch = tokio::task::spawn_blocking(move || read.read_after(sent_up_to, limit))
                    .await
                    .map_err(|e| PublishError::Nats(format!("journal read task: {e}")))??;
                if let Some(last) = batch.last().map(|record| record.seq) {
                    // Raced with the stop: while NATS is down, the acks of
                    // the batches given up on hold the client's ack permits
                    // until they time out, and a send then waits for one.
                    let sent = tokio::select! {
                        sent = self.send(&batch) => sent,
                        () = stop.cancelled() => return Ok(()),
                    };
                    match sent {
                        Ok(acks) => {
                            in_flight.push_back(SentBatch { last, acks });
                            sent_up_to = last;
                            continue;
                        }
                        Err(error) => {
                            self.failed(&error, cursor.seq(), &mut backoff, &stop).await;
                            in_flight.clear();
                            sent_up_to = cursor.seq();
                            continue;
                        }
                    }
                }
            }
            // Nothing more to send, or no room: settle the oldest batch.
            let Some(sent) = in_flight.pop_front() else {
                tokio::select! {
                    () = tokio::time::sleep(self.config.idle_poll) => {}
                    () = stop.cancelled() => return Ok(()),
                }
                continue;
            };
            match settle(sent.acks).await {
                Ok((stored, duplicates)) => {
                    cursor.store(sent.last)?;
                    self.stats.published.fetch_add(stored, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(duplicates, Ordering::Relaxed);
                    self.stats.cursor.store(sent.last, Ordering::Relaxed);
                    backoff = Duration::from_millis(250);
                }
                Err(error) => {
                    self.failed(&error, cursor.seq(), &mut backoff, &stop).await;
                    in_flight.clear();
                    sent_up_to = cursor.seq();
                }
            }
        }
    }

    async fn failed(
        &self,
        error: &PublishError,
        after: u64,
        backoff: &mut Duration,
        stop: &CancellationToken,
    ) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, after, retry_in = ?*backoff, "publishing to NATS failed; the journal keeps the events");
        tokio::select! {
            () = tokio::time::sleep(*backoff) => {}
            () = stop.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(self.config.retry_max);
    }

    /// Sends the batch; its acks are awaited by [`settle`].
    async fn send(&self, batch: &[JournalRecord]) -> Result<Vec<PublishAckFuture>, PublishError> {
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
        Ok(pending)
    }
}

/// Batches on the wire at once, their acks not yet all in. With the
/// default batch of 500 that is 2,000 acks outstanding, well within the
/// client's 5,000 ack permits.
pub const IN_FLIGHT: usize = 4;

struct SentBatch {
    /// The journal seq of its last event: the cursor once all are acked.
    last: u64,
    acks: Vec<PublishAckFuture>,
}

/// Waits for every ack in order: (stored, already there). Any failure
/// fails the batch.
async fn settle(acks: Vec<PublishAckFuture>) -> Result<(u64, u64), PublishError> {
    let (mut stored, mut duplicates) = (0, 0);
    for ack in acks {
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
