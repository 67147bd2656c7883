//! A line-oriented Stratum V1 client: sends requests, matches answers by id,
//! and keeps the server's pushes (notify, set_difficulty, ...) in order.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::transport::{MinerTls, Transport};
use crate::MinerError;

/// The answer to a request: `result` or `error` as the server sent them.
#[derive(Debug, Clone)]
pub struct Reply {
    pub result: Value,
    pub error: Value,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.error.is_null() && !self.result.is_null()
    }
    /// The error's message, for both the `[code, msg, null]` and `{code, message}` shapes.
    pub fn error_message(&self) -> Option<String> {
        match &self.error {
            Value::Null => None,
            Value::Array(parts) => parts.get(1).and_then(Value::as_str).map(str::to_string),
            Value::Object(map) => map
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string),
            other => Some(other.to_string()),
        }
    }
}

/// A TCP connection to `addr` with no Nagle delay, from `local` if given.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    local: Option<IpAddr>,
) -> Result<TcpStream, MinerError> {
    let stream = match local {
        None => TcpStream::connect(addr).await.map_err(MinerError::Io)?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(MinerError::Io)?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(MinerError::Io)?;
            socket.connect(addr).await.map_err(MinerError::Io)?
        }
    };
    stream.set_nodelay(true).map_err(MinerError::Io)?;
    Ok(stream)
}

pub struct StratumClient {
    reader: BufReader<ReadHalf<Transport>>,
    writer: WriteHalf<Transport>,
    /// SHA-256 of the pool's TLS certificate (`None` on plain TCP).
    peer_certificate_sha256: Option<String>,
    next_id: u64,
    /// Server pushes received while waiting for a reply.
    pending: VecDeque<Value>,
    pub timeout: Duration,
}

impl StratumClient {
    pub async fn connect(addr: SocketAddr) -> Result<StratumClient, MinerError> {
        StratumClient::connect_from(addr, None).await
    }

    /// As `connect`, from the local address `local` (which must be one of
    /// this host's): tests of per-source limits use 127.0.0.2 and the like.
    pub async fn connect_from(
        addr: SocketAddr,
        local: Option<IpAddr>,
    ) -> Result<StratumClient, MinerError> {
        StratumClient::connect_with(addr, local, None).await
    }

    /// Over TLS (`stratum+ssl://`) when `tls` is set.
    pub async fn connect_with(
        addr: SocketAddr,
        local: Option<IpAddr>,
        tls: Option<&MinerTls>,
    ) -> Result<StratumClient, MinerError> {
        let stream = Transport::connect(addr, local, tls).await?;
        let peer_certificate_sha256 = stream.peer_certificate_sha256();
        let (read, write) = tokio::io::split(stream);
        Ok(StratumClient {
            reader: BufReader::new(read),
            writer: write,
            peer_certificate_sha256,
            next_id: 1,
            pending: VecDeque::new(),
            timeout: Duration::from_secs(10),
        })
    }

    /// SHA-256 (hex) of the certificate the pool presented over TLS.
    pub fn peer_certificate_sha256(&self) -> Option<&str> {
        self.peer_certificate_sha256.as_deref()
    }

    /// Sends raw bytes (tests use this for malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), MinerError> {
        self.writer.write_all(bytes).await.map_err(MinerError::Io)?;
        self.writer.flush().await.map_err(MinerError::Io)
    }

    /// Sends a request and returns its id without waiting for the answer.
    pub async fn send(&mut self, method: &str, params: Value) -> Result<u64, MinerError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await?;
        Ok(id)
    }

    /// Reads the next JSON line from the server.
    pub async fn read_message(&mut self) -> Result<Value, MinerError> {
        let mut line = String::new();
        let read = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| MinerError::Timeout)?
            .map_err(MinerError::Io)?;
        if read == 0 {
            return Err(MinerError::Closed);
        }
        serde_json::from_str(&line)
            .map_err(|e| MinerError::Protocol(format!("bad JSON from pool: {e}")))
    }

    /// Sends a request and waits for its reply, keeping pushes for later.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Reply, MinerError> {
        let id = self.send(method, params).await?;
        self.wait_reply(id).await
    }

    /// Waits for the reply with this id, keeping pushes for later.
    pub async fn wait_reply(&mut self, id: u64) -> Result<Reply, MinerError> {
        loop {
            let message = self.read_message().await?;
            if message.get("method").is_some_and(|m| !m.is_null()) {
                self.pending.push_back(message);
                continue;
            }
            if message.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(Reply {
                    result: message.get("result").cloned().unwrap_or(Value::Null),
                    error: message.get("error").cloned().unwrap_or(Value::Null),
                });
            }
        }
    }

    /// Next push from the server (`{"method": ..., "params": ...}`).
    pub async fn next_push(&mut self) -> Result<Value, MinerError> {
        if let Some(message) = self.pending.pop_front() {
            return Ok(message);
        }
        loop {
            let message = self.read_message().await?;
            if message.get("method").is_some_and(|m| !m.is_null()) {
                return Ok(message);
            }
        }
    }

    /// Waits for the next push of this method, dropping other pushes.
    pub async fn wait_push(&mut self, method: &str) -> Result<Value, MinerError> {
        loop {
            let push = self.next_push().await?;
            if push.get("method").and_then(Value::as_str) == Some(method) {
                return Ok(push.get("params").cloned().unwrap_or(Value::Null));
            }
        }
    }

    /// Takes every push already received, without waiting.
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }
}
