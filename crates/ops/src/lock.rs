//! One backup at a time per backup dir: an flock on `<dir>/.backup.lock`.
//! The kernel drops an flock when its process dies, so the file left by a
//! crashed run never blocks the next one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::OpsError;

/// Held while a backup runs; released on drop (or by the kernel on exit).
#[derive(Debug)]
pub struct BackupLock {
    file: File,
    path: PathBuf,
}

impl BackupLock {
    /// Takes the lock of `backup_dir` (created if missing) without waiting.
    pub fn acquire(backup_dir: &Path) -> Result<BackupLock, OpsError> {
        std::fs::create_dir_all(backup_dir).map_err(OpsError::io("cannot create", backup_dir))?;
        BackupLock::acquire_file(&backup_dir.join(".backup.lock"))
    }

    /// Takes an exclusive lock on `path` (a pid file: `tbg pool --pid-file`)
    /// and writes this process's pid into it. A file left by a dead process
    /// is not locked, so it never blocks a restart.
    pub fn acquire_file(path: &Path) -> Result<BackupLock, OpsError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(OpsError::io("cannot create", parent))?;
        }
        let path = path.to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(OpsError::io("cannot open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                return Err(OpsError::Locked {
                    path,
                    holder: (!holder.is_empty()).then_some(holder),
                });
            }
            Err(TryLockError::Error(error)) => {
                return Err(OpsError::Io {
                    context: "cannot lock",
                    path,
                    source: error,
                })
            }
        }
        // The pid is for humans only (the error message); the flock decides.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        Ok(BackupLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BackupLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
