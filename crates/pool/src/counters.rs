//! Pool-wide counters, updated lock-free on the share path and read by the
//! status API and the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tbg_stratum::RejectReason;

use crate::limits::LimitKind;

/// f64 stored in an AtomicU64 (bits), for gauges and difficulty sums.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn store(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
    pub fn add(&self, value: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct PoolCounters {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub miners: AtomicU64,
    pub shares_accepted: AtomicU64,
    pub accepted_difficulty: AtomicF64,
    pub shares_rejected: AtomicU64,
    pub shares_rejected_by_reason: [AtomicU64; REASONS],
    pub protocol_errors: AtomicU64,
    pub blocks_found: AtomicU64,
    pub blocks_accepted: AtomicU64,
    /// Never accepted; a node refused the block itself, then the chain passed it.
    pub blocks_rejected: AtomicU64,
    /// Never accepted; the chain passed it (race lost, or unreachable nodes).
    pub blocks_stale: AtomicU64,
    /// Reached the maturity depth.
    pub blocks_confirmed: AtomicU64,
    /// Accepted, then reorganised away.
    pub blocks_orphaned: AtomicU64,
    pub asicboost_miners: AtomicU64,
    pub notifies_sent: AtomicU64,
    pub template_height: AtomicU64,
    pub network_difficulty: AtomicF64,
    /// Sum and count of share processing time, in nanoseconds.
    pub share_latency_ns_sum: AtomicU64,
    pub share_latency_count: AtomicU64,
    /// Latest template-received-to-notify-written delay, in nanoseconds.
    pub last_notify_delay_ns: AtomicU64,
    /// Accepted-share processing time (parse, check, journal, answer).
    pub share_latency_histogram: LatencyHistogram,
    /// Template received to notify written, once per miner and template.
    pub notify_delay_histogram: LatencyHistogram,
    /// Events produced by the pool (journaled and/or sent to the sinks).
    pub events_emitted: AtomicU64,
    /// Refusals by the abuse limits, by [`LimitKind::index`].
    pub limit_refusals: [AtomicU64; LimitKind::ALL.len()],
    /// Soft bans started.
    pub ip_bans: AtomicU64,
    /// Sources in the per-source limit table (a gauge).
    pub ip_sources: AtomicU64,
    /// Connections to the TLS port that failed or timed out in the handshake.
    pub tls_handshake_failures: AtomicU64,
    /// Connections to the Stratum V2 port that failed or timed out in the
    /// Noise handshake or before `SetupConnection`.
    pub sv2_handshake_failures: AtomicU64,
}

/// Number of distinct reject reasons tracked.
pub const REASONS: usize = 32;

impl PoolCounters {
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub fn sv2_handshake_failed(&self) {
        self.sv2_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn miner_connected(&self) {
        self.miners.fetch_add(1, Ordering::Relaxed);
    }
    pub fn miner_disconnected(&self) {
        self.miners.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn share_accepted(&self, difficulty: f64) {
        self.shares_accepted.fetch_add(1, Ordering::Relaxed);
        self.accepted_difficulty.add(difficulty);
    }
    pub fn share_rejected(&self, reason: RejectReason) {
        self.shares_rejected.fetch_add(1, Ordering::Relaxed);
        let index = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS - 1);
        if let Some(slot) = self.shares_rejected_by_reason.get(index) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|index| self.shares_rejected_by_reason.get(index))
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }
    pub fn protocol_error(&self, _label: &str) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn asicboost_miner(&self) {
        self.asicboost_miners.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_template(&self, height: u32, network_difficulty: f64) {
        self.template_height
            .store(u64::from(height), Ordering::Relaxed);
        self.network_difficulty.store(network_difficulty);
    }
    pub fn notify_sent(&self, template_received: Instant) {
        self.notifies_sent.fetch_add(1, Ordering::Relaxed);
        let delay = u64::try_from(template_received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_notify_delay_ns.store(delay, Ordering::Relaxed);
        self.notify_delay_histogram.observe_nanos(delay);
    }
    pub fn limit_refused(&self, kind: LimitKind) {
        if let Some(slot) = self.limit_refusals.get(kind.index()) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn limit_refusals(&self, kind: LimitKind) -> u64 {
        self.limit_refusals
            .get(kind.index())
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }
    pub fn event_emitted(&self) {
        self.events_emitted.fetch_add(1, Ordering::Relaxed);
    }
    pub fn share_latency(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.share_latency_ns_sum
            .fetch_add(nanos, Ordering::Relaxed);
        self.share_latency_count.fetch_add(1, Ordering::Relaxed);
        self.share_latency_histogram.observe_nanos(nanos);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds (2 s is the plan's
/// getblocktemplate alert threshold, 50 ms its share p99 threshold).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
    5.0, 10.0,
];

const LATENCY_BUCKETS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A fixed-bucket latency histogram of atomics: an observation is a short
/// scan of 16 integers and two relaxed adds, cheap enough for the share path.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A histogram read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, count in this bucket alone); the last bound
    /// is `f64::MAX` for +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.observe_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe_nanos(&self, nanos: u64) {
        let index = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(LATENCY_BUCKETS_NANOS.len());
        if let Some(slot) = self.buckets.get(index) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum so the exposition stays consistent
        // even when a scrape races an observation.
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot {
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        }
    }
}

/// Latency and failures of every RPC call, per node and method, fed by the
/// node crate's [`tbg_node::RpcObserver`]. Label sets are bounded: nodes come
/// from the config, methods from our code.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    series: Mutex<Vec<RpcSeries>>,
}

#[derive(Debug)]
struct RpcSeries {
    node: String,
    method: String,
    latency: std::sync::Arc<LatencyHistogram>,
    errors: u64,
}

/// One (node, method) pair read at scrape time.
#[derive(Debug, Clone)]
pub struct RpcSeriesSnapshot {
    /// The node's URL without credentials.
    pub node: String,
    pub method: String,
    pub latency: HistogramSnapshot,
    pub errors: u64,
}

impl RpcMetrics {
    pub fn snapshot(&self) -> Vec<RpcSeriesSnapshot> {
        self.series
            .lock()
            .iter()
            .map(|series| RpcSeriesSnapshot {
                node: series.node.clone(),
                method: series.method.clone(),
                latency: series.latency.snapshot(),
                errors: series.errors,
            })
            .collect()
    }
}

impl tbg_node::RpcObserver for RpcMetrics {
    fn on_rpc_call(&self, node_url: &str, method: &str, elapsed: Duration, ok: bool) {
        let node = redact_url(node_url);
        let mut series = self.series.lock();
        let index = match series
            .iter()
            .position(|s| s.node == node && s.method == method)
        {
            Some(index) => index,
            None => {
                series.push(RpcSeries {
                    node,
                    method: method.to_owned(),
                    latency: Default::default(),
                    errors: 0,
                });
                series.len() - 1
            }
        };
        if let Some(entry) = series.get_mut(index) {
            entry.latency.observe(elapsed);
            if !ok {
                entry.errors += 1;
            }
        }
    }
}

/// A URL without its `user:password@` part, safe for labels and logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = match rest.split_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbg_node::RpcObserver;

    #[test]
    fn histogram_puts_each_observation_in_its_bucket() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(80));
        histogram.observe(Duration::from_millis(30));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets.len(), 17);
        assert_eq!(snapshot.buckets[0], (0.0001, 1));
        let fifty_ms = snapshot.buckets.iter().find(|(b, _)| *b == 0.05).unwrap();
        assert_eq!(fifty_ms.1, 1);
        assert_eq!(snapshot.buckets[16], (f64::MAX, 1));
        assert!((snapshot.sum_seconds - 60.03008).abs() < 1e-9);
    }

    #[test]
    fn rpc_metrics_group_by_node_and_method_without_credentials() {
        let metrics = RpcMetrics::default();
        metrics.on_rpc_call(
            "http://u:secret@10.0.0.1:8332",
            "getblocktemplate",
            Duration::from_millis(3),
            true,
        );
        metrics.on_rpc_call(
            "http://u:secret@10.0.0.1:8332",
            "getblocktemplate",
            Duration::from_secs(3),
            false,
        );
        metrics.on_rpc_call(
            "10.0.0.2:8332",
            "submitblock",
            Duration::from_millis(1),
            true,
        );
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].node, "http://10.0.0.1:8332");
        assert_eq!(snapshot[0].latency.count, 2);
        assert_eq!(snapshot[0].errors, 1);
        assert_eq!(snapshot[1].node, "10.0.0.2:8332");
        assert!(!format!("{snapshot:?}").contains("secret"));
    }
}
