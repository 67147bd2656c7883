//! What must not stall a sink: a damaged journal, a record PostgreSQL
//! refuses; and the periodic partition maintenance.

mod common;

use std::collections::HashSet;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use common::{
    now, pg_client, redis_connection, share, wait_until, PgServer, RecordMaker, RedisServer,
};
use tbg_collector::{
    BackoffConfig, BatchConfig, Collector, CollectorConfig, MemorySource, PostgresConfig,
    RedisConfig, SinkKind,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(pg: &PgServer, redis: &RedisServer) -> CollectorConfig {
    CollectorConfig {
        postgres: Some(PostgresConfig {
            conninfo: pg.conninfo(),
        }),
        redis: Some(RedisConfig {
            url: redis.url(),
            stream_maxlen: 100_000,
        }),
        batch: BatchConfig {
            max_events: 100,
            max_wait: Duration::from_millis(100),
            poll_interval: Duration::from_millis(10),
            max_events_catching_up: 400,
        },
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            write_timeout: Duration::from_secs(10),
        },
        ..CollectorConfig::default()
    }
}

async fn wait_for_cursor(collector: &Collector, sink: SinkKind, seq: u64) {
    wait_until(WAIT, &format!("{} cursor {seq}", sink.name()), || {
        let cursor = collector.sink_stats(sink).map(|stats| stats.cursor);
        async move { cursor == Some(seq) }
    })
    .await;
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn xlen(redis: &RedisServer, stream: &str) -> u64 {
    let mut connection = redis_connection(redis).await;
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut connection)
        .await
        .expect("xlen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_damaged_in_the_middle_is_skipped_with_its_position_and_the_rest_delivered() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let journal = tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&path)).unwrap();
    let factory = tbg_events::EventFactory::new("eu", "hosted");
    let mut last = 0;
    for i in 0..2_000 {
        last = journal
            .append(&factory.make(share(&format!("bc1q{}", i % 7), "rig", 1.0, true)))
            .expect("journal append");
    }
    journal.wait_durable(last).await.unwrap();
    journal.close().await.unwrap();

    // Move everything into the main file, then find a leaf page of the
    // journal table in the middle and a row with a payload that is not an
    // event after the last one.
    let (page_size, page, rows_in_page) = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        conn.execute(
            "INSERT INTO journal (seq, event_id, ts, event_type, region, stream_ms, payload)
             VALUES (?1, 'not-an-event', ?2, 'share_submitted', 'eu', ?3, '{\"event\": 42')",
            rusqlite::params![last as i64 + 1, now(), (now() * 1000.0) as i64],
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE")
            .unwrap();
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        let leaves: Vec<(i64, i64)> = conn
            .prepare(
                "SELECT pageno, ncell FROM dbstat WHERE name = 'journal' AND pagetype = 'leaf'
                 ORDER BY pageno",
            )
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(leaves.len() > 10, "enough leaf pages: {}", leaves.len());
        let (page, cells) = leaves[leaves.len() / 2];
        (page_size as u64, page as u64, cells as u64)
    };
    let last = last + 1;
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start((page - 1) * page_size)).unwrap();
        file.write_all(&vec![0u8; page_size as usize]).unwrap();
        file.sync_all().unwrap();
    }

    let reader = Arc::new(tbg_journal::JournalReader::open(&path).unwrap());
    // The damage is really there: reading across it fails, naming the position.
    let error = reader.read_after(0, 5_000).unwrap_err().to_string();
    assert!(error.contains("corrupt"), "{error}");

    let collector = Collector::start(config(&pg, &redis), reader.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, last).await;
    wait_for_cursor(&collector, SinkKind::Redis, last).await;
    let stats = collector.stats();
    collector.shutdown().await;

    // The damaged page's rows are skipped, plus at most the first row after
    // it: `read_after(seq)` seeks through the page holding `seq`, so the row
    // right after a damaged page can only be reached with a start inside it.
    let unreadable = stats[0].journal_unreadable_seqs;
    assert!(
        unreadable == rows_in_page || unreadable == rows_in_page + 1,
        "{unreadable} unreadable seqs for a damaged page of {rows_in_page} rows"
    );
    let delivered = last - 1 - unreadable;
    for stats in &stats {
        assert_eq!(stats.journal_corrupt_regions, 1, "{stats:?}");
        assert_eq!(stats.journal_unreadable_seqs, unreadable, "{stats:?}");
        assert_eq!(
            stats.events_skipped, 1,
            "the row that is not an event: {stats:?}"
        );
        assert_eq!(stats.events_written, delivered, "{stats:?}");
        assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
    }
    let client = pg_client(&pg).await;
    assert_eq!(
        count(&client, "SELECT COUNT(*) FROM mining_events").await as u64,
        delivered
    );
    assert_eq!(xlen(&redis, "mining:share_submitted").await, delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgresql_refuses_is_skipped_alone_and_the_rest_of_its_batch_lands() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let start = now() - 60.0;
    // A user name too large for a btree index entry (incompressible): the
    // shares and users indexes refuse it with "index row size exceeds maximum".
    let huge_user: String = (0..600)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut records = Vec::new();
    for i in 0..40u64 {
        let user = if i == 23 {
            huge_user.clone()
        } else {
            format!("bc1quser{}", i % 3)
        };
        records.push(maker.record(share(&user, "rig", 2.0, true), start + i as f64));
    }
    let refused_id = records[23].event_id.clone();
    source.push(records);
    let collector = Collector::start(config(&pg, &redis), source.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 40).await;
    wait_for_cursor(&collector, SinkKind::Redis, 40).await;
    let postgres = collector.sink_stats(SinkKind::Postgres).unwrap();
    let redis_stats = collector.sink_stats(SinkKind::Redis).unwrap();
    collector.shutdown().await;

    assert_eq!(postgres.events_rejected, 1, "{postgres:?}");
    assert_eq!(postgres.events_skipped, 1, "{postgres:?}");
    assert_eq!(postgres.events_written, 39, "{postgres:?}");
    assert_eq!(redis_stats.events_written, 40, "{redis_stats:?}");
    let client = pg_client(&pg).await;
    let ids: HashSet<String> = client
        .query("SELECT event_id FROM mining_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids.len(), 39);
    assert!(!ids.contains(&refused_id));
    // Aggregates count the 39 stored shares exactly once.
    assert_eq!(
        count(&client, "SELECT SUM(total_shares)::int8 FROM users").await,
        39
    );
    assert_eq!(count(&client, "SELECT COUNT(*) FROM shares").await, 39);
    assert_eq!(
        count(
            &client,
            "SELECT seq FROM collector_cursor WHERE sink = 'postgres'"
        )
        .await,
        40
    );
    assert_eq!(xlen(&redis, "mining:share_submitted").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_periodically_not_only_on_connect() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let old = maker.record(share("bc1qold", "w", 1.0, true), now() - 40.0 * 86_400.0);
    let recent = maker.record(share("bc1qnew", "w", 1.0, true), now() - 60.0);
    source.push([old, recent]);
    let mut config = config(&pg, &redis);
    config.maintenance_interval = Duration::from_millis(300);
    let collector = Collector::start(config, source.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 2).await;
    let client = pg_client(&pg).await;
    // The 40-day-old partition was created by the write, after the connect-time
    // maintenance: only the timer can drop it.
    wait_until(WAIT, "the expired partition to be dropped", || async {
        count(&client, "SELECT COUNT(*) FROM mining_events").await == 1
    })
    .await;
    // A partition ahead that disappears is created again by the timer.
    let ahead: String = client
        .query_one(
            "SELECT 'mining_events_p' || to_char((now() AT TIME ZONE 'UTC')::date + 2, 'YYYYMMDD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("DROP TABLE {ahead}"))
        .await
        .unwrap();
    wait_until(WAIT, "the partition ahead to be recreated", || {
        let sql = format!("SELECT COUNT(*) FROM pg_class WHERE relname = '{ahead}'");
        let client = &client;
        async move { count(client, &sql).await == 1 }
    })
    .await;
    let stats = collector.sink_stats(SinkKind::Postgres).unwrap();
    collector.shutdown().await;
    assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
    assert_eq!(stats.cursor, 2);
}
