//! The staging log: a preallocated ring file (see the `location` module for
//! where it lives) that makes an event durable against a crash of the pool
//! process in well under a microsecond.
//!
//! `append` copies each record into the ring while it holds the queue lock.
//! The bytes are then in the kernel's page cache: they survive `kill -9` of
//! the pool (not a power loss; that level waits for the SQLite commit). The
//! writer thread still moves every event into SQLite, the queryable store,
//! in group commits; once a batch is committed its records' space is handed
//! back to the ring (the tail moves). At open, records a previous process
//! staged but did not commit are recovered into SQLite before anything else
//! happens.
//!
//! How the bytes get there depends on the file system. A ring in a tmpfs is
//! written through a shared mapping populated at creation (`MAP_POPULATE`):
//! tmpfs pages are never written back, so no access ever faults and an
//! append is a memory copy. Anywhere else it is written with `pwrite`
//! (~1 µs): a mapping of a disk file faults whenever writeback has cleaned
//! a page, and such faults stalled appends for 20-37 ms when measured. The
//! header is always written with `pwrite`, by the writer thread. The file
//! is preallocated, so a full disk cannot refuse a write into the ring.
//!
//! Layout (little endian):
//!
//! ```text
//! header page (4096 bytes)
//!   0..8    b"TBGSTAGE"
//!   8..12   format version (1)
//!   16..24  generation: random, new at every open
//!   24..32  ring capacity in bytes (multiple of 8)
//!   32..36  crc32c(generation, bytes 0..32)
//!   64..72  tail: logical position of the oldest record not yet in SQLite
//!   72..76  crc32c(generation, bytes 64..72)
//!   128..132 length n of the journal's absolute path (0: not recorded)
//!   132..132+n the path; then crc32c(generation, bytes 128..132+n)
//! ring (capacity bytes), records 8-byte aligned, never split at the end:
//!   0..4    magic: RECORD_MAGIC, or WRAP_MAGIC (continue at ring offset 0)
//!   4..8    payload length
//!   8..16   seq (a wrap marker carries the seq of the record after it)
//!   16..20  low 32 bits of the generation (tells an old file's record apart)
//!   20..24  crc32c(generation, payload)
//!   24..28  crc32c(generation, bytes 0..24)
//!   28..32  zero
//!   32..    payload: ts f64, event id, event type, region (each u32 length +
//!           bytes), then the event's JSON to the end; zero padding to 8
//! ```
//!
//! Positions are logical (they only grow); the file offset is
//! `HEADER_BYTES + position % capacity`. A ring end with less than one
//! record header of room left is skipped without a marker.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::writer::PendingRow;

#[doc(hidden)]
pub mod fuzzing;

pub(crate) const HEADER_BYTES: u64 = 4096;
pub(crate) const RECORD_HEADER_BYTES: u64 = 32;
/// Smallest ring accepted; smaller configured values are raised to it.
pub const MIN_STAGE_BYTES: u64 = 64 * 1024;
const FILE_MAGIC: &[u8; 8] = b"TBGSTAGE";
const FORMAT_VERSION: u32 = 1;
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TBGR");
const WRAP_MAGIC: u32 = u32::from_le_bytes(*b"TBGW");
const TAIL_OFFSET: u64 = 64;
const JOURNAL_PATH_OFFSET: usize = 128;
/// Longest journal path recorded in the header (a longer one is not).
const MAX_RECORDED_PATH: usize = HEADER_BYTES as usize - JOURNAL_PATH_OFFSET - 8;
/// `f_type` of a tmpfs (linux/magic.h).
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// Zeros are written in chunks of this size where `fallocate` is unsupported.
const ZERO_FILL_CHUNK: usize = 1024 * 1024;

/// The open ring file of this process (one generation).
#[derive(Debug)]
pub(crate) struct Stage {
    file: File,
    path: PathBuf,
    generation: u64,
    capacity: u64,
    /// The ring (not the header) mapped shared and populated: set when the
    /// file is in a tmpfs, where no access to it can fault.
    mapping: Option<memmap2::MmapRaw>,
}

