//! The primary's side: every other region's events, consumed from
//! JetStream with a durable pull consumer and appended to the primary's own
//! journal, from where its collector writes them to Redis and PostgreSQL
//! exactly as it writes the primary's own events.
//!
//! Why the journal and not Redis and PostgreSQL directly: the journal is
//! the one ordered, durable, deduplicated sequence the sinks already read
//! exactly once (its `event_id` is unique, so an event delivered twice is
//! stored once however long after the duplicate window it comes; Redis
//! stream ids stay increasing because they are the journal's). A message is
//! acked only once its event is durable in the journal; until then
//! JetStream redelivers it, so a crash at any point loses nothing and a
//! Redis or PostgreSQL outage does not hold the regions' events in NATS.
//!
//! The journal's staging ring is shared with the primary's own miners: the
//! ingest pulls only while the ring is less than half full, so a region
//! catching up after an outage can never make the journal refuse a local
//! miner's share.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use tbg_events::Event;
use tbg_journal::{Journal, JournalError};
use tokio_util::sync::CancellationToken;

use crate::receipts::{ReceiptBook, RELAY_SEQ_HEADER};

mod upkeep;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The stream every region publishes to.
    pub stream: String,
    /// The durable consumer's name: its position survives restarts of the
    /// pool and of NATS.
    pub consumer: String,
    /// This region's name: its own events are in the journal already (the
    /// primary's publisher, if one runs, sends them too) and are acked
    /// without being appended again.
    pub own_region: String,
    /// Most messages per fetch; each fetch's events are appended, made
    /// durable and acked together, while the next fetches are appended.
    pub batch: usize,
    /// Longest wait of one fetch for messages.
    pub fetch_wait: Duration,
    /// Longest wait between two tries while NATS or the journal fails.
    pub retry_max: Duration,
    /// How long JetStream waits for an ack before it redelivers.
    pub ack_wait: Duration,
    /// Where the receipts of every region are kept across restarts
    /// (`None`: in memory only, for tests).
    pub receipts: Option<PathBuf>,
    /// How often the consumer is checked against the stream for a stall.
    pub watch_interval: Duration,
}

impl IngestConfig {
    pub fn new(stream: &str, consumer: &str, own_region: &str) -> IngestConfig {
        IngestConfig {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            own_region: own_region.to_owned(),
            batch: 500,
            fetch_wait: Duration::from_secs(1),
            retry_max: Duration::from_secs(2),
            ack_wait: Duration::from_secs(30),
            receipts: None,
            watch_interval: Duration::from_secs(5),
        }
    }
}

/// What the ingest did, for metrics, `/status` and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events of other regions appended to the journal (a redelivered one
    /// counts again: the journal stores it once).
    pub ingested: AtomicU64,
    /// Messages of this region's own events, acked and skipped.
    pub own_skipped: AtomicU64,
    /// Messages whose payload is not an event, or an event of another
    /// region or type than its subject says: logged, terminated (a retry
    /// cannot mend them), counted.
    pub malformed: AtomicU64,
    /// Rounds that failed (NATS down, the journal refusing); each retried.
    pub failures: AtomicU64,
    /// Messages JetStream still holds for the consumer, at the last fetch.
    pub pending: AtomicU64,
    /// Rounds that waited because the journal's ring was half full.
    pub paused_for_journal: AtomicU64,
    /// The last fetch found nothing more to deliver.
    pub caught_up: AtomicBool,
    /// Receipt requests of relays' publishers answered.
    pub receipts_answered: AtomicU64,
    /// Times the consumer stood still short of the stream's end and its
    /// leader was asked to step down.
    pub stall_stepdowns: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

pub struct Ingest {
    config: IngestConfig,
    js: jetstream::Context,
    journal: Journal,
    stats: Arc<IngestStats>,
    /// What is durable of each region, by its relay journal seqs.
    book: Mutex<ReceiptBook>,
}

impl Ingest {
    pub fn new(config: IngestConfig, js: jetstream::Context, journal: Journal) -> Ingest {
        Ingest {
            config,
            js,
            journal,
            stats: Arc::default(),
            book: Mutex::default(),
        }
    }

