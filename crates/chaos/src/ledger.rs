//! Event accounting: the ids the pool journaled against the rows in
//! PostgreSQL and the entries of every Redis stream.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;
use tbg_journal::JournalReader;

use crate::ChaosError;

/// One journaled event, as much as the accounting needs.
#[derive(Debug, Clone)]
pub struct JournaledEvent {
    pub seq: u64,
    pub id: String,
    pub event_type: String,
    pub ts: f64,
    /// The region that emitted it (a primary's journal also holds the
    /// other regions' events, ingested from NATS).
    pub region: String,
    pub payload: Value,
}

/// Every event in the journal file, in order.
pub fn journal_events(path: &Path) -> Result<Vec<JournaledEvent>, ChaosError> {
    let reader = JournalReader::open(path)
        .map_err(|e| ChaosError::Failed(format!("journal {}: {e}", path.display())))?;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let batch = reader
            .read_after(after, 10_000)
            .map_err(|e| ChaosError::Failed(format!("reading the journal: {e}")))?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        events.extend(batch.into_iter().map(|record| JournaledEvent {
            seq: record.seq,
            payload: serde_json::from_str(&record.payload).unwrap_or(Value::Null),
            id: record.event_id,
            event_type: record.event_type,
            ts: record.ts,
            region: record.region,
        }));
    }
    Ok(events)
}

/// The journal's last sequence number (0 when empty).
pub fn journal_last_seq(path: &Path) -> Result<u64, ChaosError> {
    JournalReader::open(path)
        .and_then(|reader| reader.last_seq())
        .map_err(|e| ChaosError::Failed(format!("journal {}: {e}", path.display())))
}

/// Accepted `share_submitted` events of workers whose name contains `marker`.
pub fn accepted_shares_of(events: &[JournaledEvent], marker: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type == "share_submitted")
        .filter(|e| e.payload.pointer("/data/accepted") == Some(&Value::Bool(true)))
        .filter(|e| {
            let field = |name: &str| {
                e.payload
                    .pointer(&format!("/data/{name}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            field("worker").contains(marker) || field("user").contains(marker)
        })
        .count()
}

/// The `id` field of every entry of every `mining:*` stream (`blocks:found`
/// is a pub/sub channel, not a stream).
pub fn redis_stream_ids(url: &str) -> Result<Vec<String>, ChaosError> {
    let failed = |e: redis::RedisError| ChaosError::Failed(format!("redis {url}: {e}"));
    let client = redis::Client::open(url).map_err(failed)?;
    let mut connection = client.get_connection().map_err(failed)?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mining:*")
        .query(&mut connection)
        .map_err(failed)?;
    let mut ids = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut connection)
            .map_err(failed)?;
        if kind != "stream" {
            continue;
        }
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut connection)
            .map_err(failed)?;
        for (entry_id, fields) in entries {
            ids.push(
                fields
                    .get("id")
                    .cloned()
                    .unwrap_or_else(|| format!("<entry {entry_id} of {key} has no id>")),
            );
        }
    }
    Ok(ids)
}

/// Journal vs PostgreSQL vs Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub journaled: usize,
    pub in_postgres: usize,
    pub in_redis: usize,
    /// Journaled ids missing from PostgreSQL.
    pub lost_postgres: usize,
    /// Journaled ids missing from Redis.
    pub lost_redis: usize,
    pub dup_journal: usize,
    pub dup_postgres: usize,
    pub dup_redis: usize,
    /// Ids in a sink that the journal does not have (should be 0 too).
    pub unknown: usize,
    /// Journaled after what both sinks' cursors had reached when the
    /// ledger was taken: on their way, neither lost nor counted.
    pub in_flight: usize,
    /// A few missing ids, for the report.
    pub examples: Vec<String>,
}

