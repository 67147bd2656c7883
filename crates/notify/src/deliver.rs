//! One endpoint's delivery loop: read the journal after the endpoint's
//! cursor, turn events into notices, POST each until the endpoint takes it
//! (2xx), then move the cursor. An endpoint that is down holds up only its
//! own notices; the pool never waits for any of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tbg_journal::{Cursor, JournalReader};
use tokio_util::sync::CancellationToken;

use crate::notice::{notice_of, Notice, OfflineTracker};
use crate::sign::SigningKey;
use crate::NotifyError;

/// Workers one endpoint follows for `worker_offline` at most.
pub const MAX_TRACKED_WORKERS: usize = 100_000;

/// One endpoint, as configured.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name in logs and metrics (the URL may hold a token).
    pub name: String,
    pub url: String,
    pub key: SigningKey,
    /// Notice types wanted; empty: all.
    pub kinds: Vec<String>,
    /// Addresses wanted; empty: all.
    pub addresses: Vec<String>,
}

impl Endpoint {
    fn wants_kind(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }

    fn wants_user(&self, user: &str) -> bool {
        self.addresses.is_empty() || self.addresses.iter().any(|a| a == user)
    }

    fn wants(&self, notice: &Notice) -> bool {
        self.wants_kind(notice.kind) && self.wants_user(&notice.user)
    }
}

/// What every endpoint shares.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub journal: PathBuf,
    /// Cursor files go here, one per endpoint name.
    pub cursor_dir_prefix: PathBuf,
    pub worker_offline_after_s: u64,
    pub retry_max: Duration,
    pub timeout: Duration,
    /// Journal records per read.
    pub batch: usize,
    /// How often an endpoint with nothing new looks again.
    pub idle_poll: Duration,
}

/// One endpoint's counts, for metrics and tests.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub delivered: AtomicU64,
    /// Attempts that failed (no answer, an error status); each is retried.
    pub failed_attempts: AtomicU64,
    /// Unix seconds since which the notice being retried waits; 0: none.
    pub waiting_since: AtomicU64,
    pub cursor: AtomicU64,
}

pub(crate) fn cursor_path(settings: &DeliverySettings, name: &str) -> PathBuf {
    let mut path = settings.cursor_dir_prefix.clone().into_os_string();
    path.push(format!(".webhook-{name}.cursor"));
    PathBuf::from(path)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) struct Delivery {
    pub(crate) endpoint: Endpoint,
    pub(crate) settings: DeliverySettings,
    pub(crate) client: reqwest::Client,
    pub(crate) stats: Arc<EndpointStats>,
    /// Cancelled when the pool has stopped: deliver what is left, then end.
    pub(crate) drain: CancellationToken,
}

