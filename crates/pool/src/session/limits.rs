//! The session's side of the abuse limits: its request rates, its
//! protocol-error allowance and the live settings they read.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use tbg_stratum::Request;

use super::{CloseReason, Session};
use crate::limits::{LimitKind, RequestKind, Verdict};

impl Session {
    /// Takes the settings of a reload, if there was one since the last look.
    pub(super) fn refresh_live(&mut self) {
        let generation = self.shared.live_generation.load(Ordering::Acquire);
        if generation != self.live_generation {
            self.live_generation = generation;
            self.live = self.shared.live();
        }
    }

    /// A protocol error: answered with `reply` while the connection is
    /// within its allowance, else closed.
    pub(super) fn protocol_error(
        &mut self,
        now: Instant,
        id: &Value,
        reply: String,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        match self.limiter.protocol_error(&self.live.limits, now) {
            Verdict::Close(_) => self.close_for_errors(id, out),
            Verdict::Allow | Verdict::Refuse(_) => {
                out.push_str(&reply);
                Ok(())
            }
        }
    }

    /// Counted and logged by the guard when the connection is released.
    pub(super) fn close_for_errors(
        &mut self,
        id: &Value,
        out: &mut String,
    ) -> Result<(), CloseReason> {
        out.push_str(&tbg_stratum::response_error(
            id,
            20,
            "Too many protocol errors; closing",
        ));
        Err(CloseReason::TooManyErrors)
    }

    /// The rate limits of `request`'s method; `Err` closes the connection.
    pub(super) fn within_limits(
        &mut self,
        request: &Request,
        now: Instant,
        out: &mut String,
    ) -> Result<Admit, CloseReason> {
        let kind = RequestKind::of(&request.method);
        match self.limiter.request(kind, &self.live.limits, now) {
            Verdict::Allow => Ok(Admit::Handle),
            Verdict::Close(_) => self
                .close_for_errors(&request.id, out)
                .map(|()| Admit::Refused),
            // Judged all the same, and answered there (`shares.rs`).
            Verdict::Refuse(LimitKind::SubmitRate) => Ok(Admit::OverSubmitRate),
            Verdict::Refuse(limit) => {
                self.shared.guard.refused(
                    &self.shared.counters,
                    limit,
                    self.peer,
                    Some(self.client_id),
                    now,
                );
                let what = match limit {
                    LimitKind::RequestRate => {
                        "mining.configure, suggest_difficulty and extranonce.subscribe"
                    }
                    _ => request.method.as_str(),
                };
                out.push_str(&rate_limit_error(&request.id, what));
                Ok(Admit::Refused)
            }
        }
    }
}

/// What the rate limits say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Handle,
    /// A submit past `max_submits_per_minute`: judged anyway (it may be a
    /// block), then credited only if it is one.
    OverSubmitRate,
    /// Refused and answered: handle nothing.
    Refused,
}

/// The answer to a request over its rate.
pub(super) fn rate_limit_error(id: &Value, what: &str) -> String {
    tbg_stratum::response_error(id, 20, &format!("Rate limit: too many {what} per minute"))
}
