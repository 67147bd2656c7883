//! What both NATS tests need: events to journal and a JetStream context.

use async_nats::jetstream;
use tbg_events::{EventData, EventFactory};
use tbg_journal::Journal;
use tokio_util::sync::CancellationToken;

/// The n-th test share (of one of 7 users).
pub fn share(n: usize) -> EventData {
    EventData::ShareSubmitted {
        user: format!("bcrt1q{}", n % 7),
        worker: "rig".into(),
        client_id: 1,
        diff: 1.0,
        sdiff: 2.0,
        accepted: true,
        reject_reason: None,
        ip: "127.0.0.1".into(),
    }
}

/// A JetStream context on `url`, connecting as soon as NATS answers.
#[allow(dead_code)] // not every test file connects this way
pub async fn connect(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    jetstream::new(client)
}

/// Appends the test shares `from..from + count` and waits for their commit.
#[allow(dead_code)] // not every test file appends this way
pub async fn append(journal: &Journal, factory: &EventFactory, from: usize, count: usize) {
    let mut last = 0;
    for n in from..from + count {
        last = journal.append(&factory.make(share(n))).unwrap();
    }
    journal.wait_committed(last).await.unwrap();
}

/// A publisher or an ingest running in its task, until [`Running::stop`].
#[allow(dead_code)]
pub struct Running {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A relay region's journal (region eu-west) with its event factory, and
/// the primary's journal with its path, in `dir`.
#[allow(dead_code)]
pub fn two_regions(dir: &std::path::Path) -> (Journal, EventFactory, Journal, std::path::PathBuf) {
    let primary_path = dir.join("primary.db");
    (
        Journal::open(tbg_journal::JournalConfig::new(dir.join("relay.db"))).unwrap(),
        EventFactory::new("eu-west", "hosted"),
        Journal::open(tbg_journal::JournalConfig::new(&primary_path)).unwrap(),
        primary_path,
    )
}
