//! A Stratum V1 connection for the harness: requests with their answer
//! latency, the pool's pushes (jobs, difficulty, reconnect) applied as they
//! arrive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbg_miner::MinerJob;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::MinerStats;

/// A Stratum connection whose reader runs in its own task, so that waiting
/// for a message with a timeout never loses part of a line.
pub struct StratumConn {
    writer: OwnedWriteHalf,
    /// Each message with the time it arrived.
    messages: mpsc::Receiver<(Instant, Value)>,
    reader: tokio::task::JoinHandle<()>,
    next_id: u64,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub difficulty: f64,
    pub job: Option<MinerJob>,
    /// Jobs received since the connection started.
    pub jobs_seen: u64,
    /// Where to record job arrivals, if anywhere.
    pub stats: Option<Arc<MinerStats>>,
}

impl Drop for StratumConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: Value,
    pub error: Value,
    pub latency: Duration,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        self.result == Value::Bool(true)
    }
    /// The reject wording (`[code, "text", null]` or `{message}`).
    pub fn reason(&self) -> String {
        match &self.error {
            Value::Array(parts) => parts
                .get(1)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            Value::Object(map) => map
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            Value::Null => "no error".to_string(),
            other => other.to_string(),
        }
    }
}

impl StratumConn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<StratumConn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        // Bounded: when the harness does not keep up, the reader stops and TCP
        // pushes back on the pool, as a slow miner would.
        let (sender, messages) = mpsc::channel(1024);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if sender.send((Instant::now(), value)).await.is_err() {
                    break;
                }
            }
        });
        Ok(StratumConn {
            writer,
            messages,
            reader,
            next_id: 1,
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            difficulty: 1.0,
            job: None,
            jobs_seen: 0,
            stats: None,
        })
    }

    fn apply_push(&mut self, arrived: Instant, message: &Value) -> Result<(), String> {
        match message.get("method").and_then(Value::as_str) {
            Some("mining.notify") => {
                let job =
                    MinerJob::from_notify_params(message.get("params").unwrap_or(&Value::Null))
                        .map_err(|e| format!("bad job: {e}"))?;
                if let Some(stats) = &self.stats {
                    stats.record_job(arrived, &job.prevhash_hex);
                }
                self.job = Some(job);
                self.jobs_seen += 1;
            }
            Some("mining.set_difficulty") => {
                if let Some(difficulty) = message.pointer("/params/0").and_then(Value::as_f64) {
                    self.difficulty = difficulty;
                }
            }
            Some("client.reconnect") => return Err("the pool asked to reconnect".into()),
            _ => {}
        }
        Ok(())
    }

    /// Next message within `timeout`: `Ok(None)` on timeout, `Err` when closed.
    async fn next_message(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Instant, Value)>, String> {
        match tokio::time::timeout(timeout, self.messages.recv()).await {
            Ok(Some(message)) => Ok(Some(message)),
            Ok(None) => Err("the pool closed the connection".into()),
            Err(_) => Ok(None),
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        let sent = Instant::now();
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let deadline = sent + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((arrived, message)) = self.next_message(left).await? else {
                return Err(format!("no answer to {method} within {timeout:?}"));
            };
            if message.get("method").is_some_and(|m| !m.is_null()) {
                self.apply_push(arrived, &message)?;
                continue;
            }
            if message.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(Answer {
                    result: message.get("result").cloned().unwrap_or(Value::Null),
                    error: message.get("error").cloned().unwrap_or(Value::Null),
                    latency: arrived.saturating_duration_since(sent),
                });
            }
        }
    }

    /// Handles pushes for up to `timeout`, returning early once a job newer
    /// than `jobs_before` arrived.
    pub async fn wait_for_job(
        &mut self,
        jobs_before: u64,
        timeout: Duration,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        while self.jobs_seen <= jobs_before {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if let Some((arrived, message)) = self.next_message(left).await? {
                self.apply_push(arrived, &message)?;
            }
        }
        Ok(true)
    }

    /// subscribe + authorize, then waits for the first job.
    pub async fn handshake(&mut self, username: &str, timeout: Duration) -> Result<(), String> {
        let subscribed = self
            .request("mining.subscribe", json!(["tbg-chaos/1.0"]), timeout)
            .await?;
        let extranonce1 = subscribed
            .result
            .get(1)
            .and_then(Value::as_str)
            .ok_or("subscribe: no extranonce1")?;
        self.extranonce1 = decode_hex(extranonce1).ok_or("subscribe: bad extranonce1")?;
        self.extranonce2_size = subscribed
            .result
            .get(2)
            .and_then(Value::as_u64)
            .ok_or("subscribe: no extranonce2 size")?
            .min(16) as usize;
        let authorized = self
            .request("mining.authorize", json!([username, "x"]), timeout)
            .await?;
        if !authorized.accepted() {
            return Err(format!("authorize refused: {}", authorized.error));
        }
        if self.job.is_none() && !self.wait_for_job(0, timeout).await? {
            return Err("no job after authorize".into());
        }
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 == 1 {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
