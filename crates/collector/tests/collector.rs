//! The collector against real PostgreSQL and Redis servers of its own.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{
    now, pg_client, redis_connection, share, wait_until, PgServer, RecordMaker, RedisServer,
};
use futures::StreamExt;
use tbg_collector::migrations::{self, Migration, MIGRATIONS};
use tbg_collector::{
    resolve_replay_from, BackoffConfig, BatchConfig, Collector, CollectorConfig, CollectorError,
    EventSource, JournalRecord, MemorySource, PostgresConfig, RedisConfig, SinkKind,
};
use tbg_events::{EventData, EVENT_TYPES};

const WAIT: Duration = Duration::from_secs(60);

fn config(pg: Option<&PgServer>, redis: Option<&RedisServer>) -> CollectorConfig {
    CollectorConfig {
        postgres: pg.map(|pg| PostgresConfig {
            conninfo: pg.conninfo(),
        }),
        redis: redis.map(|redis| RedisConfig {
            url: redis.url(),
            stream_maxlen: 100_000,
        }),
        batch: BatchConfig {
            max_events: 500,
            max_wait: Duration::from_millis(200),
            poll_interval: Duration::from_millis(10),
            ..BatchConfig::default()
        },
        backoff: BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
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

async fn pg_event_ids(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT event_id FROM mining_events", &[])
        .await
        .expect("select event ids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Every entry of every `mining:*` stream: (event id, fields).
async fn redis_entries(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Vec<(String, HashMap<String, String>)> {
    let mut entries = Vec::new();
    for event_type in EVENT_TYPES {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("mining:{event_type}"))
            .arg("-")
            .arg("+")
            .query_async(connection)
            .await
            .expect("xrange");
        for entry in reply.ids {
            let fields: HashMap<String, String> = entry
                .map
                .iter()
                .map(|(key, value)| {
                    (
                        key.clone(),
                        redis::from_redis_value::<String>(value).expect("string field"),
                    )
                })
                .collect();
            entries.push((entry.id.clone(), fields));
        }
    }
    entries
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn migrations_apply_on_an_empty_database_once() {
    let pg = PgServer::start();
    let mut client = pg_client(&pg).await;
    let pending = migrations::pending_migrations(&client).await.unwrap();
    assert_eq!(pending.len(), MIGRATIONS.len());
    let applied = migrations::apply_migrations(&mut client).await.unwrap();
    let names: Vec<&str> = applied.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "001_core_tables.sql",
            "002_time_series.sql",
            "003_lighter_event_index_block_submission.sql",
            "004_block_lifecycle.sql"
        ]
    );
    assert!(migrations::pending_migrations(&client)
        .await
        .unwrap()
        .is_empty());
    // A restart applies nothing and keeps the recorded rows.
    let mut restarted = pg_client(&pg).await;
    assert!(migrations::apply_migrations(&mut restarted)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        count(&client, "SELECT COUNT(*) FROM schema_migrations").await,
        4
    );
    // 003 swapped the (event_type, ts) btree for a BRIN index on ts.
    let event_indexes: Vec<String> = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'mining_events' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        event_indexes
            .iter()
            .any(|name| name == "mining_events_ts_brin")
            && !event_indexes
                .iter()
                .any(|name| name == "mining_events_type_ts"),
        "{event_indexes:?}"
    );
    let checksum: String = client
        .query_one(
            "SELECT checksum FROM schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksum, MIGRATIONS[0].checksum());
    for table in [
        "mining_events",
        "shares",
        "blocks",
        "users",
        "workers",
        "weekly_best_diff",
        "hourly_shares",
        "daily_shares",
        "collector_cursor",
    ] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "table {table} missing");
    }
    // Without TimescaleDB the time series tables are natively partitioned.
    assert_eq!(
        count(
            &client,
            "SELECT COUNT(*) FROM pg_partitioned_table
             WHERE partrelid IN ('mining_events'::regclass, 'shares'::regclass)"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused_by_name() {
    let pg = PgServer::start();
    let mut client = pg_client(&pg).await;
    migrations::apply_migrations(&mut client).await.unwrap();
    let mut altered: Vec<Migration> = MIGRATIONS.to_vec();
    altered[0].sql = "CREATE TABLE something_else (x int);";
    let error = migrations::apply_of(&mut client, &altered)
        .await
        .unwrap_err();
    assert!(matches!(error, CollectorError::MigrationChanged { .. }));
    assert!(error.to_string().contains("001_core_tables.sql"), "{error}");
    let dry_run = migrations::pending_of(&client, &altered).await.unwrap_err();
    assert!(dry_run.to_string().contains("001_core_tables.sql"));
    // A new migration shows in the dry run and is not applied by it.
    altered[0] = MIGRATIONS[0];
    let next_version = MIGRATIONS.len() as i32 + 1;
    altered.push(Migration {
        version: next_version,
        name: "999_extra.sql",
        sql: "CREATE TABLE extra (x int);",
    });
    let pending = migrations::pending_of(&client, &altered).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].name, "999_extra.sql");
    assert_eq!(
        count(&client, "SELECT COUNT(*) FROM schema_migrations").await,
        MIGRATIONS.len() as i64
    );
}

fn mixed_records(maker: &mut RecordMaker, start: f64) -> Vec<JournalRecord> {
    let alice = "bc1qalice";
    let bob = "bc1qbob";
    let mut records = vec![
        maker.record(
            EventData::MinerConnected {
                user: alice.into(),
                worker: "rig1".into(),
                client_id: 1,
                ip: "10.0.0.1".into(),
                useragent: "cpuminer/2.5".into(),
                initial_diff: 1.0,
            },
            start,
        ),
        maker.record(share(alice, "rig1", 5.0, true), start + 1.0),
        maker.record(share(alice, "rig1", 9.0, true), start + 2.0),
        maker.record(share(alice, "rig1", 50.0, false), start + 3.0),
        maker.record(share(bob, "s9", 2.0, true), start + 4.0),
        maker.garbage(start + 4.5),
        maker.record(
            EventData::HashrateUpdate {
                user: alice.into(),
                worker: "rig1".into(),
                hashrate_1m: 1e9,
                hashrate_5m: 2e9,
                hashrate_1h: 3e9,
                hashrate_1d: f64::NAN,
            },
            start + 5.0,
        ),
        maker.record(
            EventData::BlockFound {
                user: alice.into(),
                worker: "rig1".into(),
                height: 840_000,
                hash: "00000000abcd".into(),
                diff: 1e12,
                network_diff: 8e11,
                reward_sats: 312_500_000,
                coinbase_sig: "/tbg/".into(),
            },
            start + 6.0,
        ),
        maker.record(
            EventData::NewBlockNetwork {
                height: 840_000,
                hash: "00000000abcd".into(),
                diff: 8e11,
                prev_hash: "0000000099".into(),
            },
            start + 7.0,
        ),
    ];
    records.push(maker.record(
        EventData::MinerDisconnected {
            user: bob.into(),
            worker: "s9".into(),
            client_id: 2,
            ip: "10.0.0.2".into(),
            session_duration: 60.0,
            shares_session: 1,
        },
        start + 8.0,
    ));
    records
}

async fn check_postgres(client: &tokio_postgres::Client) {
    let by_type: HashMap<String, i64> = client
        .query(
            "SELECT event_type, COUNT(*) FROM mining_events GROUP BY event_type",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(by_type.get("share_submitted"), Some(&4));
    assert_eq!(by_type.get("block_found"), Some(&1));
    assert_eq!(by_type.values().sum::<i64>(), 9);
    assert_eq!(count(client, "SELECT COUNT(*) FROM shares").await, 4);
    assert_eq!(
        count(client, "SELECT COUNT(*) FROM shares WHERE NOT is_valid").await,
        1
    );
    let block = client
        .query_one(
            "SELECT block_height, \"user\", reward, region FROM blocks",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(block.get::<_, i64>(0), 840_000);
    assert_eq!(block.get::<_, String>(1), "bc1qalice");
    assert_eq!(block.get::<_, i64>(2), 312_500_000);
    assert_eq!(block.get::<_, String>(3), "eu");
    let alice = client
        .query_one(
            "SELECT total_shares, accepted_shares, rejected_shares, best_difficulty, blocks_found
                     FROM users WHERE btc_address = 'bc1qalice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(alice.get::<_, i64>(0), 3);
    assert_eq!(alice.get::<_, i64>(1), 2);
    assert_eq!(alice.get::<_, i64>(2), 1);
    // The rejected share's 50 does not count as best.
    assert_eq!(alice.get::<_, Option<f64>>(3), Some(9.0));
    assert_eq!(alice.get::<_, i64>(4), 1);
    let rig = client
        .query_one(
            "SELECT hashrate_1m, hashrate_24h, is_online FROM workers
                     WHERE \"user\" = 'bc1qalice' AND worker_name = 'rig1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rig.get::<_, Option<f64>>(0), Some(1e9));
    assert_eq!(rig.get::<_, Option<f64>>(1), None);
    assert!(rig.get::<_, bool>(2));
    let s9_online: bool = client
        .query_one(
            "SELECT is_online FROM workers WHERE \"user\" = 'bc1qbob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!s9_online);
    let daily = client
        .query_one(
            "SELECT SUM(share_count)::int8, SUM(accepted)::int8, SUM(rejected)::int8,
                            MAX(best_share_diff), SUM(sum_share_diff)
                     FROM daily_shares WHERE btc_address = 'bc1qalice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(daily.get::<_, i64>(0), 3);
    assert_eq!(daily.get::<_, i64>(1), 2);
    assert_eq!(daily.get::<_, i64>(2), 1);
    assert_eq!(daily.get::<_, Option<f64>>(3), Some(9.0));
    assert_eq!(daily.get::<_, f64>(4), 14.0);
    assert_eq!(
        count(client, "SELECT SUM(share_count)::int8 FROM hourly_shares").await,
        4
    );
    assert_eq!(
        count(
            client,
            "SELECT SUM(total_shares)::int8 FROM weekly_best_diff"
        )
        .await,
        4
    );
}

#[tokio::test]
async fn a_mixed_batch_lands_once_everywhere_and_a_replay_changes_nothing() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let records = mixed_records(&mut maker, now() - 60.0);
    let last_seq = records.last().unwrap().seq;
    let expected_ids: HashSet<String> = records
        .iter()
        .filter(|record| record.payload.ends_with('}'))
        .map(|record| record.event_id.clone())
        .collect();
    source.push(records.clone());

    let pubsub_client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = pubsub_client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("blocks:found").await.unwrap();
    let mut messages = pubsub.on_message();

    let collector = Collector::start(config(Some(&pg), Some(&redis)), source.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, last_seq).await;
    wait_for_cursor(&collector, SinkKind::Redis, last_seq).await;

    let block_message = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("blocks:found message")
        .expect("pubsub open");
    let payload: String = block_message.get_payload().unwrap();
    let block_event = tbg_events::Event::from_json(&payload).unwrap();
    assert_eq!(block_event.event_type(), "block_found");

    let client = pg_client(&pg).await;
    check_postgres(&client).await;
    let ids: HashSet<String> = pg_event_ids(&client).await.into_iter().collect();
    assert_eq!(ids, expected_ids);

    let mut connection = redis_connection(&redis).await;
    let check_redis = |entries: Vec<(String, HashMap<String, String>)>| {
        let ids: HashSet<String> = entries.iter().map(|(_, f)| f["id"].clone()).collect();
        assert_eq!(entries.len(), 9);
        assert_eq!(ids, expected_ids);
        let (stream_id, share_fields) = entries
            .iter()
            .find(|(_, fields)| fields["event"] == "share_submitted")
            .unwrap();
        let share_record = records
            .iter()
            .find(|r| r.event_id == share_fields["id"])
            .unwrap();
        assert_eq!(stream_id, &share_record.stream_id);
        assert_eq!(share_fields["source"], "hosted");
        assert_eq!(share_fields["region"], "eu");
        assert_eq!(share_fields["ts"], format!("{:.6}", share_record.ts));
        let data: serde_json::Value = serde_json::from_str(&share_fields["data"]).unwrap();
        assert_eq!(data["user"], "bc1qalice");
        assert_eq!(data["worker"], "rig1");
    };
    check_redis(redis_entries(&mut connection).await);
    let share_len: u64 = redis::cmd("XLEN")
        .arg("mining:share_submitted")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(share_len, 4);

    let stats = collector.sink_stats(SinkKind::Postgres).unwrap();
    assert_eq!(stats.events_written, 9);
    assert_eq!(stats.events_skipped, 1);
    assert_eq!(stats.lag, 0);
    assert!(stats.up);

    // Replay everything: stores unchanged, nothing published again.
    let batches_before: Vec<u64> = collector.stats().iter().map(|s| s.batches).collect();
    collector.replay_from(0);
    for sink in [SinkKind::Postgres, SinkKind::Redis] {
        let before = batches_before[if sink == SinkKind::Postgres { 0 } else { 1 }];
        wait_until(WAIT, "replay batch", || {
            let stats = collector.sink_stats(sink).unwrap();
            async move { stats.batches > before && stats.cursor == last_seq }
        })
        .await;
        let stats = collector.sink_stats(sink).unwrap();
        assert_eq!(stats.events_written, 9, "{sink:?} wrote again on replay");
        assert_eq!(stats.events_duplicate, 9);
    }
    check_postgres(&client).await;
    assert_eq!(pg_event_ids(&client).await.len(), 9);
    check_redis(redis_entries(&mut connection).await);
    let stored_cursor: u64 = redis::cmd("GET")
        .arg("tbg:collector:cursor:redis")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored_cursor, last_seq);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "a replayed block was published again"
    );
    collector.shutdown().await;
}

/// Feeds `total` share records in steps while `outage` runs; then checks
/// both stores hold exactly the journal's ids.
async fn outage_scenario(stop_postgres: bool) {
    let pg = PgServer::start();
    let mut redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let collector = Collector::start(config(Some(&pg), Some(&redis)), source.clone());
    let mut maker = RecordMaker::new();
    let start = now() - 100.0;
    let mut journal_ids = Vec::new();
    let mut feed = |source: &MemorySource, count: usize| {
        let records: Vec<JournalRecord> = (0..count)
            .map(|i| {
                let user = format!("bc1quser{}", i % 7);
                maker.record(
                    share(&user, "rig", 1.0 + i as f64, true),
                    start + i as f64 * 0.01,
                )
            })
            .collect();
        journal_ids.extend(records.iter().map(|r| r.event_id.clone()));
        let last = records.last().map(|r| r.seq).unwrap_or(0);
        source.push(records);
        last
    };

    let first = feed(&source, 300);
    wait_for_cursor(&collector, SinkKind::Postgres, first).await;
    wait_for_cursor(&collector, SinkKind::Redis, first).await;

    let (down, up) = if stop_postgres {
        pg.stop_immediate();
        (SinkKind::Postgres, SinkKind::Redis)
    } else {
        redis.kill();
        (SinkKind::Redis, SinkKind::Postgres)
    };
    // Events keep arriving during the outage; the healthy sink keeps up.
    let mut last = first;
    for _ in 0..5 {
        last = feed(&source, 200);
        wait_for_cursor(&collector, up, last).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let down_stats = collector.sink_stats(down).unwrap();
    assert!(down_stats.cursor <= first, "{down:?} advanced while down");
    wait_until(WAIT, "errors on the stopped sink", || {
        let stats = collector.sink_stats(down).unwrap();
        async move { stats.errors > 0 && !stats.up }
    })
    .await;
    assert_eq!(
        collector.sink_stats(down).unwrap().lag,
        last - down_stats.cursor
    );

    if stop_postgres {
        pg.pg_ctl_start();
    } else {
        redis.restart();
    }
    last = feed(&source, 100);
    wait_for_cursor(&collector, SinkKind::Postgres, last).await;
    wait_for_cursor(&collector, SinkKind::Redis, last).await;
    collector.shutdown().await;

    let expected: HashSet<String> = journal_ids.iter().cloned().collect();
    assert_eq!(expected.len(), 1400);
    let client = pg_client(&pg).await;
    let pg_ids = pg_event_ids(&client).await;
    assert_eq!(
        pg_ids.len(),
        expected.len(),
        "postgres lost or duplicated events"
    );
    assert_eq!(pg_ids.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(count(&client, "SELECT COUNT(*) FROM shares").await, 1400);
    assert_eq!(
        count(&client, "SELECT SUM(total_shares)::int8 FROM users").await,
        1400,
        "aggregates counted a share twice"
    );
    let mut connection = redis_connection(&redis).await;
    let entries = redis_entries(&mut connection).await;
    assert_eq!(
        entries.len(),
        expected.len(),
        "redis lost or duplicated events"
    );
    let redis_ids: HashSet<String> = entries.into_iter().map(|(_, f)| f["id"].clone()).collect();
    assert_eq!(redis_ids, expected);
}

#[tokio::test]
async fn postgres_outage_redis_keeps_going_and_postgres_catches_up() {
    outage_scenario(true).await;
}

#[tokio::test]
async fn redis_outage_postgres_keeps_going_and_redis_is_rebuilt() {
    outage_scenario(false).await;
}

#[tokio::test]
async fn replay_from_resolves_times_and_event_ids() {
    let source = MemorySource::new();
    let mut maker = RecordMaker::new();
    let records: Vec<JournalRecord> = (0..10)
        .map(|i| maker.record(share("bc1qa", "w", 1.0, true), 1_700_000_000.0 + i as f64))
        .collect();
    source.push(records.clone());
    assert_eq!(source.last_seq().unwrap(), 10);
    // Events at or after the time are re-sent: the cursor is the last seq before it.
    assert_eq!(resolve_replay_from(&source, "1700000003").unwrap(), 3);
    assert_eq!(
        resolve_replay_from(&source, "2023-11-14T22:13:23Z").unwrap(),
        3
    );
    assert_eq!(
        resolve_replay_from(&source, "2023-11-14T23:13:23+01:00").unwrap(),
        3
    );
    assert_eq!(
        resolve_replay_from(&source, &records[6].event_id).unwrap(),
        6
    );
    let error = resolve_replay_from(&source, "yesterday").unwrap_err();
    assert!(error.to_string().contains("yesterday"), "{error}");
}

#[tokio::test]
async fn retention_drops_expired_day_partitions_only() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let old = maker.record(share("bc1qold", "w", 1.0, true), now() - 40.0 * 86_400.0);
    let recent = maker.record(share("bc1qnew", "w", 1.0, true), now() - 60.0);
    source.push([old, recent]);
    let collector = Collector::start(config(Some(&pg), Some(&redis)), source.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 2).await;
    collector.shutdown().await;
    let client = pg_client(&pg).await;
    assert_eq!(
        count(&client, "SELECT COUNT(*) FROM mining_events").await,
        2
    );
    let dropped = tbg_collector::postgres::drop_expired_partitions(
        &client,
        tbg_collector::postgres::MINING_EVENTS_RETENTION,
        tbg_collector::postgres::SHARES_RETENTION,
    )
    .await
    .unwrap();
    assert_eq!(
        dropped, 1,
        "only the 40-day-old mining_events partition expires"
    );
    assert_eq!(
        count(&client, "SELECT COUNT(*) FROM mining_events").await,
        1
    );
    assert_eq!(count(&client, "SELECT COUNT(*) FROM shares").await, 2);
}

#[tokio::test]
async fn events_from_the_real_journal_reach_both_stores_while_the_pool_writes() {
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let journal = tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&path)).unwrap();
    let factory = tbg_events::EventFactory::new("us", "hosted");
    let mut ids = HashSet::new();
    let mut append = |count: usize| {
        let mut last = 0;
        for i in 0..count {
            let event = factory.make(share(&format!("bc1q{}", i % 5), "rig", 1.0, true));
            ids.insert(event.id.clone());
            last = journal.append(&event).expect("journal append");
        }
        last
    };
    let first_half = append(500);
    journal.wait_durable(first_half).await.unwrap();
    let reader: Arc<dyn EventSource> = Arc::new(tbg_journal::JournalReader::open(&path).unwrap());
    let collector = Collector::start(config(Some(&pg), Some(&redis)), reader.clone());
    let last = append(700);
    journal.wait_durable(last).await.unwrap();
    wait_for_cursor(&collector, SinkKind::Postgres, last).await;
    wait_for_cursor(&collector, SinkKind::Redis, last).await;
    collector.shutdown().await;
    journal.close().await.unwrap();

    let client = pg_client(&pg).await;
    let pg_ids = pg_event_ids(&client).await;
    assert_eq!(pg_ids.len(), 1200);
    assert_eq!(pg_ids.into_iter().collect::<HashSet<_>>(), ids);
    let region: String = client
        .query_one("SELECT DISTINCT region FROM mining_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(region, "us");
    let mut connection = redis_connection(&redis).await;
    let xlen: u64 = redis::cmd("XLEN")
        .arg("mining:share_submitted")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(xlen, 1200);
    // --from <event id> through the journal: that event and all later ones.
    let some_id = reader.read_after(99, 1).unwrap()[0].event_id.clone();
    assert_eq!(resolve_replay_from(reader.as_ref(), &some_id).unwrap(), 99);
}

fn block_found(maker: &mut RecordMaker, height: u64, hash: &str, ts: f64) -> JournalRecord {
    maker.record(
        EventData::BlockFound {
            user: "bc1qalice".into(),
            worker: "rig1".into(),
            height,
            hash: hash.into(),
            diff: 1e12,
            network_diff: 8e11,
            reward_sats: 312_500_000,
            coinbase_sig: "/tbg/".into(),
        },
        ts,
    )
}

fn block_submitted(
    maker: &mut RecordMaker,
    height: u64,
    hash: &str,
    accepted: bool,
    answer: &str,
    ts: f64,
) -> JournalRecord {
    maker.record(
        EventData::BlockSubmitted {
            user: "bc1qalice".into(),
            worker: "rig1".into(),
            height,
            hash: hash.into(),
            accepted,
            answers: vec![format!("http://127.0.0.1:18443: {answer}")],
            status: if accepted { "accepted" } else { "rejected" }.into(),
        },
        ts,
    )
}

/// (status, confirmed, answers, answered) of the block with `hash`.
async fn block_state(
    client: &tokio_postgres::Client,
    hash: &str,
) -> (String, bool, Option<Vec<String>>, bool) {
    let row = client
        .query_one(
            "SELECT status, confirmed, node_answers, submitted_at IS NOT NULL FROM blocks
             WHERE block_hash = $1",
            &[&hash],
        )
        .await
        .expect("the block's row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test]
async fn a_block_row_follows_the_block_from_found_to_confirmed_or_orphaned_and_replays_change_nothing(
) {
    let pg = PgServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let start = now() - 60.0;
    let found = [
        block_found(&mut maker, 100, "00aa", start),
        block_found(&mut maker, 101, "00bb", start + 1.0),
    ];
    source.push(found.clone());
    let collector = Collector::start(config(Some(&pg), None), source.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 2).await;
    let client = pg_client(&pg).await;
    assert_eq!(
        block_state(&client, "00aa").await,
        ("pending".into(), false, None, false)
    );

    let answers = [
        block_submitted(&mut maker, 100, "00aa", true, "null", start + 2.0),
        block_submitted(&mut maker, 101, "00bb", false, "rejected", start + 3.0),
    ];
    source.push(answers.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 4).await;
    // Accepted by a node is not yet `confirmed`: that takes 100 blocks.
    assert_eq!(
        block_state(&client, "00aa").await,
        (
            "accepted".into(),
            false,
            Some(vec!["http://127.0.0.1:18443: null".into()]),
            true
        )
    );
    assert_eq!(
        block_state(&client, "00bb").await,
        (
            "rejected".into(),
            false,
            Some(vec!["http://127.0.0.1:18443: rejected".into()]),
            true
        )
    );
    // A later submission of the same block is taken.
    let resubmitted = block_submitted(&mut maker, 101, "00bb", true, "duplicate", start + 4.0);
    source.push([resubmitted]);
    wait_for_cursor(&collector, SinkKind::Postgres, 5).await;
    let accepted_bb = (
        "accepted".to_string(),
        false,
        Some(vec!["http://127.0.0.1:18443: duplicate".into()]),
        true,
    );
    assert_eq!(block_state(&client, "00bb").await, accepted_bb);

    // 100 blocks later: 00aa confirmed, 00bb orphaned by a reorg.
    let settled = [
        maker.record(
            EventData::BlockConfirmed {
                user: "bc1qalice".into(),
                worker: "rig1".into(),
                height: 100,
                hash: "00aa".into(),
                confirmations: 100,
            },
            start + 5.0,
        ),
        maker.record(
            EventData::BlockOrphaned {
                user: "bc1qalice".into(),
                worker: "rig1".into(),
                height: 101,
                hash: "00bb".into(),
                replaced_by: "00cc".into(),
            },
            start + 6.0,
        ),
    ];
    source.push(settled.clone());
    wait_for_cursor(&collector, SinkKind::Postgres, 7).await;
    let (status, confirmed, _, _) = block_state(&client, "00aa").await;
    assert_eq!((status.as_str(), confirmed), ("confirmed", true));
    let orphaned = client
        .query_one(
            "SELECT status, confirmed, replaced_by FROM blocks WHERE block_hash = '00bb'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(orphaned.get::<_, String>(0), "orphaned");
    assert!(!orphaned.get::<_, bool>(1));
    assert_eq!(orphaned.get::<_, String>(2), "00cc");

    // A deeper reorganisation puts 00bb back: the pool submits it again.
    let back = block_submitted(&mut maker, 101, "00bb", true, "duplicate", start + 7.0);
    source.push([back.clone()]);
    wait_for_cursor(&collector, SinkKind::Postgres, 8).await;
    collector.shutdown().await;
    let row = client
        .query_one(
            "SELECT status, replaced_by, settled_at IS NULL FROM blocks WHERE block_hash = '00bb'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "accepted");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert!(row.get::<_, bool>(2), "no longer settled");

    // Replaying every event again (a journal replay after a restore)
    // leaves the latest statuses in place (an old answer does not undo a
    // later verdict); the rows are not duplicated.
    let replayed = Arc::new(MemorySource::new());
    replayed.push(
        found
            .into_iter()
            .chain(answers)
            .chain(settled)
            .chain([back]),
    );
    let collector = Collector::start(config(Some(&pg), None), replayed);
    collector.replay_from(1);
    wait_for_cursor(&collector, SinkKind::Postgres, 8).await;
    collector.shutdown().await;
    let (status, confirmed, _, _) = block_state(&client, "00aa").await;
    assert_eq!((status.as_str(), confirmed), ("confirmed", true));
    let (status, _, _, _) = block_state(&client, "00bb").await;
    assert_eq!(status, "accepted");
    assert_eq!(count(&client, "SELECT COUNT(*) FROM blocks").await, 2);
}
