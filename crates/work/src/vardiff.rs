//! Variable difficulty: keeps each miner near one share per target interval.
//!
//! Time is always passed in (`now_secs`, seconds on any monotonic clock);
//! nothing here reads a clock, so behaviour is deterministic and testable.
//!
//! Who may set a connection's difficulty, and how often:
//! - the pool's limits: `min_difficulty`, `max_difficulty` (never above
//!   [`MAX_DIFFICULTY`]) and the network difficulty of the current work;
//! - the miner, for its own connection only (`suggest_difficulty`);
//! - the miner's measured share rate. Only this last kind is *earned*
//!   ([`Vardiff::earned_difficulty`]): it is the one a pool may remember for
//!   the worker's next connection, because nobody else can produce it.
//!
//! Changes are applied at most once per `min_change_interval_secs`; a change
//! asked for sooner waits, and a later one replaces it, so a flood of
//! suggestions costs one `mining.set_difficulty` (and one event) per interval.

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

/// The hard ceiling of any difficulty, whatever the config says: one share
/// per 10 s at 1e12 is ~430 EH/s, about half of today's whole network, so no
/// connection of a solo pool needs more. It keeps the arithmetic finite
/// (hash rate = difficulty x 2^32 / time; 1e308 x 2^32 is infinite, which
/// JSON cannot carry) when neither `maxdiff` nor the network caps it.
pub const MAX_DIFFICULTY: f64 = 1e12;

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
    /// Pool maximum; above [`MAX_DIFFICULTY`] counts as that.
    pub max_difficulty: f64,
    pub start_difficulty: f64,
    /// Desired seconds between shares.
    pub target_interval_secs: f64,
    /// Seconds of shares gathered before an ordinary retarget.
    pub retarget_window_secs: f64,
    /// Fewest seconds between two applied changes; 0 = no limit.
    pub min_change_interval_secs: f64,
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            min_difficulty: 1.0,
            max_difficulty: MAX_DIFFICULTY,
            start_difficulty: 1.0,
            target_interval_secs: 10.0,
            retarget_window_secs: 60.0,
            min_change_interval_secs: 0.0,
        }
    }
}

/// A change asked for before the interval allowed it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    difficulty: f64,
    earned: bool,
}

