//! The per-source table: fixed capacity, least recently seen idle source
//! evicted first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{millis, Bucket, IpKey, LimitKind, LimitSettings};

const NIL: u32 = u32::MAX;

/// Idle sources looked at, oldest first, for one that is not banned when a
/// new source needs a slot: a stranger cycling through fresh addresses
/// must not push its own bans out of the table, and the search stays
/// bounded.
pub const EVICTION_SEARCH: usize = 64;

#[derive(Debug, Clone)]
struct Slot {
    key: IpKey,
    connects: Bucket,
    strikes: Strikes,
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
/// connection and is not banned (its rates are forgotten; a banned one goes
/// only when [`EVICTION_SEARCH`] idle ones in a row are banned); when every
/// slot holds a source with open connections, the new one is refused
/// (`IpTableFull`). Nothing here grows past the capacity, and nothing panics.
#[derive(Debug)]
pub struct IpTable {
    epoch: Instant,
    capacity: usize,
    /// The limits' counts are multiplied by this (a table of IPv6 sites
    /// allows a site several sources' worth).
    scale: u32,
    index: HashMap<IpKey, u32>,
    slots: Vec<Slot>,
    /// Most and least recently seen idle slots.
    newest: u32,
    oldest: u32,
}

impl IpTable {
    pub fn new(capacity: usize, now: Instant) -> IpTable {
        IpTable::scaled(capacity, 1, now)
    }

    /// A table whose sources are each allowed `scale` times the limits'
    /// connects, connections and abuse closures.
    pub fn scaled(capacity: usize, scale: u32, now: Instant) -> IpTable {
        // Slot numbers are u32 with one value reserved.
        let capacity = capacity.clamp(1, NIL as usize - 1);
        IpTable {
            epoch: now,
            capacity,
            scale: scale.max(1),
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

    /// Entries in the index and slots allocated: what the table holds.
    #[cfg(test)]
    pub(super) fn allocated(&self) -> (usize, usize) {
        (self.index.len(), self.slots.capacity())
    }

    /// A new connection from `key`. Checks, in order: ban, open
    /// connections, connect rate. `Err` names the limit that refused it;
    /// admitted, the caller must [`IpTable::release`] it.
    ///
    /// A refusal here is never a strike towards a ban: every miner of a
    /// farm or a CGNAT reconnects at once after a pool restart (the pool
    /// itself tells them to), and such a source is served over time at its
    /// connect rate, not banned. A refused connection costs an accept and
    /// a close, so a pure connect flood needs no ban either; only
    /// connections closed for abuse ([`IpTable::release`]) are strikes.
    pub fn admit(
        &mut self,
        key: IpKey,
        limits: &LimitSettings,
        now: Instant,
    ) -> Result<(), LimitKind> {
        let ms = millis(self.epoch, now);
        let Some(slot) = self.slot_for(key, limits.ban_duration, ms) else {
            return Err(LimitKind::IpTableFull);
        };
        let max_connections = limits.max_connections_per_ip.saturating_mul(self.scale);
        let connects_per_minute = limits.connects_per_minute_per_ip.saturating_mul(self.scale);
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
                return Err(LimitKind::Banned);
            }
            // Served: a fresh start.
            entry.banned_since_ms = None;
            entry.strikes = Strikes::default();
            entry.connects = Bucket::full();
        }
        if max_connections != 0 && entry.open >= max_connections {
            return Err(LimitKind::IpConnections);
        }
        if !entry.connects.take(connects_per_minute, ms) {
            return Err(LimitKind::ConnectRate);
        }
        entry.open += 1;
        if entry.open == 1 {
            self.unlink(slot);
        }
        Ok(())
    }

    /// An admitted connection from `key` closed; `abused`: it was closed
    /// for abuse (protocol errors, invalid shares), a strike. True when
    /// that started a ban.
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
        let ban_after = limits
            .ban_after_refusals_per_minute
            .saturating_mul(self.scale);
        let entry = &mut self.slots[slot as usize];
        let banned = abused && strike(entry, ban_after, limits.ban_duration, ms);
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
    fn slot_for(&mut self, key: IpKey, ban_duration: Duration, ms: u64) -> Option<u32> {
        if let Some(&slot) = self.index.get(&key) {
            return Some(slot);
        }
        let fresh = Slot {
            key,
            connects: Bucket::full(),
            strikes: Strikes::default(),
            open: 0,
            banned_since_ms: None,
            newer: NIL,
            older: NIL,
        };
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(fresh);
            (self.slots.len() - 1) as u32
        } else {
            let victim = self.eviction_victim(ban_duration, ms)?;
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim as usize], fresh);
            self.index.remove(&old.key);
            victim
        };
        self.index.insert(key, slot);
        self.link_newest(slot);
        Some(slot)
    }

    /// The idle source to forget for a newcomer: the least recently seen
    /// one not serving a ban among the oldest [`EVICTION_SEARCH`], else the
    /// oldest; `None` when no source is idle.
    fn eviction_victim(&self, ban_duration: Duration, ms: u64) -> Option<u32> {
        let oldest = self.oldest;
        if oldest == NIL {
            return None;
        }
        let banned = |slot: &Slot| {
            slot.banned_since_ms.is_some_and(|since| {
                !ban_duration.is_zero() && ms < since.saturating_add(millis_of(ban_duration))
            })
        };
        let mut candidate = oldest;
        for _ in 0..EVICTION_SEARCH {
            if candidate == NIL {
                break;
            }
            let slot = &self.slots[candidate as usize];
            if !banned(slot) {
                return Some(candidate);
            }
            candidate = slot.newer;
        }
        Some(oldest)
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

/// A source's abuse closures in the current minute.
///
/// A count per fixed minute, not a token bucket refilled at the same rate:
/// strikes come one per connection, and connections at most at the connect
/// rate (10 a minute by default, like the ban threshold), so a bucket
/// refilling as fast as a source can connect would never run dry and an
/// abusive source would never be banned.
#[derive(Debug, Clone, Copy, Default)]
struct Strikes {
    window_start_ms: u64,
    count: u32,
}

/// A strike against a source; true when it starts a ban (more than
/// `ban_after` strikes within a minute).
fn strike(entry: &mut Slot, ban_after: u32, ban_duration: Duration, ms: u64) -> bool {
    if ban_after == 0 || ban_duration.is_zero() {
        return false;
    }
    let strikes = &mut entry.strikes;
    if strikes.count == 0 || ms.saturating_sub(strikes.window_start_ms) >= 60_000 {
        *strikes = Strikes {
            window_start_ms: ms,
            count: 0,
        };
    }
    strikes.count += 1;
    if strikes.count <= ban_after {
        return false;
    }
    entry.banned_since_ms = Some(ms);
    entry.strikes = Strikes::default();
    true
}
