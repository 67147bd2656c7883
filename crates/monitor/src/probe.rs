//! One poll of one region, and of NATS.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// A region's state as the monitor saw it at its last poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    /// Not polled yet.
    Unknown,
    /// `/health` answered 200: the pool is ready.
    Up,
    /// `/health` answered, but not ready (no node, stale template, a
    /// failing journal: its report says which).
    Degraded,
    /// No answer within the timeout, or not HTTP.
    Down,
}

/// What one poll of a region found.
#[derive(Debug, Clone, Serialize)]
pub struct RegionProbe {
    pub state: RegionState,
    /// `/health`'s status code, when it answered.
    pub http_status: Option<u16>,
    /// Why it is not up, in words.
    pub error: Option<String>,
    /// `primary` or `relay` (from its `/status`), when it says.
    pub mode: Option<String>,
    /// A relay's template source: `primary`, `local` or `starting`.
    pub source: Option<String>,
    /// The height the region's miners are mining.
    pub template_height: Option<u64>,
    pub miners: Option<u64>,
    /// The region's own `/health` report, when it answered one.
    pub health: Option<Value>,
}

impl RegionProbe {
    pub(crate) fn unknown() -> RegionProbe {
        RegionProbe {
            state: RegionState::Unknown,
            http_status: None,
            error: Some("not polled yet".to_owned()),
            mode: None,
            source: None,
            template_height: None,
            miners: None,
            health: None,
        }
    }

    fn down(error: String) -> RegionProbe {
        RegionProbe {
            state: RegionState::Down,
            error: Some(error),
            ..RegionProbe::unknown()
        }
    }
}

/// `GET <url>/health`, then `/status` for what the region is doing.
pub(crate) async fn probe_region(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> RegionProbe {
    let base = url.trim_end_matches('/');
    let response = match client.get(format!("{base}/health")).send().await {
        Ok(response) => response,
        Err(error) => return RegionProbe::down(describe(&error)),
    };
    let code = response.status().as_u16();
    let health: Option<Value> = response.json().await.ok();
    let (state, error) = match code {
        200 => (RegionState::Up, None),
        503 => (
            RegionState::Degraded,
            Some(format!(
                "not ready: {}",
                health
                    .as_ref()
                    .map(not_ready_reasons)
                    .unwrap_or_else(|| "no report".to_owned())
            )),
        ),
        other => (
            RegionState::Down,
            Some(format!("/health answered HTTP {other}")),
        ),
    };
    let mut request = client.get(format!("{base}/status"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut error = error;
    let status: Option<Value> = match request.send().await {
        Ok(response) if response.status().is_success() => response.json().await.ok(),
        Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
            // Up or not, the operator must learn why the details are missing.
            error.get_or_insert_with(|| {
                "/status answered 401: give the monitor the region's metrics.token (TBG_METRICS_TOKEN)".to_owned()
            });
            None
        }
        _ => None,
    };
    let field = |path: &[&str]| -> Option<&Value> {
        let mut value = status.as_ref()?;
        for key in path {
            value = value.get(key)?;
        }
        Some(value)
    };
    RegionProbe {
        state,
        http_status: Some(code),
        error,
        mode: field(&["region", "mode"])
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| status.as_ref().map(|_| "primary".to_owned())),
        source: field(&["region", "relay_link", "source"])
            .and_then(Value::as_str)
            .map(str::to_owned),
        template_height: field(&["pool", "template_height"]).and_then(Value::as_u64),
        miners: field(&["pool", "miners"]).and_then(Value::as_u64),
        health,
    }
}

/// The reasons of a pool's `/health` report, in one line.
fn not_ready_reasons(report: &Value) -> String {
    let reasons: Vec<&str> = report
        .get("reasons")
        .and_then(Value::as_array)
        .map(|reasons| reasons.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        "see the region's /health".to_owned()
    } else {
        reasons.join("; ")
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "no answer in time".to_owned()
    } else if error.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        error.to_string()
    }
}

/// NATS as the monitor saw it.
#[derive(Debug, Clone, Serialize)]
pub struct NatsProbe {
    /// `up`, `down`, or `not_configured`.
    pub state: &'static str,
    pub error: Option<String>,
    /// Messages in the events stream.
    pub stream_messages: Option<u64>,
    /// Messages the primary's consumer has not been delivered yet.
    pub consumer_pending: Option<u64>,
}

impl NatsProbe {
    pub(crate) fn not_configured() -> NatsProbe {
        NatsProbe {
            state: "not_configured",
            error: None,
            stream_messages: None,
            consumer_pending: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state != "down"
    }
}

/// The stream's and the consumer's info, within `timeout`.
pub(crate) async fn probe_nats(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) -> NatsProbe {
    let probe = async {
        let mut stream = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let messages = stream
            .info()
            .await
            .map_err(|e| format!("stream info: {e}"))?
            .state
            .messages;
        // The consumer exists once the primary has started consuming.
        let pending = match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer)
            .await
        {
            Ok(mut consumer) => consumer.info().await.ok().map(|info| info.num_pending),
            Err(_) => None,
        };
        Ok::<_, String>((messages, pending))
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok((messages, pending))) => NatsProbe {
            state: "up",
            error: None,
            stream_messages: Some(messages),
            consumer_pending: pending,
        },
        Ok(Err(error)) => NatsProbe {
            state: "down",
            error: Some(error),
            stream_messages: None,
            consumer_pending: None,
        },
        Err(_) => NatsProbe {
            state: "down",
            error: Some("no answer in time".to_owned()),
            stream_messages: None,
            consumer_pending: None,
        },
    }
}
