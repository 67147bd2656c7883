//! Share pacing: one thread hands every paced miner its shares on time.
//!
//! Why a thread and not a tokio sleep per miner: tokio's timer wheel rounds
//! every deadline up to its next millisecond tick, so all the shares falling
//! due within a millisecond went out together, a burst the pool then had to
//! queue (at 10,000 shares/s, ~10 shares whose last waited for the nine
//! before it). Independent miners on a real network never fall into step
//! like that; the burst measured the tool's timer, and multiplied every
//! microsecond the pool spends per share by the burst's length. The pacer
//! sleeps to each share's own due time (timer slack 1 µs) and wakes just
//! that miner, and records how late it was, so a report shows when the tool
//! itself could not keep the schedule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::stats::micros;
use crate::{poisson_gap, Pacing, XorShift64};

/// Shares a stalled miner may owe (not yet authorized, window full): it
/// catches up by at most this many, as a real miner's queue would not grow
/// without bound either.
const MAX_OWED: u32 = 2;
/// Longest sleep between checks of the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The pacer's wake-up precision (the kernel's default slack is 50 µs).
const TIMER_SLACK_NS: u64 = 1_000;

/// One miner's owed shares.
#[derive(Default)]
pub(crate) struct Slot {
    owed: AtomicU32,
    notify: Notify,
}

impl Slot {
    /// One more share due; false when it was dropped at the cap (the
    /// miner is stalled anyway).
    fn owe_one(&self) -> bool {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                (owed < MAX_OWED).then_some(owed + 1)
            })
            .is_ok();
        self.notify.notify_one();
        owed
    }

    /// A share is due.
    pub(crate) fn owed(&self) -> bool {
        self.owed.load(Ordering::Acquire) > 0
    }

    /// Takes one due share; false when none is.
    pub(crate) fn take(&self) -> bool {
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            })
            .is_ok()
    }

    /// Resolves when the pacer owes this miner another share (at once if it
    /// did since the last wait: the wake-up is kept, never lost).
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// When each miner's shares fall due.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Mean gap between one miner's shares.
    pub interval: Duration,
    pub pacing: Pacing,
    /// Miner `i` starts `ramp_step * i` after `start`; its first share is
    /// one gap later, so miners opened together do not submit together.
    pub start: Instant,
    pub ramp_step: Duration,
    /// No share falls due at or after this.
    pub deadline: Instant,
}

