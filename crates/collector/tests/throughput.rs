//! Throughput of both sinks together (issue 3 target: >= 50,000 events/s).
//! Run: cargo test -p tbg-collector --test throughput -- --ignored --nocapture

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now, share, PgServer, RecordMaker, RedisServer};
use tbg_collector::{
    BackoffConfig, BatchConfig, Collector, CollectorConfig, MemorySource, PostgresConfig,
    RedisConfig, SinkKind,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn throughput_into_postgres_and_redis() {
    let events: u64 = std::env::var("TBG_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200_000);
    let batch: usize = std::env::var("TBG_BENCH_BATCH")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(500);
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let source = Arc::new(MemorySource::new());
    let mut maker = RecordMaker::new();
    let start_ts = now() - 3600.0;
    source.push((0..events).map(|i| {
        maker.record(
            share(
                &format!("bc1quser{}", i % 1000),
                "rig",
                1.0 + (i % 97) as f64,
                i % 50 != 0,
            ),
            start_ts + i as f64 * 0.001,
        )
    }));
    let config = CollectorConfig {
        postgres: Some(PostgresConfig {
            conninfo: pg.conninfo(),
        }),
        redis: Some(RedisConfig {
            url: redis.url(),
            stream_maxlen: 100_000,
        }),
        batch: BatchConfig {
            max_events: batch,
            max_wait: Duration::from_secs(1),
            poll_interval: Duration::from_millis(5),
        },
        backoff: BackoffConfig::default(),
    };
    let started = Instant::now();
    let collector = Collector::start(config, source);
    let mut done = [None, None];
    while done.iter().any(Option::is_none) {
        for (slot, sink) in done.iter_mut().zip([SinkKind::Postgres, SinkKind::Redis]) {
            if slot.is_none() && collector.sink_stats(sink).unwrap().cursor == events {
                *slot = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "bench too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    let stats = collector.stats();
    collector.shutdown().await;
    for stats in &stats {
        assert_eq!(stats.events_written, events, "{:?}", stats.sink);
        assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
    }
    let [Some(pg_time), Some(redis_time)] = done else {
        unreachable!()
    };
    let rate = events as f64 / total.as_secs_f64();
    eprintln!(
        "events={events} batch={batch} postgres={:.0}/s ({pg_time:?}) redis={:.0}/s ({redis_time:?}) both={rate:.0}/s",
        events as f64 / pg_time.as_secs_f64(),
        events as f64 / redis_time.as_secs_f64(),
    );
}