/// Where an append goes in the ring.
pub(crate) struct Placement {
    /// Logical position of a wrap marker to write first, if the record does
    /// not fit before the ring's end and a marker fits there.
    pub wrap_marker_at: Option<u64>,
    /// Logical position of the record.
    pub start: u64,
    /// Logical position after the record: the new head.
    pub end: u64,
}

/// Opens (or creates) the stage file and takes an exclusive `flock` on it
/// for as long as the file stays open: a second writer on the same journal
/// (another pool process, or a second `Journal::open` in this one) would
/// reset the ring under the first and is refused instead.
pub(crate) fn open_locked(path: &Path) -> Result<File, LockFailure> {
    // A lock can outlive its holder by a moment: a child process forked by
    // the holder shares the open file until it execs (the descriptor is
    // close-on-exec), and a pool restarted by its supervisor may start while
    // the old one is still exiting. Wait that moment out, not longer.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|error| LockFailure::Other(format!("cannot open: {error}")))?;
        if let Some(problem) = foreign_file(&file) {
            return Err(LockFailure::Other(problem));
        }
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            // The holder removes an in-memory ring when it stops cleanly:
            // a lock on that unlinked file guards nothing, open again.
            Ok(()) if still_at(&file, path) => return Ok(file),
            Ok(()) => continue,
            Err(error) if error == rustix::io::Errno::WOULDBLOCK => {
                if std::time::Instant::now() >= deadline {
                    return Err(LockFailure::InUse);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => return Err(LockFailure::Other(format!("cannot lock: {error}"))),
        }
    }
}

/// Why [`open_locked`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockFailure {
    /// Another writer holds the lock: the journal is in use.
    #[error("in use: another journal writer (process or open handle) has this journal open")]
    InUse,
    /// The file cannot be opened or locked.
    #[error("{0}")]
    Other(String),
}

/// Opens an existing ring and locks it without waiting: `None` when it does
/// not exist (any more) or another process holds it.
pub(crate) fn try_lock_existing(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    still_at(&file, path).then_some(file)
}

/// Why a ring file must not be used: the ring may sit in a directory every
/// user can write to (`/dev/shm`), where another user could have put a file
/// under the ring's predictable name to read events or plant records that
/// the next start would recover. The ring must be ours, a regular file
/// that not every user may write (and is opened without following a
/// symlink).
fn foreign_file(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(error) => return Some(format!("cannot stat: {error}")),
    };
    let ours = rustix::process::geteuid().as_raw();
    if meta.uid() != ours {
        Some(format!(
            "owned by uid {}, not this process's uid {ours}: refusing a ring another user controls",
            meta.uid()
        ))
    } else if meta.mode() & 0o002 != 0 {
        Some(format!(
            "mode {:o} lets every user write it: refusing it (chmod o-w, or remove it)",
            meta.mode() & 0o7777
        ))
    } else if !meta.is_file() {
        Some("not a regular file".into())
    } else {
        None
    }
}

/// The open file is still the one `path` names (not removed or replaced).
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// The journal path recorded in a ring's header, if it has a valid one.
pub(crate) fn recorded_journal(file: &File) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut header = vec![0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0).ok()?;
    let generation = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let header_crc = u32::from_le_bytes(header[32..36].try_into().ok()?);
    if &header[0..8] != FILE_MAGIC || crc32c(generation, &[&header[0..32]]) != header_crc {
        return None;
    }
    let at = JOURNAL_PATH_OFFSET;
    let length = u32::from_le_bytes(header[at..at + 4].try_into().ok()?) as usize;
    if length == 0 || length > MAX_RECORDED_PATH {
        return None;
    }
    let end = at + 4 + length;
    let crc = u32::from_le_bytes(header.get(end..end + 4)?.try_into().ok()?);
    (crc32c(generation, &[&header[at..end]]) == crc)
        .then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&header[at + 4..end])))
}