    /// Counts into `stats` (made before the NATS connection, for metrics).
    pub fn with_stats(mut self, stats: Arc<IngestStats>) -> Ingest {
        self.stats = stats;
        self
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// Consumes until `stop`, retrying every failure with backoff (NATS
    /// may be down when the pool starts, or for hours); meanwhile answers
    /// the relays' receipt requests, keeps the receipts file and watches
    /// the consumer for a stall.
    pub async fn run(self, stop: CancellationToken) {
        self.load_receipts().await;
        tokio::join!(
            self.consume_with_retries(&stop),
            self.answer_receipts(&stop),
            self.keep_receipts(&stop),
            self.watch_for_stall(&stop),
        );
    }

    async fn consume_with_retries(&self, stop: &CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        while !stop.is_cancelled() {
            let ingested_before = self.stats.ingested.load(Ordering::Relaxed);
            let Err(error) = self.consume(stop).await else {
                return;
            };
            if self.stats.ingested.load(Ordering::Relaxed) > ingested_before {
                backoff = Duration::from_millis(250);
            }
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, retry_in = ?backoff,
                "ingesting the regions' events failed; JetStream keeps them");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.config.retry_max);
        }
    }

    /// One consumer's life, until a failure (`Err`) or `stop` (`Ok`):
    /// fetches are appended to the journal while the fetches before them
    /// are made durable and acked, so a catch-up is not one fsync and one
    /// round trip per fetch (JetStream's `max_ack_pending` and the bounded
    /// queue between the two halves hold the rest).
    async fn consume(&self, stop: &CancellationToken) -> Result<(), IngestError> {
        let consumer = tokio::select! {
            consumer = self.consumer() => consumer?,
            () = stop.cancelled() => return Ok(()),
        };
        let (appended_tx, mut appended_rx) = tokio::sync::mpsc::channel::<Appended>(ACK_QUEUE);
        let fetching = async {
            // Moved in: dropped when this half ends, which ends the
            // acking half's queue.
            let appended_tx = appended_tx;
            loop {
                if self.journal_is_busy() {
                    self.stats
                        .paused_for_journal
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        () = stop.cancelled() => return Ok(()),
                    }
                    continue;
                }
                // A fetch cut short by the stop leaves its appended events
                // unacked: redelivered after `ack_wait`, stored once.
                let appended = tokio::select! {
                    appended = self.fetch_and_append(&consumer) => appended?,
                    () = stop.cancelled() => return Ok(()),
                };
                let refused = appended.refused.is_some();
                if appended_tx.send(appended).await.is_err() || refused {
                    // The acking half ended with its own error, or acks
                    // what came before the refusal and then reports it.
                    return Ok(());
                }
            }
        };
        let acking = async {
            while let Some(appended) = appended_rx.recv().await {
                if appended.last_seq > 0 {
                    self.journal.wait_durable(appended.last_seq).await?;
                }
                self.record_receipts(&appended.receipts);
                self.stats
                    .ingested
                    .fetch_add(appended.count, Ordering::Relaxed);
                // Every message acked on its own, never `AckPolicy::All`:
                // after a restart a fetch can deliver messages past ones a
                // killed process fetched but never appended, and acking
                // the later ones would ack those too (lost events; seen
                // in the chaos scenario region-primary-lost).
                for message in &appended.to_ack {
                    message
                        .ack()
                        .await
                        .map_err(|e| IngestError::Nats(format!("acking: {e}")))?;
                }
                if let Some(error) = appended.refused {
                    return Err(error.into());
                }
            }
            Ok(())
        };
        tokio::pin!(fetching, acking);
        tokio::select! {
            // The fetching half ended (a failure, a refusal it queued, the
            // stop): the acking half still acks what is queued, within
            // `ACK_DRAIN`. Left unacked, up to `max_ack_pending` messages
            // would hold the next consumer's deliveries for `ack_wait`.
            fetched = &mut fetching => {
                let acked = tokio::time::timeout(ACK_DRAIN, &mut acking)
                    .await
                    .unwrap_or_else(|_| Err(IngestError::Nats("acking what was appended timed out".into())));
                match fetched {
                    Err(error) => Err(error),
                    Ok(()) if stop.is_cancelled() => Ok(()),
                    Ok(()) => match acked {
                        Err(error) => Err(error),
                        Ok(()) => Err(IngestError::Nats("the ingest's fetching stopped".into())),
                    },
                }
            }
            // The acking half failed (NATS, the journal): the fetching half
            // is dropped; what it appended is redelivered and stored once.
            acked = &mut acking => match acked {
                Err(error) => Err(error),
                Ok(()) => Err(IngestError::Nats("the ingest's acking stopped".into())),
            },
        }
    }

    fn journal_is_busy(&self) -> bool {
        let stats = self.journal.stats();
        stats.stage_used_bytes.saturating_mul(2) > stats.stage_capacity_bytes
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, IngestError> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| IngestError::Nats(format!("stream {}: {e}", self.config.stream)))?;
        stream
            .get_or_create_consumer(
                &self.config.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    filter_subject: "events.>".to_owned(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    deliver_policy: consumer::DeliverPolicy::All,
                    // Bounded: JetStream holds the rest until these are acked.
                    max_ack_pending: (self.config.batch as i64).saturating_mul(4),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| IngestError::Nats(format!("consumer {}: {e}", self.config.consumer)))
    }

    /// One fetch, appended to the journal (not yet durable, not acked).
    async fn fetch_and_append(
        &self,
        consumer: &consumer::PullConsumer,
    ) -> Result<Appended, IngestError> {
        let mut messages = consumer
            .fetch()
            .max_messages(self.config.batch.max(1))
            .expires(self.config.fetch_wait)
            .messages()
            .await
            .map_err(|e| IngestError::Nats(format!("fetching: {e}")))?;
        let mut appended = Appended::default();
        let mut received = 0;
        let mut pending = 0;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| IngestError::Nats(format!("receiving: {e}")))?;
            received += 1;
            if let Ok(info) = message.info() {
                pending = info.pending;
                self.stats.pending.store(info.pending, Ordering::Relaxed);
            }
            let event = std::str::from_utf8(&message.payload)
                .map_err(|e| e.to_string())
                .and_then(|text| Event::from_json(text).map_err(|e| e.to_string()))
                .and_then(|event| matches_subject(event, message.subject.as_str()));
            let event = match event {
                Ok(event) => event,
                Err(reason) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %message.subject, %reason,
                        "a message on the events stream is not an event of its subject; dropped");
                    message
                        .ack_with(AckKind::Term)
                        .await
                        .map_err(|e| IngestError::Nats(format!("terminating: {e}")))?;
                    continue;
                }
            };
            if event.region == self.config.own_region {
                self.stats.own_skipped.fetch_add(1, Ordering::Relaxed);
                appended.to_ack.push(message);
                continue;
            }
            let relay_seq = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(RELAY_SEQ_HEADER))
                .and_then(|value| value.as_str().parse::<u64>().ok());
            match self.journal.append(&event) {
                Ok(seq) => {
                    appended.last_seq = seq;
                    appended.count += 1;
                    appended.to_ack.push(message);
                    if let Some(relay_seq) = relay_seq {
                        appended.receipts.push((event.region, relay_seq));
                    }
                }
                Err(error) => {
                    // Not acked: JetStream redelivers it (and the rest of
                    // this fetch) after ack_wait.
                    appended.refused = Some(error);
                    break;
                }
            }
        }
        let caught_up = received < self.config.batch.max(1) && pending == 0;
        self.stats.caught_up.store(caught_up, Ordering::Relaxed);
        Ok(appended)
    }
}

