//! Events JetStream acked and then lost still reach the primary: the
//! primary's receipts show the gap, the relay's publisher sends the events
//! again, and the primary's journal holds each once.
//!
//! The fault is made with the real server's own API: the acked messages
//! are deleted from the stream before the primary's consumer gets them
//! (a real cluster loses acked messages only across elections and
//! partitions, which no test can time; this is the same outcome, on
//! demand). Everything else is real: `nats-server -js`, the publisher, the
//! ingest, both journals, the receipts file.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::{append, connect, two_regions, Running};
use tbg_journal::{Journal, JournalReader};
use tbg_nats::{
    ensure_stream, Ingest, IngestConfig, IngestStats, Publisher, PublisherConfig, PublisherStats,
    ReconcileConfig, StreamSettings, RELAY_SEQ_HEADER,
};
use tbg_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

fn publish(js: &jetstream::Context, dir: &Path) -> (Running, Arc<PublisherStats>) {
    let mut config = PublisherConfig::new(dir.join("relay.db"), dir.join("relay.cursor"));
    config.retry_max = Duration::from_millis(300);
    config.reconcile = Some(ReconcileConfig {
        region: "eu-west".into(),
        every: Duration::from_millis(200),
        grace: Duration::from_secs(1),
        limit: 50_000,
    });
    let publisher = Publisher::new(config, js.clone());
    let stats = publisher.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { publisher.run(stop).await.expect("publisher runs") }
    });
    (Running { stop, task }, stats)
}

fn ingest(js: &jetstream::Context, journal: &Journal, dir: &Path) -> (Running, Arc<IngestStats>) {
    let mut config = IngestConfig::new("EVENTS", "tbg-collector", "us-east");
    config.retry_max = Duration::from_millis(300);
    config.fetch_wait = Duration::from_millis(200);
    config.ack_wait = Duration::from_secs(2);
    config.watch_interval = Duration::from_millis(200);
    config.receipts = Some(dir.join("primary.db.receipts"));
    let ingest = Ingest::new(config, js.clone(), journal.clone());
    let stats = ingest.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(ingest.run(stop.clone()));
    (Running { stop, task }, stats)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the stream's messages of relay seqs `first..=last`, as a
/// cluster losing acked writes would; returns how many.
async fn lose(js: &jetstream::Context, first: u64, last: u64) -> u64 {
    let stream = js.get_stream("EVENTS").await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut lost = 0;
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let relay_seq: u64 = message
            .headers
            .get(RELAY_SEQ_HEADER)
            .and_then(|value| value.as_str().parse().ok())
            .unwrap();
        if (first..=last).contains(&relay_seq) {
            assert!(stream.delete_message(seq).await.unwrap());
            lost += 1;
        }
    }
    lost
}

/// The relay's event ids in the primary's journal, with how often each.
fn relay_rows(path: &Path) -> HashMap<String, usize> {
    let reader = JournalReader::open(path).unwrap();
    let mut rows = HashMap::new();
    for record in reader.read_after(0, 1_000_000).unwrap() {
        if record.region == "eu-west" {
            *rows.entry(record.event_id).or_default() += 1;
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_jetstream_acked_and_lost_are_sent_again_and_stored_once() {
    let nats = NatsServer::start();
    let js = connect(&nats.url()).await;
    ensure_stream(&js, &StreamSettings::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (relay, relay_events, primary, primary_path) = two_regions(dir.path());

    // The relay publishes 200 events; all acked, then 40 in the middle lost
    // before the primary consumed them.
    append(&relay, &relay_events, 0, 200).await;
    let (publisher, published) = publish(&js, dir.path());
    wait_until("the relay's events acked", || {
        published.cursor.load(Ordering::Relaxed) == 200
    })
    .await;
    assert_eq!(lose(&js, 101, 140).await, 40);
    let (consumer, stats) = ingest(&js, &primary, dir.path());
    wait_until("the lost events sent again", || {
        relay_rows(&primary_path).len() == 200
    })
    .await;
    let resent = published.resent.load(Ordering::Relaxed);
    // 40; a slow machine may send a gap twice (stored once), never less.
    assert!((40..=80).contains(&resent), "the gap: {resent}");

    // While the primary is down, events are acked and lost: the first ones
    // after its restart (only its receipts file says they were expected:
    // without it the region would start over at the first event it sees)
    // and the tail (nothing comes after it to show a gap, but the primary
    // is caught up).
    consumer.stop().await;
    append(&relay, &relay_events, 200, 50).await;
    wait_until("the events of the primary's downtime acked", || {
        published.cursor.load(Ordering::Relaxed) == 250
    })
    .await;
    assert_eq!(lose(&js, 201, 205).await, 5);
    assert_eq!(lose(&js, 246, 250).await, 5);
    assert!(dir.path().join("primary.db.receipts").exists());
    let (consumer, stats_after_restart) = ingest(&js, &primary, dir.path());
    wait_until("the lost head and tail sent again", || {
        relay_rows(&primary_path).len() == 250
    })
    .await;
    let resent_again = published.resent.load(Ordering::Relaxed) - resent;
    assert!(
        (10..=20).contains(&resent_again),
        "head and tail: {resent_again}"
    );
    assert!(
        stats_after_restart
            .receipts_answered
            .load(Ordering::Relaxed)
            > 0
    );
    // Deleted messages at the stream's end are no stall of the consumer.
    for stats in [&stats, &stats_after_restart] {
        assert_eq!(stats.stall_stepdowns.load(Ordering::Relaxed), 0);
    }
    publisher.stop().await;
    consumer.stop().await;
    primary.close().await.unwrap();
    relay.close().await.unwrap();

    let rows = relay_rows(&primary_path);
    assert_eq!(rows.len(), 250, "every relay event is there");
    assert!(rows.values().all(|&n| n == 1), "each once");
}
