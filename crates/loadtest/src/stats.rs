//! The totals of a run, shared by its miners: each miner counts in a
//! [`LocalStats`] of its own and adds it to [`Shared`] now and then.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) struct Shared {
    pub(crate) connect: Mutex<Vec<u64>>,
    pub(crate) authorize: Mutex<Vec<u64>>,
    pub(crate) round_trip: Mutex<hdrhistogram::Histogram<u64>>,
    /// Filled by the pacer thread.
    pub(crate) pacing_late: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    pub(crate) sent: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) connected_now: AtomicU64,
    pub(crate) connected_total: AtomicU64,
    pub(crate) peak: AtomicU64,
    pub(crate) rejected: Mutex<BTreeMap<String, u64>>,
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
    pub(crate) reconnect_requests: AtomicU64,
    /// prevhash -> (first notify, last notify)
    pub(crate) notifies: Mutex<BTreeMap<String, (Instant, Instant)>>,
}

impl Shared {
    pub(crate) fn error(&self, kind: &str) {
        *self.errors.lock().entry(kind.to_string()).or_default() += 1;
    }
}

/// 1 µs .. 60 s at 3 significant digits: fixed bounds, cannot fail.
pub(crate) fn microsecond_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        hdrhistogram::Histogram::new(3)
            .unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Answered shares a miner keeps before adding them to the shared totals.
const LOCAL_SAMPLES: usize = 256;
/// How often a miner adds its local counts to the shared totals.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A miner's counts, added to `Shared` now and then so that the share path
/// takes no lock and touches no shared cache line.
pub(crate) struct LocalStats {
    round_trips_us: Vec<u64>,
    pub(crate) sent: u64,
    answered: u64,
    accepted: u64,
    rejected: Vec<(String, u64)>,
    last_flush: Instant,
}

impl LocalStats {
    pub(crate) fn new() -> LocalStats {
        LocalStats {
            round_trips_us: Vec::with_capacity(LOCAL_SAMPLES),
            sent: 0,
            answered: 0,
            accepted: 0,
            rejected: Vec::new(),
            last_flush: Instant::now(),
        }
    }

    pub(crate) fn answered(&mut self, rtt_us: u64, verdict: Result<(), &str>) {
        self.round_trips_us.push(rtt_us.max(1));
        self.answered += 1;
        match verdict {
            Ok(()) => self.accepted += 1,
            Err(reason) => match self.rejected.iter_mut().find(|(r, _)| r == reason) {
                Some((_, count)) => *count += 1,
                None => self.rejected.push((reason.to_string(), 1)),
            },
        }
    }

    pub(crate) fn maybe_flush(&mut self, shared: &Shared, now: Instant) {
        if self.round_trips_us.len() >= LOCAL_SAMPLES
            || now.saturating_duration_since(self.last_flush) >= FLUSH_EVERY
        {
            self.flush(shared, now);
        }
    }

    pub(crate) fn flush(&mut self, shared: &Shared, now: Instant) {
        self.last_flush = now;
        if !self.round_trips_us.is_empty() {
            let mut histogram = shared.round_trip.lock();
            for rtt in self.round_trips_us.drain(..) {
                let _ = histogram.record(rtt);
            }
        }
        shared
            .sent
            .fetch_add(std::mem::take(&mut self.sent), Ordering::Relaxed);
        shared
            .answered
            .fetch_add(std::mem::take(&mut self.answered), Ordering::Relaxed);
        shared
            .accepted
            .fetch_add(std::mem::take(&mut self.accepted), Ordering::Relaxed);
        if self.rejected.iter().any(|(_, count)| *count > 0) {
            let mut rejected = shared.rejected.lock();
            for (reason, count) in &mut self.rejected {
                if *count > 0 {
                    *rejected.entry(reason.clone()).or_default() += std::mem::take(count);
                }
            }
        }
    }
}

/// First and last clean-jobs notify per prevhash, across miners.
pub(crate) fn note_notify(shared: &Shared, prevhash: &[u8], received: Instant) {
    let prevhash = String::from_utf8_lossy(prevhash);
    let mut notifies = shared.notifies.lock();
    match notifies.get_mut(prevhash.as_ref()) {
        Some(entry) => {
            entry.0 = entry.0.min(received);
            entry.1 = entry.1.max(received);
        }
        None => {
            notifies.insert(prevhash.into_owned(), (received, received));
        }
    }
}
