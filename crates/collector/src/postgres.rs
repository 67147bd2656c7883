//! PostgreSQL sink: one transaction per batch writes the events, the
//! per-type rows, the aggregates of the events that were new, and the cursor.
//!
//! Here: the connection, the cursor, the day partitions and the batch's
//! transaction. What it writes is in `rows` (`mining_events`, `shares`),
//! `blocks` and `aggregates`.

mod aggregates;
mod blocks;
mod rows;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls, Transaction};

use crate::{migrations, CollectorError, ParsedRecord};

/// Raw events kept 30 days, shares 90 days (the plan's retention).
pub const MINING_EVENTS_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const SHARES_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Day partitions created ahead of the current day.
const PARTITION_DAYS_AHEAD: i64 = 2;

/// Connects (the connection task runs on the tokio runtime until the client drops).
pub async fn connect(conninfo: &str) -> Result<Client, CollectorError> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(CollectorError::pg("connecting"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgresql connection ended");
        }
    });
    Ok(client)
}

/// The PostgreSQL sink's cursor (0 before anything was written).
pub async fn read_cursor(client: &Client) -> Result<u64, CollectorError> {
    let row = client
        .query_opt(
            "SELECT seq FROM collector_cursor WHERE sink = 'postgres'",
            &[],
        )
        .await
        .map_err(CollectorError::pg("reading the cursor"))?;
    Ok(row
        .map(|row| row.get::<_, i64>(0))
        .and_then(|seq| u64::try_from(seq).ok())
        .unwrap_or(0))
}

/// Sets the cursor (replay): the sink re-sends every event after `seq`.
pub async fn set_cursor(client: &Client, seq: u64) -> Result<(), CollectorError> {
    client
        .execute(
            "INSERT INTO collector_cursor (sink, seq) VALUES ('postgres', $1)
             ON CONFLICT (sink) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()",
            &[&seq_to_i64(seq)],
        )
        .await
        .map_err(CollectorError::pg("setting the cursor"))?;
    Ok(())
}

/// Drops day partitions past retention; returns how many were dropped.
pub async fn drop_expired_partitions(
    client: &Client,
    events_keep: Duration,
    shares_keep: Duration,
) -> Result<i32, CollectorError> {
    let mut dropped = 0;
    for (table, keep) in [("mining_events", events_keep), ("shares", shares_keep)] {
        let keep_text = format!("{} seconds", keep.as_secs());
        let row = client
            .query_one(
                "SELECT tbg_drop_expired_partitions($1, $2::text::interval)",
                &[&table, &keep_text],
            )
            .await
            .map_err(CollectorError::pg("dropping expired partitions"))?;
        dropped += row.get::<_, i32>(0);
    }
    Ok(dropped)
}

fn seq_to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn unix_day(time: SystemTime) -> i64 {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    i64::try_from(seconds / 86_400).unwrap_or(0)
}

fn day_start(day: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(day).unwrap_or(0) * 86_400)
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events that were new to the database.
    pub inserted: u64,
    /// Events already present (replay).
    pub duplicates: u64,
}

/// Writes batches; keeps the set of day partitions known to exist.
#[derive(Debug, Default)]
pub struct PostgresWriter {
    known_partition_days: HashSet<i64>,
}

impl PostgresWriter {
    pub fn new() -> PostgresWriter {
        PostgresWriter::default()
    }

    /// Runs migrations, creates partitions ahead, applies retention, returns the cursor.
    pub async fn prepare(&mut self, client: &mut Client) -> Result<u64, CollectorError> {
        migrations::apply_migrations(client).await?;
        self.maintain(client).await?;
        read_cursor(client).await
    }

    /// Creates the day partitions from yesterday to `PARTITION_DAYS_AHEAD`
    /// days ahead and drops those past retention; returns how many were
    /// dropped. Runs on connect and then periodically.
    pub async fn maintain(&mut self, client: &mut Client) -> Result<i32, CollectorError> {
        self.known_partition_days.clear();
        let today = unix_day(SystemTime::now());
        let days: Vec<i64> = (today - 1..=today + PARTITION_DAYS_AHEAD).collect();
        let transaction = client
            .transaction()
            .await
            .map_err(CollectorError::pg("starting the partition transaction"))?;
        ensure_partitions(&transaction, &days).await?;
        transaction
            .commit()
            .await
            .map_err(CollectorError::pg("committing partitions"))?;
        let dropped =
            drop_expired_partitions(client, MINING_EVENTS_RETENTION, SHARES_RETENTION).await?;
        if dropped > 0 {
            tracing::info!(dropped, "dropped expired partitions");
        } else {
            self.known_partition_days.extend(days);
        }
        Ok(dropped)
    }

