//! `/health/live`: liveness, apart from readiness (`/health`).
//!
//! Liveness fails only when the process cannot serve miners, which a
//! restart cures: the Stratum accept loop is dead or stuck, or the runtime
//! cannot run a connection's task. It is checked end to end, as a miner
//! would: a connection to the pool's own Stratum port sends one
//! `mining.extranonce.subscribe` and must get an answer, or be closed by the
//! pool (a refusal: pool full, source limited or banned, which proves the
//! accept loop runs). A refused connect (nothing listens) or silence (the
//! loop does not accept, or the session task never runs) is not live. If the
//! runtime itself is wedged, this endpoint does not answer at all, which a
//! caller with a timeout counts as a failure too.
//!
//! Everything else (node down, template old, journal full, event socket
//! dropping) is readiness: the pool stays up and serves the last work, and a
//! restart would not help (plan scenario 2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// How long one probe waits for the pool to accept and answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A probe result is reused this long: each probe is a connection from the
/// pool's own host, and the per-source connect limit counts it.
pub const PROBE_REUSE: Duration = Duration::from_secs(10);

/// The answer of `/health/live`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub live: bool,
    /// Why the pool is not live (empty when live).
    pub reasons: Vec<String>,
    /// The Stratum address probed.
    pub stratum: String,
    /// How long the pool took to answer the probe, when it did.
    pub stratum_answer_ms: Option<f64>,
    /// Seconds since this probe ran (results are reused for a few seconds).
    pub probed_seconds_ago: f64,
}

/// The probe of one pool, with its last result.
#[derive(Debug)]
pub(crate) struct Liveness {
    stratum: SocketAddr,
    last: Mutex<Option<(Instant, LiveReport)>>,
}

impl Liveness {
    /// `stratum`: the address the pool listens on; a wildcard address is
    /// probed on loopback.
    pub(crate) fn new(stratum: SocketAddr) -> Liveness {
        let ip = match stratum.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Liveness {
            stratum: SocketAddr::new(ip, stratum.port()),
            last: Mutex::new(None),
        }
    }

    /// The last result if recent, else a new probe (one at a time; a
    /// failed probe is tried once more before it counts).
    pub(crate) async fn report(&self) -> LiveReport {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref() {
            if at.elapsed() < PROBE_REUSE {
                let mut report = report.clone();
                report.probed_seconds_ago = at.elapsed().as_secs_f64();
                return report;
            }
        }
        let mut result = probe(self.stratum, PROBE_TIMEOUT).await;
        if result.is_err() {
            result = probe(self.stratum, PROBE_TIMEOUT).await;
        }
        let report = match result {
            Ok(answer) => LiveReport {
                live: true,
                reasons: Vec::new(),
                stratum: self.stratum.to_string(),
                stratum_answer_ms: Some(answer.as_secs_f64() * 1000.0),
                probed_seconds_ago: 0.0,
            },
            Err(reason) => {
                tracing::warn!(stratum = %self.stratum, %reason, "liveness probe failed");
                LiveReport {
                    live: false,
                    reasons: vec![reason],
                    stratum: self.stratum.to_string(),
                    stratum_answer_ms: None,
                    probed_seconds_ago: 0.0,
                }
            }
        };
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// One probe: connect, ask, wait for a line or for the pool to close.
/// Returns how long the answer took, or why there was none.
pub(crate) async fn probe(addr: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("stratum port {addr} refuses connections: {e}"))?;
        let request =
            b"{\"id\":\"live\",\"method\":\"mining.extranonce.subscribe\",\"params\":[]}\n";
        // A write error means the pool closed the connection: it accepted.
        if stream.write_all(request).await.is_err() {
            return Ok(());
        }
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                // Closed by the pool (a refusal) or a line: it is serving.
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) if buf[..n].contains(&b'\n') => return Ok(()),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!(
            "stratum port {addr} gave no answer in {timeout:?}: the accept loop or the runtime is stuck"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_nobody_accepts_on_is_not_live_and_a_closed_port_neither() {
        // Bound and listening, never accepted: the kernel completes the
        // handshake, no one answers (a stuck accept loop).
        let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = stuck.local_addr().unwrap();
        let error = probe(addr, Duration::from_millis(300)).await.unwrap_err();
        assert!(error.contains("no answer"), "{error}");
        drop(stuck);
        let error = probe(addr, Duration::from_millis(300)).await.unwrap_err();
        assert!(error.contains("refuses"), "{error}");
    }

    #[tokio::test]
    async fn an_answer_or_a_prompt_close_is_live() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection answered, second closed at once (a refusal).
            let (mut first, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = first.read(&mut buf).await;
            first
                .write_all(b"{\"id\":\"live\",\"result\":true,\"error\":null}\n")
                .await
                .unwrap();
            let (second, _) = listener.accept().await.unwrap();
            drop(second);
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        probe(addr, Duration::from_secs(2)).await.unwrap();
        probe(addr, Duration::from_secs(2)).await.unwrap();
        let wildcard = Liveness::new(SocketAddr::from(([0, 0, 0, 0], 3333)));
        assert_eq!(wildcard.stratum, SocketAddr::from(([127, 0, 0, 1], 3333)));
    }
}
