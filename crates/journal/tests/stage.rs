//! The stage ring: what is acknowledged survives `kill -9` and is in SQLite
//! after the next open; damaged or stale ring contents are never taken for
//! events; a full ring refuses events without growing and recovers by itself.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tbg_events::{Event, EventData};
use tbg_journal::{Journal, JournalConfig, JournalError, JournalReader, StageDir, MIN_STAGE_BYTES};

mod common;
use common::{kill_9_after_reported, share, spawn_test_child, stored_seqs};

/// Bytes before the ring in the stage file (the header page).
const STAGE_HEADER_BYTES: u64 = 4096;
/// Bytes before a record's payload.
const RECORD_HEADER_BYTES: u64 = 32;

fn small_ring(path: &Path) -> JournalConfig {
    let mut config = JournalConfig::new(path);
    config.stage_bytes = MIN_STAGE_BYTES;
    config
}

fn stage_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".stage");
    PathBuf::from(name)
}

/// Appends, and when the ring is full waits for SQLite to catch up and
/// retries (what a producer that may wait does).
async fn append_waiting_for_room(journal: &Journal, event: &Event) -> u64 {
    loop {
        match journal.append(event) {
            Ok(seq) => return seq,
            Err(JournalError::Full { .. }) => {
                let staged = journal.stats().staged_seq;
                journal.wait_committed(staged).await.unwrap();
            }
            Err(other) => panic!("append failed: {other}"),
        }
    }
}

/// Holds SQLite's write lock from another connection, so the journal's
/// commits fail (after the busy timeout) while the test wants them to.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(path: &Path) -> WriteLock {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

/// Runs each case twice: with the journal (and so its ring) on the disk, where
/// the ring is written with `pwrite`, and in a tmpfs, where it is written
/// through a memory mapping.
macro_rules! on_disk_and_in_memory {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_disk() {
                    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
                    super::$case(root.path(), false).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn in_memory() {
                    let root = super::memory_root();
                    super::$case(root.path(), true).await;
                }
            }
        )*
    };
}

on_disk_and_in_memory!(
    events_acknowledged_before_kill_9_are_recovered_into_sqlite_at_open,
    a_torn_last_record_is_ignored_and_reported_with_its_offset,
    kill_9_during_many_ring_laps_loses_no_acknowledged_event,
    many_laps_around_a_small_ring_store_every_event_in_order,
    a_full_ring_refuses_events_without_growing_and_accepts_them_again_after_the_writer_catches_up,
    a_stage_file_that_is_not_one_is_reported_and_replaced,
);

/// A temporary directory in a tmpfs.
fn memory_root() -> tempfile::TempDir {
    tempfile::tempdir_in(tbg_journal::DEFAULT_MEMORY_STAGE_DIR)
        .expect("a tmpfs at /dev/shm (every Linux system mounts one)")
}

/// The ring is written through a mapping exactly when it is in a tmpfs.
fn assert_ring_kind(journal: &Journal, in_memory: bool) {
    let stats = journal.stats();
    assert_eq!(stats.stage_in_memory, in_memory, "{stats:?}");
}

const CHILD_PATH_VAR: &str = "TBG_STAGE_CHILD_PATH";
const CHILD_COUNT_VAR: &str = "TBG_STAGE_CHILD_COUNT";
/// Set: the child's ring goes in this directory ([`StageDir::Required`]).
const CHILD_STAGE_DIR_VAR: &str = "TBG_STAGE_CHILD_STAGE_DIR";