/// The running pacer thread; stopped and joined by [`Pacer::stop`] (or on drop).
pub(crate) struct Pacer {
    slots: Arc<[Slot]>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts pacing `miners` miners; records each share's lateness (µs
    /// behind its due time) in `lateness`.
    pub(crate) fn start(
        miners: usize,
        schedule: Schedule,
        lateness: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    ) -> std::io::Result<Pacer> {
        let slots: Arc<[Slot]> = (0..miners).map(|_| Slot::default()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let slots = slots.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("loadtest-pacer".into())
                .spawn(move || pace(&slots, schedule, &stop, &lateness))?
        };
        Ok(Pacer {
            slots,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn slots(&self) -> Arc<[Slot]> {
        self.slots.clone()
    }

    /// Stops the thread and waits for it (at most [`STOP_CHECK`]).
    pub(crate) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Every miner's next due share, earliest first.
struct DueTimes {
    schedule: Schedule,
    random: XorShift64,
    next: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl DueTimes {
    fn new(miners: usize, schedule: Schedule) -> DueTimes {
        let mut due = DueTimes {
            schedule,
            random: XorShift64(0x2545_F491_4F6C_DD1D),
            next: BinaryHeap::with_capacity(miners),
        };
        for index in 0..miners {
            let opened = schedule.start
                + schedule
                    .ramp_step
                    .saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
            let first = opened + due.gap();
            due.next.push(Reverse((first, index)));
        }
        due
    }

    fn gap(&mut self) -> Duration {
        match self.schedule.pacing {
            Pacing::Even => self.schedule.interval,
            Pacing::Poisson => poisson_gap(self.schedule.interval, self.random.next()),
        }
    }

    /// The earliest due share and its miner.
    fn peek(&self) -> Option<(Instant, usize)> {
        self.next.peek().map(|&Reverse(next)| next)
    }

    /// Schedules the earliest miner's share after the one it just got.
    fn advance(&mut self) {
        if let Some(Reverse((due, index))) = self.next.pop() {
            let next = due + self.gap();
            self.next.push(Reverse((next, index)));
        }
    }
}

fn pace(
    slots: &[Slot],
    schedule: Schedule,
    stop: &AtomicBool,
    lateness: &Mutex<hdrhistogram::Histogram<u64>>,
) {
    // Best effort: without it wake-ups are up to 50 µs late, still far
    // finer than the millisecond this replaces.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(TIMER_SLACK_NS));
    let mut due_times = DueTimes::new(slots.len(), schedule);
    while let Some((due, index)) = due_times.peek() {
        if due >= schedule.deadline || stop.load(Ordering::Acquire) {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(STOP_CHECK));
            continue;
        }
        // Only shares handed out count: one dropped for a stalled miner
        // was never sent, so it has no lateness. The histogram's floor is 1 µs.
        if slots.get(index).is_some_and(Slot::owe_one) {
            let _ = lateness.lock().record(micros(now - due).max(1));
        }
        due_times.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_shares_are_capped_and_taken_one_at_a_time() {
        let slot = Slot::default();
        assert!(!slot.owed());
        assert!(!slot.take());
        for _ in 0..5 {
            slot.owe_one();
        }
        assert!(slot.owed());
        assert!(slot.take());
        assert!(slot.take());
        assert!(!slot.take(), "a stalled miner owes at most {MAX_OWED}");
    }

    #[tokio::test]
    async fn a_wake_up_given_before_the_wait_is_kept() {
        let slot = Slot::default();
        slot.owe_one();
        tokio::time::timeout(Duration::from_secs(5), slot.wait())
            .await
            .expect("the share owed before waiting wakes the miner");
    }

    /// What the pacer exists for: shares fall due one by one, spread like a
    /// Poisson process, not gathered on millisecond ticks. Checked on the
    /// schedule (the due times), not on wall-clock wake-ups, which a loaded
    /// test machine may delay.
    #[test]
    fn shares_fall_due_one_by_one_spread_like_a_poisson_process() {
        let start = Instant::now();
        let schedule = Schedule {
            interval: Duration::from_millis(10), // 20 miners: 2,000/s in all
            pacing: Pacing::Poisson,
            start,
            ramp_step: Duration::ZERO,
            deadline: start + Duration::from_secs(60),
        };
        let mut due_times = DueTimes::new(20, schedule);
        let mut previous = start;
        let mut gaps = Vec::new();
        let mut per_miner = [0u32; 20];
        for _ in 0..20_000 {
            let (due, index) = due_times.peek().expect("always a next share");
            assert!(due >= previous, "due times come in order");
            gaps.push(due - previous);
            previous = due;
            per_miner[index] += 1;
            due_times.advance();
        }
        // Exponential gaps with a 500 µs mean: P(gap < t) = 1 - exp(-t / 500 µs).
        let below = |limit: Duration| {
            gaps.iter().filter(|gap| **gap < limit).count() as f64 / gaps.len() as f64
        };
        let expected = |limit_us: f64| 1.0 - (-limit_us / 500.0).exp();
        for limit_us in [50.0, 250.0, 1000.0] {
            let seen = below(Duration::from_secs_f64(limit_us / 1e6));
            assert!(
                (seen - expected(limit_us)).abs() < 0.03,
                "gaps under {limit_us} µs: {seen:.3}, a Poisson process gives {:.3}",
                expected(limit_us)
            );
        }
        let rate = gaps.len() as f64 / (previous - start).as_secs_f64();
        assert!((rate - 2000.0).abs() < 100.0, "{rate:.0} shares/s");
        assert!(
            per_miner.iter().all(|&n| (800..1200).contains(&n)),
            "{per_miner:?}"
        );
    }

    #[test]
    fn even_pacing_keeps_each_miners_gap_and_the_ramp() {
        let start = Instant::now();
        let schedule = Schedule {
            interval: Duration::from_millis(10),
            pacing: Pacing::Even,
            start,
            ramp_step: Duration::from_millis(1),
            deadline: start + Duration::from_secs(60),
        };
        let mut due_times = DueTimes::new(3, schedule);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (due, index) = due_times.peek().expect("next share");
            seen.push(((due - start).as_millis(), index));
            due_times.advance();
        }
        assert_eq!(seen, [(10, 0), (11, 1), (12, 2), (20, 0), (21, 1), (22, 2)]);
    }

    #[test]
    fn shares_are_handed_out_at_the_configured_rate() {
        let miners = 20;
        let per_miner = 100.0; // 2,000 shares/s in all
        let run_for = Duration::from_millis(500);
        let start = Instant::now();
        let lateness = Arc::new(Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        ));
        let schedule = Schedule {
            interval: Duration::from_secs_f64(1.0 / per_miner),
            pacing: Pacing::Poisson,
            start,
            ramp_step: Duration::ZERO,
            deadline: start + run_for,
        };
        let pacer = Pacer::start(miners, schedule, lateness.clone()).expect("thread");
        let slots = pacer.slots();
        // Drain as the miners would, counting shares per miner.
        let mut taken = vec![0u32; miners];
        while start.elapsed() < run_for + Duration::from_millis(50) {
            for (index, slot) in slots.iter().enumerate() {
                while slot.take() {
                    taken[index] += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        pacer.stop();
        // On a loaded machine the thread may hand out its last due shares
        // after the loop above ended: take them too, now that it has stopped.
        for (index, slot) in slots.iter().enumerate() {
            while slot.take() {
                taken[index] += 1;
            }
        }
        let total: u32 = taken.iter().sum();
        // 1,000 expected; a Poisson count's standard deviation is ~32.
        assert!(
            (800..=1200).contains(&total),
            "{total} shares in {run_for:?} at 2,000/s"
        );
        assert!(
            taken.iter().all(|&count| count > 0),
            "every miner submits: {taken:?}"
        );
        assert_eq!(lateness.lock().len(), u64::from(total));
    }
}
