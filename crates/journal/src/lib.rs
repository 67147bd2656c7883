//! The pool's durable event journal: every event is made durable locally
//! before the miner hears that its share was accepted, and lands in a local
//! SQLite database (WAL mode, bundled SQLite) that the collector tails
//! read-only from another process.
//!
//! [`Journal::append`] copies the event into a preallocated ring file (beside
//! the database or in a tmpfs, see [`StageDir`]) under a short lock: from
//! then on it survives a crash of the pool process, which is
//! what [`Durability::ProcessCrash`] promises, in microseconds. One dedicated
//! OS thread owns the SQLite connection; it takes everything staged at once
//! and commits it in one transaction (group commit), then hands the ring
//! space back. Events staged but not committed when the process died are
//! committed at the next open. [`Durability::PowerLoss`] waits for the
//! (fsynced) SQLite commit instead. The ring bounds memory and disk: when
//! SQLite cannot keep up for that long, `append` refuses events
//! ([`JournalError::Full`]) instead of growing.
//!
//! Seqs are assigned at append time, strictly increasing and never reused
//! while the file lives. They may have gaps (an event id appended twice is
//! stored once) and restart only when a corrupt file had to be moved aside
//! and no high-water mark could be read from it (see
//! [`JournalStats::seq_continuity_lost`]).
//!
//! Schema (version 1, `PRAGMA user_version = 1`): see [`SCHEMA_VERSION`] and
//! `docs/design/crate-contracts.md`.
// Two functions need `unsafe`: an FFI call (`sched::set_policy`) and the
// copy into the mapped stage ring (`stage::copy_into_mapping`).
#![deny(unsafe_code)]

pub mod cursor;
mod error;
mod location;
mod reader;
mod sched;
mod schema;
mod stage;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use cursor::{Cursor, CursorError};
pub use error::JournalError;
pub use location::{StageDir, DEFAULT_MEMORY_STAGE_DIR};
pub use reader::{JournalReader, JournalRecord};
pub use schema::SCHEMA_VERSION;
/// Not an API: the stage ring's recovery on bytes, for the fuzz targets.
#[doc(hidden)]
pub use stage::fuzzing;
pub use stage::MIN_STAGE_BYTES;
pub use writer::{Journal, JournalStats};

/// How much a committed event survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// An event is durable once `append` copied it into the stage file (in
    /// the OS page cache): it survives `kill -9` of the pool, not a power
    /// loss. `wait_durable` returns at once; SQLite runs with
    /// `synchronous=NORMAL`.
    #[default]
    ProcessCrash,
    /// `wait_durable` waits for the SQLite commit with `synchronous=FULL`
    /// (the WAL is fsynced on every commit), so an acknowledged event also
    /// survives a power loss or kernel crash.
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
    /// Size of the stage ring (preallocated; in a tmpfs it is memory, all of
    /// it resident): how much can wait for SQLite before `append` refuses
    /// events. At least [`MIN_STAGE_BYTES`]. A share event takes ~450
    /// bytes: 16 MiB is ~3.7 s of 10,000 shares/s, ~37 s of 1,000/s, where
    /// SQLite normally lags by one 20 ms commit. In-memory rows are bounded
    /// by it too (about the same size again at most).
    pub stage_bytes: u64,
    /// Where the stage ring lives (see [`StageDir`]); beside the journal
    /// unless set.
    pub stage_dir: StageDir,
    /// Run the writer thread at idle priority (`SCHED_IDLE`) while the ring
    /// is nearly empty, where the process may raise it back (see
    /// [`JournalStats::writer_idle_priority`]); [`Durability::ProcessCrash`]
    /// only, since with `PowerLoss` shares wait for the writer.
    pub idle_writer: bool,
    /// CPUs the SQLite writer and checkpointer threads run on; `None`: the
    /// process's. A machine whose pool serves miners on pinned cores keeps
    /// SQLite's bursts off them this way (docs/benchmarks.md, "The SQLite
    /// writer off the serving core").
    pub writer_cpus: Option<Vec<usize>>,
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
/// Default stage ring size (16 MiB).
pub const DEFAULT_STAGE_BYTES: u64 = 16 * 1024 * 1024;

impl JournalConfig {
    /// A config with the default durability (process crash), batch cap,
    /// retention (7 days / 10 GiB) and stage ring (16 MiB).
    pub fn new(path: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            path: path.into(),
            durability: Durability::default(),
            max_batch: DEFAULT_MAX_BATCH,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            retention_max_bytes: DEFAULT_RETENTION_MAX_BYTES,
            stage_bytes: DEFAULT_STAGE_BYTES,
            stage_dir: StageDir::default(),
            idle_writer: true,
            writer_cpus: None,
        }
    }
}

impl tbg_events::EventSink for Journal {
    /// A refused event is counted in the stats (`rejected_full`,
    /// `stage_write_errors`, `dropped_after_close`) and logged once when the
    /// journal starts refusing; callers that must know use `append`.
    fn emit(&self, event: tbg_events::Event) {
        let _refused_and_counted = self.append(&event);
    }
}
