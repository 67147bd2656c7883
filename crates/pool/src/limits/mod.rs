//! The plan's abuse limits as pure state: token buckets, the per-source
//! table (fixed capacity) and the log budget. No I/O and no clock: every
//! call takes the time as an input, so the rules are tested without sockets
//! or sleeps. `guard.rs` (per source, at accept) and `session.rs` (per
//! connection) apply them.

mod source;
mod table;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use source::{Cidr, CidrError, IpKey, IPV6_SITE_PREFIX};
pub use table::IpTable;

/// Why a connection or a request was refused; the `kind` label of
/// `ckpool_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `maxclients` connections are open.
    MaxClients,
    /// The source is serving a soft ban.
    Banned,
    /// The source has `max_connections_per_ip` connections open.
    IpConnections,
    /// The source connected more than `max_connects_per_minute_per_ip` times.
    ConnectRate,
    /// Every slot of the source table holds a source with open connections.
    IpTableFull,
    SubscribeRate,
    AuthorizeRate,
    SubmitRate,
    /// mining.configure, mining.suggest_difficulty, mining.extranonce.subscribe.
    RequestRate,
    /// A connection closed for too many unparsable lines, unknown methods,
    /// malformed or refused requests.
    ProtocolErrors,
    /// A connection closed for too many invalid shares.
    InvalidShares,
}

impl LimitKind {
    pub const ALL: [LimitKind; 11] = [
        LimitKind::MaxClients,
        LimitKind::Banned,
        LimitKind::IpConnections,
        LimitKind::ConnectRate,
        LimitKind::IpTableFull,
        LimitKind::SubscribeRate,
        LimitKind::AuthorizeRate,
        LimitKind::SubmitRate,
        LimitKind::RequestRate,
        LimitKind::ProtocolErrors,
        LimitKind::InvalidShares,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::MaxClients => "max_clients",
            LimitKind::Banned => "banned",
            LimitKind::IpConnections => "ip_connections",
            LimitKind::ConnectRate => "connect_rate",
            LimitKind::IpTableFull => "ip_table_full",
            LimitKind::SubscribeRate => "subscribe_rate",
            LimitKind::AuthorizeRate => "authorize_rate",
            LimitKind::SubmitRate => "submit_rate",
            LimitKind::RequestRate => "request_rate",
            LimitKind::ProtocolErrors => "protocol_errors",
            LimitKind::InvalidShares => "invalid_shares",
        }
    }

    /// Position in [`LimitKind::ALL`] (for counter arrays).
    pub fn index(self) -> usize {
        LimitKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// The limits in force (live: a reload swaps them). 0 means "no limit"
/// for every count and rate.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// New connections per minute from one source (burst of as many).
    pub connects_per_minute_per_ip: u32,
    /// Open connections from one source.
    pub max_connections_per_ip: u32,
    /// A source with more connections closed for abuse (protocol errors,
    /// invalid shares) than this within a minute is banned. Connections
    /// refused for the connect rate or the concurrency limit are not
    /// counted: a farm reconnecting at once is served over time, not banned.
    pub ban_after_refusals_per_minute: u32,
    /// How long a ban lasts; zero turns bans off (and lifts current ones).
    pub ban_duration: Duration,
    /// Sources exempt from every per-source limit.
    pub allow_list: Vec<Cidr>,
    /// Slots of the source table. Read at start only: the table never grows.
    pub ip_table_size: usize,
    pub subscribes_per_minute: u32,
    pub authorizes_per_minute: u32,
    pub submits_per_minute: u32,
    /// configure, suggest_difficulty and extranonce.subscribe together.
    pub other_requests_per_minute: u32,
    /// Past this, the connection is closed.
    pub protocol_errors_per_minute: u32,
}

impl Default for LimitSettings {
    /// The plan's figures (reference system: 10 connects/min/IP, 50
    /// concurrent/IP, 3 subscribes, 5 authorizes, 1000 submits per minute,
    /// soft ban 300 s).
    fn default() -> LimitSettings {
        LimitSettings {
            connects_per_minute_per_ip: 10,
            max_connections_per_ip: 50,
            ban_after_refusals_per_minute: 10,
            ban_duration: Duration::from_secs(300),
            allow_list: Vec::new(),
            ip_table_size: 65_536,
            subscribes_per_minute: 3,
            authorizes_per_minute: 5,
            submits_per_minute: 1000,
            other_requests_per_minute: 30,
            protocol_errors_per_minute: 20,
        }
    }
}

impl LimitSettings {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_list.iter().any(|cidr| cidr.contains(ip))
    }

    /// Settings with no limit at all (tests of one limit at a time).
    pub fn unlimited() -> LimitSettings {
        LimitSettings {
            connects_per_minute_per_ip: 0,
            max_connections_per_ip: 0,
            ban_after_refusals_per_minute: 0,
            ban_duration: Duration::ZERO,
            allow_list: Vec::new(),
            ip_table_size: 1024,
            subscribes_per_minute: 0,
            authorizes_per_minute: 0,
            submits_per_minute: 0,
            other_requests_per_minute: 0,
            protocol_errors_per_minute: 0,
        }
    }
}

