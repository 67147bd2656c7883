//! Wake-up coalescing for the runtime's worker threads (`pool.wakeup_coalescing_us`).
//!
//! A busy pool answers thousands of shares a second that each arrive alone.
//! Each would cost a wake-up of its own: the worker blocks in epoll, the
//! kernel switches it out and back in (in a virtual machine an exit to the
//! hypervisor each way), for a share that takes a few microseconds to judge.
//! Measured on a 2-core VM at 10,000-20,000 paced shares/s, that is most of
//! the CPU of a share. A worker whose blocks lasted less than half a window
//! on average (a moving average over the last ~8) sleeps one window before
//! it blocks again: what arrives meanwhile is read and answered in one
//! wake-up, at most one window later. A block measured after such a sleep
//! is short when work came during it, so the average has hysteresis: at the
//! default 500 us a worker starts waiting above ~4,000 wake-ups a second
//! and stops below ~1,700. The usual solo pool of a few miners never waits.
//!
//! A found block never waits: from the moment one is found (here or by a
//! relay region) no worker sleeps for `BLOCK_HOLD_OFF`, so its store, its
//! submission to every node and its answer go at full speed.
//!
//! The runtime is the binary's (`tbg`'s `main` installs the hooks); the
//! window is the pool's setting, hence this module here.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The window in microseconds; 0 turns coalescing off (the default of a
/// process that runs no pool, such as the load tool, whose latencies are
/// its measurement).
static WINDOW_US: AtomicU64 = AtomicU64::new(0);

/// No worker sleeps before this many milliseconds after `EPOCH`.
static HOLD_OFF_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// How long coalescing stops after a block is found: its store, its
/// submissions (with retries of an unreachable node after 1 s) and the new
/// job that follows fit in it.
pub const BLOCK_HOLD_OFF: Duration = Duration::from_secs(5);

thread_local! {
    /// When this worker last began to block.
    static BLOCKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How long its blocks last, a moving average (`None`: not known yet).
    static TYPICAL_BLOCK: Cell<Option<Duration>> = const { Cell::new(None) };
}

fn millis_since_epoch(now: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// No worker waits for the next `span`: a block was found.
pub fn hold_off(span: Duration) {
    let until = millis_since_epoch(Instant::now())
        .saturating_add(u64::try_from(span.as_millis()).unwrap_or(u64::MAX));
    HOLD_OFF_UNTIL_MS.fetch_max(until, Ordering::Relaxed);
}

fn held_off(now: Instant) -> bool {
    millis_since_epoch(now) < HOLD_OFF_UNTIL_MS.load(Ordering::Relaxed)
}

/// Sets the window (at start and on SIGHUP).
pub fn set_window(window: Duration) {
    let micros = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    WINDOW_US.store(micros, Ordering::Relaxed);
}

fn window() -> Duration {
    Duration::from_micros(WINDOW_US.load(Ordering::Relaxed))
}

/// How long a worker about to block waits first, given how long its
/// blocks typically last.
fn wait_before_park(typical_block: Option<Duration>, window: Duration) -> Option<Duration> {
    if window.is_zero() {
        return None;
    }
    (typical_block? < window / 2).then_some(window)
}

/// The moving average with a new block's length: one eighth of the new,
/// so one short gap among Poisson arrivals at 1,000 a second does not
/// make a worker wait.
fn typical_after(typical: Option<Duration>, block: Duration) -> Duration {
    match typical {
        None => block,
        Some(typical) => typical - typical / 8 + block / 8,
    }
}

/// The runtime's `on_thread_park` hook.
pub fn before_park() {
    let window = window();
    if window.is_zero() {
        return;
    }
    let wait = wait_before_park(TYPICAL_BLOCK.get(), window);
    if let Some(wait) = wait.filter(|_| !held_off(Instant::now())) {
        // A blocking sleep on purpose: the worker has nothing to run, and
        // anything scheduled meanwhile is run right after it.
        std::thread::sleep(wait);
    }
    BLOCKED_AT.set(Some(Instant::now()));
}

/// The runtime's `on_thread_unpark` hook.
pub fn after_unpark() {
    if let Some(at) = BLOCKED_AT.take() {
        TYPICAL_BLOCK.set(Some(typical_after(TYPICAL_BLOCK.get(), at.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(500);

    #[test]
    fn a_worker_woken_again_at_once_waits_one_window() {
        // Blocked 70 us: about 14,000 wake-ups a second.
        let busy = Some(Duration::from_micros(70));
        assert_eq!(wait_before_park(busy, WINDOW), Some(WINDOW));
        // Coalescing already: the work was waiting when it blocked.
        assert_eq!(wait_before_park(Some(Duration::ZERO), WINDOW), Some(WINDOW));
    }

    #[test]
    fn a_quiet_worker_never_waits() {
        // The thread's first block: nothing known about its rate.
        assert_eq!(wait_before_park(None, WINDOW), None);
        // 1,000 shares a second: blocked ~1 ms between them.
        assert_eq!(
            wait_before_park(Some(Duration::from_micros(970)), WINDOW),
            None
        );
        // Just at the threshold.
        assert_eq!(wait_before_park(Some(WINDOW / 2), WINDOW), None);
    }

    #[test]
    fn one_short_block_among_long_ones_does_not_make_a_worker_wait() {
        let mut typical = Some(Duration::from_millis(1));
        typical = Some(typical_after(typical, Duration::from_micros(10)));
        assert_eq!(wait_before_park(typical, WINDOW), None, "{typical:?}");
        // A sustained load: the average follows within a few blocks.
        for _ in 0..20 {
            typical = Some(typical_after(typical, Duration::from_micros(50)));
        }
        assert_eq!(
            wait_before_park(typical, WINDOW),
            Some(WINDOW),
            "{typical:?}"
        );
    }

    #[test]
    fn a_found_block_holds_coalescing_off() {
        let now = Instant::now();
        hold_off(Duration::from_millis(200));
        assert!(held_off(now));
        assert!(!held_off(now + Duration::from_secs(1)));
        // A shorter hold-off never cuts a longer one short.
        hold_off(Duration::ZERO);
        assert!(held_off(now));
    }

    #[test]
    fn a_zero_window_turns_it_off() {
        assert_eq!(wait_before_park(Some(Duration::ZERO), Duration::ZERO), None);
    }

    #[test]
    fn the_hooks_measure_the_block_between_them() {
        set_window(WINDOW);
        after_unpark();
        assert_eq!(TYPICAL_BLOCK.get(), None, "no block began on this thread");
        before_park();
        std::thread::sleep(Duration::from_millis(2));
        after_unpark();
        let blocked = TYPICAL_BLOCK.get().expect("measured");
        assert!(blocked >= Duration::from_millis(2), "{blocked:?}");
        set_window(Duration::ZERO);
    }
}
