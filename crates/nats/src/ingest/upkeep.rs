//! What the ingest does beside consuming: the receipts of every region
//! (recorded once durable, kept in a file, answered to the relays'
//! publishers) and a watch on the consumer, which JetStream can leave
//! standing short of the stream's end after leader elections.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::Ingest;
use crate::receipts::{ReceiptBook, RECEIPT_SUBJECTS};

/// How often a changed book is written to the receipts file. A crash loses
/// at most this much of it: the relays then send those events again, and
/// the journal stores them once.
const RECEIPTS_EVERY: Duration = Duration::from_secs(1);

/// Checks in a row the consumer must stand still short of the stream's end
/// before its leader is asked to step down.
const STALL_CHECKS: u32 = 2;

impl Ingest {
    /// The book from the receipts file, if there is one.
    pub(super) async fn load_receipts(&self) {
        let Some(path) = &self.config.receipts else {
            return;
        };
        match tokio::fs::read(path).await {
            Ok(bytes) => match ReceiptBook::from_json(&bytes) {
                Ok(book) => *self.lock_book() = book,
                Err(error) => tracing::error!(path = %path.display(), %error,
                    "the receipts file is unreadable: a new book starts (gaps of the relays' events from before now go unnoticed); it is overwritten within a second, copy it now to keep it"),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::error!(path = %path.display(), %error,
                "the receipts file cannot be read: a new book starts"),
        }
    }

    fn lock_book(&self) -> std::sync::MutexGuard<'_, ReceiptBook> {
        // A panic while holding it cannot leave the book half-updated in a
        // way that loses events: at worst a gap is reported twice.
        self.book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records events now durable in the journal.
    pub(super) fn record_receipts(&self, receipts: &[(String, u64)]) {
        if receipts.is_empty() {
            return;
        }
        let mut book = self.lock_book();
        for (region, seq) in receipts {
            if book.record(region, *seq) {
                tracing::info!(%region, seq, "receipts of a region start (its earlier events are taken as delivered)");
            }
        }
    }

    /// Answers `tbg.receipts.<region>` until `stop`, resubscribing after a
    /// NATS failure.
    pub(super) async fn answer_receipts(&self, stop: &CancellationToken) {
        let client = self.js.client();
        while !stop.is_cancelled() {
            let mut requests = match client.subscribe(RECEIPT_SUBJECTS).await {
                Ok(requests) => requests,
                Err(error) => {
                    tracing::debug!(%error, "receipt requests: subscribing failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_max) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            loop {
                let request = tokio::select! {
                    request = requests.next() => request,
                    () = stop.cancelled() => return,
                };
                let Some(request) = request else { break };
                let Some(reply) = request.reply else { continue };
                let region = request
                    .subject
                    .as_str()
                    .strip_prefix("tbg.receipts.")
                    .unwrap_or_default();
                let caught_up = self.stats.caught_up.load(Ordering::Relaxed);
                let receipt = self.lock_book().receipt(region, caught_up);
                let answer = serde_json::to_vec(&receipt).unwrap_or_default();
                if client.publish(reply, answer.into()).await.is_ok() {
                    self.stats.receipts_answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes the book to the receipts file whenever it changed, and once
    /// more at the stop.
    pub(super) async fn keep_receipts(&self, stop: &CancellationToken) {
        let Some(path) = self.config.receipts.clone() else {
            return;
        };
        let mut written = self.lock_book().to_json();
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(RECEIPTS_EVERY) => false,
                () = stop.cancelled() => true,
            };
            let now = self.lock_book().to_json();
            if now != written {
                let file = path.clone();
                let bytes = now.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    tbg_journal::cursor::write_atomically(&file, &bytes)
                })
                .await;
                match stored {
                    Ok(Ok(())) => written = now,
                    Ok(Err(error)) => tracing::warn!(path = %path.display(), %error,
                        "writing the receipts file failed; retried in a second"),
                    Err(error) => tracing::warn!(%error, "the receipts writer task failed"),
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Every `watch_interval`: a consumer with nothing pending, nothing
    /// unacked, and yet a message in the stream past its last delivery, for
    /// [`STALL_CHECKS`] checks in a row without moving, has its leader
    /// stepped down (a new leader delivers from the ack floor).
    pub(super) async fn watch_for_stall(&self, stop: &CancellationToken) {
        let mut stalled_at: Option<(u64, u32)> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.watch_interval) => {}
                () = stop.cancelled() => return,
            }
            let Some(delivered) = self.stalled_short_of_the_end().await else {
                stalled_at = None;
                continue;
            };
            let checks = match stalled_at {
                Some((seq, checks)) if seq == delivered => checks + 1,
                _ => 1,
            };
            stalled_at = Some((delivered, checks));
            if checks < STALL_CHECKS {
                continue;
            }
            stalled_at = None;
            self.stats.stall_stepdowns.fetch_add(1, Ordering::Relaxed);
            let subject = format!(
                "CONSUMER.LEADER.STEPDOWN.{}.{}",
                self.config.stream, self.config.consumer
            );
            let answer: Result<Value, _> = self.js.request(subject, &json!({})).await;
            match answer {
                Ok(answer) if answer.get("error").is_none() => tracing::warn!(
                    delivered, consumer = %self.config.consumer,
                    "the consumer stood still short of the stream's end: its leader was stepped down"),
                Ok(answer) => tracing::warn!(
                    delivered, consumer = %self.config.consumer, error = %answer["error"],
                    "the consumer stands still short of the stream's end and its leader could not step down"),
                Err(error) => tracing::warn!(delivered, %error,
                    "the consumer stands still short of the stream's end; asking its leader to step down failed"),
            }
        }
    }

    /// The consumer's last delivered stream seq when it claims nothing is
    /// pending or unacked while the stream holds a message past it.
    async fn stalled_short_of_the_end(&self) -> Option<u64> {
        let mut stream = self.js.get_stream(&self.config.stream).await.ok()?;
        let consumer = stream.consumer_info(&self.config.consumer).await.ok()?;
        if consumer.num_pending > 0 || consumer.num_ack_pending > 0 {
            return None;
        }
        let delivered = consumer.delivered.stream_sequence;
        let last = stream.info().await.ok()?.state.last_sequence;
        if last <= delivered {
            return None;
        }
        // Deleted or filtered-out messages at the end are no stall.
        let next: Value = self
            .js
            .request(
                format!("STREAM.MSG.GET.{}", self.config.stream),
                &json!({ "seq": delivered + 1, "next_by_subj": "events.>" }),
            )
            .await
            .ok()?;
        next.get("message").map(|_| delivered)
    }
}
