//! The plan's abuse limits as pure state: token buckets, the per-source
//! table (fixed capacity) and the log budget. No I/O and no clock: every
//! call takes the time as an input, so the rules are tested without sockets
//! or sleeps. `guard.rs` (per source, at accept) and `session.rs` (per
//! connection) apply them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

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
    /// A source refused (or one of whose connections was closed for abuse)
    /// more often than this within a minute is banned.
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

    /// Settings with no limit at all (benchmarks, the devnet's own miner).
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
fn millis(epoch: Instant, now: Instant) -> u64 {
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
    /// connection that keeps going past a limit is closed.
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

/// A source as the limits see it: an IPv4 address, or the /64 of an IPv6
/// one (one host usually holds a whole /64, so its addresses are one
/// source). IPv4-mapped IPv6 addresses are their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => IpKey(u128::from(v6) & !u128::from(u64::MAX)),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => write!(f, "{v4}"),
            None => write!(f, "{v6}/64"),
        }
    }
}

/// An allow-list entry: `10.0.0.0/8`, `2001:db8::/48`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network in the IPv6 space (IPv4 as mapped addresses).
    network: u128,
    /// Prefix length in that space (IPv4 /n is 96 + n).
    prefix: u8,
    v4: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or address/prefix")]
    Syntax(String),
    #[error("{text:?}: prefix longer than /{max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has host bits set (did you mean {network}?)")]
    HostBits { text: String, network: String },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let ip = IpAddr::from_str(address).map_err(|_| syntax())?;
        let (bits, max, v4) = match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 32u8, true),
            IpAddr::V6(v6) => (u128::from(v6), 128u8, false),
        };
        let length = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| syntax())?,
        };
        if length > max {
            return Err(CidrError::Prefix {
                text: text.to_owned(),
                max,
            });
        }
        let prefix = length + (128 - max);
        let cidr = Cidr {
            network: bits & mask(prefix),
            prefix,
            v4,
        };
        if cidr.network != bits {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        (bits ^ self.network) & mask(self.prefix) == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.network);
        match (self.v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

/// What the table said about a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// `Err` names the limit that refused it.
    pub outcome: Result<(), LimitKind>,
    /// This refusal started a ban.
    pub banned: bool,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    key: IpKey,
    connects: Bucket,
    strikes: Bucket,
    open: u32,
    banned_since_ms: Option<u64>,
    /// Links of the idle list (sources with no open connection), most
    /// recently seen first; a source with open connections is not in it
    /// and is never evicted.
    newer: u32,
    older: u32,
}

/// Per-source state in a fixed number of slots. A new source takes a free
/// slot, else the slot of the least recently seen source that has no open
/// connection (its rates and ban are forgotten); when every slot holds a
/// source with open connections, the new one is refused (`IpTableFull`).
/// Nothing here grows past the capacity, and nothing panics.
#[derive(Debug)]
pub struct IpTable {
    epoch: Instant,
    capacity: usize,
    index: HashMap<IpKey, u32>,
    slots: Vec<Slot>,
    /// Most and least recently seen idle slots.
    newest: u32,
    oldest: u32,
}