/// One miner's vardiff state.
#[derive(Debug, Clone, PartialEq)]
pub struct Vardiff {
    config: VardiffConfig,
    difficulty: f64,
    /// max(pool minimum, miner's suggested difficulty), at most `ceiling`.
    floor: f64,
    /// min(pool maximum, network difficulty of the current work).
    ceiling: f64,
    /// The miner's last suggestion, kept so the floor follows the ceiling.
    suggested: Option<f64>,
    /// The last difficulty set by the miner's measured share rate.
    earned: Option<f64>,
    /// When the last change was applied (`NEG_INFINITY`: none yet).
    last_change_secs: f64,
    pending: Option<Pending>,
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
        config.min_difficulty = config.min_difficulty.min(MAX_DIFFICULTY);
        if !(config.max_difficulty.is_finite() && config.max_difficulty >= config.min_difficulty) {
            config.max_difficulty = MAX_DIFFICULTY;
        }
        config.max_difficulty = config.max_difficulty.min(MAX_DIFFICULTY);
        if !(config.target_interval_secs.is_finite() && config.target_interval_secs > 0.0) {
            config.target_interval_secs = VardiffConfig::default().target_interval_secs;
        }
        if !(config.retarget_window_secs.is_finite() && config.retarget_window_secs > 0.0) {
            config.retarget_window_secs = config.target_interval_secs * 6.0;
        }
        if !(config.min_change_interval_secs.is_finite() && config.min_change_interval_secs >= 0.0)
        {
            config.min_change_interval_secs = 0.0;
        }
        let start = if config.start_difficulty.is_finite() {
            config.start_difficulty
        } else {
            config.min_difficulty
        };
        Vardiff {
            difficulty: start.clamp(config.min_difficulty, config.max_difficulty),
            floor: config.min_difficulty,
            ceiling: config.max_difficulty,
            suggested: None,
            earned: None,
            last_change_secs: f64::NEG_INFINITY,
            pending: None,
            config,
            ema_window: None,
            window_start_secs: now_secs,
            window_shares: 0,
        }
    }

    /// Starts at a difficulty this worker earned on an earlier connection;
    /// it stays earned until the share rate says otherwise.
    pub fn resume(config: VardiffConfig, earned: f64, now_secs: f64) -> Vardiff {
        let mut vardiff = Vardiff::new(
            VardiffConfig {
                start_difficulty: earned,
                ..config
            },
            now_secs,
        );
        vardiff.earned = Some(vardiff.difficulty);
        vardiff
    }

    /// Current difficulty.
    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// The last difficulty the miner's own share rate set, if any: the only
    /// one worth remembering across reconnects (a suggestion, the pool's
    /// start difficulty and a cap are not).
    pub fn earned_difficulty(&self) -> Option<f64> {
        self.earned
    }

    /// A change waiting for the interval to pass.
    pub fn pending_difficulty(&self) -> Option<f64> {
        self.pending.map(|p| p.difficulty)
    }

    /// Moving average of the share interval, once there is one.
    pub fn average_interval_secs(&self) -> Option<f64> {
        self.ema_window.map(|w| w.interval_secs())
    }

    /// The connection's setup is over and its difficulty is about to be
    /// announced as the first one: a change still waiting is taken now and
    /// the setup does not count against the change interval.
    pub fn settle(&mut self) {
        if let Some(pending) = self.pending.take() {
            let new = pending.difficulty.clamp(self.floor, self.ceiling);
            self.difficulty = new;
            if pending.earned {
                self.earned = Some(new);
            }
        }
        self.last_change_secs = f64::NEG_INFINITY;
    }

    /// The network difficulty of the current work: no share target above
    /// it, because a miner only reports hashes that meet its share target
    /// and would keep quiet about a block. Lowering to it is applied at once
    /// (templates drive it, not the miner). A network difficulty below the
    /// pool minimum (regtest: 4.7e-10) is ignored: every share is a block
    /// there anyway, and the operator's minimum is the floor.
    /// Returns the new difficulty when it changed.
    pub fn set_network_difficulty(&mut self, network: f64, now_secs: f64) -> Option<f64> {
        let ceiling = if network.is_finite() && network >= self.config.min_difficulty {
            network.min(self.config.max_difficulty)
        } else {
            self.config.max_difficulty
        };
        if ceiling == self.ceiling {
            return None;
        }
        self.ceiling = ceiling;
        self.floor = self.floor_for(self.suggested);
        if self.difficulty > self.ceiling {
            return self.apply(self.ceiling, now_secs, false);
        }
        if self.difficulty < self.floor {
            // A suggestion the old cap had clipped.
            return self.change_to(self.floor, now_secs, false);
        }
        None
    }

    /// `mining.suggest_difficulty`: becomes the floor and the new starting
    /// point (never below the pool minimum, never above the ceiling), for
    /// this connection only; never earned. Returns the new difficulty when
    /// it changed now (a change within the interval waits).
    pub fn suggest_difficulty(&mut self, suggested: f64, now_secs: f64) -> Option<f64> {
        if !(suggested.is_finite() && suggested > 0.0) {
            return None;
        }
        self.suggested = Some(suggested);
        self.floor = self.floor_for(self.suggested);
        self.ema_window = None;
        self.start_window(now_secs);
        self.change_to(self.floor, now_secs, false)
    }

    /// Records one accepted share; returns the new difficulty when a change is due.
    pub fn on_share(&mut self, now_secs: f64) -> Option<f64> {
        if let Some(new) = self.apply_due_pending(now_secs) {
            return Some(new);
        }
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
            return self.change_to(self.difficulty * ratio.min(MAX_STEP_UP), now_secs, true);
        }
        if elapsed < self.config.retarget_window_secs {
            return None;
        }
        self.close_window(elapsed, now_secs)
    }

    /// Call periodically: applies a change that was waiting for the
    /// interval, and lowers the difficulty of a miner whose shares stopped
    /// or slowed down a lot. Returns the new difficulty when changed.
    pub fn poll(&mut self, now_secs: f64) -> Option<f64> {
        if let Some(new) = self.apply_due_pending(now_secs) {
            return Some(new);
        }
        let elapsed = (now_secs - self.window_start_secs).max(0.0);
        let target = self.config.target_interval_secs;
        if self.window_shares == 0 {
            if elapsed < target * IDLE_INTERVALS || elapsed < self.config.retarget_window_secs {
                return None;
            }
            // No share at all: the true interval is at least `elapsed`.
            // Not earned: anyone can send no shares under a worker's name.
            self.ema_window = None;
            self.start_window(now_secs);
            let factor = (target / elapsed).max(1.0 / MAX_STEP_DOWN);
            return self.change_to(self.difficulty * factor, now_secs, false);
        }
        if elapsed < self.config.retarget_window_secs {
            return None;
        }
        self.close_window(elapsed, now_secs)
    }

    fn floor_for(&self, suggested: Option<f64>) -> f64 {
        suggested
            .unwrap_or(self.config.min_difficulty)
            .clamp(self.config.min_difficulty, self.ceiling)
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
        self.change_to(proposed, now_secs, true)
    }

    fn start_window(&mut self, now_secs: f64) {
        self.window_start_secs = now_secs;
        self.window_shares = 0;
    }

    /// Clamps a proposed difficulty; applies it when the interval since the
    /// last change has passed, else keeps it (replacing any older one) for
    /// later. `earned`: proposed from the share rate. A value held up by the
    /// suggested floor is not earned: the suggestion decided it.
    fn change_to(&mut self, proposed: f64, now_secs: f64, earned: bool) -> Option<f64> {
        let new = if proposed.is_finite() {
            proposed
        } else {
            self.ceiling
        };
        let new = new.clamp(self.floor, self.ceiling);
        if (new - self.difficulty).abs() <= self.difficulty * 1e-9 {
            self.pending = None;
            return None;
        }
        let earned = earned && !(self.floor > self.config.min_difficulty && new <= self.floor);
        if now_secs - self.last_change_secs < self.config.min_change_interval_secs {
            self.pending = Some(Pending {
                difficulty: new,
                earned,
            });
            return None;
        }
        self.apply(new, now_secs, earned)
    }

    /// A waiting change whose interval has passed, re-clamped to the limits
    /// of now. The shares counted since were found at the old difficulty, so
    /// the window starts again.
    fn apply_due_pending(&mut self, now_secs: f64) -> Option<f64> {
        let pending = self.pending?;
        if now_secs - self.last_change_secs < self.config.min_change_interval_secs {
            return None;
        }
        self.pending = None;
        let new = pending.difficulty.clamp(self.floor, self.ceiling);
        if (new - self.difficulty).abs() <= self.difficulty * 1e-9 {
            return None;
        }
        self.start_window(now_secs);
        self.apply(new, now_secs, pending.earned)
    }

    /// Applies a new difficulty; the average interval is rescaled because
    /// shares arrive proportionally slower at a higher difficulty.
    fn apply(&mut self, new: f64, now_secs: f64, earned: bool) -> Option<f64> {
        let old = self.difficulty;
        if let Some(average) = self.ema_window.as_mut() {
            average.secs *= new / old;
        }
        self.difficulty = new;
        self.last_change_secs = now_secs;
        self.pending = None;
        if earned {
            self.earned = Some(new);
        }
        Some(new)
    }
}