impl Delivery {
    pub(crate) async fn run(self, stop: CancellationToken) -> Result<(), NotifyError> {
        let reader = Arc::new(JournalReader::open(&self.settings.journal)?);
        let mut cursor = Cursor::open(&cursor_path(&self.settings, &self.endpoint.name))?;
        let mut offline =
            OfflineTracker::new(self.settings.worker_offline_after_s, MAX_TRACKED_WORKERS);
        if offline.enabled() && self.endpoint.wants_kind("worker_offline") {
            self.seed_workers(&reader, cursor.seq(), &mut offline)
                .await?;
        }
        self.stats.cursor.store(cursor.seq(), Ordering::Relaxed);
        let read = reader.clone();
        let first = tokio::task::spawn_blocking(move || read.first_seq())
            .await
            .map_err(|e| NotifyError::Task(e.to_string()))??;
        if cursor.seq() > 0 && first > cursor.seq() + 1 {
            tracing::warn!(webhook = %self.endpoint.name, cursor = cursor.seq(), journal_first_seq = first,
                "the journal's retention removed events this webhook had not read: their notices are lost");
        }
        let mut last_store = Instant::now();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let (after, limit) = (cursor.seq(), self.settings.batch.max(1));
            let read = reader.clone();
            let records = tokio::task::spawn_blocking(move || read.read_after(after, limit))
                .await
                .map_err(|e| NotifyError::Task(e.to_string()))??;
            let caught_up = records.len() < limit;
            let mut moved = false;
            let mut journal_clock = 0.0f64;
            for record in &records {
                // A record that does not decode is the journal's to report
                // (the collector does); it is no notice.
                if let Ok(event) = record.event() {
                    journal_clock = journal_clock.max(event.ts);
                    if self.endpoint.wants_kind("worker_offline") {
                        offline.observe(&event, |user| self.endpoint.wants_user(user));
                    }
                    if let Some(notice) = notice_of(&event).filter(|n| self.endpoint.wants(n)) {
                        if !self.deliver(&notice, &stop).await {
                            return Ok(());
                        }
                        // Delivered: never again, even after a crash now.
                        cursor.store(record.seq)?;
                        continue;
                    }
                }
                cursor.advance(record.seq);
            }
            // Offline is judged by the journal's time while catching up, by
            // the clock once the journal is read to its end.
            let now = if caught_up { unix_now() } else { journal_clock };
            for notice in offline.due(now) {
                if !self.deliver(&notice, &stop).await {
                    return Ok(());
                }
                moved = true;
            }
            // Delivered notices moved the cursor at once; a run of other
            // events moves it at most once a second.
            if cursor.pending() && (moved || last_store.elapsed() >= Duration::from_secs(1)) {
                cursor.commit()?;
                last_store = Instant::now();
                self.stats.cursor.store(cursor.seq(), Ordering::Relaxed);
            }
            if caught_up {
                // Finishing (the pool stopped): the journal has all it will
                // get, and all of it is delivered.
                if self.drain.is_cancelled() {
                    if cursor.pending() {
                        cursor.commit()?;
                    }
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep(self.settings.idle_poll) => {}
                    () = self.drain.cancelled() => {}
                    () = stop.cancelled() => {
                        if cursor.pending() { cursor.commit()?; }
                        return Ok(());
                    }
                }
            }
        }
    }

    /// After a restart: the shares of the last `worker_offline_after_s`
    /// before the cursor, so a worker that went quiet meanwhile is still
    /// reported (with the same id as before, if it already was).
    async fn seed_workers(
        &self,
        reader: &Arc<JournalReader>,
        cursor: u64,
        offline: &mut OfflineTracker,
    ) -> Result<(), NotifyError> {
        if cursor == 0 {
            return Ok(());
        }
        let window = self.settings.worker_offline_after_s as f64 * 2.0;
        let read = reader.clone();
        let start = tokio::task::spawn_blocking(move || read.seq_at_time(unix_now() - window))
            .await
            .map_err(|e| NotifyError::Task(e.to_string()))??;
        let mut after = start.saturating_sub(1);
        while after < cursor {
            let read = reader.clone();
            let limit = self.settings.batch.max(1);
            let records = tokio::task::spawn_blocking(move || read.read_after(after, limit))
                .await
                .map_err(|e| NotifyError::Task(e.to_string()))??;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            for record in records.iter().filter(|r| r.seq <= cursor) {
                if let Ok(event) = record.event() {
                    offline.observe(&event, |user| self.endpoint.wants_user(user));
                }
            }
            after = last;
        }
        Ok(())
    }

    /// POSTs until the endpoint answers 2xx; false when stopped first.
    async fn deliver(&self, notice: &Notice, stop: &CancellationToken) -> bool {
        let body = notice.body();
        let first_try = unix_now();
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let timestamp = unix_now() as i64;
            let signature = self.endpoint.key.sign(&notice.id, timestamp, &body);
            let sent = self
                .client
                .post(&self.endpoint.url)
                .timeout(self.settings.timeout)
                .header("content-type", "application/json")
                .header("user-agent", concat!("tbg/", env!("CARGO_PKG_VERSION")))
                .header("webhook-id", &notice.id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => None,
                Ok(answer) => Some(format!("answered {}", answer.status())),
                // Never the URL: it may hold a token.
                Err(error) => Some(describe(&error)),
            };
            let Some(failure) = failure else {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.stats.waiting_since.store(0, Ordering::Relaxed);
                tracing::info!(webhook = %self.endpoint.name, kind = notice.kind, id = %notice.id,
                    attempt, "webhook delivered");
                return true;
            };
            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            self.stats
                .waiting_since
                .store(first_try as u64, Ordering::Relaxed);
            tracing::warn!(webhook = %self.endpoint.name, kind = notice.kind, id = %notice.id,
                attempt, retry_in = ?backoff, %failure, "webhook not delivered; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return false,
            }
            backoff = (backoff * 2).min(self.settings.retry_max);
        }
    }
}

/// A reqwest error without its URL.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
