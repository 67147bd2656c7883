//! The pool's durable event journal: every event is committed to a local
//! SQLite database (WAL mode, bundled SQLite) before the miner hears that its
//! share was accepted; the collector tails the same file read-only from
//! another process.
//!
//! Writes go through one dedicated OS thread that owns the connection. Callers
//! only push onto an in-memory queue ([`Journal::append`] never blocks); the
//! writer takes everything queued at once and commits it in one transaction
//! (group commit), so one fsync serves many shares.
//!
//! Seqs are assigned at append time, strictly increasing and never reused
//! while the file lives. They may have gaps (an event id appended twice is
//! stored once) and restart only when a corrupt file had to be moved aside
//! and no high-water mark could be read from it (see
//! [`JournalStats::seq_continuity_lost`]).
//!
//! Schema (version 1, `PRAGMA user_version = 1`): see [`SCHEMA_VERSION`] and
//! `docs/design/crate-contracts.md`.
#![forbid(unsafe_code)]

mod error;
mod reader;
mod schema;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use error::JournalError;
pub use reader::{JournalReader, JournalRecord};
pub use schema::SCHEMA_VERSION;
pub use writer::{Journal, JournalStats};

/// How much a committed event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a commit is in the OS once `wait_durable`
    /// returns, so it survives `kill -9` of the pool, not a power loss.
    #[default]
    ProcessCrash,
    /// `synchronous=FULL`: the WAL is fsynced on every commit, so a commit
    /// also survives a power loss or kernel crash.
    PowerLoss,
}

/// Where the journal lives and how it behaves.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub durability: Durability,
    /// Most events in one transaction (0 is treated as 1).
    pub max_batch: usize,
    /// Rows with an event `ts` older than this are deleted. The collector's
    /// cursor is not known here: this must exceed the longest sink outage
    /// you want to survive without loss.
    pub retention_max_age: Duration,
    /// The oldest rows are deleted while the database is larger than this.
    /// Same caveat as `retention_max_age`.
    pub retention_max_bytes: u64,
}

/// Default transaction cap: large enough that a burst commits in a few
/// transactions, small enough that one transaction stays in the milliseconds.
pub const DEFAULT_MAX_BATCH: usize = 4096;
/// Default age limit (7 days).
pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default size limit (10 GiB).
pub const DEFAULT_RETENTION_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// How often the writer thread runs retention (also once at open).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

impl JournalConfig {
    /// A config with the default durability (process crash), batch cap and
    /// retention (7 days / 10 GiB).
    pub fn new(path: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            path: path.into(),
            durability: Durability::default(),
            max_batch: DEFAULT_MAX_BATCH,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            retention_max_bytes: DEFAULT_RETENTION_MAX_BYTES,
        }
    }
}

impl tbg_events::EventSink for Journal {
    fn emit(&self, event: tbg_events::Event) {
        self.append(&event);
    }
}
