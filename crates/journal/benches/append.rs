//! Journal cost per share: append + wait_durable latency at a steady
//! 10,000 events/s from several tasks (p50/p99/p99.9 printed) for both
//! durability levels, the append -> SQLite commit latency (when the
//! collector can see an event), and raw committed events/s.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tbg_events::{Event, EventData, EventFactory};
use tbg_journal::{Durability, Journal, JournalConfig, JournalError};

const RATE_PER_SECOND: u64 = 10_000;
const LATENCY_RUN: Duration = Duration::from_secs(3);

fn share(factory: &EventFactory, number: u64) -> Event {
    factory.make(EventData::ShareSubmitted {
        user: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
        worker: format!("rig{}", number % 100),
        client_id: number,
        diff: 65536.0,
        sdiff: 131072.7,
        accepted: true,
        reject_reason: None,
        ip: "203.0.113.7".into(),
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// What a sample waits for after `append`.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// `wait_durable`: what a share's reply waits for.
    Durable,
    /// `wait_committed`: the row is in SQLite.
    Committed,
}

fn latency_at_rate(durability: Durability, until: Until) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let latencies = runtime.block_on(async {
        let mut config = JournalConfig::new(dir.path().join("journal.db"));
        config.durability = durability;
        let journal = Journal::open(config).unwrap();
        let factory = EventFactory::new("eu", "hosted");
        // Open loop: one task per share at a fixed rate, as miners do not
        // wait for each other; every share in flight joins the next commit.
        let period = Duration::from_micros(1_000_000 / RATE_PER_SECOND);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + LATENCY_RUN;
        let mut tasks = Vec::new();
        let mut number = 0;
        while Instant::now() < end {
            ticker.tick().await;
            let journal = journal.clone();
            let event = share(&factory, number);
            number += 1;
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let seq = journal.append(&event).unwrap();
                match until {
                    Until::Durable => journal.wait_durable(seq).await.unwrap(),
                    Until::Committed => journal.wait_committed(seq).await.unwrap(),
                }
                start.elapsed()
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.unwrap());
        }
        let stats = journal.stats();
        journal.close().await.unwrap();
        println!(
            "{durability:?}: {} transactions for {} events (largest {})",
            stats.batches, stats.committed, stats.largest_batch_size
        );
        all
    });
    let mut sorted = latencies;
    sorted.sort();
    let achieved = sorted.len() as f64 / LATENCY_RUN.as_secs_f64();
    println!(
        "{durability:?}: append->{until:?} at {achieved:.0} events/s over {} samples: p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
        sorted.len(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        sorted.last().copied().unwrap_or_default(),
    );
}

fn throughput(c: &mut Criterion) {
    latency_at_rate(Durability::ProcessCrash, Until::Durable);
    latency_at_rate(Durability::ProcessCrash, Until::Committed);
    latency_at_rate(Durability::PowerLoss, Until::Durable);
    let mut group = c.benchmark_group("journal_commit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for durability in [Durability::ProcessCrash, Durability::PowerLoss] {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut config = JournalConfig::new(dir.path().join("journal.db"));
        config.durability = durability;
        let journal = runtime.block_on(async { Journal::open(config) }).unwrap();
        let factory = EventFactory::new("eu", "hosted");
        group.bench_function(format!("{durability:?}"), |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                let mut last = 0;
                for n in 0..iterations {
                    // A fresh event as the pool makes them: its id (UUIDv7) and
                    // ts grow with time, as the journal's indexes expect.
                    let event = share(&factory, n);
                    last = loop {
                        match journal.append(&event) {
                            Ok(seq) => break seq,
                            // The ring is ahead of SQLite by its size: let it catch up.
                            Err(JournalError::Full { .. }) => {
                                runtime.block_on(journal.wait_committed(last)).unwrap()
                            }
                            Err(other) => panic!("append: {other}"),
                        }
                    };
                }
                runtime.block_on(journal.wait_committed(last)).unwrap();
                start.elapsed()
            })
        });
        runtime.block_on(journal.close()).unwrap();
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
