//! The region publisher against a real `nats-server -js` of the test's
//! own: every journaled event lands in the stream once, under
//! `events.<region>.<type>`, through a NATS outage and a publisher restart.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use common::{connect, share};
use futures::StreamExt;
use tbg_events::EventFactory;
use tbg_journal::{Journal, JournalConfig};
use tbg_nats::{ensure_stream, Publisher, PublisherConfig, PublisherStats, StreamSettings};
use tbg_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// Appends `count` events; returns their ids and the last seq.
async fn append(
    journal: &Journal,
    factory: &EventFactory,
    from: usize,
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut last = 0;
    for n in from..from + count {
        let event = factory.make(share(n));
        ids.push(event.id.clone());
        last = journal.append(&event).unwrap();
    }
    journal.wait_committed(last).await.unwrap();
    ids
}

fn start(
    js: &jetstream::Context,
    dir: &Path,
) -> (
    CancellationToken,
    std::sync::Arc<PublisherStats>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = PublisherConfig::new(dir.join("events.db"), dir.join("publisher.cursor"));
    config.retry_max = Duration::from_millis(500);
    let publisher = Publisher::new(config, js.clone());
    let stats = publisher.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { publisher.run(stop).await.expect("publisher runs") }
    });
    (stop, stats, task)
}

async fn wait_cursor(stats: &PublisherStats, seq: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.cursor.load(Ordering::Relaxed) < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message of the stream: (event id, subject), in stream order.
async fn stream_messages(js: &jetstream::Context) -> Vec<(String, String)> {
    let stream = js.get_stream("EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let total = stream.get_info().await.unwrap().state.messages as usize;
    let mut messages = consumer
        .fetch()
        .max_messages(total.max(1))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < total {
        let message = messages.next().await.expect("a message").unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            event["id"].as_str(),
            Some(id.as_str()),
            "the payload is the event"
        );
        out.push((id, message.subject.to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_through_an_outage_and_a_restart() {
    let mut nats = NatsServer::start();
    let js = connect(&nats.url()).await;
    ensure_stream(&js, &StreamSettings::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path().join("events.db"))).unwrap();
    let factory = EventFactory::new("eu-west", "hosted");

    let mut ids = append(&journal, &factory, 0, 300).await;
    let (stop, stats, task) = start(&js, dir.path());
    wait_cursor(&stats, 300, "the first events").await;

    // NATS lost: the journal goes on; nothing moves the cursor.
    nats.kill();
    ids.extend(append(&journal, &factory, 300, 400).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stats.cursor.load(Ordering::Relaxed),
        300,
        "no ack, no cursor move"
    );
    nats.restart();
    wait_cursor(&stats, 700, "the events of the outage").await;
    // (Publishes sent during the outage are buffered by the client and
    // acknowledged after the restart, or time out and are sent again:
    // either way each event ends in the stream once.)

    // A publisher stopped after JetStream stored a batch but before the
    // cursor moved sends that batch again: the cursor file set back, as a
    // crash at that moment leaves it.
    stop.cancel();
    task.await.unwrap();
    std::fs::write(dir.path().join("publisher.cursor"), "500\n").unwrap();
    ids.extend(append(&journal, &factory, 700, 100).await);
    let (stop, stats, task) = start(&js, dir.path());
    wait_cursor(&stats, 800, "the events after the restart").await;
    assert_eq!(
        stats.duplicates.load(Ordering::Relaxed),
        200,
        "200 sent again, dropped by JetStream"
    );
    stop.cancel();
    task.await.unwrap();
    journal.close().await.unwrap();

    let messages = stream_messages(&js).await;
    let got: Vec<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want, "every event once, in journal order");
    let mut subjects: HashMap<&str, usize> = HashMap::new();
    for (_, subject) in &messages {
        *subjects.entry(subject.as_str()).or_default() += 1;
    }
    assert_eq!(
        subjects,
        HashMap::from([("events.eu-west.share_submitted", 800)])
    );
    let info = js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(info.config.max_bytes, 1 << 30);
}
