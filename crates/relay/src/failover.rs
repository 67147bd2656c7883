//! When a relay mines the primary's templates and when its own node's: a
//! state machine of time alone, free of I/O, so that every edge can be
//! tested with made-up clocks.
//!
//! - Starting: the local node's templates (miners get work at once); the
//!   primary's as soon as it is heard and has sent a template. Not heard
//!   within the failover timeout: a failover ("not heard since start").
//! - Primary: until nothing (no template, no heartbeat) came for the
//!   failover timeout, or at once when the link closes (a lost primary:
//!   no silence to wait for); then a failover.
//! - Local: until the primary has been heard without a gap longer than
//!   the failover timeout for `failback_after`; then a failback. A primary
//!   that flaps never gets its relays back while it flaps.

use std::time::{Duration, Instant};

/// Whose templates the relay's miners get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Just started, the primary not heard yet: the local node's.
    Starting,
    Primary,
    /// Failed over: the local node's.
    Local,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Starting => "starting",
            Source::Primary => "primary",
            Source::Local => "local",
        }
    }

    /// Whether the pool mines the primary's templates.
    pub fn is_primary(self) -> bool {
        self == Source::Primary
    }
}

/// A change of source.
#[derive(Debug, Clone, PartialEq)]
pub enum Switch {
    /// Starting -> Primary: the primary heard at start (no event).
    Joined,
    /// -> Local.
    Failover {
        /// Since the primary was last heard (since the start if never).
        silent: Duration,
        reason: String,
    },
    /// Local -> Primary.
    Failback {
        failed_over_for: Duration,
        steady_for: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Failover {
    timeout: Duration,
    failback_after: Duration,
    source: Source,
    started: Instant,
    last_heard: Option<Instant>,
    /// Start of the current run of frames with no gap above `timeout`.
    heard_since: Option<Instant>,
    failed_over_at: Option<Instant>,
    /// Why the link went down last, for the failover's reason.
    last_loss: Option<String>,
    /// The link is down (closed, refused, or never up) since the last frame.
    link_down: bool,
}

impl Failover {
    pub fn new(timeout: Duration, failback_after: Duration, now: Instant) -> Failover {
        Failover {
            timeout,
            failback_after,
            source: Source::Starting,
            started: now,
            last_heard: None,
            heard_since: None,
            failed_over_at: None,
            last_loss: None,
            link_down: true,
        }
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// Since the primary was last heard.
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        self.last_heard
            .map(|heard| now.saturating_duration_since(heard))
    }

    /// An authenticated frame from the primary.
    pub fn heard(&mut self, now: Instant) {
        if self.heard_since.is_none() || self.silence(now).is_none_or(|gap| gap > self.timeout) {
            self.heard_since = Some(now);
        }
        self.last_heard = Some(now);
        self.link_down = false;
    }

    /// The link went down (or could not be set up): a steady run ends;
    /// the failover comes when the timeout since the last frame is up.
    pub fn lost(&mut self, reason: &str) {
        self.heard_since = None;
        self.last_loss = Some(reason.to_owned());
        self.link_down = true;
    }

    /// What to do now; `has_primary_template`: the primary has sent a
    /// template to mine on.
    pub fn poll(&mut self, now: Instant, has_primary_template: bool) -> Option<Switch> {
        let silence = self.silence(now);
        let silent = silence.is_none_or(|gap| gap >= self.timeout);
        if silent {
            self.heard_since = None;
        }
        match self.source {
            Source::Starting => {
                if !silent && self.heard_since.is_some() && has_primary_template {
                    self.source = Source::Primary;
                    return Some(Switch::Joined);
                }
                if now.saturating_duration_since(self.started) >= self.timeout {
                    self.source = Source::Local;
                    self.failed_over_at = Some(now);
                    return Some(Switch::Failover {
                        silent: silence.unwrap_or_else(|| now - self.started),
                        reason: self.reason("not heard since the relay started"),
                    });
                }
                None
            }
            Source::Primary => {
                if !silent && !self.link_down {
                    return None;
                }
                self.source = Source::Local;
                self.failed_over_at = Some(now);
                let why = if silent {
                    format!("no word from the primary for {} s", self.timeout.as_secs())
                } else {
                    "the link to the primary closed".to_owned()
                };
                Some(Switch::Failover {
                    silent: silence.unwrap_or_default(),
                    reason: self.reason(&why),
                })
            }
            Source::Local => {
                let steady_for = self
                    .heard_since
                    .map(|since| now.saturating_duration_since(since))?;
                if silent || !has_primary_template || steady_for < self.failback_after {
                    return None;
                }
                self.source = Source::Primary;
                let failed_over_for = self
                    .failed_over_at
                    .map(|at| now.saturating_duration_since(at))
                    .unwrap_or_default();
                Some(Switch::Failback {
                    failed_over_for,
                    steady_for,
                })
            }
        }
    }

    fn reason(&self, default: &str) -> String {
        match &self.last_loss {
            Some(loss) => format!("{default} (link: {loss})"),
            None => default.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const FAILBACK: Duration = Duration::from_secs(30);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_primary_heard_at_start_is_joined_without_a_failover() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        assert_eq!(failover.poll(t0, false), None);
        failover.heard(t0 + secs(1));
        // Heard, but no template yet: stay on the local node's.
        assert_eq!(failover.poll(t0 + secs(1), false), None);
        assert_eq!(failover.poll(t0 + secs(2), true), Some(Switch::Joined));
        assert_eq!(failover.source(), Source::Primary);
    }

    #[test]
    fn a_primary_never_heard_is_a_failover_after_the_timeout() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        failover.lost("connection refused");
        assert_eq!(failover.poll(t0 + secs(9), false), None);
        match failover.poll(t0 + secs(10), false) {
            Some(Switch::Failover { silent, reason }) => {
                assert_eq!(silent, secs(10));
                assert!(reason.contains("connection refused"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(failover.source(), Source::Local);
    }

    #[test]
    fn silence_for_the_timeout_fails_over_heartbeats_keep_it_up() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        failover.heard(t0);
        assert_eq!(failover.poll(t0, true), Some(Switch::Joined));
        // Heartbeats every 3 s: never a failover.
        for n in 1..=20 {
            failover.heard(t0 + secs(3 * n));
            assert_eq!(failover.poll(t0 + secs(3 * n + 2), true), None);
        }
        let last = t0 + secs(60);
        assert_eq!(failover.poll(last + secs(9), true), None);
        assert!(matches!(
            failover.poll(last + secs(10), true),
            Some(Switch::Failover { silent, .. }) if silent == secs(10)
        ));
    }

    #[test]
    fn a_closed_link_fails_over_at_once() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        failover.heard(t0);
        assert_eq!(failover.poll(t0, true), Some(Switch::Joined));
        failover.heard(t0 + secs(3));
        failover.lost("connection reset by peer");
        match failover.poll(t0 + secs(3), true) {
            Some(Switch::Failover { silent, reason }) => {
                assert_eq!(silent, Duration::ZERO);
                assert!(
                    reason.contains("closed") && reason.contains("reset"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failback_waits_for_a_steady_primary_and_a_flap_restarts_the_wait() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        failover.heard(t0);
        failover.poll(t0, true);
        assert!(matches!(
            failover.poll(t0 + secs(10), true),
            Some(Switch::Failover { .. })
        ));
        // Back at 100 s, heard every 3 s for 20 s, then a link drop.
        let back = t0 + secs(100);
        for n in 0..=6 {
            failover.heard(back + secs(3 * n));
            assert_eq!(failover.poll(back + secs(3 * n), true), None);
        }
        failover.lost("reset by peer");
        failover.heard(back + secs(21));
        // The run restarted at 121 s: no failback at 131 s (30 s after 100).
        assert_eq!(failover.poll(back + secs(30), true), None);
        for n in 8..=17 {
            failover.heard(back + secs(3 * n));
        }
        // 21 -> 51: 30 s steady.
        match failover.poll(back + secs(51), true) {
            Some(Switch::Failback {
                failed_over_for,
                steady_for,
            }) => {
                assert_eq!(steady_for, secs(30));
                assert_eq!(failed_over_for, secs(141));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(failover.source(), Source::Primary);
    }

    #[test]
    fn a_gap_longer_than_the_timeout_restarts_the_steady_run() {
        let t0 = Instant::now();
        let mut failover = Failover::new(TIMEOUT, FAILBACK, t0);
        failover.poll(t0 + secs(10), false);
        assert_eq!(failover.source(), Source::Local);
        failover.heard(t0 + secs(20));
        failover.heard(t0 + secs(35)); // a 15 s gap: the run starts again here
        failover.heard(t0 + secs(44));
        failover.heard(t0 + secs(53));
        failover.heard(t0 + secs(62));
        assert_eq!(failover.poll(t0 + secs(62), true), None);
        failover.heard(t0 + secs(65));
        assert!(matches!(
            failover.poll(t0 + secs(65), true),
            Some(Switch::Failback { steady_for, .. }) if steady_for == secs(30)
        ));
    }
}
