//! Journal behaviour a pool operator and the collector rely on.

use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use tbg_events::{Event, EventSink};
use tbg_journal::{Durability, Journal, JournalConfig, JournalError, JournalReader};

mod common;
use common::{kill_9_after_reported, now, read_all, share_at, spawn_test_child, stored_seqs};

fn config(path: &Path) -> JournalConfig {
    JournalConfig::new(path)
}

#[tokio::test]
async fn appended_events_are_durable_and_read_back_in_order_with_exact_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let events: Vec<Event> = (0..500).map(|n| share_at(n, now())).collect();
    let seqs: Vec<u64> = events
        .iter()
        .map(|event| journal.append(event).unwrap())
        .collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    journal.wait_committed(500).await.unwrap();
    assert_eq!(journal.committed_seq(), 500);

    let records = read_all(&path);
    assert_eq!(records.len(), 500);
    let mut previous_stream = (0i64, 0u64);
    for (record, event) in records.iter().zip(&events) {
        assert_eq!(record.payload, event.to_json());
        let parsed = record.event().unwrap();
        // serde_json's default float parser may differ in the last bit of ts.
        assert_eq!((&parsed.data, &parsed.id), (&event.data, &event.id));
        assert!((parsed.ts - event.ts).abs() < 1e-6);
        assert_eq!(record.event_id, event.id);
        assert_eq!(record.event_type, "share_submitted");
        assert_eq!(record.region, "eu");
        let (ms, seq) = record.stream_id.split_once('-').unwrap();
        let stream = (ms.parse::<i64>().unwrap(), seq.parse::<u64>().unwrap());
        assert_eq!(stream.1, record.seq);
        assert!(stream > previous_stream, "stream ids must grow");
        previous_stream = stream;
    }
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(reader.last_seq().unwrap(), 500);
    assert_eq!(reader.seq_of_event(&events[41].id).unwrap(), Some(42));
    assert_eq!(reader.seq_of_event("no-such-id").unwrap(), None);
    assert_eq!(reader.read_after(498, 10).unwrap().len(), 2);
    let stats = journal.stats();
    assert_eq!(
        (stats.appended, stats.committed, stats.backlog),
        (500, 500, 0)
    );
    assert!(stats.batches >= 1 && stats.bytes > 0);
    journal.close().await.unwrap();
}

/// A burst bigger than a caught-up queue keeps room for (the writer lets
/// that memory go once it is committed), then a trickle: every event is
/// stored once, in order, across the release.
#[tokio::test]
async fn events_after_a_backlog_is_committed_are_stored_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let burst = 30_000u64;
    for n in 0..burst {
        journal.append(&share_at(n, now())).unwrap();
    }
    journal.wait_committed(burst).await.unwrap();
    for n in burst..burst + 300 {
        journal.append(&share_at(n, now())).unwrap();
        if n % 100 == 0 {
            // Small batches again: the rounds that release the backlog.
            journal.wait_committed(n + 1).await.unwrap();
        }
    }
    journal.wait_committed(burst + 300).await.unwrap();
    assert_eq!(stored_seqs(&path), (1..=burst + 300).collect::<Vec<u64>>());
    let stats = journal.stats();
    assert_eq!(
        (stats.appended, stats.committed, stats.backlog),
        (burst + 300, burst + 300, 0)
    );
    journal.close().await.unwrap();
}

#[tokio::test]
async fn event_sink_emit_journals_and_duplicate_ids_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let event = share_at(1, now());
    journal.emit(event.clone());
    let again = journal.append(&event).unwrap();
    journal.wait_committed(again).await.unwrap();
    assert_eq!(read_all(&path).len(), 1);
    assert_eq!(journal.stats().duplicates_ignored, 1);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn seqs_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    for n in 0..10 {
        journal.append(&share_at(n, now())).unwrap();
    }
    journal.close().await.unwrap();
    let journal = Journal::open(config(&path)).unwrap();
    assert_eq!(journal.committed_seq(), 10);
    let seq = journal.append(&share_at(10, now())).unwrap();
    assert_eq!(seq, 11);
    journal.wait_committed(seq).await.unwrap();
    let seqs = stored_seqs(&path);
    assert_eq!(seqs, (1..=11).collect::<Vec<u64>>());
    journal.close().await.unwrap();
}

#[tokio::test]
async fn wait_durable_for_a_committed_seq_returns_at_once_and_unknown_seq_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let seq = journal.append(&share_at(0, now())).unwrap();
    journal.wait_durable(seq).await.unwrap();
    assert!(matches!(
        journal.wait_durable(seq).now_or_never(),
        Some(Ok(()))
    ));
    assert!(matches!(
        journal.wait_durable(0).now_or_never(),
        Some(Ok(()))
    ));
    assert!(matches!(
        journal.wait_durable(seq + 5).await,
        Err(JournalError::UnknownSeq {
            seq: 6,
            last_appended: 1
        })
    ));
    journal.close().await.unwrap();
}

