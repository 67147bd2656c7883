//! What a run measured ([`LoadReport`], its latency percentiles and its
//! text summary), taken from the run's shared totals.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use crate::stats::{micros, Shared};
use crate::LoadConfig;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub miners: usize,
    pub duration_s: f64,
    pub connected: u64,
    pub peak_connections: u64,
    pub connect: Latency,
    pub subscribe_authorize: Latency,
    pub share_round_trip: Latency,
    pub shares_sent: u64,
    pub shares_answered: u64,
    pub shares_per_second: f64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Miners the pool told to reconnect (`client.reconnect`, e.g. at its
    /// graceful stop); each then closed its connection, as miners do.
    pub reconnect_requests: u64,
    /// For each new block seen: time from the first miner's `mining.notify`
    /// (clean_jobs) to the last one's.
    pub new_block_notify_spread: Latency,
    /// How late the tool handed paced miners their shares (its own
    /// scheduling, not the pool's): large values mean the load tool could
    /// not keep the rate, and the round trips say less.
    pub pacing_lateness: Latency,
}

impl LoadReport {
    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let lat = |l: &Latency| {
            format!(
                "n={} p50={:.3}ms p95={:.3}ms p99={:.3}ms max={:.3}ms",
                l.count,
                l.p50_us as f64 / 1000.0,
                l.p95_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0,
                l.max_us as f64 / 1000.0
            )
        };
        let mut text = String::new();
        text.push_str(&format!(
            "miners {} (connected {}, peak {}), {:.1} s\n",
            self.miners, self.connected, self.peak_connections, self.duration_s
        ));
        text.push_str(&format!("connect            {}\n", lat(&self.connect)));
        text.push_str(&format!(
            "subscribe+authorize {}\n",
            lat(&self.subscribe_authorize)
        ));
        text.push_str(&format!(
            "share round trip   {}\n",
            lat(&self.share_round_trip)
        ));
        text.push_str(&format!(
            "shares sent {} answered {} ({:.0}/s), accepted {}\n",
            self.shares_sent, self.shares_answered, self.shares_per_second, self.accepted
        ));
        for (reason, count) in &self.rejected {
            text.push_str(&format!("  rejected {reason}: {count}\n"));
        }
        for (kind, count) in &self.errors {
            text.push_str(&format!("  error {kind}: {count}\n"));
        }
        if self.reconnect_requests > 0 {
            text.push_str(&format!(
                "told to reconnect {} (connections closed)\n",
                self.reconnect_requests
            ));
        }
        text.push_str(&format!(
            "new block -> last notify {}\n",
            lat(&self.new_block_notify_spread)
        ));
        if self.pacing_lateness.count > 0 {
            text.push_str(&format!(
                "share pacing late  {}\n",
                lat(&self.pacing_lateness)
            ));
        }
        text
    }
}

fn latency(samples: &[u64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let pick = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    Latency {
        count: sorted.len() as u64,
        p50_us: pick(0.50),
        p95_us: pick(0.95),
        p99_us: pick(0.99),
        max_us: *sorted.last().unwrap_or(&0),
    }
}

fn histogram_latency(histogram: &hdrhistogram::Histogram<u64>) -> Latency {
    Latency {
        count: histogram.len(),
        p50_us: histogram.value_at_quantile(0.50),
        p95_us: histogram.value_at_quantile(0.95),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
    }
}

pub(crate) fn snapshot(shared: &Shared, config: &LoadConfig, started: Instant) -> LoadReport {
    let elapsed = started.elapsed().as_secs_f64();
    let answered = shared.answered.load(Ordering::Relaxed);
    let spreads: Vec<u64> = shared
        .notifies
        .lock()
        .values()
        .map(|(first, last)| micros(last.saturating_duration_since(*first)))
        .collect();
    LoadReport {
        miners: config.miners,
        duration_s: elapsed,
        connected: shared.connected_total.load(Ordering::Relaxed),
        peak_connections: shared.peak.load(Ordering::Relaxed),
        connect: latency(&shared.connect.lock()),
        subscribe_authorize: latency(&shared.authorize.lock()),
        share_round_trip: histogram_latency(&shared.round_trip.lock()),
        shares_sent: shared.sent.load(Ordering::Relaxed),
        shares_answered: answered,
        shares_per_second: if elapsed > 0.0 {
            answered as f64 / elapsed
        } else {
            0.0
        },
        accepted: shared.accepted.load(Ordering::Relaxed),
        rejected: shared.rejected.lock().clone(),
        errors: shared.errors.lock().clone(),
        reconnect_requests: shared.reconnect_requests.load(Ordering::Relaxed),
        new_block_notify_spread: latency(&spreads),
        pacing_lateness: histogram_latency(&shared.pacing_late.lock()),
    }
}