    /// Forgets cached partitions (after an error the database may have changed).
    pub fn reset(&mut self) {
        self.known_partition_days.clear();
    }

    /// Writes one batch and moves the cursor to `cursor` in the same transaction.
    pub async fn write_batch(
        &mut self,
        client: &mut Client,
        batch: &[ParsedRecord],
        cursor: u64,
    ) -> Result<BatchOutcome, CollectorError> {
        let new_days: BTreeSet<i64> = batch
            .iter()
            .map(|record| unix_day(record.time))
            .filter(|day| !self.known_partition_days.contains(day))
            .collect();
        let new_days: Vec<i64> = new_days.into_iter().collect();
        // Every batch outside a replay holds only new events: binary COPY.
        // A unique violation (a replayed event) aborts that transaction,
        // which is then redone with `INSERT ... ON CONFLICT DO NOTHING`.
        let outcome =
            match write_transaction(client, batch, cursor, &new_days, Insert::Copy).await? {
                Some(outcome) => outcome,
                None => write_transaction(client, batch, cursor, &new_days, Insert::SkipExisting)
                    .await?
                    .unwrap_or_default(),
            };
        self.known_partition_days.extend(new_days);
        Ok(outcome)
    }
}

/// How the events and share rows are inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// Binary COPY: fails on the first event already stored.
    Copy,
    /// `ON CONFLICT DO NOTHING`, returning which events were new.
    SkipExisting,
}

/// One batch in one transaction; None when `Insert::Copy` met an event
/// already stored (the transaction was rolled back).
async fn write_transaction(
    client: &mut Client,
    batch: &[ParsedRecord],
    cursor: u64,
    new_days: &[i64],
    insert: Insert,
) -> Result<Option<BatchOutcome>, CollectorError> {
    let transaction = client
        .transaction()
        .await
        .map_err(CollectorError::pg("starting the batch transaction"))?;
    ensure_partitions(&transaction, new_days).await?;
    let new_records: Vec<&ParsedRecord> = match insert {
        Insert::Copy => {
            let all: Vec<&ParsedRecord> = batch.iter().collect();
            // Dropping the transaction rolls it back.
            if !rows::copy_mining_events(&transaction, batch).await?
                || !rows::copy_shares(&transaction, &all).await?
            {
                return Ok(None);
            }
            all
        }
        Insert::SkipExisting => {
            let ids = rows::insert_mining_events(&transaction, batch).await?;
            let new_records: Vec<&ParsedRecord> = batch
                .iter()
                .filter(|record| ids.contains(record.event_id.as_str()))
                .collect();
            rows::insert_shares(&transaction, &new_records).await?;
            new_records
        }
    };
    finish_batch(transaction, batch, &new_records, cursor).await?;
    let inserted = new_records.len() as u64;
    Ok(Some(BatchOutcome {
        inserted,
        duplicates: batch.len() as u64 - inserted,
    }))
}

/// Blocks, aggregates of the new records, the cursor, commit.
async fn finish_batch(
    transaction: Transaction<'_>,
    batch: &[ParsedRecord],
    new_records: &[&ParsedRecord],
    cursor: u64,
) -> Result<(), CollectorError> {
    blocks::insert_blocks(&transaction, new_records).await?;
    // From every record, not only new ones: setting the answer is
    // idempotent, and a replay then also repairs a blocks row restored
    // from an older backup.
    blocks::record_block_submissions(&transaction, batch).await?;
    let advance_cursor = async {
        transaction
            .execute(
                "UPDATE collector_cursor SET seq = $1, updated_at = now() WHERE sink = 'postgres'",
                &[&seq_to_i64(cursor)],
            )
            .await
            .map_err(CollectorError::pg("advancing the cursor"))
    };
    // The statements touch different rows, so their order does not
    // matter: sent together (tokio-postgres pipelines concurrent queries),
    // they cost one round trip instead of one each.
    futures::try_join!(
        aggregates::upsert_aggregates(&transaction, new_records),
        advance_cursor
    )?;
    transaction
        .commit()
        .await
        .map_err(CollectorError::pg("committing the batch"))?;
    Ok(())
}

async fn ensure_partitions(
    transaction: &Transaction<'_>,
    days: &[i64],
) -> Result<(), CollectorError> {
    if days.is_empty() {
        return Ok(());
    }
    let starts: Vec<SystemTime> = days.iter().map(|day| day_start(*day)).collect();
    transaction
        .execute(
            "SELECT tbg_ensure_day_partition(parent, (start AT TIME ZONE 'UTC')::date)
             FROM unnest($1::timestamptz[]) AS start,
                  unnest(ARRAY['mining_events', 'shares']) AS parent",
            &[&starts],
        )
        .await
        .map_err(CollectorError::pg("creating day partitions"))?;
    Ok(())
}