#[tokio::test]
async fn appends_after_close_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let other_handle = journal.clone();
    journal.close().await.unwrap();
    assert!(matches!(
        other_handle.append(&share_at(0, now())),
        Err(JournalError::AppendAfterClose)
    ));
    assert_eq!(other_handle.stats().dropped_after_close, 1);
    assert!(matches!(
        other_handle.wait_durable(1).await,
        Err(JournalError::UnknownSeq { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_in_parallel_sees_a_gapless_growing_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let total = 3000u64;
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let reader = JournalReader::open(&reader_path).unwrap();
        let mut cursor = 0u64;
        let mut reads = 0u32;
        while cursor < total {
            for record in reader.read_after(cursor, 256).unwrap() {
                assert_eq!(record.seq, cursor + 1, "reader saw a gap or reordering");
                record.event().unwrap();
                cursor = record.seq;
            }
            reads += 1;
            std::thread::yield_now();
        }
        reads
    });
    let mut writers = Vec::new();
    for task in 0..4u64 {
        let journal = journal.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..total / 4 {
                let seq = journal.append(&share_at(task * 10_000 + n, now())).unwrap();
                journal.wait_durable(seq).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let reads = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(
        reads > 1,
        "the reader should have read while writes went on"
    );
    journal.close().await.unwrap();
}

#[tokio::test]
async fn retention_by_age_deletes_old_events_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let mut config = config(&path);
    config.retention_max_age = Duration::from_secs(24 * 3600);
    let journal = Journal::open(config).unwrap();
    let ten_days_ago = now() - 10.0 * 24.0 * 3600.0;
    for n in 0..100 {
        journal.append(&share_at(n, ten_days_ago)).unwrap();
    }
    for n in 100..150 {
        journal.append(&share_at(n, now())).unwrap();
    }
    journal.wait_committed(150).await.unwrap();
    assert_eq!(journal.enforce_retention().await.unwrap(), 100);
    let seqs = stored_seqs(&path);
    assert_eq!(seqs, (101..=150).collect::<Vec<u64>>());
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(reader.first_seq().unwrap(), 101);
    // Replaying from a time before every kept event starts at the oldest kept.
    assert_eq!(reader.seq_at_time(now() - 3600.0).unwrap(), 100);
    assert_eq!(reader.seq_at_time(now() + 3600.0).unwrap(), 150);

    // Even when everything is old, the newest row stays so seqs survive a restart.
    for n in 150..160 {
        journal.append(&share_at(n, ten_days_ago)).unwrap();
    }
    journal.wait_committed(160).await.unwrap();
    journal.enforce_retention().await.unwrap();
    journal.close().await.unwrap();
    let records = read_all(&path);
    assert_eq!(records.last().map(|record| record.seq), Some(160));
    let journal = Journal::open(JournalConfig::new(&path)).unwrap();
    assert_eq!(journal.append(&share_at(0, now())).unwrap(), 161);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn retention_by_size_deletes_the_oldest_until_the_file_fits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let limit = 512 * 1024;
    let mut config = config(&path);
    config.retention_max_bytes = limit;
    let journal = Journal::open(config).unwrap();
    let mut last = 0;
    for n in 0..12_000 {
        last = journal.append(&share_at(n, now())).unwrap();
    }
    journal.wait_committed(last).await.unwrap();
    let before = journal.stats().bytes;
    assert!(
        before > 2 * limit,
        "test needs a journal well over the limit: {before}"
    );
    let deleted = journal.enforce_retention().await.unwrap();
    assert!(deleted > 0);
    let after = journal.stats().bytes;
    assert!(after <= limit, "file is {after} bytes, limit {limit}");
    let reader = JournalReader::open(&path).unwrap();
    assert_eq!(reader.last_seq().unwrap(), last);
    assert_eq!(reader.first_seq().unwrap(), deleted + 1);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_garbage_file_is_a_clear_reader_error_and_the_writer_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    std::fs::write(&path, vec![0x5au8; 64 * 1024]).unwrap();
    let error = JournalReader::open(&path).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, JournalError::Corrupt { .. }), "{message}");
    assert!(
        message.contains("journal.db") && message.contains("not a database"),
        "{message}"
    );

    let journal = Journal::open(config(&path)).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.corrupt_files_moved.len(), 1);
    assert!(stats.seq_continuity_lost);
    let moved = &stats.corrupt_files_moved[0];
    assert_eq!(std::fs::read(moved).unwrap(), vec![0x5au8; 64 * 1024]);
    let seq = journal.append(&share_at(0, now())).unwrap();
    assert_eq!(seq, 1);
    journal.wait_committed(seq).await.unwrap();
    assert_eq!(read_all(&path).len(), 1);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_truncated_journal_is_a_clear_error_and_the_writer_continues_its_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    let mut last = 0;
    for n in 0..5000 {
        last = journal.append(&share_at(n, now())).unwrap();
    }
    journal.wait_committed(last).await.unwrap();
    journal.close().await.unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    // Closing checkpointed the WAL into the file, so truncating it loses rows.
    assert!(!dir.path().join("journal.db-wal").exists());
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(size / 2).unwrap();
    drop(file);

    let error = JournalReader::open(&path).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, JournalError::Corrupt { .. }), "{message}");
    assert!(
        message.contains("journal.db") && message.contains("malformed"),
        "{message}"
    );

    let journal = Journal::open(config(&path)).unwrap();
    let stats = journal.stats();
    assert_eq!(stats.corrupt_files_moved.len(), 1, "{stats:?}");
    let seq = journal.append(&share_at(0, now())).unwrap();
    journal.wait_committed(seq).await.unwrap();
    assert_eq!(stored_seqs(&path), vec![seq]);
    journal.close().await.unwrap();
}