/// `event` if its region and type are those of `subject`. NATS permits a
/// region's credentials to publish only `events.<region>.>`; this check
/// makes that bind the events' contents too, so one region's credentials
/// cannot speak for another region.
fn matches_subject(event: Event, subject: &str) -> Result<Event, String> {
    let expected = crate::subject(&event.region, event.event_type());
    if subject == expected {
        Ok(event)
    } else {
        Err(format!(
            "its region {:?} and type make the subject {expected}",
            event.region
        ))
    }
}

/// Fetches appended to the journal and waiting to be acked: each is a
/// batch of messages, so the queue holds at most this many batches (with
/// `max_ack_pending` = 4 batches, JetStream sends no more anyway).
const ACK_QUEUE: usize = 4;

/// Longest wait, once the fetching half ended, for the queued fetches to
/// be made durable and acked (milliseconds, unless the disk stalls; short,
/// because a graceful stop of the pool waits for it).
const ACK_DRAIN: Duration = Duration::from_secs(1);

/// One fetch's messages once their events are in the journal.
#[derive(Default)]
struct Appended {
    /// The journal seq of the last event appended (0: none).
    last_seq: u64,
    /// Events appended.
    count: u64,
    /// Acked once `last_seq` is durable.
    to_ack: Vec<jetstream::Message>,
    /// The journal refused an event: the fetch stopped there.
    refused: Option<JournalError>,
    /// (region, relay journal seq) of each event appended, for the
    /// receipts once they are durable.
    receipts: Vec<(String, u64)>,
}
