//! Best shares beyond the pool's memory: per address, the best of each of
//! the last 7 UTC days and the best ever seen, fed from the stats at each
//! sample and kept in a small file (`web.state_file`) so a restart keeps
//! the week and the all-time best. Bounded to [`MAX_ADDRESSES`]: when full,
//! the address whose best is oldest makes room.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tbg_pool::UserSnapshot;

/// Addresses remembered at most (about 100 bytes each on disk).
pub const MAX_ADDRESSES: usize = 10_000;
const WEEK_DAYS: u64 = 7;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AddressBest {
    /// (UTC day, best of that day), newest last, at most 7.
    days: Vec<(u64, f64)>,
    all_time: f64,
}

impl AddressBest {
    fn record(&mut self, day: u64, best_today: f64, best_ever: f64) {
        self.all_time = self.all_time.max(best_ever).max(best_today);
        if best_today <= 0.0 {
            return;
        }
        match self.days.last_mut() {
            Some((last, best)) if *last == day => *best = best.max(best_today),
            _ => self.days.push((day, best_today)),
        }
        self.days.retain(|(d, _)| d.saturating_add(WEEK_DAYS) > day);
    }

    fn week(&self, today: u64) -> f64 {
        self.days
            .iter()
            .filter(|(d, _)| d.saturating_add(WEEK_DAYS) > today)
            .map(|(_, best)| *best)
            .fold(0.0, f64::max)
    }

    fn newest_day(&self) -> u64 {
        self.days.last().map_or(0, |(d, _)| *d)
    }
}

/// An address's best shares, as the page shows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestShares {
    pub session: f64,
    pub week: f64,
    pub all_time: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("dashboard state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dashboard state {path} is not a state file ({reason}); move it away to start afresh")]
    Garbage { path: PathBuf, reason: String },
}

#[derive(Debug, Default)]
pub struct BestRecords {
    inner: Mutex<HashMap<String, AddressBest>>,
}

impl BestRecords {
    /// Reads `path`; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<BestRecords, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BestRecords::default())
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut map: HashMap<String, AddressBest> =
            serde_json::from_str(&text).map_err(|e| StateError::Garbage {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        // A file edited by hand or from a larger build stays bounded.
        if map.len() > MAX_ADDRESSES {
            let mut by_age: Vec<(u64, String)> = map
                .iter()
                .map(|(a, b)| (b.newest_day(), a.clone()))
                .collect();
            by_age.sort();
            for (_, address) in by_age.into_iter().take(map.len() - MAX_ADDRESSES) {
                map.remove(&address);
            }
        }
        Ok(BestRecords {
            inner: Mutex::new(map),
        })
    }

    /// Writes the record (temporary file, then rename: a crash leaves the
    /// old file or the new one). Blocking: call from `spawn_blocking`.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string(&*self.inner.lock()).map_err(|e| io(e.into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Takes each address's best of today and best ever from the stats.
    pub fn observe(&self, users: &[UserSnapshot], today: u64) {
        let mut inner = self.inner.lock();
        for user in users {
            if user.best_difficulty <= 0.0 && user.best_difficulty_today <= 0.0 {
                continue;
            }
            if !inner.contains_key(&user.address) && inner.len() >= MAX_ADDRESSES {
                let oldest = inner
                    .iter()
                    .min_by_key(|(_, b)| b.newest_day())
                    .map(|(a, _)| a.clone());
                if let Some(oldest) = oldest {
                    inner.remove(&oldest);
                }
            }
            inner.entry(user.address.clone()).or_default().record(
                today,
                user.best_difficulty_today,
                user.best_difficulty,
            );
        }
    }

    /// What the page shows: the record merged with the live stats (a share
    /// since the last sample counts at once).
    pub fn of(&self, user: &UserSnapshot, today: u64) -> BestShares {
        let mut best = self
            .inner
            .lock()
            .get(&user.address)
            .cloned()
            .unwrap_or_default();
        best.record(today, user.best_difficulty_today, user.best_difficulty);
        BestShares {
            session: user.best_difficulty_session,
            week: best.week(today),
            all_time: best.all_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(address: &str, session: f64, today: f64, ever: f64) -> UserSnapshot {
        UserSnapshot {
            best_difficulty: ever,
            best_difficulty_session: session,
            best_difficulty_today: today,
            ..UserSnapshot::empty(address)
        }
    }

    #[test]
    fn a_week_is_seven_days_and_all_time_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.json");
        let records = BestRecords::load(&path).unwrap();
        // Day 100: a great share; days 101..=106 smaller ones.
        records.observe(&[user("a", 900.0, 900.0, 900.0)], 100);
        for day in 101..=106 {
            records.observe(&[user("a", 10.0, 10.0 + day as f64, 900.0)], day);
        }
        records.save(&path).unwrap();
        // Restarted: the pool's memory is empty (best ever 0 again).
        let restarted = BestRecords::load(&path).unwrap();
        let fresh = user("a", 5.0, 5.0, 5.0);
        assert_eq!(
            restarted.of(&fresh, 106),
            BestShares {
                session: 5.0,
                week: 900.0,
                all_time: 900.0
            }
        );
        // Day 107: day 100 has left the week, the all-time best stays.
        let best = restarted.of(&fresh, 107);
        assert_eq!((best.week, best.all_time), (116.0, 900.0));
    }

    #[test]
    fn the_record_is_bounded_and_a_garbage_file_is_named() {
        let records = BestRecords::default();
        for i in 0..(MAX_ADDRESSES + 5) {
            records.observe(&[user(&format!("addr{i}"), 1.0, 1.0, 1.0)], i as u64);
        }
        assert_eq!(records.inner.lock().len(), MAX_ADDRESSES);
        assert!(
            !records.inner.lock().contains_key("addr0"),
            "the oldest went"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = BestRecords::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("dashboard.json") && error.contains("move it away"),
            "{error}"
        );
    }
}