/// How long [`open_locked`] waits for a lock held by someone else.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Stage {
    /// Preallocates the (locked, see [`open_locked`]) file and writes a fresh
    /// header with a new generation and an empty ring. Call only after the
    /// previous contents were recovered: they become an older generation.
    /// `journal` (its absolute path) is recorded in the header.
    pub(crate) fn create(
        file: File,
        path: &Path,
        capacity: u64,
        journal: &Path,
    ) -> Result<Stage, String> {
        let capacity = ring_capacity(capacity);
        let total = HEADER_BYTES + capacity;
        let current = file
            .metadata()
            .map_err(|error| format!("cannot stat: {error}"))?
            .len();
        if current > total {
            file.set_len(total)
                .map_err(|error| format!("cannot shrink to {total} bytes: {error}"))?;
        }
        preallocate(&file, total)?;
        let mut stage = Stage {
            file,
            path: path.to_path_buf(),
            generation: new_generation(),
            capacity,
            mapping: None,
        };
        let mut header = vec![0u8; HEADER_BYTES as usize];
        header[0..8].copy_from_slice(FILE_MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&stage.generation.to_le_bytes());
        header[24..32].copy_from_slice(&capacity.to_le_bytes());
        let crc = crc32c(stage.generation, &[&header[0..32]]);
        header[32..36].copy_from_slice(&crc.to_le_bytes());
        let tail = tail_bytes(stage.generation, 0);
        header[TAIL_OFFSET as usize..TAIL_OFFSET as usize + tail.len()].copy_from_slice(&tail);
        record_journal_path(&mut header, stage.generation, journal);
        stage
            .file
            .write_all_at(&header, 0)
            .map_err(|error| format!("cannot write the header: {error}"))?;
        if in_tmpfs(&stage.file) {
            stage.mapping = Some(map_populated(&stage.file, capacity)?);
        }
        Ok(stage)
    }

    /// The ring is written through a memory mapping (it is in a tmpfs).
    pub(crate) fn in_memory(&self) -> bool {
        self.mapping.is_some()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Where a record of `record_bytes` goes, or `None` when the ring has no
    /// room for it until the writer reclaims space.
    pub(crate) fn place(&self, head: u64, tail: u64, record_bytes: u64) -> Option<Placement> {
        let offset = head % self.capacity;
        let room_to_end = self.capacity - offset;
        let (skip, wrap_marker_at) = if record_bytes > room_to_end {
            let marker = (room_to_end >= RECORD_HEADER_BYTES).then_some(head);
            (room_to_end, marker)
        } else {
            (0, None)
        };
        let used = head - tail;
        let needed = skip + record_bytes;
        if used + needed > self.capacity {
            return None;
        }
        let start = head + skip;
        Some(Placement {
            wrap_marker_at,
            start,
            end: start + record_bytes,
        })
    }

    /// Writes an encoded record (see [`encode`]) with its seq at `position`.
    pub(crate) fn write_record(
        &self,
        record: &mut [u8],
        seq: u64,
        position: u64,
    ) -> std::io::Result<()> {
        seal(record, RECORD_MAGIC, seq, self.generation);
        self.write_at(record, position)
    }

    /// Writes a wrap marker at `position`; `next_seq` is the record after it.
    pub(crate) fn write_wrap_marker(&self, position: u64, next_seq: u64) -> std::io::Result<()> {
        let mut marker = [0u8; RECORD_HEADER_BYTES as usize];
        seal(&mut marker, WRAP_MAGIC, next_seq, self.generation);
        self.write_at(&marker, position)
    }

    /// Records before `tail` are in SQLite: a restart starts reading there.
    /// Written before the space is reused, so the file's tail is never
    /// behind the one appends rely on.
    pub(crate) fn write_tail(&self, tail: u64) -> std::io::Result<()> {
        self.file
            .write_all_at(&tail_bytes(self.generation, tail), TAIL_OFFSET)
    }

    /// The generation's encoding seed, for [`encode`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Copies `bytes` into the ring at logical `position`. Callers hold the
    /// queue lock, so no two copies overlap in time.
    fn write_at(&self, bytes: &[u8], position: u64) -> std::io::Result<()> {
        let offset = position % self.capacity;
        let Some(mapping) = &self.mapping else {
            return self.file.write_all_at(bytes, HEADER_BYTES + offset);
        };
        let offset = offset as usize;
        if offset + bytes.len() > mapping.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at ring offset {offset} run past the ring's end",
                    bytes.len()
                ),
            ));
        }
        copy_into_mapping(mapping, offset, bytes);
        Ok(())
    }
}