impl IpTable {
    pub fn new(capacity: usize, now: Instant) -> IpTable {
        // Slot numbers are u32 with one value reserved.
        let capacity = capacity.clamp(1, NIL as usize - 1);
        IpTable {
            epoch: now,
            capacity,
            index: HashMap::with_capacity(capacity.min(4096)),
            slots: Vec::with_capacity(capacity.min(4096)),
            newest: NIL,
            oldest: NIL,
        }
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A new connection from `key`. Checks, in order: ban, open
    /// connections, connect rate; a refusal other than a ban is a strike
    /// towards one. Admitted: the caller must [`IpTable::release`] it.
    pub fn admit(&mut self, key: IpKey, limits: &LimitSettings, now: Instant) -> Admission {
        let ms = millis(self.epoch, now);
        let Some(slot) = self.slot_for(key) else {
            return Admission {
                outcome: Err(LimitKind::IpTableFull),
                banned: false,
            };
        };
        let index = slot as usize;
        if self.slots[index].open == 0 {
            // Seen now: the idle list's newest.
            self.unlink(slot);
            self.link_newest(slot);
        }
        let entry = &mut self.slots[index];
        if let Some(since) = entry.banned_since_ms {
            let until = since.saturating_add(millis_of(limits.ban_duration));
            if ms < until && !limits.ban_duration.is_zero() {
                return Admission {
                    outcome: Err(LimitKind::Banned),
                    banned: false,
                };
            }
            // Served: a fresh start.
            entry.banned_since_ms = None;
            entry.strikes = Bucket::full();
            entry.connects = Bucket::full();
        }
        let refused =
            if limits.max_connections_per_ip != 0 && entry.open >= limits.max_connections_per_ip {
                Some(LimitKind::IpConnections)
            } else if !entry.connects.take(limits.connects_per_minute_per_ip, ms) {
                Some(LimitKind::ConnectRate)
            } else {
                None
            };
        if let Some(kind) = refused {
            let banned = strike(entry, limits, ms);
            return Admission {
                outcome: Err(kind),
                banned,
            };
        }
        entry.open += 1;
        if entry.open == 1 {
            self.unlink(slot);
        }
        Admission {
            outcome: Ok(()),
            banned: false,
        }
    }

    /// An admitted connection from `key` closed; `abused`: it was closed by
    /// a limit (a strike). True when that started a ban.
    pub fn release(
        &mut self,
        key: IpKey,
        abused: bool,
        limits: &LimitSettings,
        now: Instant,
    ) -> bool {
        let ms = millis(self.epoch, now);
        let Some(&slot) = self.index.get(&key) else {
            return false;
        };
        let entry = &mut self.slots[slot as usize];
        let banned = abused && strike(entry, limits, ms);
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 {
            self.link_newest(slot);
        }
        banned
    }

    /// Whether `key` is banned at `now` (status and tests).
    pub fn is_banned(&self, key: IpKey, limits: &LimitSettings, now: Instant) -> bool {
        let ms = millis(self.epoch, now);
        self.index
            .get(&key)
            .and_then(|&slot| self.slots[slot as usize].banned_since_ms)
            .is_some_and(|since| {
                !limits.ban_duration.is_zero()
                    && ms < since.saturating_add(millis_of(limits.ban_duration))
            })
    }

    /// Open connections of `key`.
    pub fn open(&self, key: IpKey) -> u32 {
        self.index
            .get(&key)
            .map_or(0, |&slot| self.slots[slot as usize].open)
    }

    /// The slot of `key`, taking a free or evicted one for a new source;
    /// `None` when every slot has open connections.
    fn slot_for(&mut self, key: IpKey) -> Option<u32> {
        if let Some(&slot) = self.index.get(&key) {
            return Some(slot);
        }
        let fresh = Slot {
            key,
            connects: Bucket::full(),
            strikes: Bucket::full(),
            open: 0,
            banned_since_ms: None,
            newer: NIL,
            older: NIL,
        };
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(fresh);
            (self.slots.len() - 1) as u32
        } else {
            let victim = self.oldest;
            if victim == NIL {
                return None;
            }
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim as usize], fresh);
            self.index.remove(&old.key);
            victim
        };
        self.index.insert(key, slot);
        self.link_newest(slot);
        Some(slot)
    }

    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let entry = &self.slots[slot as usize];
            (entry.newer, entry.older)
        };
        let linked = newer != NIL || older != NIL || self.newest == slot;
        if !linked {
            return;
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        let entry = &mut self.slots[slot as usize];
        entry.newer = NIL;
        entry.older = NIL;
    }

    fn link_newest(&mut self, slot: u32) {
        let previous = self.newest;
        {
            let entry = &mut self.slots[slot as usize];
            entry.newer = NIL;
            entry.older = previous;
        }
        match previous {
            NIL => self.oldest = slot,
            p => self.slots[p as usize].newer = slot,
        }
        self.newest = slot;
    }
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A strike against a source; true when it starts a ban.
fn strike(entry: &mut Slot, limits: &LimitSettings, ms: u64) -> bool {
    if limits.ban_after_refusals_per_minute == 0 || limits.ban_duration.is_zero() {
        return false;
    }
    if entry.strikes.take(limits.ban_after_refusals_per_minute, ms) {
        return false;
    }
    entry.banned_since_ms = Some(ms);
    entry.strikes = Bucket::full();
    true
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
#[path = "limits_tests.rs"]
mod tests;
