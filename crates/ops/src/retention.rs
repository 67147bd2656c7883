//! Retention of the PostgreSQL dumps: the newest `daily` in `daily/`, and in
//! `weekly/` the newest dump of each of the `weekly` most recent ISO weeks
//! that have one (weeks without backups do not count, so a pause in backups
//! never deletes the last good ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::{OpsError, DAILY_DIR, WEEKLY_DIR};

/// How many PostgreSQL dumps are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub daily: usize,
    pub weekly: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            daily: 7,
            weekly: 4,
        }
    }
}

/// What retention did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Dumps (and their manifests) deleted.
    pub removed: Vec<PathBuf>,
    /// Dumps newly kept as the backup of their week.
    pub promoted_weekly: Vec<PathBuf>,
}

/// The file-name stamp of a time: `YYYYMMDDTHHMMSSZ` (UTC, sorts by time).
pub fn backup_stamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Parses a [`backup_stamp`]; `None` for any other name.
pub fn parse_stamp(stamp: &str) -> Option<OffsetDateTime> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes.get(8) != Some(&b'T') || bytes.get(15) != Some(&b'Z') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let text = stamp.get(range)?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let day = u8::try_from(number(6..8)?).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// `<stamp>.dump` files of a dir, by stamp.
fn dumps_in(dir: &Path) -> Result<BTreeMap<String, PathBuf>, OpsError> {
    let mut dumps = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(dumps),
        Err(error) => {
            return Err(OpsError::Io {
                context: "cannot list",
                path: dir.to_path_buf(),
                source: error,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(OpsError::io("cannot list", dir))?;
        let name = entry.file_name();
        let Some(stamp) = name.to_str().and_then(|n| n.strip_suffix(".dump")) else {
            continue;
        };
        if parse_stamp(stamp).is_some() {
            dumps.insert(stamp.to_string(), entry.path());
        }
    }
    Ok(dumps)
}

/// The manifest that belongs to a dump: `<stamp>.manifest.json`.
pub(crate) fn manifest_path_of(dump: &Path) -> PathBuf {
    let stem = dump
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".dump").unwrap_or(n).to_string())
        .unwrap_or_default();
    dump.with_file_name(format!("{stem}.manifest.json"))
}

fn remove_backup(dump: &Path, report: &mut RetentionReport) -> Result<(), OpsError> {
    let manifest = manifest_path_of(dump);
    match std::fs::remove_file(&manifest) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(OpsError::Io {
                context: "cannot delete",
                path: manifest,
                source: error,
            })
        }
    }
    std::fs::remove_file(dump).map_err(OpsError::io("cannot delete", dump))?;
    report.removed.push(dump.to_path_buf());
    Ok(())
}

/// A hard link when possible (no extra space), a copy otherwise.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), OpsError> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(OpsError::io("cannot copy into weekly/", to))?;
    }
    Ok(())
}

/// Applies `retention` to `<backup_dir>/daily` and `<backup_dir>/weekly`.
pub fn apply_retention(
    backup_dir: &Path,
    retention: Retention,
) -> Result<RetentionReport, OpsError> {
    let daily_dir = backup_dir.join(DAILY_DIR);
    let weekly_dir = backup_dir.join(WEEKLY_DIR);
    let daily = dumps_in(&daily_dir)?;
    let weekly = dumps_in(&weekly_dir)?;
    let mut report = RetentionReport::default();

    // Newest stamp of each ISO week, over every backup we have.
    let mut newest_of_week: BTreeMap<(i32, u8), String> = BTreeMap::new();
    for stamp in daily.keys().chain(weekly.keys()) {
        let Some(at) = parse_stamp(stamp) else {
            continue;
        };
        let (year, week, _) = at.date().to_iso_week_date();
        let slot = newest_of_week.entry((year, week)).or_default();
        if *slot < *stamp {
            *slot = stamp.clone();
        }
    }
    let weekly_keep: Vec<String> = newest_of_week
        .values()
        .rev()
        .take(retention.weekly)
        .cloned()
        .collect();

    if !weekly_keep.is_empty() {
        std::fs::create_dir_all(&weekly_dir).map_err(OpsError::io("cannot create", &weekly_dir))?;
    }
    for stamp in &weekly_keep {
        if weekly.contains_key(stamp) {
            continue;
        }
        let Some(source) = daily.get(stamp) else {
            continue;
        };
        let target = weekly_dir.join(format!("{stamp}.dump"));
        link_or_copy(source, &target)?;
        let manifest = manifest_path_of(source);
        if manifest.exists() {
            link_or_copy(&manifest, &manifest_path_of(&target))?;
        }
        report.promoted_weekly.push(target);
    }
    for (stamp, path) in &weekly {
        if !weekly_keep.contains(stamp) {
            remove_backup(path, &mut report)?;
        }
    }
    for (_, path) in daily.iter().rev().skip(retention.daily) {
        remove_backup(path, &mut report)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_other_names() {
        let at = parse_stamp("20261125T175704Z").expect("valid stamp");
        assert_eq!(backup_stamp(at), "20261125T175704Z");
        for bad in [
            "",
            "20261125T175704",
            "20261325T175704Z",
            "2026112xT175704Z",
            "hello.dump",
        ] {
            assert!(parse_stamp(bad).is_none(), "{bad} accepted");
        }
    }
}
