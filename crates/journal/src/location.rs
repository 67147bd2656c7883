//! Where the stage ring lives.
//!
//! The ring is written on every event, so where its pages live decides the
//! cost of an append. In a tmpfs (`/dev/shm`) it is written through a
//! populated shared mapping: a plain memory copy, no syscall and no page
//! fault on the share path. Beside the SQLite file (a disk file system) it
//! is written with `pwrite`: a mapping of a disk file takes write faults
//! whenever writeback cleaned a page, and those stall the share path for
//! milliseconds (measured, see docs/benchmarks.md).
//!
//! Both survive `kill -9` of the pool, the promise of
//! [`crate::Durability::ProcessCrash`]. A tmpfs ring does not survive a
//! reboot: events staged by a pool that crashed and was not restarted
//! before the machine rebooted are lost (the disk ring usually kept them,
//! though a power loss could lose them there too). A clean stop commits
//! everything and removes a tmpfs ring, so it holds no memory while the
//! pool is stopped.
//!
//! A ring outside the journal's directory is named after the journal
//! (`tbg-<file name>-<hash of its absolute path>.stage`) and records the
//! journal's path in its header, so one directory serves many journals and
//! the ring of a journal that no longer exists can be removed
//! ([`remove_orphans`]).

use std::path::{Path, PathBuf};

/// The default directory of an in-memory ring.
pub const DEFAULT_MEMORY_STAGE_DIR: &str = "/dev/shm";

/// Where [`crate::Journal::open`] puts the stage ring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StageDir {
    /// `<journal>.stage`, beside the SQLite file.
    #[default]
    BesideJournal,
    /// In this directory when the ring can be created there (it exists, is
    /// writable and has room for the preallocated ring); beside the
    /// journal otherwise, with a warning.
    Preferred(PathBuf),
    /// In this directory, or the open fails.
    Required(PathBuf),
}

impl StageDir {
    /// The directory asked for, if not beside the journal.
    pub(crate) fn dir(&self) -> Option<&Path> {
        match self {
            StageDir::BesideJournal => None,
            StageDir::Preferred(dir) | StageDir::Required(dir) => Some(dir),
        }
    }
}

/// The ring's path beside the journal: `<journal>.stage`.
pub(crate) fn beside_journal(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".stage");
    PathBuf::from(name)
}

/// The ring's path in `dir` for this journal. The same journal always gets
/// the same name, whichever relative path or symlink named it.
pub(crate) fn in_dir(dir: &Path, journal: &Path) -> PathBuf {
    let absolute = absolute_journal_path(journal);
    let file_name = journal
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journal".into());
    // Keep the name readable and short; the hash tells journals apart.
    let readable: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    dir.join(format!(
        "tbg-{readable}-{:016x}.stage",
        fnv1a(absolute.as_os_str().as_encoded_bytes())
    ))
}

/// The journal's absolute path with its directory's symlinks resolved (the
/// file itself may not exist yet).
pub(crate) fn absolute_journal_path(journal: &Path) -> PathBuf {
    let parent = journal
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), journal.file_name()) {
        (Ok(parent), Some(name)) => parent.join(name),
        _ => std::path::absolute(journal).unwrap_or_else(|_| journal.to_path_buf()),
    }
}

/// Every place a ring of this journal may have been left by an earlier
/// process (under the current or an earlier configuration), the one to use
/// now first.
pub(crate) fn candidates(journal: &Path, stage_dir: &StageDir) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(3);
    if let Some(dir) = stage_dir.dir().filter(|dir| !is_journal_dir(dir, journal)) {
        paths.push(in_dir(dir, journal));
    }
    paths.push(beside_journal(journal));
    let default_memory = in_dir(Path::new(DEFAULT_MEMORY_STAGE_DIR), journal);
    if !paths.contains(&default_memory) {
        paths.push(default_memory);
    }
    paths
}

/// `dir` is the journal's own directory: its ring there is the usual
/// `<journal>.stage`.
fn is_journal_dir(dir: &Path, journal: &Path) -> bool {
    let parent = absolute_journal_path(journal);
    match (std::fs::canonicalize(dir), parent.parent()) {
        (Ok(dir), Some(parent)) => dir == parent,
        _ => false,
    }
}

/// 64-bit FNV-1a: a stable hash (the standard library's is seeded per
/// process), for ring names only.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Removes the rings in `dir` whose journal no longer exists and that no
/// process holds: a pool that crashed and whose journal was then deleted
/// (a test's temporary directory, a decommissioned pool) would otherwise
/// keep its ring's memory until the next reboot. Returns what was removed.
/// Rings without a recorded journal path are left alone.
pub(crate) fn remove_orphans(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("tbg-") || !name.ends_with(".stage") {
            continue;
        }
        let Some(file) = crate::stage::try_lock_existing(&path) else {
            continue; // in use, or gone already
        };
        let Some(journal) = crate::stage::recorded_journal(&file) else {
            continue;
        };
        if !journal.exists() && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_keeps_its_ring_name_and_two_journals_get_two() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("events.db");
        let other = dir.path().join("sub").join("events.db");
        let ring = in_dir(Path::new("/dev/shm"), &journal);
        assert_eq!(ring, in_dir(Path::new("/dev/shm"), &journal));
        let relative_via_dotdot = dir.path().join("x").join("..").join("events.db");
        std::fs::create_dir(dir.path().join("x")).unwrap();
        assert_eq!(ring, in_dir(Path::new("/dev/shm"), &relative_via_dotdot));
        assert_ne!(ring, in_dir(Path::new("/dev/shm"), &other));
        let name = ring.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("tbg-events.db-") && name.ends_with(".stage"),
            "{name}"
        );
    }

    #[test]
    fn candidates_put_the_configured_place_first_and_list_each_place_once() {
        let journal = Path::new("/var/lib/tbg/events.db");
        let beside = PathBuf::from("/var/lib/tbg/events.db.stage");
        assert_eq!(
            candidates(journal, &StageDir::BesideJournal),
            vec![beside.clone(), in_dir(Path::new("/dev/shm"), journal)]
        );
        let preferred = StageDir::Preferred("/dev/shm".into());
        assert_eq!(
            candidates(journal, &preferred),
            vec![in_dir(Path::new("/dev/shm"), journal), beside.clone()]
        );
        let required = StageDir::Required("/run/tbg".into());
        assert_eq!(
            candidates(journal, &required),
            vec![
                in_dir(Path::new("/run/tbg"), journal),
                beside,
                in_dir(Path::new("/dev/shm"), journal)
            ]
        );
    }
}