/// One line for the reload log.
impl fmt::Display for LimitSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allow: Vec<String> = self.allow_list.iter().map(Cidr::to_string).collect();
        write!(
            f,
            "connects/min/ip {}, connections/ip {}, ban after {} refusals/min for {:?}, \
             allow [{}], subscribes/min {}, authorizes/min {}, submits/min {}, \
             other requests/min {}, protocol errors/min {}",
            self.connects_per_minute_per_ip,
            self.max_connections_per_ip,
            self.ban_after_refusals_per_minute,
            self.ban_duration,
            allow.join(" "),
            self.subscribes_per_minute,
            self.authorizes_per_minute,
            self.submits_per_minute,
            self.other_requests_per_minute,
            self.protocol_errors_per_minute,
        )
    }
}

/// Milliseconds since `epoch` (an `Instant` before it counts as 0).
pub(crate) fn millis(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// A token bucket holding up to `per_minute` tokens, refilled at
/// `per_minute` a minute: a burst of the whole minute's allowance, then a
/// steady rate. The capacity is passed on each call so that a reload
/// applies to existing buckets at once.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket (whatever the capacity turns out to be).
    pub fn full() -> Bucket {
        Bucket {
            tokens: f64::INFINITY,
            last_ms: 0,
        }
    }

    /// Takes one token at `now_ms`; false when none is left. A limit of 0
    /// never refuses.
    pub fn take(&mut self, per_minute: u32, now_ms: u64) -> bool {
        if per_minute == 0 {
            return true;
        }
        let capacity = f64::from(per_minute);
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * capacity / 60_000.0).min(capacity);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a connection's request is, for its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Subscribe,
    Authorize,
    Submit,
    Other,
    /// A method the pool does not know: a protocol error.
    Unknown,
}

impl RequestKind {
    pub fn of(method: &str) -> RequestKind {
        match method {
            "mining.subscribe" => RequestKind::Subscribe,
            "mining.authorize" => RequestKind::Authorize,
            "mining.submit" => RequestKind::Submit,
            "mining.configure" | "mining.suggest_difficulty" | "mining.extranonce.subscribe" => {
                RequestKind::Other
            }
            _ => RequestKind::Unknown,
        }
    }
}

/// A limit's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it as usual.
    Allow,
    /// Answer it with an error and do nothing else.
    Refuse(LimitKind),
    /// Close the connection.
    Close(LimitKind),
}

/// One connection's request buckets (~100 bytes).
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    epoch: Instant,
    subscribe: Bucket,
    authorize: Bucket,
    submit: Bucket,
    other: Bucket,
    errors: Bucket,
}

impl ConnectionLimiter {
    pub fn new(now: Instant) -> ConnectionLimiter {
        ConnectionLimiter {
            epoch: now,
            subscribe: Bucket::full(),
            authorize: Bucket::full(),
            submit: Bucket::full(),
            other: Bucket::full(),
            errors: Bucket::full(),
        }
    }

    /// A request of `kind` at `now`. An unknown method is a protocol error;
    /// a request over its rate is refused and counts as one too, so a
    /// connection that keeps going past a limit is closed. Except a submit:
    /// over its rate it is `Refuse(SubmitRate)` and nothing else, because
    /// a fast honest miner (an ASIC at a low start difficulty, until vardiff
    /// has raised it) submits past the limit, and one of those shares may
    /// be a block. The session still judges it (`session/shares.rs`); the
    /// limit only bounds what it writes to the journal.
    pub fn request(&mut self, kind: RequestKind, limits: &LimitSettings, now: Instant) -> Verdict {
        let ms = millis(self.epoch, now);
        let (bucket, per_minute, limit) = match kind {
            RequestKind::Subscribe => (
                &mut self.subscribe,
                limits.subscribes_per_minute,
                LimitKind::SubscribeRate,
            ),
            RequestKind::Authorize => (
                &mut self.authorize,
                limits.authorizes_per_minute,
                LimitKind::AuthorizeRate,
            ),
            RequestKind::Submit => (
                &mut self.submit,
                limits.submits_per_minute,
                LimitKind::SubmitRate,
            ),
            RequestKind::Other => (
                &mut self.other,
                limits.other_requests_per_minute,
                LimitKind::RequestRate,
            ),
            RequestKind::Unknown => return self.protocol_error(limits, now),
        };
        if bucket.take(per_minute, ms) {
            return Verdict::Allow;
        }
        if kind == RequestKind::Submit {
            return Verdict::Refuse(limit);
        }
        match self.protocol_error(limits, now) {
            Verdict::Allow => Verdict::Refuse(limit),
            close => close,
        }
    }

    /// An unparsable line, unknown method or malformed request: `Allow`
    /// (answer the error) until the connection is past its allowance.
    pub fn protocol_error(&mut self, limits: &LimitSettings, now: Instant) -> Verdict {
        let ms = millis(self.epoch, now);
        if self.errors.take(limits.protocol_errors_per_minute, ms) {
            Verdict::Allow
        } else {
            Verdict::Close(LimitKind::ProtocolErrors)
        }
    }
}

/// Log lines about refusals per minute, whoever causes them.
pub const LOG_LINES_PER_MINUTE: u32 = 30;

/// How many refusal log lines may be written: a flood costs at most
/// [`LOG_LINES_PER_MINUTE`] lines a minute, and the next line written says
/// how many were left out.
#[derive(Debug)]
pub struct LogBudget {
    epoch: Instant,
    bucket: Bucket,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(now: Instant) -> LogBudget {
        LogBudget {
            epoch: now,
            bucket: Bucket::full(),
            suppressed: 0,
        }
    }

    /// `Some(n)`: write the line, mentioning the `n` left out before it;
    /// `None`: leave it out.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .bucket
            .take(LOG_LINES_PER_MINUTE, millis(self.epoch, now))
        {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests;
