//! The limits applied: the per-source table behind a lock, shared by the
//! accept loop and the sessions, and the refusal counters and log lines
//! (at a bounded rate, so a flood cannot flood the log).

use std::net::SocketAddr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::counters::PoolCounters;
use crate::limits::{IpKey, IpTable, LimitKind, LimitSettings, LogBudget};
use crate::session::CloseReason;

pub(crate) struct Guard {
    table: Mutex<IpTable>,
    log: Mutex<LogBudget>,
}

/// An admitted connection; hand it back to [`Guard::release`] when it closes.
pub(crate) struct Ticket {
    /// `None`: an allow-listed source, not tracked.
    key: Option<IpKey>,
}

impl Guard {
    pub(crate) fn new(limits: &LimitSettings, now: Instant) -> Guard {
        Guard {
            table: Mutex::new(IpTable::new(limits.ip_table_size, now)),
            log: Mutex::new(LogBudget::new(now)),
        }
    }

    /// The per-source limits for a new connection from `peer`.
    pub(crate) fn admit(
        &self,
        limits: &LimitSettings,
        counters: &PoolCounters,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Ticket, LimitKind> {
        if limits.allows(peer.ip()) {
            return Ok(Ticket { key: None });
        }
        let key = IpKey::of(peer.ip());
        let (admission, sources) = {
            let mut table = self.table.lock();
            (table.admit(key, limits, now), table.len())
        };
        counters
            .ip_sources
            .store(sources as u64, std::sync::atomic::Ordering::Relaxed);
        admission.map(|()| Ticket { key: Some(key) })
    }

    /// A connection closed; one closed for abuse (protocol errors, invalid
    /// shares) is a strike against its source (and counted here, once per
    /// connection). Refusals at admission never are (`IpTable::admit`).
    pub(crate) fn release(
        &self,
        ticket: Ticket,
        reason: CloseReason,
        limits: &LimitSettings,
        counters: &PoolCounters,
        peer: SocketAddr,
        now: Instant,
    ) {
        let abuse = match reason {
            CloseReason::TooManyErrors => Some(LimitKind::ProtocolErrors),
            CloseReason::TooManyInvalidShares => Some(LimitKind::InvalidShares),
            _ => None,
        };
        if let Some(kind) = abuse {
            self.refused(counters, kind, peer, None, now);
        }
        let Some(key) = ticket.key else {
            return;
        };
        let banned = self.table.lock().release(key, abuse.is_some(), limits, now);
        if banned {
            self.banned(counters, key, limits, now);
        }
    }

    /// Counts a refusal and logs it, within the log budget.
    pub(crate) fn refused(
        &self,
        counters: &PoolCounters,
        kind: LimitKind,
        peer: SocketAddr,
        client: Option<u64>,
        now: Instant,
    ) {
        counters.limit_refused(kind);
        let Some(suppressed) = self.log.lock().allow(now) else {
            return;
        };
        tracing::info!(
            limit = kind.label(),
            %peer,
            client,
            not_logged_before = suppressed,
            "refused by a limit"
        );
    }

    fn banned(&self, counters: &PoolCounters, key: IpKey, limits: &LimitSettings, now: Instant) {
        counters
            .ip_bans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(suppressed) = self.log.lock().allow(now) else {
            return;
        };
        tracing::warn!(
            source = %key,
            seconds = limits.ban_duration.as_secs(),
            not_logged_before = suppressed,
            "source banned: it kept breaking the limits"
        );
    }
}
