//! `[blocks]`: where found blocks are kept and how they are followed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Found blocks: written and fsynced here before they are submitted, then
/// submitted until a node takes them, then followed to maturity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlocksSection {
    /// Directory of found blocks, one JSON file each (relative paths are
    /// from the working directory, /var/lib/tbg under systemd). A pool that
    /// cannot write there does not start.
    pub dir: PathBuf,
    /// Longest wait between two submissions of a block no node took yet,
    /// in milliseconds (the first retry is after 250 ms, then doubling).
    pub retry_max_ms: u64,
    /// How often an accepted block is looked up on the best chain, seconds.
    pub follow_interval_s: u64,
    /// Confirmations after which a block counts as confirmed (`block_confirmed`):
    /// 100, the coinbase maturity.
    pub maturity_confirmations: u32,
}

impl Default for BlocksSection {
    fn default() -> BlocksSection {
        BlocksSection {
            dir: PathBuf::from("blocks"),
            retry_max_ms: 10_000,
            follow_interval_s: 30,
            maturity_confirmations: 100,
        }
    }
}

impl BlocksSection {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::new("blocks.dir", "\"\"", "must not be empty"));
        }
        if !(250..=300_000).contains(&self.retry_max_ms) {
            return Err(ConfigError::new(
                "blocks.retry_max_ms",
                self.retry_max_ms.to_string(),
                "must be 250..=300000: a pending block is worth retrying often",
            ));
        }
        if !(1..=3_600).contains(&self.follow_interval_s) {
            return Err(ConfigError::new(
                "blocks.follow_interval_s",
                self.follow_interval_s.to_string(),
                "must be 1..=3600",
            ));
        }
        if !(1..=1_000).contains(&self.maturity_confirmations) {
            return Err(ConfigError::new(
                "blocks.maturity_confirmations",
                self.maturity_confirmations.to_string(),
                "must be 1..=1000",
            ));
        }
        Ok(())
    }
}
