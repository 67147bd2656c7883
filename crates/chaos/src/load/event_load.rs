//! [`EventLoad`]: clients submitting shares for an unknown job at a steady
//! rate, and the [`LatencyLog`] of the pool's answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tbg_testkit::{regtest_address, AddressKind};

use super::{join_within, StratumConn};

/// Answer latencies with the time they were measured.
#[derive(Debug, Default)]
pub struct LatencyLog {
    samples: Mutex<Vec<(Instant, Duration)>>,
    pub answered: AtomicU64,
    pub failures: AtomicU64,
}

impl LatencyLog {
    fn record(&self, latency: Duration) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), latency));
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The latency quantile `q` (0..1) of answers between `from` and `to`.
    pub fn quantile(&self, from: Instant, to: Instant, q: f64) -> Option<Duration> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut window: Vec<Duration> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, latency)| *latency)
            .collect();
        if window.is_empty() {
            return None;
        }
        window.sort();
        let index = ((window.len() as f64 - 1.0) * q).round() as usize;
        window.get(index.min(window.len() - 1)).copied()
    }

    pub fn count_between(&self, from: Instant, to: Instant) -> usize {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .count()
    }
}

/// `count` worker names for an [`EventLoad`]: `<regtest address>.load<i>`.
pub fn load_usernames(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| {
            let (address, _) = regtest_address(AddressKind::P2wpkh);
            format!("{address}.load{index}")
        })
        .collect()
}

/// Clients submitting shares for an unknown job every `interval`.
pub struct EventLoad {
    pub latencies: Arc<LatencyLog>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EventLoad {
    pub fn start(pool: SocketAddr, usernames: Vec<String>, interval: Duration) -> EventLoad {
        let latencies = Arc::new(LatencyLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = usernames
            .into_iter()
            .map(|username| {
                let latencies = latencies.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let timeout = Duration::from_secs(5);
                    let mut nonce = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let session = async {
                            let mut conn = StratumConn::connect(pool, timeout).await?;
                            conn.handshake(&username, timeout).await?;
                            while !stop.load(Ordering::Relaxed) {
                                nonce = nonce.wrapping_add(1);
                                let params = json!([
                                    username,
                                    "00000000deadbeef",
                                    "0000000000000000",
                                    "60000000",
                                    format!("{nonce:08x}")
                                ]);
                                let answer = conn.request("mining.submit", params, timeout).await?;
                                latencies.record(answer.latency);
                                tokio::time::sleep(interval).await;
                            }
                            Ok::<(), String>(())
                        };
                        if session.await.is_err() {
                            latencies.failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        EventLoad {
            latencies,
            stop,
            tasks,
        }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            join_within(task, Duration::from_secs(10), "event load client").await;
        }
    }
}

impl Drop for EventLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}