/// Run by the kill -9 tests in a child process: stages `count` events with
/// the default durability, printing where each record starts in the ring
/// and then that it is acknowledged, and then waits to be killed.
#[test]
#[ignore = "helper run as a child process by the kill -9 tests"]
fn child_stages_events_then_waits_to_be_killed() {
    let (Some(path), Some(count)) = (
        std::env::var_os(CHILD_PATH_VAR),
        std::env::var(CHILD_COUNT_VAR).ok(),
    ) else {
        return;
    };
    let count: u64 = count.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = JournalConfig::new(PathBuf::from(path));
        if let Some(dir) = std::env::var_os(CHILD_STAGE_DIR_VAR) {
            config.stage_dir = StageDir::Required(dir.into());
        }
        let journal = Journal::open(config).unwrap();
        // Opening needs SQLite; the parent blocks its commits only after.
        println!("opened");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        for n in 0..count {
            // Nothing is committed (the parent holds the write lock), so the
            // ring's tail is 0 and its fill level is where the record goes.
            println!("record_at {}", journal.stats().stage_used_bytes);
            let seq = journal.append(&share(n)).unwrap();
            journal.wait_durable(seq).await.unwrap();
            println!("acknowledged {seq}");
        }
        std::future::pending::<()>().await;
    });
}

/// Stages `count` events in a child whose SQLite commits cannot happen,
/// kills it with SIGKILL, and returns the ring offset of the last record.
async fn stage_in_a_killed_child(path: &Path, count: u64) -> u64 {
    stage_in_a_killed_child_with_ring_in(path, count, None).await
}

