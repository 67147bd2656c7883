//! The JetStream stream every region publishes to: created (or found) at
//! start, waited for while a cluster elects its leader.

use std::time::Duration;

use async_nats::jetstream::{self, context::CreateStreamErrorKind, stream};
use tokio_util::sync::CancellationToken;

/// The stream every region publishes to, as the reference system had it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub name: String,
    pub replicas: usize,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> StreamSettings {
        StreamSettings {
            name: "EVENTS".to_owned(),
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Why the stream could not be created or found.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No answer in time, no JetStream responder, a connection down: the
    /// cluster is starting, electing or unreachable. Retrying mends it.
    #[error("the events stream: {0} (NATS starting, electing its leader, or unreachable?)")]
    NotReady(String),
    /// JetStream answered and refused (another stream holds `events.>`, the
    /// replicas exceed the cluster, an account limit): an operator's fix.
    #[error("the events stream: JetStream refused it ({code}: {description})")]
    Refused { code: u64, description: String },
}

/// Creates the stream (file storage, subjects `events.>`) or checks the one
/// there; an existing stream keeps its settings (changing them is an
/// operator's `nats stream edit`).
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(), StreamError> {
    let create = js.get_or_create_stream(stream::Config {
        name: settings.name.clone(),
        subjects: vec!["events.>".to_owned()],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        duplicate_window: settings.duplicate_window,
        ..stream::Config::default()
    });
    // A request sent while a cluster elects its metadata leader (at boot,
    // after a partition heals) gets no answer at all: ask again soon
    // rather than wait out the client's 10 s request timeout.
    match tokio::time::timeout(STREAM_REQUEST_TIMEOUT, create).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => match error.kind() {
            // 503 / 10008: JetStream temporarily unavailable (a leader
            // election): not a refusal.
            CreateStreamErrorKind::JetStream(api) if api.code() == 503 => {
                Err(StreamError::NotReady(api.to_string()))
            }
            CreateStreamErrorKind::JetStream(api) => Err(StreamError::Refused {
                code: api.error_code().0,
                description: api.to_string(),
            }),
            _ => Err(StreamError::NotReady(error.to_string())),
        },
        Err(_) => Err(StreamError::NotReady(format!(
            "no answer within {STREAM_REQUEST_TIMEOUT:?}"
        ))),
    }
}

/// How long [`ensure_stream`] waits for JetStream's answer.
const STREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// [`ensure_stream`] until it succeeds (true) or `stop` (false). A cluster
/// not ready yet is logged as a warning; a refusal as an error that names
/// the fix, and still retried: the operator mends NATS, not us, and the
/// journal keeps every event meanwhile.
pub async fn wait_for_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(250);
    loop {
        match ensure_stream(js, settings).await {
            Ok(()) => return true,
            Err(error @ StreamError::NotReady(_)) => {
                tracing::warn!(%error, retry_in = ?backoff, "NATS: the events stream is not ready");
            }
            Err(error @ StreamError::Refused { .. }) => {
                tracing::error!(%error, retry_in = ?backoff, stream = %settings.name,
                    "NATS refuses the events stream; if it lasts, check `nats stream ls` and the [nats] settings");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(STREAM_RETRY_MAX);
    }
}

/// Longest wait between two tries: a cluster back from an election is
/// used within this.
const STREAM_RETRY_MAX: Duration = Duration::from_secs(2);
