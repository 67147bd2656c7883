//! Variable difficulty: keeps each miner near one share per target interval.
//!
//! Time is always passed in (`now_secs`, seconds on any monotonic clock);
//! nothing here reads a clock, so behaviour is deterministic and testable.

/// Weight of the newest window's mean share interval in the moving average.
const EMA_ALPHA: f64 = 0.3;
/// No change while the average interval is within these bounds of the target.
const BAND_LOW: f64 = 0.8;
const BAND_HIGH: f64 = 1.2;
/// Fraction of the way to the ideal difficulty taken per ordinary retarget.
const DAMPENING: f64 = 0.5;
/// Largest increase per retarget (fast ramp for large miners).
const MAX_STEP_UP: f64 = 64.0;
/// Ideal/current ratio above which a retarget is not dampened.
const FAST_RAMP_RATIO: f64 = 4.0;
/// A burst: this many shares at least `BURST_SPEED` times too fast triggers
/// an early retarget without waiting for the window to end.
const BURST_SHARES: u32 = 16;
const BURST_SPEED: f64 = 4.0;
/// With no share at all for this many target intervals, difficulty drops.
const IDLE_INTERVALS: f64 = 6.0;
/// Largest decrease per idle retarget.
const MAX_STEP_DOWN: f64 = 8.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct WindowAverage {
    secs: f64,
    shares: f64,
}

impl WindowAverage {
    fn interval_secs(&self) -> f64 {
        self.secs / self.shares
    }
}

/// Vardiff settings (difficulties are pool difficulties, diff1 = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VardiffConfig {
    /// Pool minimum: never go below it, whatever a miner suggests.
    pub min_difficulty: f64,
    pub max_difficulty: f64,
    pub start_difficulty: f64,
    /// Desired seconds between shares.
    pub target_interval_secs: f64,
    /// Seconds of shares gathered before an ordinary retarget.
    pub retarget_window_secs: f64,
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            min_difficulty: 1.0,
            max_difficulty: 1e15,
            start_difficulty: 1.0,
            target_interval_secs: 10.0,
            retarget_window_secs: 60.0,
        }
    }
}

/// One miner's vardiff state.
#[derive(Debug, Clone, PartialEq)]
pub struct Vardiff {
    config: VardiffConfig,
    difficulty: f64,
    /// max(pool minimum, miner's suggested difficulty).
    floor: f64,
    /// Moving averages of window length and window share count; their
    /// ratio is the average share interval at the current difficulty.
    /// (A plain average of per-window means would be biased: a window that
    /// closes on a share counts short gaps more often than long ones.)
    ema_window: Option<WindowAverage>,
    window_start_secs: f64,
    window_shares: u32,
}

impl Vardiff {
    /// Starts at `config.start_difficulty` (clamped to the limits). Bad
    /// numbers in the config fall back to sane values rather than panic.
    pub fn new(config: VardiffConfig, now_secs: f64) -> Vardiff {
        let mut config = config;
        if !(config.min_difficulty.is_finite() && config.min_difficulty > 0.0) {
            config.min_difficulty = VardiffConfig::default().min_difficulty;
        }
        if !(config.max_difficulty.is_finite() && config.max_difficulty >= config.min_difficulty) {
            config.max_difficulty = config
                .min_difficulty
                .max(VardiffConfig::default().max_difficulty);
        }
        if !(config.target_interval_secs.is_finite() && config.target_interval_secs > 0.0) {
            config.target_interval_secs = VardiffConfig::default().target_interval_secs;
        }
        if !(config.retarget_window_secs.is_finite() && config.retarget_window_secs > 0.0) {
            config.retarget_window_secs = config.target_interval_secs * 6.0;
        }
        let start = if config.start_difficulty.is_finite() {
            config.start_difficulty
        } else {
            config.min_difficulty
        };
        Vardiff {
            difficulty: start.clamp(config.min_difficulty, config.max_difficulty),
            floor: config.min_difficulty,
            config,
            ema_window: None,
            window_start_secs: now_secs,
            window_shares: 0,
        }
    }

    /// Current difficulty.
    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// Moving average of the share interval, once there is one.
    pub fn average_interval_secs(&self) -> Option<f64> {
        self.ema_window.map(|w| w.interval_secs())
    }

