//! A webhook receiver for tests: a real HTTP server that verifies each
//! notice's signature as the Standard Webhooks specification says, with
//! the HMAC crate directly (not the notifier's own signing code).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret the receiver checks with (as `TBG_WEBHOOK_<N>_SECRET` text).
pub const KEY: &[u8] = b"a receiver's secret, 32 bytes ok";

/// One notice the receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: String,
    pub body: serde_json::Value,
    /// Unix seconds at receipt.
    pub at: f64,
}

/// A receiver that answers `failures` requests with 503 before it takes
/// any, and refuses (401) any request whose signature does not verify.
#[derive(Clone, Default)]
pub struct Receiver {
    pub received: Arc<Mutex<Vec<Received>>>,
    failures_left: Arc<Mutex<u32>>,
    /// Requests, refused ones included.
    pub attempts: Arc<Mutex<u32>>,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The Standard Webhooks check: id, timestamp within 5 minutes, a `v1,`
/// signature over `id.timestamp.body`.
pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(String, i64), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {name}"))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?
        .parse()
        .map_err(|_| "bad timestamp")?;
    if (unix_now() as i64 - timestamp).abs() > 300 {
        return Err("timestamp too far from now (replay?)".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signatures = header("webhook-signature")?;
    if !signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    {
        return Err(format!("signature {signatures} does not verify"));
    }
    Ok((id, timestamp))
}

impl Receiver {
    /// Serves `POST /hook/secret-token` on a free loopback port.
    pub async fn start(failures: u32) -> (Receiver, SocketAddr, tokio::task::JoinHandle<()>) {
        let receiver = Receiver {
            failures_left: Arc::new(Mutex::new(failures)),
            ..Receiver::default()
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook/secret-token",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    *state.attempts.lock().unwrap() += 1;
                    {
                        let mut left = state.failures_left.lock().unwrap();
                        if *left > 0 {
                            *left -= 1;
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    let Ok((id, _)) = verify(&headers, &body) else {
                        return StatusCode::UNAUTHORIZED;
                    };
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    state.received.lock().unwrap().push(Received {
                        id,
                        kind: body["type"].as_str().unwrap_or_default().to_owned(),
                        body,
                        at: unix_now(),
                    });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (receiver, addr, task)
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// Waits for `count` notices of `kind` (panics after `timeout`).
    pub async fn wait_for(&self, kind: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.of_kind(kind);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {count} {kind}; have {:?}",
                self.received.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
