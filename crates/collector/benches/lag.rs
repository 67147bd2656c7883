//! End-to-end lag: journal append -> row visible in PostgreSQL, at a steady
//! 5,000 events/s (issue 3 target: p99 under 1 s), with both sinks running
//! and the collector's default batching (500 events or 1 s).
//! Run: cargo bench -p tbg-collector --bench lag
//! Env: TBG_LAG_RATE (5000 events/s), TBG_LAG_SECONDS (20), TBG_BENCH_PG_ADMIN.
//!
//! A batch's rows and the sink's cursor commit in one transaction, so an
//! event is visible exactly when the stored cursor reaches its seq: a poller
//! reads the cursor every millisecond and stamps each newly covered seq.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{share, RedisServer};
use support::{env_or, BenchPg};
use tbg_collector::{Collector, CollectorConfig, EventSource, PostgresConfig, RedisConfig};
use tbg_journal::{Journal, JournalConfig, JournalReader};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let rate: u64 = env_or("TBG_LAG_RATE", 5_000);
    let seconds: u64 = env_or("TBG_LAG_SECONDS", 20);
    let pg = BenchPg::start().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    let journal = Journal::open(JournalConfig::new(&path)).expect("open the journal");
    let factory = tbg_events::EventFactory::new("eu", "hosted");
    // Warm up: one event so the reader can open a journal with a table in it.
    let first = journal
        .append(&factory.make(share("bc1qwarm", "rig", 1.0, true)))
        .expect("journal append");
    journal.wait_durable(first).await.expect("durable");
    let reader: Arc<dyn EventSource> =
        Arc::new(JournalReader::open(&path).expect("open the journal reader"));
    let config = CollectorConfig {
        postgres: Some(PostgresConfig {
            conninfo: pg.conninfo(),
        }),
        redis: Some(RedisConfig {
            url: redis.url(),
            stream_maxlen: 100_000,
        }),
        ..CollectorConfig::default()
    };
    let collector = Collector::start(config, reader);
    let client = tbg_collector::postgres::connect(&pg.conninfo())
        .await
        .expect("connect");
    // Wait until the sink is up and has the warm-up event.
    loop {
        if tbg_collector::postgres::read_cursor(&client).await.ok() == Some(first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let total = rate * seconds;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let poller = tokio::spawn(async move {
        let mut visible_at: Vec<(u64, Instant)> = Vec::new();
        let mut seen = first;
        let target = first + total;
        let deadline = Instant::now() + Duration::from_secs(seconds + 120);
        while seen < target && Instant::now() < deadline {
            let cursor = tbg_collector::postgres::read_cursor(&client)
                .await
                .expect("read the cursor");
            if cursor > seen {
                visible_at.push((cursor, Instant::now()));
                seen = cursor;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        visible_at
    });
    let mut appended_at: Vec<Instant> = Vec::with_capacity(total as usize);
    let started = Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appended = 0u64;
    while appended < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - appended) {
            let event = factory.make(share(
                &format!("bc1quser{}", appended % 1000),
                "rig",
                1.0,
                true,
            ));
            appended_at.push(Instant::now());
            journal.append(&event).expect("journal append");
            appended += 1;
        }
    }
    let append_seconds = started.elapsed().as_secs_f64();
    let visible_at = poller.await.expect("poller");
    collector.shutdown().await;
    journal.close().await.expect("close the journal");

    // Lag of seq s: when the first cursor >= s was seen minus its append.
    let mut lags: Vec<Duration> = Vec::with_capacity(appended_at.len());
    let mut covered = first;
    for (cursor, seen_at) in &visible_at {
        for seq in covered + 1..=*cursor {
            let index = (seq - first - 1) as usize;
            if let Some(appended) = appended_at.get(index) {
                lags.push(seen_at.saturating_duration_since(*appended));
            }
        }
        covered = *cursor;
    }
    assert_eq!(lags.len() as u64, total, "every event became visible");
    lags.sort();
    let at = |quantile: f64| lags[((lags.len() as f64 * quantile) as usize).min(lags.len() - 1)];
    println!(
        "collector end-to-end lag ({}): events={total} offered={:.0}/s \
         p50={:.1?} p90={:.1?} p99={:.1?} max={:.1?}",
        pg.describe(),
        total as f64 / append_seconds,
        at(0.50),
        at(0.90),
        at(0.99),
        lags[lags.len() - 1],
    );
    pg.stop().await;
}
