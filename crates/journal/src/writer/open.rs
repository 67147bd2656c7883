//! Opening the journal's storage: SQLite and this process's stage ring,
//! after committing what earlier processes left staged in any ring of this
//! journal.

use std::path::{Path, PathBuf};

use super::db::WriterDb;
use super::JournalStats;
use crate::error::{classify, JournalError};
use crate::location::{self, StageDir};
use crate::schema::Tip;
use crate::stage::{self, RecoveryStop, Stage};
use crate::JournalConfig;

/// What [`open_stage`] opened.
pub(super) struct OpenedStage {
    pub(super) stage: Stage,
    pub(super) db: WriterDb,
    pub(super) tip: Tip,
}

/// Opens SQLite and the ring: every ring of this journal an earlier process
/// may have left (under this configuration or an earlier one, see
/// [`location::candidates`]) is locked, committed to SQLite and, unless it
/// is the one used now, removed; then this process's ring is created.
pub(super) fn open_stage(
    config: &JournalConfig,
    stats: &mut JournalStats,
) -> Result<(OpenedStage, PathBuf), JournalError> {
    let stage_error = |path: &Path, detail: String| JournalError::Stage {
        path: path.to_path_buf(),
        detail,
    };
    let lock_error =
        |path: &Path, failure: stage::LockFailure| stage_error(path, failure.to_string());
    let memory_dir = Path::new(location::DEFAULT_MEMORY_STAGE_DIR);
    let configured_dir = config.stage_dir.dir().filter(|dir| *dir != memory_dir);
    for dir in [configured_dir, Some(memory_dir)].into_iter().flatten() {
        for removed in location::remove_orphans(dir) {
            tracing::info!(path = %removed.display(),
                "removed the stage ring of a journal that no longer exists");
        }
    }
    let candidates = location::candidates(&config.path, &config.stage_dir);
    let beside = location::beside_journal(&config.path);
    // Locked first: nothing of the journal is touched by a second writer. A
    // preferred directory that is missing or unwritable fails here.
    let target = candidates
        .first()
        .cloned()
        .unwrap_or_else(|| beside.clone());
    let (target, target_file) = match (stage::open_locked(&target), &config.stage_dir) {
        (Ok(file), _) => (target, file),
        // "in use" is the same journal's lock wherever the ring is.
        (Err(stage::LockFailure::Other(detail)), StageDir::Preferred(dir)) if target != beside => {
            tracing::warn!(dir = %dir.display(), %detail,
                "cannot open the stage ring there; it goes beside the journal");
            let file =
                stage::open_locked(&beside).map_err(|failure| lock_error(&beside, failure))?;
            (beside.clone(), file)
        }
        (Err(failure), _) => return Err(lock_error(&target, failure)),
    };
    let mut others = Vec::new();
    for path in candidates.iter().filter(|path| **path != target) {
        if path.is_file() {
            match stage::open_locked(path) {
                Ok(file) => others.push((path.clone(), file)),
                Err(stage::LockFailure::InUse) => {
                    return Err(lock_error(path, stage::LockFailure::InUse))
                }
                // Not a ring this process may trust or use: nothing of ours
                // can be in it.
                Err(stage::LockFailure::Other(detail)) => {
                    tracing::warn!(path = %path.display(), %detail,
                        "ignoring a file where an earlier stage ring may have been");
                }
            }
        }
    }
    let (mut db, mut tip) = WriterDb::open_or_replace(config, stats)?;
    let rings = others.iter().map(|(path, file)| (path, file));
    for (path, file) in rings.chain(std::iter::once((&target, &target_file))) {
        recover_staged(config, path, file, &mut db, &mut tip, stats)?;
    }
    for (path, _file) in others {
        // Committed above; the lock goes with the file after the removal.
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove an old stage ring");
        }
    }
    let journal = location::absolute_journal_path(&config.path);
    let created = Stage::create(target_file, &target, config.stage_bytes, &journal);
    let (stage, path) = match (created, &config.stage_dir) {
        (Ok(stage), _) => (stage, target),
        (Err(detail), StageDir::Preferred(dir)) if target != beside => {
            tracing::warn!(dir = %dir.display(), %detail,
                "cannot create the stage ring there; it goes beside the journal");
            let _ = std::fs::remove_file(&target);
            let file =
                stage::open_locked(&beside).map_err(|failure| lock_error(&beside, failure))?;
            let stage = Stage::create(file, &beside, config.stage_bytes, &journal)
                .map_err(|detail| stage_error(&beside, detail))?;
            (stage, beside)
        }
        (Err(detail), _) => return Err(stage_error(&target, detail)),
    };
    tracing::info!(path = %path.display(), in_memory = stage.in_memory(),
        capacity_bytes = stage.capacity(), "journal stage ring ready");
    Ok((OpenedStage { stage, db, tip }, path))
}

/// Commits what a previous process staged but did not commit, so SQLite
/// is complete before the ring is reset for this process.
fn recover_staged(
    config: &JournalConfig,
    stage_path: &Path,
    stage_file: &std::fs::File,
    db: &mut WriterDb,
    tip: &mut Tip,
    stats: &mut JournalStats,
) -> Result<(), JournalError> {
    let recovered = stage::recover(stage_file, tip.last_seq);
    if let Some(problem) = &recovered.unusable_header {
        tracing::warn!(path = %stage_path.display(), %problem,
            "journal stage file unusable; starting a fresh one (nothing to recover from it)");
        stats.stage_ignored = Some(problem.clone());
    }
    if let Some(RecoveryStop::Invalid {
        file_offset,
        detail,
    }) = &recovered.stop
    {
        tracing::warn!(path = %stage_path.display(), file_offset, %detail,
            recovered = recovered.rows.len(),
            "journal stage recovery stopped at a damaged record (written when the process died; never acknowledged)");
        stats.stage_recovery_stopped_at = Some((*file_offset, detail.clone()));
    }
    let mut stream_ms = tip.last_stream_ms;
    for batch in recovered.rows.chunks(config.max_batch.max(1)) {
        let (batch_stream_ms, _duplicates) = db
            .commit(batch, stream_ms)
            .map_err(|error| classify(&config.path, "recovering staged events", None, error))?;
        stream_ms = batch_stream_ms;
    }
    if let Some(last) = recovered.rows.last() {
        tracing::info!(path = %stage_path.display(), events = recovered.rows.len(),
            first_seq = recovered.rows[0].seq, last_seq = last.seq,
            "recovered staged journal events into SQLite");
        tip.last_seq = tip.last_seq.max(last.seq);
        tip.last_stream_ms = stream_ms;
        stats.stage_recovered += recovered.rows.len() as u64;
        stats.bytes = db.size_bytes();
    }
    Ok(())
}
