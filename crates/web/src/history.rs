//! Hashrate over the last day, sampled from the pool's own stats: the pool
//! total and each address's 5-minute average, one point per interval
//! (288 points a day at the default 5 min). Off the share path: a task
//! reads the stats registry once per interval.
//!
//! Bounded: at most [`MAX_ADDRESSES`] addresses are followed; past it a new
//! address gets no chart (its page says so) until a followed one has been
//! idle for a whole day and is forgotten.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tbg_pool::UserSnapshot;

/// Addresses followed at most (288 f32 points each: about 1.2 kB).
pub const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug)]
pub struct History {
    points: usize,
    interval: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pool: VecDeque<f32>,
    addresses: HashMap<String, VecDeque<f32>>,
}

impl History {
    /// `span` of history, one point per `interval`.
    pub fn new(span: Duration, interval: Duration) -> History {
        let interval = interval.max(Duration::from_millis(10));
        let points = (span.as_secs_f64() / interval.as_secs_f64())
            .ceil()
            .max(2.0) as usize;
        History {
            points,
            interval,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Adds one point: the pool total and every address's current 5-minute
    /// hashrate.
    pub fn sample(&self, users: &[UserSnapshot]) {
        let mut inner = self.inner.lock();
        let total: f64 = users.iter().map(|u| u.hashrate_5m).sum();
        push(&mut inner.pool, total as f32, self.points);
        let mut seen = std::collections::HashSet::with_capacity(users.len());
        for user in users {
            seen.insert(user.address.as_str());
            let room = inner.addresses.len() < MAX_ADDRESSES;
            match inner.addresses.get_mut(&user.address) {
                Some(ring) => push(ring, user.hashrate_5m as f32, self.points),
                None if room && user.hashrate_5m > 0.0 => {
                    let mut ring = VecDeque::with_capacity(self.points);
                    push(&mut ring, user.hashrate_5m as f32, self.points);
                    inner.addresses.insert(user.address.clone(), ring);
                }
                None => {}
            }
        }
        // An address the registry forgot, or silent for the whole span,
        // leaves room for another.
        let points = self.points;
        inner.addresses.retain(|address, ring| {
            if !seen.contains(address.as_str()) {
                push(ring, 0.0, points);
            }
            ring.iter().any(|v| *v > 0.0)
        });
    }

    /// How long `points` points of history cover, for the chart's axis
    /// (`24 h` once full, less while the pool is young).
    pub fn span_label(&self, points: usize) -> String {
        let seconds = self.interval.as_secs_f64() * points.saturating_sub(1) as f64;
        match seconds as u64 {
            s if s < 120 => format!("{s} s"),
            s if s < 7_200 => format!("{} min", s / 60),
            s => format!("{} h", s / 3_600),
        }
    }

    /// The pool's points, oldest first.
    pub fn pool(&self) -> Vec<f64> {
        self.inner
            .lock()
            .pool
            .iter()
            .map(|v| f64::from(*v))
            .collect()
    }

    /// An address's points, oldest first (`None`: not followed).
    pub fn address(&self, address: &str) -> Option<Vec<f64>> {
        self.inner
            .lock()
            .addresses
            .get(address)
            .map(|ring| ring.iter().map(|v| f64::from(*v)).collect())
    }
}

fn push(ring: &mut VecDeque<f32>, value: f32, points: usize) {
    if ring.len() == points {
        ring.pop_front();
    }
    ring.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_day() {
        let history = History::new(Duration::from_secs(86_400), Duration::from_secs(300));
        assert_eq!(history.points, 288);
        let mut ring = VecDeque::new();
        for i in 0..1_000 {
            push(&mut ring, i as f32, history.points);
        }
        assert_eq!(ring.len(), 288);
        assert_eq!(ring.front(), Some(&712.0));
    }
}