#[tokio::test]
async fn a_row_that_does_not_parse_is_an_error_naming_its_seq_and_later_rows_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let journal = Journal::open(config(&path)).unwrap();
    for n in 0..3 {
        journal.append(&share_at(n, now())).unwrap();
    }
    journal.wait_committed(3).await.unwrap();
    journal.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE journal SET payload = '{\"event\": 42' WHERE seq = 2",
        [],
    )
    .unwrap();
    drop(conn);

    let records = read_all(&path);
    assert_eq!(records.len(), 3);
    assert!(records[0].event().is_ok() && records[2].event().is_ok());
    let error = records[1].event().unwrap_err();
    assert!(matches!(error, JournalError::BadRow { seq: 2, .. }));
    assert!(error.to_string().contains("seq 2"));
}

#[tokio::test]
async fn a_missing_file_or_another_database_is_a_clear_reader_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.db");
    let message = JournalReader::open(&missing).unwrap_err().to_string();
    assert!(message.contains("absent.db"), "{message}");
    let foreign = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    drop(conn);
    assert!(matches!(
        JournalReader::open(&foreign),
        Err(JournalError::NotAJournal { .. })
    ));
    assert!(matches!(
        Journal::open(config(&foreign)),
        Err(JournalError::NotAJournal { .. })
    ));
}

const CHILD_PATH_VAR: &str = "TBG_JOURNAL_KILL_CHILD_PATH";

/// Run by `kill_9_loses_no_event_reported_durable` in a child process.
#[test]
#[ignore = "helper run as a child process by the kill -9 test"]
fn child_appends_until_killed() {
    let Some(path) = std::env::var_os(CHILD_PATH_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = JournalConfig::new(path);
        config.durability = Durability::PowerLoss;
        let journal = Journal::open(config).unwrap();
        let mut n = 0;
        loop {
            let mut last = 0;
            for _ in 0..7 {
                last = journal.append(&share_at(n, now())).unwrap();
                n += 1;
            }
            journal.wait_durable(last).await.unwrap();
            println!("durable {last}");
        }
    });
}

#[test]
fn kill_9_loses_no_event_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let (child, lines) = spawn_test_child(
        "child_appends_until_killed",
        &[(CHILD_PATH_VAR, path.as_os_str())],
    );
    let durable = kill_9_after_reported(child, lines, "durable ", 700);

    let seqs = stored_seqs(&path);
    let reported: Vec<u64> = (1..=durable).collect();
    assert!(
        seqs.len() as u64 >= durable,
        "{} rows, {durable} reported durable",
        seqs.len()
    );
    assert_eq!(&seqs[..durable as usize], &reported[..]);
    // The writer reopens the killed journal (committing what the child had
    // staged but not committed) and continues after the last row.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let journal = Journal::open(JournalConfig::new(&path)).unwrap();
        let after_open = stored_seqs(&path);
        assert_eq!(&after_open[..seqs.len()], &seqs[..]);
        assert_eq!(
            after_open,
            (1..=after_open.len() as u64).collect::<Vec<u64>>()
        );
        let next = journal.append(&share_at(0, now())).unwrap();
        assert_eq!(next, after_open.last().copied().unwrap() + 1);
        journal.wait_durable(next).await.unwrap();
        journal.close().await.unwrap();
    });
}
