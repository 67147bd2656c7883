//! The primary's ingest against a real `nats-server -js`: a relay region's
//! journal, published by its publisher, ends up in the primary's journal
//! with every event exactly once, through a NATS restart, an ingest
//! restart, and a relay that lost its cursor and published everything
//! again after JetStream's duplicate window had passed.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::{append, connect, share, two_regions, Running};
use tbg_events::EventFactory;
use tbg_journal::{Journal, JournalReader};
use tbg_nats::{
    ensure_stream, Ingest, IngestConfig, IngestStats, Publisher, PublisherConfig, StreamSettings,
};
use tbg_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

fn publish(js: &jetstream::Context, dir: &Path) -> Running {
    let mut config = PublisherConfig::new(dir.join("relay.db"), dir.join("relay.cursor"));
    config.retry_max = Duration::from_millis(300);
    let publisher = Publisher::new(config, js.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { publisher.run(stop).await.expect("publisher runs") }
    });
    Running { stop, task }
}

fn ingest(js: &jetstream::Context, journal: &Journal) -> (Running, Arc<IngestStats>) {
    let mut config = IngestConfig::new("EVENTS", "tbg-collector", "us-east");
    config.retry_max = Duration::from_millis(300);
    config.fetch_wait = Duration::from_millis(200);
    config.ack_wait = Duration::from_secs(2);
    let ingest = Ingest::new(config, js.clone(), journal.clone());
    let stats = ingest.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(ingest.run(stop.clone()));
    (Running { stop, task }, stats)
}

/// Event ids of the primary journal by region, with how often each is there.
fn primary_rows(path: &Path) -> HashMap<String, HashMap<String, usize>> {
    let reader = JournalReader::open(path).unwrap();
    let mut by_region: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for record in reader.read_after(0, 1_000_000).unwrap() {
        *by_region
            .entry(record.region.clone())
            .or_default()
            .entry(record.event_id.clone())
            .or_default() += 1;
    }
    by_region
}

async fn wait_for_rows(path: &Path, region: &str, count: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = primary_rows(path);
        let got = rows.get(region).map_or(0, HashMap::len);
        if got >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {got} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_regions_events_reach_the_primary_journal_exactly_once() {
    let mut nats = NatsServer::start();
    let js = connect(&nats.url()).await;
    // A short duplicate window, so that the test can outlive it.
    let settings = StreamSettings {
        duplicate_window: Duration::from_secs(1),
        ..StreamSettings::default()
    };
    ensure_stream(&js, &settings).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (relay, relay_events, primary, primary_path) = two_regions(dir.path());
    let primary_events = EventFactory::new("us-east", "hosted");
    // The primary's own miners write its journal all along.
    append(&primary, &primary_events, 0, 50).await;

    append(&relay, &relay_events, 0, 300).await;
    let publisher = publish(&js, dir.path());
    let (consumer, stats) = ingest(&js, &primary);
    wait_for_rows(&primary_path, "eu-west", 300, "the first relay events").await;

    // NATS restarts: both sides reconnect and go on.
    nats.kill();
    append(&relay, &relay_events, 300, 200).await;
    nats.restart();
    wait_for_rows(&primary_path, "eu-west", 500, "the events of the outage").await;

    // The ingest restarts: the durable consumer resumes where it was.
    consumer.stop().await;
    append(&relay, &relay_events, 500, 100).await;
    let (consumer, stats_after_restart) = ingest(&js, &primary);
    wait_for_rows(
        &primary_path,
        "eu-west",
        600,
        "the events after the restart",
    )
    .await;

    // The relay lost its cursor (restored from an old backup) and
    // publishes its whole journal again, after the duplicate window.
    publisher.stop().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    std::fs::remove_file(dir.path().join("relay.cursor")).unwrap();
    let publisher = publish(&js, dir.path());
    // A malformed message on the stream (not from a publisher of ours).
    js.publish("events.eu-west.share_submitted", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // An event of another region on eu-west's subject (credentials that
    // may publish only there, speaking for ap-south): dropped.
    let forged = EventFactory::new("ap-south", "hosted").make(share(1));
    js.publish("events.eu-west.share_submitted", forged.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // The primary's own events, if its publisher sends them, come back
    // here too: skipped, they are in the journal already.
    let own = primary_events.make(share(9_999));
    js.publish("events.us-east.share_submitted", own.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    append(&relay, &relay_events, 600, 50).await;
    // Every relay event in the journal (`ingested` counts redeliveries
    // too, so it alone does not say that).
    wait_for_rows(&primary_path, "eu-west", 650, "the republished journal").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats_after_restart.malformed.load(Ordering::Relaxed) < 2
        || stats_after_restart.own_skipped.load(Ordering::Relaxed) < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the republished journal was not consumed: {stats_after_restart:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.stop().await;
    consumer.stop().await;
    assert!(stats.ingested.load(Ordering::Relaxed) >= 500);
    primary.close().await.unwrap();
    relay.close().await.unwrap();

    let rows = primary_rows(&primary_path);
    let relay_rows = &rows["eu-west"];
    assert_eq!(relay_rows.len(), 650, "every relay event is there");
    assert!(
        relay_rows.values().all(|&n| n == 1),
        "each relay event once, though 600 were published twice"
    );
    assert_eq!(
        rows["us-east"].len(),
        50,
        "the primary's own events, once; its echo from NATS not added"
    );
    assert!(
        !rows.contains_key("ap-south"),
        "an event on another region's subject is not stored"
    );
    assert_eq!(rows.len(), 2);
}

/// Waits until the consumer has acked every message of the stream and
/// returns its ack policy.
async fn wait_all_acked(js: &jetstream::Context, count: u64) -> jetstream::consumer::AckPolicy {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stream = js.get_stream("EVENTS").await.unwrap();
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("tbg-collector").await.unwrap();
        let info = consumer.info().await.unwrap().clone();
        if info.ack_floor.stream_sequence >= count && info.num_ack_pending == 0 {
            return info.config.ack_policy;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every message acked: ack floor {}, {} awaiting an ack",
            info.ack_floor.stream_sequence,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_acked_by_a_new_consumer_and_by_one_an_older_release_made() {
    for older_release in [false, true] {
        let nats = NatsServer::start();
        let js = connect(&nats.url()).await;
        ensure_stream(&js, &StreamSettings::default())
            .await
            .unwrap();
        if older_release {
            let stream = js.get_stream("EVENTS").await.unwrap();
            // Releases before this one made the durable consumer with an
            // ack per message; JetStream cannot change a consumer's policy.
            stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some("tbg-collector".into()),
                    filter_subject: "events.>".into(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let (relay, relay_events, primary, primary_path) = two_regions(dir.path());
        // More than one fetch (500 messages each).
        append(&relay, &relay_events, 0, 1_200).await;
        let publisher = publish(&js, dir.path());
        let (consumer, _) = ingest(&js, &primary);
        wait_for_rows(&primary_path, "eu-west", 1_200, "the relay's events").await;
        let policy = wait_all_acked(&js, 1_200).await;
        assert_eq!(
            policy,
            jetstream::consumer::AckPolicy::Explicit,
            "older release: {older_release}"
        );
        publisher.stop().await;
        consumer.stop().await;
        primary.close().await.unwrap();
        relay.close().await.unwrap();
        let rows = primary_rows(&primary_path);
        assert_eq!(rows["eu-west"].len(), 1_200);
        assert!(rows["eu-west"].values().all(|&n| n == 1));
    }
}