/// The one memory write of this crate.
#[allow(unsafe_code)]
fn copy_into_mapping(mapping: &memmap2::MmapRaw, offset: usize, bytes: &[u8]) {
    debug_assert!(offset + bytes.len() <= mapping.len());
    // SAFETY: the destination lies inside the mapping (checked by the
    // caller), which lives as long as `mapping`. Only this process writes
    // the ring (it holds the file's `flock`) and only under the queue lock,
    // so the copy races with no other write; nothing in this process reads
    // the mapping. The file was preallocated and populated, so the access
    // cannot fault for lack of a page; it could only if another process
    // truncated our locked 0600 file (SIGBUS), which nothing of ours does.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            mapping.as_mut_ptr().add(offset),
            bytes.len(),
        );
    }
}

/// The file lives in a tmpfs.
fn in_tmpfs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|stats| stats.f_type as u64 == TMPFS_MAGIC)
}

/// Maps the ring (after the header page) shared and faults every page in
/// now, so that no append ever takes a page fault.
fn map_populated(file: &File, capacity: u64) -> Result<memmap2::MmapRaw, String> {
    let length = usize::try_from(capacity)
        .map_err(|_| format!("ring of {capacity} bytes does not fit in memory"))?;
    memmap2::MmapOptions::new()
        .offset(HEADER_BYTES)
        .len(length)
        .populate()
        .map_raw(file)
        .map_err(|error| format!("cannot map the ring: {error}"))
}

