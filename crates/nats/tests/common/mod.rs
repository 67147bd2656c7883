//! What both NATS tests need: events to journal and a JetStream context.

use async_nats::jetstream;
use tbg_events::EventData;

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
pub async fn connect(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    jetstream::new(client)
}
