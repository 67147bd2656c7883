//! A reader's durable cursor over the journal (the NATS publisher's, each
//! webhook's): the last journal seq it has finished with, in a small file
//! replaced atomically (write, fsync, rename, fsync of the directory), so a
//! crash leaves the old value or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("journal cursor {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal cursor {path}: {text:?} is not a sequence number; fix or remove the file (removing it reads the journal again from its start; the runbook says what each reader does with that)")]
    Garbage { path: PathBuf, text: String },
}

#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    /// Where the reader is.
    seq: u64,
    /// What the file says.
    stored: u64,
}

impl Cursor {
    /// Reads the cursor at `path`; a missing file is 0 (nothing published).
    pub fn open(path: &Path) -> Result<Cursor, CursorError> {
        let io = |source| CursorError::Io {
            path: path.to_path_buf(),
            source,
        };
        let seq = match fs::read_to_string(path) {
            Ok(text) => text.trim().parse().map_err(|_| CursorError::Garbage {
                path: path.to_path_buf(),
                text: text.chars().take(40).collect(),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(io(error)),
        };
        Ok(Cursor {
            path: path.to_path_buf(),
            seq,
            stored: seq,
        })
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Moves the cursor in memory only (a run of records that need no
    /// durable mark each); [`Cursor::commit`] writes it.
    pub fn advance(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// The cursor moved since it was last written.
    pub fn pending(&self) -> bool {
        self.seq != self.stored
    }

    /// Writes where the cursor is, durably.
    pub fn commit(&mut self) -> Result<(), CursorError> {
        self.store(self.seq)
    }

    /// Moves the cursor to `seq`, durably.
    pub fn store(&mut self, seq: u64) -> Result<(), CursorError> {
        let io = |source| CursorError::Io {
            path: self.path.clone(),
            source,
        };
        write_atomically(&self.path, format!("{seq}\n").as_bytes()).map_err(io)?;
        self.seq = seq;
        self.stored = seq;
        Ok(())
    }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old
/// content or the new one: write beside it, fsync, rename, fsync the
/// directory. The temporary file is `<path>.tmp`, never shared by two
/// files of one directory (`a.db.x` and `a.db.y` would both be `a.db.tmp`
/// by extension).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.cursor");
        let mut cursor = Cursor::open(&path).unwrap();
        assert_eq!(cursor.seq(), 0);
        cursor.store(42).unwrap();
        assert_eq!(Cursor::open(&path).unwrap().seq(), 42);
        fs::write(&path, "forty-two").unwrap();
        let error = Cursor::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("forty-two") && error.contains("not a sequence"),
            "{error}"
        );
    }
}