/// [`stage_in_a_killed_child`] with the child's ring in `stage_dir`.
async fn stage_in_a_killed_child_with_ring_in(
    path: &Path,
    count: u64,
    stage_dir: Option<&Path>,
) -> u64 {
    // A journal with its schema, and no events, to lock.
    Journal::open(JournalConfig::new(path))
        .unwrap()
        .close()
        .await
        .unwrap();
    let stored_before = stored_seqs(path);
    let count_text = count.to_string();
    let mut env = vec![
        (CHILD_PATH_VAR, path.as_os_str()),
        (CHILD_COUNT_VAR, count_text.as_ref()),
    ];
    if let Some(dir) = stage_dir {
        env.push((CHILD_STAGE_DIR_VAR, dir.as_os_str()));
    }
    let (mut child, mut lines) =
        spawn_test_child("child_stages_events_then_waits_to_be_killed", &env);
    while lines.next().expect("child ended early").unwrap() != "opened" {}
    let lock = WriteLock::take(path);
    let mut go = child.stdin.take().unwrap();
    go.write_all(b"go\n").unwrap();
    let mut last_record_at = 0;
    let mut acknowledged = 0;
    loop {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some(at) = line.strip_prefix("record_at ") {
            last_record_at = at.parse().unwrap();
        }
        if line.starts_with("acknowledged ") {
            acknowledged += 1;
            if acknowledged == count {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Nothing reached SQLite: what the next open finds comes from the ring.
    assert_eq!(stored_seqs(path), stored_before);
    lock.release();
    last_record_at
}

async fn events_acknowledged_before_kill_9_are_recovered_into_sqlite_at_open(
    root: &Path,
    in_memory: bool,
) {
    let path = root.join("journal.db");
    stage_in_a_killed_child(&path, 50).await;

    let journal = Journal::open(JournalConfig::new(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    let stats = journal.stats();
    assert_eq!(stats.stage_recovered, 50, "{stats:?}");
    assert_eq!(stats.stage_recovery_stopped_at, None);
    assert_eq!(stored_seqs(&path), (1..=50).collect::<Vec<u64>>());
    let reader = JournalReader::open(&path).unwrap();
    for record in reader.read_after(0, 100).unwrap() {
        let event = record.event().unwrap();
        assert!(
            matches!(event.data, EventData::ShareSubmitted { client_id, .. } if client_id == record.seq - 1)
        );
    }
    // Seqs continue after the recovered ones.
    assert_eq!(journal.append(&share(50)).unwrap(), 51);
    journal.close().await.unwrap();

    // The ring was reset with a new generation at that open: its old records
    // (still in the file) are not events of this generation. Were they taken
    // for current ones, an emptied database would get them back.
    for name in ["journal.db", "journal.db-wal", "journal.db-shm"] {
        let _ = std::fs::remove_file(root.join(name));
    }
    let journal = Journal::open(JournalConfig::new(&path)).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.stage_recovered, 0, "{stats:?}");
    assert_eq!(stats.stage_recovery_stopped_at, None);
    assert!(stored_seqs(&path).is_empty());
    journal.close().await.unwrap();
}

async fn a_torn_last_record_is_ignored_and_reported_with_its_offset(root: &Path, in_memory: bool) {
    let path = root.join("journal.db");
    let last_record_at = stage_in_a_killed_child(&path, 20).await;
    // What a crash in the middle of copying the last record leaves behind.
    let file_offset = STAGE_HEADER_BYTES + last_record_at;
    let stage = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(stage_path(&path))
        .unwrap();
    let mut byte = [0u8; 1];
    stage
        .read_exact_at(&mut byte, file_offset + RECORD_HEADER_BYTES + 20)
        .unwrap();
    byte[0] ^= 0xff;
    stage
        .write_all_at(&byte, file_offset + RECORD_HEADER_BYTES + 20)
        .unwrap();
    drop(stage);

    let journal = Journal::open(JournalConfig::new(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    let stats = journal.stats();
    assert_eq!(stats.stage_recovered, 19);
    let (offset, detail) = stats.stage_recovery_stopped_at.clone().unwrap();
    assert_eq!(offset, file_offset);
    assert!(detail.contains("checksum"), "{detail}");
    assert_eq!(stored_seqs(&path), (1..=19).collect::<Vec<u64>>());
    assert_eq!(journal.append(&share(0)).unwrap(), 20);
    journal.close().await.unwrap();
}

/// Run by the many-laps kill -9 test: appends with a small ring, waiting
/// for room when it is full, printing every acknowledged seq, until killed.
#[test]
#[ignore = "helper run as a child process by the kill -9 tests"]
fn child_appends_over_many_laps_until_killed() {
    let Some(path) = std::env::var_os(CHILD_PATH_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let journal = Journal::open(small_ring(Path::new(&path))).unwrap();
        for n in 0.. {
            let seq = append_waiting_for_room(&journal, &share(n)).await;
            journal.wait_durable(seq).await.unwrap();
            println!("acknowledged {seq}");
        }
    });
}

async fn kill_9_during_many_ring_laps_loses_no_acknowledged_event(root: &Path, in_memory: bool) {
    let path = root.join("journal.db");
    let (child, lines) = spawn_test_child(
        "child_appends_over_many_laps_until_killed",
        &[(CHILD_PATH_VAR, path.as_os_str())],
    );
    // ~450-byte records: 3,000 of them go around a 64 KiB ring 20 times.
    let acknowledged = kill_9_after_reported(child, lines, "acknowledged ", 3_000);

    let journal = Journal::open(small_ring(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    let seqs = stored_seqs(&path);
    assert!(
        seqs.len() as u64 >= acknowledged,
        "{} rows, {acknowledged} acknowledged",
        seqs.len()
    );
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<u64>>());
    let next = journal.append(&share(0)).unwrap();
    assert_eq!(next, seqs.len() as u64 + 1);
    journal.close().await.unwrap();
}

async fn many_laps_around_a_small_ring_store_every_event_in_order(root: &Path, in_memory: bool) {
    let path = root.join("journal.db");
    let journal = Journal::open(small_ring(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    let events: Vec<Event> = (0..20_000).map(share).collect();
    let ring_bytes: u64 = events
        .iter()
        .map(|event| event.to_json().len() as u64)
        .sum();
    assert!(
        ring_bytes > 50 * MIN_STAGE_BYTES,
        "test must wrap the ring many times"
    );
    for (index, event) in events.iter().enumerate() {
        let seq = append_waiting_for_room(&journal, event).await;
        assert_eq!(seq, index as u64 + 1);
    }
    journal.wait_committed(20_000).await.unwrap();
    let stats = journal.stats();
    assert!(stats.stage_used_bytes <= stats.stage_capacity_bytes);
    journal.close().await.unwrap();

    let reader = JournalReader::open(&path).unwrap();
    let records = reader.read_after(0, usize::MAX).unwrap();
    assert_eq!(records.len(), events.len());
    for (record, event) in records.iter().zip(&events) {
        assert_eq!(record.payload, event.to_json());
        assert_eq!(record.event_id, event.id);
    }
    // A clean close leaves nothing to recover.
    let journal = Journal::open(small_ring(&path)).unwrap();
    assert_eq!(journal.stats().stage_recovered, 0);
    journal.close().await.unwrap();
}

async fn a_full_ring_refuses_events_without_growing_and_accepts_them_again_after_the_writer_catches_up(
    root: &Path,
    in_memory: bool,
) {
    let path = root.join("journal.db");
    let journal = Journal::open(small_ring(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    // The writer's first retention pass must not be the one that blocks.
    journal.enforce_retention().await.unwrap();
    let lock = WriteLock::take(&path);

    let mut accepted = 0u64;
    let full = loop {
        match journal.append(&share(accepted)) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(full, JournalError::Full { .. }), "{full}");
    assert!(
        accepted > 50,
        "a 64 KiB ring holds more than {accepted} events"
    );
    assert!(!journal.is_healthy());
    let at_full = journal.stats();
    assert_eq!(at_full.backlog, accepted);
    // More refused appends store nothing and hold nothing.
    for n in 0..10_000 {
        assert!(matches!(
            journal.append(&share(n)),
            Err(JournalError::Full { .. })
        ));
    }
    let later = journal.stats();
    assert_eq!(later.rejected_full, 10_001);
    assert_eq!((later.backlog, later.staged_seq), (accepted, accepted));
    assert!(later.stage_used_bytes <= later.stage_capacity_bytes);
    assert_eq!(later.stage_used_bytes, at_full.stage_used_bytes);

    lock.release();
    journal.wait_committed(accepted).await.unwrap();
    let seq = journal.append(&share(accepted)).unwrap();
    assert_eq!(seq, accepted + 1);
    assert!(journal.is_healthy(), "{:?}", journal.stats());
    journal.wait_committed(seq).await.unwrap();
    assert_eq!(stored_seqs(&path), (1..=seq).collect::<Vec<u64>>());
    journal.close().await.unwrap();
}

/// The scheduling policy of one of this process's threads (`SCHED_OTHER`
/// 0, `SCHED_IDLE` 5), from `/proc/self/task/<tid>/stat`.
fn thread_policy(tid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is
    // field 3, policy field 41.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// The checkpointer follows the writer at its next pass (every 250 ms).
async fn wait_for_thread_policy(tid: i32, policy: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while thread_policy(tid) != policy {
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} never got policy {policy}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn wait_for_policy(journal: &Journal, idle: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while journal.stats().writer_idle_priority != idle {
        assert!(
            std::time::Instant::now() < deadline,
            "writer idle priority never became {idle}: {:?}",
            journal.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The writer idles at `SCHED_IDLE` while the ring is nearly empty (so its
/// commits never hold up a share), is raised to the normal policy once an
/// eighth of the ring waits (so nothing else on the machine can starve it
/// while the ring fills), and goes back to idle once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_idles_while_the_ring_is_nearly_empty_and_is_raised_while_it_fills() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(small_ring(&path)).unwrap();
    let first = journal.append(&share(0)).unwrap();
    journal.wait_committed(first).await.unwrap();
    let stats = journal.stats();
    let tid = stats.writer_thread_id;
    assert!(tid > 0, "{stats:?}");
    if !stats.writer_idle_priority_available {
        // No CAP_SYS_NICE and RLIMIT_NICE < 20: an idle writer could not be
        // raised again, so it must never go idle.
        assert_eq!(thread_policy(tid), SCHED_OTHER);
        assert!(!stats.writer_idle_priority);
        journal.close().await.unwrap();
        return;
    }
    wait_for_policy(&journal, true).await;
    assert_eq!(thread_policy(tid), SCHED_IDLE);
    let checkpointer = journal.stats().checkpointer_thread_id;
    assert!(checkpointer > 0);
    wait_for_thread_policy(checkpointer, SCHED_IDLE).await;

    // Commits blocked: the ring fills past an eighth and the writer is raised.
    journal.enforce_retention().await.unwrap();
    let lock = WriteLock::take(&path);
    let mut last = first;
    while journal.stats().stage_used_bytes * 8 < journal.stats().stage_capacity_bytes {
        last = journal.append(&share(last)).unwrap();
    }
    assert!(!journal.stats().writer_idle_priority);
    assert_eq!(thread_policy(tid), SCHED_OTHER);
    assert_eq!(thread_policy(checkpointer), SCHED_OTHER);

    // Caught up: idle again.
    lock.release();
    journal.wait_committed(last).await.unwrap();
    let seq = journal.append(&share(last)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    wait_for_policy(&journal, true).await;
    assert_eq!(thread_policy(tid), SCHED_IDLE);
    wait_for_thread_policy(checkpointer, SCHED_IDLE).await;
    assert_eq!(stored_seqs(&path), (1..=seq).collect::<Vec<u64>>());
    journal.close().await.unwrap();
}

async fn a_stage_file_that_is_not_one_is_reported_and_replaced(root: &Path, in_memory: bool) {
    let path = root.join("journal.db");
    std::fs::write(stage_path(&path), vec![0x5au8; 8192]).unwrap();
    let journal = Journal::open(small_ring(&path)).unwrap();
    assert_ring_kind(&journal, in_memory);
    let stats = journal.stats();
    assert!(stats.stage_ignored.is_some(), "{stats:?}");
    assert_eq!(stats.stage_capacity_bytes, MIN_STAGE_BYTES);
    assert_eq!(
        std::fs::metadata(stage_path(&path)).unwrap().len(),
        STAGE_HEADER_BYTES + MIN_STAGE_BYTES
    );
    let seq = journal.append(&share(0)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_second_writer_on_the_same_journal_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(small_ring(&path)).unwrap();
    let seq = journal.append(&share(0)).unwrap();
    let second = Journal::open(small_ring(&path)).unwrap_err();
    assert!(matches!(second, JournalError::Stage { .. }), "{second}");
    assert!(second.to_string().contains("in use"), "{second}");
    // The first writer is untouched by the attempt.
    journal.wait_committed(seq).await.unwrap();
    assert_eq!(journal.append(&share(1)).unwrap(), seq + 1);
    journal.close().await.unwrap();
    let reopened = Journal::open(small_ring(&path)).unwrap();
    assert_eq!(reopened.stats().stage_recovered, 0);
    reopened.close().await.unwrap();
}

/// The rings in `dir` (named after their journals).
fn rings_in(dir: &Path) -> Vec<PathBuf> {
    let mut rings: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "stage"))
        .collect();
    rings.sort();
    rings
}

fn ring_in(path: &Path, stage_dir: StageDir) -> JournalConfig {
    let mut config = small_ring(path);
    config.stage_dir = stage_dir;
    config
}

#[tokio::test]
async fn a_ring_in_a_tmpfs_directory_is_used_while_open_and_removed_by_a_clean_close() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stage_dir = memory_root();
    let path = dir.path().join("journal.db");
    let journal =
        Journal::open(ring_in(&path, StageDir::Preferred(stage_dir.path().into()))).unwrap();
    let stats = journal.stats();
    assert!(stats.stage_in_memory, "{stats:?}");
    assert_eq!(rings_in(stage_dir.path()), vec![stats.stage_path.clone()]);
    assert!(!stage_path(&path).exists(), "no ring beside the journal");
    let seq = journal.append(&share(0)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    journal.close().await.unwrap();
    assert_eq!(rings_in(stage_dir.path()), Vec::<PathBuf>::new());
    assert_eq!(stored_seqs(&path), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_left_by_kill_9_is_recovered_after_the_configuration_moves_the_ring() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("journal.db");
    // Killed with its ring in the default tmpfs directory, reopened with the
    // ring beside the journal: the tmpfs ring is found, committed, removed.
    let default_dir = Path::new(tbg_journal::DEFAULT_MEMORY_STAGE_DIR);
    stage_in_a_killed_child_with_ring_in(&path, 30, Some(default_dir)).await;
    let ours = |dir: &Path| -> Vec<PathBuf> {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        rings_in(default_dir)
            .into_iter()
            .filter(|ring| {
                recorded_journal_dir(ring).is_some_and(|recorded| recorded.ends_with(&name))
            })
            .collect()
    };
    assert_eq!(ours(dir.path()).len(), 1, "the killed writer's ring stays");
    let journal = Journal::open(small_ring(&path)).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.stage_recovered, 30, "{stats:?}");
    assert_eq!(stats.stage_path, stage_path(&path));
    assert_eq!(ours(dir.path()), Vec::<PathBuf>::new());
    journal.close().await.unwrap();

    // Killed with its ring beside the journal, reopened with the ring in a
    // tmpfs directory: the ring beside the journal is committed and removed.
    stage_in_a_killed_child_with_ring_in(&path, 20, None).await;
    assert!(stage_path(&path).exists());
    let stage_dir = memory_root();
    let journal =
        Journal::open(ring_in(&path, StageDir::Preferred(stage_dir.path().into()))).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.stage_recovered, 20, "{stats:?}");
    assert!(stats.stage_in_memory);
    assert!(!stage_path(&path).exists());
    assert_eq!(stored_seqs(&path), (1..=50).collect::<Vec<u64>>());
    assert_eq!(journal.append(&share(50)).unwrap(), 51);
    journal.close().await.unwrap();
}

/// The directory of the journal recorded in a ring's header (the path is
/// written at byte 128 as a u32 length and the bytes).
fn recorded_journal_dir(ring: &Path) -> Option<PathBuf> {
    let file = std::fs::File::open(ring).ok()?;
    let mut length = [0u8; 4];
    file.read_exact_at(&mut length, 128).ok()?;
    let mut bytes = vec![0u8; u32::from_le_bytes(length) as usize];
    file.read_exact_at(&mut bytes, 132).ok()?;
    let journal = PathBuf::from(String::from_utf8(bytes).ok()?);
    journal.parent().map(Path::to_path_buf)
}

#[tokio::test]
async fn a_preferred_ring_directory_that_cannot_hold_the_ring_falls_back_beside_the_journal() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("journal.db");
    // Missing.
    let missing = dir.path().join("no-such-dir");
    let journal = Journal::open(ring_in(&path, StageDir::Preferred(missing))).unwrap();
    assert_eq!(journal.stats().stage_path, stage_path(&path));
    journal.close().await.unwrap();
    // The ring's name taken by something that is not a file.
    let stage_dir = memory_root();
    let preferred = StageDir::Preferred(stage_dir.path().into());
    let journal = Journal::open(ring_in(&path, preferred.clone())).unwrap();
    let ring = journal.stats().stage_path;
    journal.close().await.unwrap();
    std::fs::create_dir(&ring).unwrap();
    let journal = Journal::open(ring_in(&path, preferred)).unwrap();
    assert_eq!(journal.stats().stage_path, stage_path(&path));
    let seq = journal.append(&share(0)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_required_ring_directory_that_is_missing_fails_the_open_naming_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("journal.db");
    let missing = dir.path().join("no-such-dir");
    let error = Journal::open(ring_in(&path, StageDir::Required(missing.clone()))).unwrap_err();
    assert!(matches!(error, JournalError::Stage { .. }), "{error}");
    assert!(
        error.to_string().contains(&*missing.to_string_lossy()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_of_a_journal_that_no_longer_exists_is_removed_and_a_live_ones_kept() {
    let stage_dir = memory_root();
    let gone = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kept = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let gone_path = gone.path().join("journal.db");
    let kept_path = kept.path().join("journal.db");
    stage_in_a_killed_child_with_ring_in(&gone_path, 5, Some(stage_dir.path())).await;
    stage_in_a_killed_child_with_ring_in(&kept_path, 5, Some(stage_dir.path())).await;
    assert_eq!(rings_in(stage_dir.path()).len(), 2);
    drop(gone); // the journal of the first ring is deleted

    let other = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let journal = Journal::open(ring_in(
        &other.path().join("journal.db"),
        StageDir::Preferred(stage_dir.path().into()),
    ))
    .unwrap();
    let own = journal.stats().stage_path;
    let rings = rings_in(stage_dir.path());
    assert_eq!(rings.len(), 2, "{rings:?}");
    assert!(rings.contains(&own));
    // The kept journal's ring still has its five events.
    let kept_journal = Journal::open(ring_in(
        &kept_path,
        StageDir::Preferred(stage_dir.path().into()),
    ))
    .unwrap();
    assert_eq!(kept_journal.stats().stage_recovered, 5);
    kept_journal.close().await.unwrap();
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_ring_file_other_users_can_write_is_refused_and_a_preferred_directory_falls_back() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("journal.db");
    let stage_dir = memory_root();
    let preferred = StageDir::Preferred(stage_dir.path().into());
    let journal = Journal::open(ring_in(&path, preferred.clone())).unwrap();
    let ring = journal.stats().stage_path;
    journal.close().await.unwrap();
    // Someone else's file under the ring's (predictable) name in a shared
    // directory: records planted there must never be recovered.
    std::fs::write(&ring, b"planted").unwrap();
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o666)).unwrap();

    let error =
        Journal::open(ring_in(&path, StageDir::Required(stage_dir.path().into()))).unwrap_err();
    assert!(matches!(error, JournalError::Stage { .. }), "{error}");
    assert!(error.to_string().contains("every user"), "{error}");

    let journal = Journal::open(ring_in(&path, preferred)).unwrap();
    assert_eq!(journal.stats().stage_path, stage_path(&path));
    assert_eq!(std::fs::read(&ring).unwrap(), b"planted", "left alone");
    let seq = journal.append(&share(0)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    journal.close().await.unwrap();
}

/// The CPUs a thread may run on (`Cpus_allowed_list` of its /proc status).
fn allowed_cpus(status_path: &str) -> String {
    let status = std::fs::read_to_string(status_path).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// `writer_cpus` keeps SQLite's threads on the CPUs given (off the cores
/// serving miners); the thread that opened the journal is left as it was;
/// a CPU the process cannot use fails the open with an error naming it,
/// before any file is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_cpus_pin_the_sqlite_threads_and_a_cpu_out_of_reach_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let opener_before = allowed_cpus("/proc/thread-self/status");
    let mut config = small_ring(&path);
    config.writer_cpus = Some(vec![0]);
    let journal = Journal::open(config).unwrap();
    assert_eq!(allowed_cpus("/proc/thread-self/status"), opener_before);
    let seq = journal.append(&share(0)).unwrap();
    journal.wait_committed(seq).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while journal.stats().checkpointer_thread_id == 0 {
        assert!(std::time::Instant::now() < deadline, "no checkpointer");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let stats = journal.stats();
    for (thread, tid) in [
        ("writer", stats.writer_thread_id),
        ("checkpointer", stats.checkpointer_thread_id),
    ] {
        assert_eq!(
            allowed_cpus(&format!("/proc/self/task/{tid}/status")),
            "0",
            "{thread}"
        );
    }
    journal.close().await.unwrap();

    let elsewhere = dir.path().join("elsewhere.db");
    let mut config = small_ring(&elsewhere);
    config.writer_cpus = Some(vec![1023]);
    match Journal::open(config) {
        Err(error @ JournalError::WriterCpus { .. }) => {
            assert!(error.to_string().contains("[1023]"), "{error}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a journal writer pinned to CPU 1023 of a small machine"),
    }
    assert!(!elsewhere.exists());
}
