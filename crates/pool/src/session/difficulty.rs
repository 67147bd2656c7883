//! The session's difficulty: vardiff retargets, miner suggestions, and
//! the caps and rate limit that keep either from hurting anyone else.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tbg_events::EventData;
use tbg_stratum::Request;
use tbg_work::Vardiff;
use tokio::sync::watch;

use super::Session;
use crate::work_source::CurrentWork;

impl Session {
    pub(crate) fn vardiff_config(&self, start: f64) -> tbg_work::VardiffConfig {
        let settings = self.shared.live();
        tbg_work::VardiffConfig {
            target_interval_secs: settings.share_interval.as_secs_f64(),
            retarget_window_secs: settings.share_interval.as_secs_f64() * 6.0,
            min_difficulty: settings.min_difficulty,
            // No explicit maximum (ckpool's maxdiff 0): the hard ceiling.
            max_difficulty: settings.max_difficulty.unwrap_or(tbg_work::MAX_DIFFICULTY),
            start_difficulty: start,
            min_change_interval_secs: self
                .shared
                .settings
                .difficulty_change_interval
                .as_secs_f64(),
        }
    }

    pub(super) fn suggest_difficulty(
        &mut self,
        request: &Request,
        difficulty: f64,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        self.suggested_difficulty = Some(difficulty);
        out.push_str(&tbg_stratum::response_ok(&request.id, Value::Bool(true)));
        let now = Instant::now();
        let seconds = self.shared.seconds(now);
        // Vardiff applies at most one change per `difficulty_change_interval`;
        // a suggestion within it waits (the latest wins) for a later share
        // or vardiff tick.
        let changed = self
            .vardiff
            .as_mut()
            .and_then(|vardiff| vardiff.suggest_difficulty(difficulty, seconds));
        if let Some(new) = changed {
            self.retarget(new, now, out, work_rx);
        }
    }

    pub(super) fn change_difficulty(&mut self, new: f64, now: Instant, out: &mut String) {
        let old = self.difficulty;
        self.difficulty = new;
        match &mut self.wire {
            None => out.push_str(&tbg_stratum::set_difficulty(new)),
            Some(wire) => wire.set_target(new),
        }
        // Only a difficulty the share rate set outlives the connection:
        // anyone can authorize as any worker and suggest anything.
        let earned = self.vardiff.as_ref().and_then(Vardiff::earned_difficulty) == Some(new);
        if let Some(user) = &self.authorized {
            for (worker, _) in &user.workers {
                if earned {
                    self.shared
                        .difficulty_memory
                        .remember(&user.address, worker, new, now);
                }
                self.emit(EventData::DiffUpdated {
                    user: user.address.clone(),
                    worker: worker.clone(),
                    client_id: self.client_id,
                    old_diff: old,
                    new_diff: new,
                });
            }
        }
    }

    /// A new difficulty from vardiff: tell the miner, then give it a job
    /// issued at that difficulty (miners apply it from the next job).
    pub(crate) fn retarget(
        &mut self,
        new: f64,
        now: Instant,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        if (new - self.difficulty).abs() <= f64::EPSILON * new {
            return;
        }
        self.change_difficulty(new, now, out);
        let work = work_rx.borrow().clone();
        if let Some(work) = work {
            self.push_job(&work, out);
        }
    }

    /// Periodic vardiff check: the network difficulty of the current work
    /// as the cap, a change that waited for its interval, and an easier
    /// difficulty for a miner whose shares stopped.
    pub(crate) fn poll_vardiff(
        &mut self,
        out: &mut String,
        work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
    ) {
        let now = Instant::now();
        let seconds = self.shared.seconds(now);
        let network = network_difficulty(work_rx);
        if let Some(new) = self.vardiff.as_mut().and_then(|vardiff| {
            network
                .and_then(|network| vardiff.set_network_difficulty(network, seconds))
                .or_else(|| vardiff.poll(seconds))
        }) {
            self.retarget(new, now, out, work_rx);
        }
    }
}

/// The network difficulty of the current work, the cap of every share
/// difficulty.
pub(super) fn network_difficulty(
    work_rx: &watch::Receiver<Option<Arc<CurrentWork>>>,
) -> Option<f64> {
    work_rx
        .borrow()
        .as_ref()
        .map(|work| work.network_difficulty)
}