impl Ledger {
    /// Compares the id lists; the Redis list may hold an event once per stream
    /// it belongs to, which is a duplicate.
    pub fn compare(journal: &[String], postgres: &[String], redis: &[String]) -> Ledger {
        let dups = |ids: &[String]| ids.len() - ids.iter().collect::<BTreeSet<_>>().len();
        let journal_set: BTreeSet<&String> = journal.iter().collect();
        let postgres_set: BTreeSet<&String> = postgres.iter().collect();
        let redis_set: BTreeSet<&String> = redis.iter().collect();
        let missing_pg: Vec<&&String> = journal_set.difference(&postgres_set).collect();
        let missing_redis: Vec<&&String> = journal_set.difference(&redis_set).collect();
        let unknown = postgres_set.difference(&journal_set).count()
            + redis_set.difference(&journal_set).count();
        Ledger {
            journaled: journal.len(),
            in_postgres: postgres.len(),
            in_redis: redis.len(),
            lost_postgres: missing_pg.len(),
            lost_redis: missing_redis.len(),
            dup_journal: dups(journal),
            dup_postgres: dups(postgres),
            dup_redis: dups(redis),
            unknown,
            in_flight: 0,
            examples: missing_pg
                .iter()
                .map(|id| format!("{id} (not in PostgreSQL)"))
                .chain(
                    missing_redis
                        .iter()
                        .map(|id| format!("{id} (not in Redis)")),
                )
                .take(5)
                .collect(),
        }
    }

    /// As [`Ledger::compare`], for the events both sinks' cursors have
    /// passed (`settled`, the smaller cursor, read before the journal and
    /// the sinks): an event journaled after that and already in a sink is
    /// neither lost nor unknown, only in flight. Examples name each missing
    /// event's sequence number and type.
    pub fn compare_settled(
        journal: &[JournaledEvent],
        settled: u64,
        postgres: &[String],
        redis: &[String],
    ) -> Ledger {
        let in_flight: BTreeSet<&str> = journal
            .iter()
            .filter(|e| e.seq > settled)
            .map(|e| e.id.as_str())
            .collect();
        let settled_ids: Vec<String> = journal
            .iter()
            .filter(|e| e.seq <= settled)
            .map(|e| e.id.clone())
            .collect();
        let landed = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .filter(|id| !in_flight.contains(id.as_str()))
                .cloned()
                .collect()
        };
        let mut ledger = Ledger::compare(&settled_ids, &landed(postgres), &landed(redis));
        ledger.in_flight = in_flight.len();
        ledger.journaled = journal.len();
        for example in &mut ledger.examples {
            let id = example.split(' ').next().unwrap_or_default();
            if let Some(event) = journal.iter().find(|e| e.id == id) {
                *example = format!(
                    "{example}: seq {} of {settled} settled, {}",
                    event.seq, event.event_type
                );
            }
        }
        ledger
    }

    /// Journaled events missing from at least one store.
    pub fn lost(&self) -> usize {
        self.lost_postgres + self.lost_redis
    }

    pub fn duplicates(&self) -> usize {
        self.dup_journal + self.dup_postgres + self.dup_redis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_lost_duplicated_and_unknown_ids() {
        let ledger = Ledger::compare(
            &ids(&["a", "b", "c"]),
            &ids(&["a", "b", "b"]),
            &ids(&["a", "b", "c", "x"]),
        );
        assert_eq!(ledger.lost_postgres, 1);
        assert_eq!(ledger.lost_redis, 0);
        assert_eq!(ledger.dup_postgres, 1);
        assert_eq!(ledger.unknown, 1);
        assert_eq!(ledger.lost(), 1);
        assert_eq!(ledger.duplicates(), 1);
        assert!(ledger.examples[0].starts_with("c "));
    }

    fn event(seq: u64, id: &str) -> JournaledEvent {
        JournaledEvent {
            seq,
            id: id.to_string(),
            event_type: "share_submitted".to_string(),
            ts: 0.0,
            region: "chaos".to_string(),
            payload: Value::Null,
        }
    }

    #[test]
    fn events_past_the_cursors_are_in_flight_not_lost() {
        let journal = [event(1, "a"), event(2, "b"), event(3, "c"), event(4, "d")];
        // Cursors at 3: d is on its way (already in PostgreSQL, not yet in
        // Redis); b is lost from PostgreSQL.
        let ledger =
            Ledger::compare_settled(&journal, 3, &ids(&["a", "c", "d"]), &ids(&["a", "b", "c"]));
        assert_eq!(ledger.in_flight, 1);
        assert_eq!(ledger.journaled, 4);
        assert_eq!((ledger.lost_postgres, ledger.lost_redis), (1, 0));
        assert_eq!(ledger.unknown, 0);
        assert_eq!(
            ledger.examples,
            ["b (not in PostgreSQL): seq 2 of 3 settled, share_submitted"]
        );
    }
}
