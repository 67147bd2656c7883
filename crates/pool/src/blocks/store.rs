//! Found blocks on disk: one JSON file per block, written and fsynced
//! before the block is submitted, rewritten (atomically) at every change of
//! status. A pool that crashed finds its unsettled blocks here at the next
//! start and submits them again; an operator can read the block's hex from
//! the file and submit it by hand (`bitcoin-cli submitblock`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BlockStatus;

/// Why the store could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BlockStoreError {
    #[error("block store {}: {action}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Largest block file read back: a block is at most 4 MB of weight, so its
/// hex is at most 8 MB; anything larger is not ours.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A found block as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredBlock {
    pub hash: String,
    pub height: u32,
    pub block_hex: String,
    pub user: String,
    pub worker: String,
    pub share_difficulty: f64,
    pub network_difficulty: f64,
    pub reward_sats: u64,
    pub coinbase_sig: String,
    /// Unix seconds.
    pub found_at: u64,
    pub status: BlockStatus,
    /// The nodes' last answers, as `url: answer`.
    #[serde(default)]
    pub answers: Vec<String>,
    /// submitblock rounds so far.
    #[serde(default)]
    pub attempts: u32,
    /// Confirmations when last looked at (1 = the tip).
    #[serde(default)]
    pub confirmations: u64,
    /// The block that took its place, when stale or orphaned.
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// The relay region that found it (see [`super::FoundBlock::origin`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl StoredBlock {
    fn file_name(&self) -> String {
        format!("{:010}-{}.json", self.height, self.hash)
    }
}

/// The directory of found blocks.
#[derive(Debug, Clone)]
pub struct BlockStore {
    dir: PathBuf,
}

/// What [`BlockStore::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub blocks: Vec<StoredBlock>,
    /// Files that could not be read as a block, with the reason: left in
    /// place for the operator, never deleted.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl BlockStore {
    /// Creates `dir` if needed and checks that a block can be written there,
    /// so that a pool that could not keep its blocks does not start.
    pub fn open(dir: PathBuf) -> Result<BlockStore, BlockStoreError> {
        let store = BlockStore { dir };
        fs::create_dir_all(&store.dir).map_err(|e| store.error("creating the directory", e))?;
        let probe = store.dir.join(".write-test");
        let written = File::create(&probe).and_then(|mut file| {
            file.write_all(b"ok")?;
            file.sync_all()
        });
        let _ = fs::remove_file(&probe);
        written.map_err(|e| store.error("writing a test file", e))?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, action: &'static str, source: std::io::Error) -> BlockStoreError {
        BlockStoreError::Io {
            dir: self.dir.clone(),
            action,
            source,
        }
    }

    /// Writes `block` durably: a temporary file, fsynced, renamed over the
    /// block's file, then the directory fsynced, so that after a crash the
    /// file is either the old record or the new one, never half of one.
    pub fn save(&self, block: &StoredBlock) -> Result<(), BlockStoreError> {
        let name = block.file_name();
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let json = serde_json::to_vec_pretty(block)
            .map_err(|e| self.error("encoding a block", std::io::Error::other(e)))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(|e| self.error("creating a block file", e))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.error("writing a block file", e))?;
        drop(file);
        fs::rename(&temporary, &path).map_err(|e| self.error("renaming a block file", e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| self.error("syncing the directory", e))
    }

    /// Every block file in the directory, oldest height first, then the
    /// earliest found (resubmitted first: it is the one its miner saw first).
    pub fn load(&self) -> Result<Loaded, BlockStoreError> {
        let mut loaded = Loaded::default();
        let entries = fs::read_dir(&self.dir).map_err(|e| self.error("listing", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.error("listing", e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match read_block(&path) {
                Ok(block) => loaded.blocks.push(block),
                Err(reason) => loaded.unreadable.push((path, reason)),
            }
        }
        loaded
            .blocks
            .sort_by(|a, b| (a.height, a.found_at, &a.hash).cmp(&(b.height, b.found_at, &b.hash)));
        Ok(loaded)
    }
}

fn read_block(path: &Path) -> Result<StoredBlock, String> {
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("{size} bytes, more than a block can be"));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a block record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(height: u32, status: BlockStatus) -> StoredBlock {
        StoredBlock {
            hash: format!("{height:064x}"),
            height,
            block_hex: "00".repeat(80),
            user: "bcrt1qexample".into(),
            worker: "rig".into(),
            share_difficulty: 2.0,
            network_difficulty: 1.0,
            reward_sats: 5_000_000_000,
            coinbase_sig: String::new(),
            found_at: 1_700_000_000,
            status,
            answers: Vec::new(),
            attempts: 0,
            confirmations: 0,
            replaced_by: None,
            origin: None,
        }
    }

    #[test]
    fn a_saved_block_is_loaded_back_and_a_status_change_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path().join("blocks")).unwrap();
        let mut first = block(101, BlockStatus::Pending);
        store.save(&first).unwrap();
        store.save(&block(100, BlockStatus::Accepted)).unwrap();
        first.status = BlockStatus::Accepted;
        first.attempts = 3;
        store.save(&first).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.unreadable.is_empty());
        assert_eq!(loaded.blocks.len(), 2, "one file per block");
        assert_eq!(loaded.blocks[0].height, 100, "oldest first");
        assert_eq!(loaded.blocks[1], first);
    }

    #[test]
    fn a_damaged_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path().to_path_buf()).unwrap();
        store.save(&block(7, BlockStatus::Pending)).unwrap();
        let damaged = dir.path().join("0000000008-broken.json");
        fs::write(&damaged, b"{\"hash\": ").unwrap();
        // A temporary file of an interrupted save is not a block.
        fs::write(dir.path().join(".0000000009-x.json.tmp"), b"{").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.blocks.len(), 1);
        assert_eq!(loaded.unreadable.len(), 1);
        assert_eq!(loaded.unreadable[0].0, damaged);
        assert!(damaged.exists());
    }

    #[test]
    fn a_directory_that_cannot_be_written_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let error = BlockStore::open(file.join("blocks")).unwrap_err();
        assert!(
            error.to_string().contains("creating the directory"),
            "{error}"
        );
    }
}
