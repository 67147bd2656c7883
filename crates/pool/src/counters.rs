//! Pool-wide counters, updated lock-free on the share path and read by the
//! status API and the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tbg_stratum::RejectReason;

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
    pub blocks_rejected: AtomicU64,
    pub asicboost_miners: AtomicU64,
    pub notifies_sent: AtomicU64,
    pub template_height: AtomicU64,
    pub network_difficulty: AtomicF64,
    /// Sum and count of share processing time, in nanoseconds.
    pub share_latency_ns_sum: AtomicU64,
    pub share_latency_count: AtomicU64,
    /// Latest template-received-to-notify-written delay, in nanoseconds.
    pub last_notify_delay_ns: AtomicU64,
}

/// Number of distinct reject reasons tracked.
pub const REASONS: usize = 32;

impl PoolCounters {
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
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
    }
    pub fn share_latency(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.share_latency_ns_sum
            .fetch_add(nanos, Ordering::Relaxed);
        self.share_latency_count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