/// Writes the journal's path into a header being built (not when too long:
/// it only serves [`crate::location::remove_orphans`]).
fn record_journal_path(header: &mut [u8], generation: u64, journal: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = journal.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_RECORDED_PATH {
        return;
    }
    let at = JOURNAL_PATH_OFFSET;
    let end = at + 4 + bytes.len();
    header[at..at + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    header[at + 4..end].copy_from_slice(bytes);
    let crc = crc32c(generation, &[&header[at..end]]);
    header[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

fn ring_capacity(requested: u64) -> u64 {
    requested.max(MIN_STAGE_BYTES) / 8 * 8
}

fn tail_bytes(generation: u64, tail: u64) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[0..8].copy_from_slice(&tail.to_le_bytes());
    let crc = crc32c(generation, &[&bytes[0..8]]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Reserves the file's blocks so writes into the ring never need new space
/// (a full disk must not refuse them). Falls back to writing zeros where the
/// file system has no `fallocate`.
fn preallocate(file: &File, total: u64) -> Result<(), String> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, total) {
        Ok(()) => Ok(()),
        Err(error)
            if error == rustix::io::Errno::OPNOTSUPP || error == rustix::io::Errno::NOSYS =>
        {
            let zeros = vec![0u8; ZERO_FILL_CHUNK];
            let mut offset = 0;
            while offset < total {
                let length = (total - offset).min(ZERO_FILL_CHUNK as u64) as usize;
                file.write_all_at(&zeros[..length], offset)
                    .map_err(|error| format!("cannot preallocate {total} bytes: {error}"))?;
                offset += length as u64;
            }
            file.sync_data()
                .map_err(|error| format!("cannot preallocate {total} bytes: {error}"))
        }
        Err(error) => Err(format!("cannot preallocate {total} bytes: {error}")),
    }
}

/// A random generation, never 0 (a zeroed header must not match).
fn new_generation() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Serializes a record (header left for [`Stage::write_record`] to fill in
/// under the lock, except the payload checksum, computed here outside it).
pub(crate) fn encode(
    generation: u64,
    event_id: &str,
    ts: f64,
    event_type: &str,
    region: &str,
    json: &str,
) -> Vec<u8> {
    let payload_len = 8 + 4 + event_id.len() + 4 + event_type.len() + 4 + region.len() + json.len();
    let header = RECORD_HEADER_BYTES as usize;
    let total = (header + payload_len).div_ceil(8) * 8;
    let mut record = Vec::with_capacity(total);
    record.resize(header, 0);
    record.extend_from_slice(&ts.to_le_bytes());
    for text in [event_id, event_type, region] {
        record.extend_from_slice(&(text.len() as u32).to_le_bytes());
        record.extend_from_slice(text.as_bytes());
    }
    record.extend_from_slice(json.as_bytes());
    let payload_crc = crc32c(generation, &[&record[header..]]);
    record[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    record[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    record.resize(total, 0);
    record
}

/// Fills in magic, seq, generation tag and header checksum. The payload
/// length and checksum are already there (zero for a wrap marker).
fn seal(record: &mut [u8], magic: u32, seq: u64, generation: u64) {
    record[0..4].copy_from_slice(&magic.to_le_bytes());
    record[8..16].copy_from_slice(&seq.to_le_bytes());
    record[16..20].copy_from_slice(&(generation as u32).to_le_bytes());
    let crc = crc32c(generation, &[&record[0..24]]);
    record[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// Why recovery stopped before the end of what the ring could hold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RecoveryStop {
    /// Normal end: nothing written there in this generation.
    End,
    /// A record of this generation whose checksum or framing is wrong: the
    /// process died while copying it (it was never acknowledged).
    Invalid { file_offset: u64, detail: String },
}

/// What a previous process left in the stage file.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Records with seq > the SQLite tip, in seq order.
    pub rows: Vec<PendingRow>,
    /// Valid records at or below the SQLite tip (already committed).
    pub already_committed: u64,
    pub stop: Option<RecoveryStop>,
    /// The file had no valid header (new, foreign or damaged) and was ignored.
    pub unusable_header: Option<String>,
}

/// What [`recover`] reads: the stage file, or its bytes in memory (the
/// fuzz target's ring images, see the `fuzzing` module).
pub(crate) trait RingSource {
    /// Length in bytes (0 when it cannot be told).
    fn source_len(&self) -> u64;
    fn read_ring_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl RingSource for File {
    fn source_len(&self) -> u64 {
        self.metadata().map(|meta| meta.len()).unwrap_or(0)
    }

    fn read_ring_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl RingSource for [u8] {
    fn source_len(&self) -> u64 {
        self.len() as u64
    }

    fn read_ring_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Reads the records a previous process staged after its last reclaimed
/// position, keeping those with seq > `committed_seq`. Never fails: anything
/// unreadable ends the scan and is described in the result.
pub(crate) fn recover(file: &(impl RingSource + ?Sized), committed_seq: u64) -> Recovered {
    let mut recovered = Recovered::default();
    if file.source_len() == 0 {
        return recovered; // just created: nothing was ever staged
    }
    let mut header = [0u8; 76];
    if let Err(error) = file.read_ring_at(&mut header, 0) {
        recovered.unusable_header = Some(format!("no header: {error}"));
        return recovered;
    }
    let generation = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    let capacity = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
    let header_crc = u32::from_le_bytes(header[32..36].try_into().unwrap_or_default());
    let tail = u64::from_le_bytes(header[64..72].try_into().unwrap_or_default());
    let tail_crc = u32::from_le_bytes(header[72..76].try_into().unwrap_or_default());
    let file_len = file.source_len();
    let problem = if &header[0..8] != FILE_MAGIC {
        Some("not a stage file (bad magic)".to_string())
    } else if u32::from_le_bytes(header[8..12].try_into().unwrap_or_default()) != FORMAT_VERSION {
        Some("unknown format version".to_string())
    } else if crc32c(generation, &[&header[0..32]]) != header_crc {
        Some("header checksum mismatch".to_string())
    } else if capacity < MIN_STAGE_BYTES || capacity % 8 != 0 {
        Some(format!("bad ring capacity {capacity}"))
    } else if file_len < HEADER_BYTES + capacity {
        Some(format!(
            "file is {file_len} bytes, shorter than its ring of {capacity}"
        ))
    } else if crc32c(generation, &[&header[64..72]]) != tail_crc || tail % 8 != 0 {
        Some("tail checksum mismatch".to_string())
    } else if tail.checked_add(capacity.saturating_mul(2)).is_none() {
        // The scan below moves less than two ring lengths past the tail; a
        // tail this close to 2^64 was never written by a journal (a crafted
        // or damaged file whose checksums pass). Found by the `journal_ring`
        // fuzz target: it overflowed.
        Some(format!("tail {tail} out of range"))
    } else {
        None
    };
    if let Some(problem) = problem {
        recovered.unusable_header = Some(problem);
        return recovered;
    }
    let mut position = tail;
    let mut expected_seq: Option<u64> = None;
    let mut scanned = 0u64;
    let mut record_header = [0u8; RECORD_HEADER_BYTES as usize];
    // Every byte of the ring at most once: a full ring ends at its own tail.
    while scanned < capacity {
        let offset = position % capacity;
        let room_to_end = capacity - offset;
        if room_to_end < RECORD_HEADER_BYTES {
            position += room_to_end;
            scanned += room_to_end;
            continue;
        }
        let file_offset = HEADER_BYTES + offset;
        let invalid = |detail: String| RecoveryStop::Invalid {
            file_offset,
            detail,
        };
        if file.read_ring_at(&mut record_header, file_offset).is_err() {
            recovered.stop = Some(invalid("cannot read the record header".into()));
            break;
        }
        let magic = u32::from_le_bytes(record_header[0..4].try_into().unwrap_or_default());
        let tag = u32::from_le_bytes(record_header[16..20].try_into().unwrap_or_default());
        if (magic != RECORD_MAGIC && magic != WRAP_MAGIC) || tag != generation as u32 {
            // Never written in this generation: zeros, or an older file's.
            recovered.stop = Some(RecoveryStop::End);
            break;
        }
        let stored_crc = u32::from_le_bytes(record_header[24..28].try_into().unwrap_or_default());
        if crc32c(generation, &[&record_header[0..24]]) != stored_crc {
            recovered.stop = Some(invalid("record header checksum mismatch".into()));
            break;
        }
        let seq = u64::from_le_bytes(record_header[8..16].try_into().unwrap_or_default());
        if expected_seq.is_some_and(|expected| expected != seq) {
            // A complete record of an earlier lap: the log ends before it.
            recovered.stop = Some(RecoveryStop::End);
            break;
        }
        if magic == WRAP_MAGIC {
            expected_seq = Some(seq);
            position += room_to_end;
            scanned += room_to_end;
            continue;
        }
        let payload_len = u64::from(u32::from_le_bytes(
            record_header[4..8].try_into().unwrap_or_default(),
        ));
        let record_bytes = (RECORD_HEADER_BYTES + payload_len).div_ceil(8) * 8;
        if record_bytes > room_to_end {
            recovered.stop = Some(invalid(format!(
                "payload length {payload_len} runs past the ring's end"
            )));
            break;
        }
        let mut payload = vec![0u8; payload_len as usize];
        if file
            .read_ring_at(&mut payload, file_offset + RECORD_HEADER_BYTES)
            .is_err()
        {
            recovered.stop = Some(invalid("cannot read the payload".into()));
            break;
        }
        let payload_crc = u32::from_le_bytes(record_header[20..24].try_into().unwrap_or_default());
        if crc32c(generation, &[&payload]) != payload_crc {
            recovered.stop = Some(invalid("payload checksum mismatch".into()));
            break;
        }
        let end = position + record_bytes;
        if seq > committed_seq {
            match decode(&payload, seq, end) {
                Some(row) => recovered.rows.push(row),
                None => {
                    recovered.stop = Some(invalid("payload does not decode".into()));
                    break;
                }
            }
        } else {
            recovered.already_committed += 1;
        }
        expected_seq = Some(seq.saturating_add(1));
        position = end;
        scanned += record_bytes;
    }
    recovered
}

fn decode(payload: &[u8], seq: u64, end: u64) -> Option<PendingRow> {
    let ts = f64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let mut at = 8;
    let mut text = || -> Option<String> {
        let len = u32::from_le_bytes(payload.get(at..at + 4)?.try_into().ok()?) as usize;
        let value = std::str::from_utf8(payload.get(at + 4..at + 4 + len)?).ok()?;
        at += 4 + len;
        Some(value.to_string())
    };
    let event_id = text()?;
    let event_type = text()?;
    let region = text()?;
    let json = std::str::from_utf8(payload.get(at..)?).ok()?.to_string();
    Some(PendingRow {
        seq,
        end,
        event_id,
        ts,
        event_type: Cow::Owned(event_type),
        region,
        payload: json,
    })
}

/// crc32c over the generation, then the parts: a record of another
/// generation never checks out, even where its bytes are intact. (The
/// `crc32c` crate uses the CPU's CRC32 instruction where there is one.)
fn crc32c(generation: u64, parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(crc32c::crc32c(&generation.to_le_bytes()), |crc, part| {
            crc32c::crc32c_append(crc, part)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_checksum_of_generation_then_parts() {
        // The standard check value, and a value computed bit by bit
        // (independently of this code) for generation 7 followed by
        // "123456789": stage files of earlier builds still check out.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(7, &[b"123456789"]), 0x185C_3AA5);
        assert_eq!(crc32c(7, &[b"1234", b"", b"56789"]), 0x185C_3AA5);
    }

    /// Regression (fuzz target `journal_ring`): a header whose checksums
    /// pass with a tail near 2^64 made recovery overflow (a panic with
    /// overflow checks, wrapped positions without).
    #[test]
    fn a_tail_near_the_end_of_the_u64_range_is_refused_not_overflowed() {
        let generation = 7u64;
        let capacity = MIN_STAGE_BYTES;
        // 2^64 - 8: 8 bytes before the ring's end, so the scan skips them.
        let tail = u64::MAX - 7;
        let mut image = vec![0u8; (HEADER_BYTES + capacity) as usize];
        image[0..8].copy_from_slice(FILE_MAGIC);
        image[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        image[16..24].copy_from_slice(&generation.to_le_bytes());
        image[24..32].copy_from_slice(&capacity.to_le_bytes());
        let crc = crc32c(generation, &[&image[0..32]]);
        image[32..36].copy_from_slice(&crc.to_le_bytes());
        image[64..76].copy_from_slice(&tail_bytes(generation, tail));
        let recovered = recover(&image[..], 0);
        assert_eq!(
            recovered.unusable_header.as_deref(),
            Some("tail 18446744073709551608 out of range")
        );
        assert!(recovered.rows.is_empty());
        // The same header with a tail a journal can reach is read as usual.
        image[64..76].copy_from_slice(&tail_bytes(generation, capacity - 8));
        let recovered = recover(&image[..], 0);
        assert_eq!(recovered.unusable_header, None);
        assert_eq!(recovered.stop, Some(RecoveryStop::End));
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let mut record = encode(7, "id-1", 12.5, "share_submitted", "eu", "{\"a\":1}");
        seal(&mut record, RECORD_MAGIC, 42, 7);
        let len = u32::from_le_bytes(record[4..8].try_into().unwrap()) as usize;
        let payload = &record[32..32 + len];
        let row = decode(payload, 42, 100).unwrap();
        assert_eq!(
            (
                row.event_id.as_str(),
                row.ts,
                &*row.event_type,
                row.region.as_str()
            ),
            ("id-1", 12.5, "share_submitted", "eu")
        );
        assert_eq!(row.payload, "{\"a\":1}");
        assert_eq!(record.len() % 8, 0);
    }
}
