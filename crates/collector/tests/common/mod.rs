//! Private PostgreSQL and Redis servers for tests: each on a free port in a
//! temp dir, stopped and removed on drop.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use tbg_collector::JournalRecord;
use tbg_events::{EventData, EventFactory};

pub use tbg_testkit::{PgServer, RedisServer};

/// A client of the test's own PostgreSQL.
pub async fn pg_client(server: &PgServer) -> tokio_postgres::Client {
    tbg_collector::postgres::connect(&server.conninfo())
        .await
        .expect("connect to the test postgresql")
}

/// A connection to the test's own Redis.
pub async fn redis_connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    tbg_collector::redis_sink::connect(&server.url())
        .await
        .expect("connect to the test redis")
}

/// Makes journal-like records with seqs from `first_seq`.
pub struct RecordMaker {
    factory: EventFactory,
    next_seq: u64,
    last_stream_ms: u64,
}

impl RecordMaker {
    pub fn new() -> RecordMaker {
        RecordMaker {
            factory: EventFactory::new("eu", "hosted"),
            next_seq: 1,
            last_stream_ms: 0,
        }
    }

    pub fn record(&mut self, data: EventData, ts: f64) -> JournalRecord {
        let event = self.factory.make_at(data, ts);
        let seq = self.next_seq;
        self.next_seq += 1;
        let ms = ((ts * 1000.0) as u64).max(self.last_stream_ms);
        self.last_stream_ms = ms;
        JournalRecord {
            seq,
            event_id: event.id.clone(),
            ts,
            event_type: event.event_type().to_string(),
            region: event.region.clone(),
            stream_id: format!("{ms}-{seq}"),
            payload: event.to_json(),
        }
    }

    /// A record whose payload is not an event.
    pub fn garbage(&mut self, ts: f64) -> JournalRecord {
        let mut record = self.record(share("bc1qgarbage", "w", 1.0, true), ts);
        record.payload = "{\"event\":\"share_submitted\",\"data\":{\"user\":".to_string();
        record
    }
}

pub fn share(user: &str, worker: &str, sdiff: f64, accepted: bool) -> EventData {
    EventData::ShareSubmitted {
        user: user.into(),
        worker: worker.into(),
        client_id: 1,
        diff: 1.0,
        sdiff,
        accepted,
        reject_reason: (!accepted).then(|| "Stale".to_string()),
        ip: "127.0.0.1".into(),
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn path_display(path: &Path) -> String {
    path.display().to_string()
}
