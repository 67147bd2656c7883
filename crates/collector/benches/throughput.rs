//! Throughput of both sinks together (issue 3 target: >= 50,000 events/s).
//! Run: cargo bench -p tbg-collector --bench throughput
//! Env: TBG_BENCH_EVENTS (200000), TBG_BENCH_BATCH (500: the batch size when
//! caught up; batches grow to TBG_BENCH_BATCH_MAX, 10000, while behind),
//! TBG_BENCH_PG_ADMIN (see support/mod.rs), TBG_BENCH_PG_ONLY=1 (no Redis
//! sink: PostgreSQL's share of the machine alone).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now, share, RecordMaker, RedisServer};
use support::{env_or, BenchPg};
use tbg_collector::{
    BatchConfig, Collector, CollectorConfig, MemorySource, PostgresConfig, RedisConfig, SinkKind,
};

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let events: u64 = env_or("TBG_BENCH_EVENTS", 200_000);
    let batch: usize = env_or("TBG_BENCH_BATCH", 500);
    let batch_max: usize = env_or("TBG_BENCH_BATCH_MAX", 10_000);
    let pg = BenchPg::start().await;
    let pg_only = std::env::var_os("TBG_BENCH_PG_ONLY").is_some();
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
        redis: (!pg_only).then(|| RedisConfig {
            url: redis.url(),
            stream_maxlen: 100_000,
        }),
        batch: BatchConfig {
            max_events: batch,
            max_wait: Duration::from_secs(1),
            poll_interval: Duration::from_millis(5),
            max_events_catching_up: batch_max,
        },
        ..CollectorConfig::default()
    };
    let redis_url = (!pg_only).then(|| redis.url());
    let cpu_start = pg.cpu_ticks(redis_url.as_deref());
    let started = Instant::now();
    let collector = Collector::start(config, source);
    // A sink not run counts as done at once.
    let mut done = [None, pg_only.then_some(Duration::ZERO)];
    while done.iter().any(Option::is_none) {
        for (slot, sink) in done.iter_mut().zip([SinkKind::Postgres, SinkKind::Redis]) {
            let cursor = collector.sink_stats(sink).map_or(0, |stats| stats.cursor);
            if slot.is_none() && cursor == events {
                *slot = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "bench too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    // Before shutdown: the collector's backend is still alive to be read.
    let cpu = pg.cpu_ticks(redis_url.as_deref()).since(cpu_start);
    let stats = collector.stats();
    collector.shutdown().await;
    for stats in &stats {
        assert_eq!(stats.events_written, events, "{:?}", stats.sink);
        assert_eq!(stats.errors, 0, "{:?}", stats.last_error);
    }
    let [Some(pg_time), Some(redis_time)] = done else {
        unreachable!("the loop ends when both are set")
    };
    println!(
        "collector throughput ({}): events={events} batch={batch}..{batch_max} \
         postgres={:.0}/s ({pg_time:.2?}) redis={:.0}/s ({redis_time:.2?}) both={:.0}/s",
        pg.describe(),
        events as f64 / pg_time.as_secs_f64(),
        events as f64 / redis_time.as_secs_f64(),
        events as f64 / total.as_secs_f64(),
    );
    println!("{}", cpu.per_event(events));
    pg.stop().await;
}
