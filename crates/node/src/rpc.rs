//! One node: JSON-RPC 1.0 over HTTP, the way `bitcoin-cli` talks to Core.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::endpoint::{NodeAuth, NodeEndpoint};

/// Receives the latency of every RPC call, so metrics can be added by the
/// binary without this crate knowing about them. Must not block.
pub trait RpcObserver: Send + Sync + 'static {
    /// `ok` is false when the call failed for any reason (including an RPC
    /// error answer such as `-32601`).
    fn on_rpc_call(&self, node_url: &str, method: &str, elapsed: Duration, ok: bool);
}

/// Why one RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Connection refused, reset, DNS failure or timeout.
    #[error("cannot reach node {url} for {method}: {reason}")]
    Transport {
        url: String,
        method: String,
        reason: String,
        timed_out: bool,
    },
    /// HTTP 401/403: wrong user/password or cookie.
    #[error("node {url} refused the rpc credentials (http {status})")]
    Auth { url: String, status: u16 },
    /// The cookie file could not be read or has no `user:password` line.
    #[error("cannot use rpc cookie file {}: {reason}", path.display())]
    Cookie { path: PathBuf, reason: String },
    /// Core answered with `{"error": {"code", "message"}}`; codes are Core's
    /// own (`-32601` method not found, `-22` block decode failed, ...).
    #[error("node {url} answered {method} with rpc error {code}: {message}")]
    Rpc {
        url: String,
        method: String,
        code: i64,
        message: String,
    },
    /// An HTTP error status without a JSON-RPC body.
    #[error("node {url} answered {method} with http {status}: {body}")]
    Http {
        url: String,
        method: String,
        status: u16,
        body: String,
    },
    /// The body is not JSON-RPC, or `result` does not have the expected type.
    #[error("node {url} answered {method} with bad json: {reason}")]
    BadJson {
        url: String,
        method: String,
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build http client: {0}")]
    Client(String),
}

impl RpcError {
    /// Core's RPC error code, if the node answered with one.
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RpcResponse {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Value,
}

#[derive(Deserialize)]
struct RpcErrorBody {
    code: i64,
    message: String,
}

/// Longest part of a non-JSON error body kept in [`RpcError::Http`].
const MAX_BODY_IN_ERROR: usize = 200;

/// A JSON-RPC client for one Bitcoin Core node.
pub struct RpcClient {
    endpoint: NodeEndpoint,
    request_url: String,
    http: reqwest::Client,
    next_id: AtomicU64,
    /// `(user, password)` read from the cookie file; `None` until first read.
    cookie: Mutex<Option<(String, String)>>,
    observer: Option<Arc<dyn RpcObserver>>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// `timeout` bounds each whole request (connect + answer).
    pub fn new(endpoint: NodeEndpoint, timeout: Duration) -> Result<RpcClient, RpcError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RpcError::Client(e.to_string()))?;
        Ok(RpcClient {
            request_url: endpoint.request_url(),
            endpoint,
            http,
            next_id: AtomicU64::new(1),
            cookie: Mutex::new(None),
            observer: None,
        })
    }

    /// Report every call's latency to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn RpcObserver>) -> RpcClient {
        self.observer = Some(observer);
        self
    }

    pub fn endpoint(&self) -> &NodeEndpoint {
        &self.endpoint
    }

    /// Calls `method` with positional `params` (a JSON array; `null` means
    /// none) and decodes `result` as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        let started = Instant::now();
        let outcome = self.call_with_cookie_retry(method, params).await;
        let elapsed = started.elapsed();
        if let Some(observer) = &self.observer {
            observer.on_rpc_call(&self.endpoint.url, method, elapsed, outcome.is_ok());
        }
        tracing::debug!(node = %self.endpoint.url, method, ?elapsed, ok = outcome.is_ok(), "rpc call");
        let result = outcome?;
        serde_json::from_value(result).map_err(|e| RpcError::BadJson {
            url: self.endpoint.url.clone(),
            method: method.to_owned(),
            reason: format!("unexpected result type: {e}"),
        })
    }

    async fn call_with_cookie_retry(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let params = if params.is_null() { json!([]) } else { params };
        match self.call_once(method, &params, false).await {
            // Core writes a new cookie on every restart: re-read it once.
            Err(RpcError::Auth { .. }) if matches!(self.endpoint.auth, NodeAuth::Cookie(_)) => {
                self.call_once(method, &params, true).await
            }
            other => other,
        }
    }

    async fn credentials(&self, reread_cookie: bool) -> Result<(String, String), RpcError> {
        match &self.endpoint.auth {
            NodeAuth::UserPass { user, pass } => Ok((user.clone(), pass.clone())),
            NodeAuth::Cookie(path) => {
                if !reread_cookie {
                    if let Some(cached) = self.cookie.lock().clone() {
                        return Ok(cached);
                    }
                }
                let pair = read_cookie(path).await?;
                *self.cookie.lock() = Some(pair.clone());
                Ok(pair)
            }
        }
    }

    async fn call_once(
        &self,
        method: &str,
        params: &Value,
        reread_cookie: bool,
    ) -> Result<Value, RpcError> {
        let (user, pass) = self.credentials(reread_cookie).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let url = &self.endpoint.url;
        let response = self
            .http
            .post(&self.request_url)
            .basic_auth(user, Some(pass))
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(url, method, &e))?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RpcError::Auth {
                url: url.clone(),
                status,
            });
        }
        let text = response
            .text()
            .await
            .map_err(|e| transport_error(url, method, &e))?;
        // Core answers RPC errors with HTTP 500 (404 for an unknown method)
        // and a JSON-RPC body, so the body decides, not the status.
        let parsed: RpcResponse = match serde_json::from_str(&text) {
            Ok(parsed) => parsed,
            Err(_) if status >= 400 => {
                return Err(RpcError::Http {
                    url: url.clone(),
                    method: method.to_owned(),
                    status,
                    body: truncate(&text, MAX_BODY_IN_ERROR),
                });
            }
            Err(e) => {
                return Err(RpcError::BadJson {
                    url: url.clone(),
                    method: method.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        if !parsed.error.is_null() {
            let error: RpcErrorBody =
                serde_json::from_value(parsed.error).map_err(|e| RpcError::BadJson {
                    url: url.clone(),
                    method: method.to_owned(),
                    reason: format!("bad error object: {e}"),
                })?;
            return Err(RpcError::Rpc {
                url: url.clone(),
                method: method.to_owned(),
                code: error.code,
                message: error.message,
            });
        }
        Ok(parsed.result)
    }
}

fn transport_error(url: &str, method: &str, error: &reqwest::Error) -> RpcError {
    // reqwest's Display hides the cause ("error sending request"): add it.
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    RpcError::Transport {
        url: url.to_owned(),
        method: method.to_owned(),
        reason,
        timed_out: error.is_timeout(),
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

async fn read_cookie(path: &Path) -> Result<(String, String), RpcError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| RpcError::Cookie {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let line = text.lines().next().unwrap_or_default().trim();
    match line.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok((user.to_owned(), pass.to_owned())),
        _ => Err(RpcError::Cookie {
            path: path.to_owned(),
            reason: "expected a `user:password` line".to_owned(),
        }),
    }
}
