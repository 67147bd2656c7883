//! A region's journal published to JetStream, in journal order, from a
//! durable cursor.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use tbg_journal::{JournalError, JournalReader, JournalRecord};
use tokio_util::sync::CancellationToken;

use tbg_journal::{Cursor, CursorError};

use crate::receipts::{receipt_subject, Receipt, Reconciler, RELAY_SEQ_HEADER};

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
    format!(
        "events.{}.{}",
        subject_token(region),
        subject_token(event_type)
    )
}

/// `text` as one subject token: what a token cannot hold becomes `_`.
pub(crate) fn subject_token(text: &str) -> String {
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
    /// Asking the primary for its receipts and sending again what it
    /// lacks (`None`: never).
    pub reconcile: Option<ReconcileConfig>,
}

/// How a publisher checks its events against the primary's receipts.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// This region's name, as its events carry it.
    pub region: String,
    /// How often the primary is asked.
    pub every: Duration,
    /// How long a gap must last before it is sent again: longer than a
    /// primary's catch-up pause or a leader election.
    pub grace: Duration,
    /// Most events sent again per round.
    pub limit: u64,
}

impl ReconcileConfig {
    pub fn new(region: &str) -> ReconcileConfig {
        ReconcileConfig {
            region: region.to_owned(),
            every: Duration::from_secs(15),
            grace: Duration::from_secs(60),
            limit: 50_000,
        }
    }
}

impl PublisherConfig {
    pub fn new(journal: PathBuf, cursor: PathBuf) -> PublisherConfig {
        PublisherConfig {
            journal,
            cursor,
            batch: 500,
            idle_poll: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            reconcile: None,
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
    /// Events sent again because the primary's receipts lacked them.
    pub resent: AtomicU64,
    /// Receipts received from the primary.
    pub receipts: AtomicU64,
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
        let mut reconciler = self
            .config
            .reconcile
            .as_ref()
            .map(|config| (Reconciler::new(config.grace), config, Instant::now()));
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if let Some((reconciler, config, last)) = reconciler.as_mut() {
                if last.elapsed() >= config.every {
                    *last = Instant::now();
                    tokio::select! {
                        () = self.reconcile(&reader, config, reconciler, cursor.seq()) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                }
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
                        sent = self.send(&batch, None) => sent,
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

    /// Sends the batch; its acks are awaited by [`settle`]. A resend's
    /// message ids carry its tag: JetStream may remember the ids of the
    /// messages it lost.
    async fn send(
        &self,
        batch: &[JournalRecord],
        resend: Option<&str>,
    ) -> Result<Vec<PublishAckFuture>, PublishError> {
        let mut pending = Vec::with_capacity(batch.len());
        for record in batch {
            let mut headers = async_nats::HeaderMap::new();
            let id = match resend {
                None => record.event_id.clone(),
                Some(tag) => format!("{}:{tag}", record.event_id),
            };
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            headers.insert(RELAY_SEQ_HEADER, record.seq.to_string().as_str());
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

impl Publisher {
    /// One round of reconciliation: the primary's receipt for this region,
    /// and the gaps that outlived the grace sent again. Every failure
    /// (no primary answering, NATS down) just waits for the next round.
    async fn reconcile(
        &self,
        reader: &Arc<JournalReader>,
        config: &ReconcileConfig,
        reconciler: &mut Reconciler,
        cursor: u64,
    ) {
        let client = self.js.client();
        let request = client.request(receipt_subject(&config.region), bytes::Bytes::new());
        let answer = match tokio::time::timeout(RECEIPT_TIMEOUT, request).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::debug!(%error, "no receipt from the primary this round");
                return;
            }
            Err(_) => {
                tracing::debug!("no receipt from the primary this round (timed out)");
                return;
            }
        };
        let receipt: Option<Receipt> = match serde_json::from_slice(&answer.payload) {
            Ok(receipt) => receipt,
            Err(error) => {
                tracing::warn!(%error, "the primary's receipt is not one; ignored");
                return;
            }
        };
        self.stats.receipts.fetch_add(1, Ordering::Relaxed);
        // None: the primary holds nothing of this region yet.
        let Some(receipt) = receipt else { return };
        let ranges = reconciler.observe(&receipt, cursor, Instant::now(), config.limit);
        if ranges.is_empty() {
            return;
        }
        let tag = format!(
            "resend-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis())
        );
        let (mut asked, mut sent) = (0, 0);
        for &(start, end) in &ranges {
            asked += end - start + 1;
            match self.resend(reader, start, end, &tag).await {
                Ok(count) => sent += count,
                Err(error) => {
                    tracing::warn!(%error, start, end,
                        "sending again what the primary lacks failed; the next round retries");
                    break;
                }
            }
        }
        self.stats.resent.fetch_add(sent, Ordering::Relaxed);
        tracing::warn!(
            ?ranges,
            asked,
            sent,
            covered = receipt.covered,
            "the primary lacked events JetStream had acked: sent again (stored once)"
        );
        if sent < asked {
            tracing::warn!(
                missing = asked - sent,
                "some events the primary lacks are no longer in this journal (retention)"
            );
        }
    }

    /// Publishes journal seqs `start..=end` again and waits for their acks.
    async fn resend(
        &self,
        reader: &Arc<JournalReader>,
        start: u64,
        end: u64,
        tag: &str,
    ) -> Result<u64, PublishError> {
        let mut after = start - 1;
        let mut sent = 0;
        while after < end {
            let limit = self.config.batch.max(1).min((end - after) as usize);
            let read = reader.clone();
            let mut batch = tokio::task::spawn_blocking(move || read.read_after(after, limit))
                .await
                .map_err(|e| PublishError::Nats(format!("journal read task: {e}")))??;
            batch.retain(|record| record.seq <= end);
            let Some(last) = batch.last().map(|record| record.seq) else {
                break;
            };
            let acks = self.send(&batch, Some(tag)).await?;
            settle(acks).await?;
            sent += batch.len() as u64;
            after = last;
        }
        Ok(sent)
    }
}

/// How long a publisher waits for the primary's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(2);

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
