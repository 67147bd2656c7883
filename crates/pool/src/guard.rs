//! The limits applied: the per-source table behind a lock, shared by the
//! accept loop and the sessions, and the refusal counters and log lines
//! (at a bounded rate, so a flood cannot flood the log).

use std::net::SocketAddr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::counters::PoolCounters;
use crate::limits::{IpKey, IpTable, LimitKind, LimitSettings, LogBudget};
use crate::session::CloseReason;

/// An IPv6 site (/48) may use this many sources' (/64s') worth of the
/// per-source limits: a home or an office with a few /64s is served as a
/// few sources, and a stranger holding a whole /48 (65,536 /64s) gets no
/// more than that, and is banned as one site when it keeps abusing.
pub(crate) const SITE_SCALE: u32 = 4;

pub(crate) struct Guard {
    tables: Mutex<Tables>,
    log: Mutex<LogBudget>,
}

struct Tables {
    /// IPv4 addresses and IPv6 /64s.
    sources: IpTable,
    /// IPv6 /48s, each allowed [`SITE_SCALE`] sources' worth.
    sites: IpTable,
}

/// An admitted connection; hand it back to [`Guard::release`] when it closes.
pub(crate) struct Ticket {
    /// `None`: an allow-listed source, not tracked.
    key: Option<IpKey>,
    /// The IPv6 site of `key`.
    site: Option<IpKey>,
}

impl Guard {
    pub(crate) fn new(limits: &LimitSettings, now: Instant) -> Guard {
        Guard {
            tables: Mutex::new(Tables {
                sources: IpTable::new(limits.ip_table_size, now),
                sites: IpTable::scaled(limits.ip_table_size, SITE_SCALE, now),
            }),
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
            return Ok(Ticket {
                key: None,
                site: None,
            });
        }
        let key = IpKey::of(peer.ip());
        let site = IpKey::site(peer.ip());
        let (admission, sources) = {
            let mut tables = self.tables.lock();
            // The source's own limits first, so that one /64 at its limit
            // does not spend what its site's other /64s may use.
            let admission = tables.sources.admit(key, limits, now).and_then(|()| {
                let Some(site) = site else {
                    return Ok(());
                };
                tables.sites.admit(site, limits, now).inspect_err(|_| {
                    tables.sources.release(key, false, limits, now);
                })
            });
            (admission, tables.sources.len())
        };
        counters
            .ip_sources
            .store(sources as u64, std::sync::atomic::Ordering::Relaxed);
        admission.map(|()| Ticket {
            key: Some(key),
            site,
        })
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
            CloseReason::TooManyErrors | CloseReason::MalformedFrame => {
                Some(LimitKind::ProtocolErrors)
            }
            CloseReason::TooManyInvalidShares => Some(LimitKind::InvalidShares),
            _ => None,
        };
        if let Some(kind) = abuse {
            self.refused(counters, kind, peer, None, now);
        }
        let Some(key) = ticket.key else {
            return;
        };
        let (banned, site_banned) = {
            let mut tables = self.tables.lock();
            let banned = tables.sources.release(key, abuse.is_some(), limits, now);
            let site_banned = ticket
                .site
                .filter(|&site| tables.sites.release(site, abuse.is_some(), limits, now));
            (banned, site_banned)
        };
        if banned {
            self.banned(counters, key, limits, now);
        }
        if let Some(site) = site_banned {
            self.banned(counters, site, limits, now);
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