    /// `mining.suggest_difficulty`: becomes the floor and the new starting
    /// point (never below the pool minimum, never above the maximum).
    /// Returns the new difficulty when it changed.
    pub fn suggest_difficulty(&mut self, suggested: f64, now_secs: f64) -> Option<f64> {
        if !(suggested.is_finite() && suggested > 0.0) {
            return None;
        }
        self.floor = suggested.clamp(self.config.min_difficulty, self.config.max_difficulty);
        self.ema_window = None;
        self.start_window(now_secs);
        self.change_to(self.floor)
    }

    /// Records one accepted share; returns the new difficulty when a change is due.
    pub fn on_share(&mut self, now_secs: f64) -> Option<f64> {
        self.window_shares = self.window_shares.saturating_add(1);
        let elapsed = (now_secs - self.window_start_secs).max(0.0);
        let target = self.config.target_interval_secs;
        let expected = f64::from(self.window_shares) * target;

        if self.window_shares >= BURST_SHARES && elapsed * BURST_SPEED < expected {
            // Much too fast: the old average means nothing at this rate.
            let ratio = if elapsed > 0.0 {
                expected / elapsed
            } else {
                MAX_STEP_UP
            };
            self.ema_window = None;
            self.start_window(now_secs);
            return self.change_to(self.difficulty * ratio.min(MAX_STEP_UP));
        }
        if elapsed < self.config.retarget_window_secs {
            return None;
        }
        self.close_window(elapsed, now_secs)
    }

    /// Call periodically: lowers the difficulty of a miner whose shares
    /// stopped or slowed down a lot. Returns the new difficulty when changed.
    pub fn poll(&mut self, now_secs: f64) -> Option<f64> {
        let elapsed = (now_secs - self.window_start_secs).max(0.0);
        let target = self.config.target_interval_secs;
        if self.window_shares == 0 {
            if elapsed < target * IDLE_INTERVALS || elapsed < self.config.retarget_window_secs {
                return None;
            }
            // No share at all: the true interval is at least `elapsed`.
            self.ema_window = None;
            self.start_window(now_secs);
            let factor = (target / elapsed).max(1.0 / MAX_STEP_DOWN);
            return self.change_to(self.difficulty * factor);
        }
        if elapsed < self.config.retarget_window_secs {
            return None;
        }
        self.close_window(elapsed, now_secs)
    }

    fn close_window(&mut self, elapsed: f64, now_secs: f64) -> Option<f64> {
        let shares = f64::from(self.window_shares);
        self.start_window(now_secs);
        let average = match self.ema_window {
            Some(previous) => WindowAverage {
                secs: EMA_ALPHA * elapsed + (1.0 - EMA_ALPHA) * previous.secs,
                shares: EMA_ALPHA * shares + (1.0 - EMA_ALPHA) * previous.shares,
            },
            None => WindowAverage {
                secs: elapsed,
                shares,
            },
        };
        self.ema_window = Some(average);
        let ema = average.interval_secs();
        let target = self.config.target_interval_secs;
        let relative = ema / target;
        if (BAND_LOW..=BAND_HIGH).contains(&relative) || !relative.is_finite() {
            return None;
        }
        let ideal = if ema > 0.0 {
            self.difficulty * target / ema
        } else {
            self.difficulty * MAX_STEP_UP
        };
        let proposed = if ideal > self.difficulty * FAST_RAMP_RATIO {
            self.difficulty * (ideal / self.difficulty).min(MAX_STEP_UP)
        } else {
            self.difficulty + DAMPENING * (ideal - self.difficulty)
        };
        self.change_to(proposed)
    }

    fn start_window(&mut self, now_secs: f64) {
        self.window_start_secs = now_secs;
        self.window_shares = 0;
    }

    /// Clamps and applies a new difficulty; the average interval is rescaled
    /// because shares arrive proportionally slower at a higher difficulty.
    fn change_to(&mut self, proposed: f64) -> Option<f64> {
        let new = if proposed.is_finite() {
            proposed
        } else {
            self.config.max_difficulty
        };
        let new = new.clamp(self.floor, self.config.max_difficulty);
        let old = self.difficulty;
        if (new - old).abs() <= old * 1e-9 {
            return None;
        }
        if let Some(average) = self.ema_window.as_mut() {
            average.secs *= new / old;
        }
        self.difficulty = new;
        Some(new)
    }
}
