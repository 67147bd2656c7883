//! PostgreSQL sink: one transaction per batch writes the events, the
//! per-type rows, the aggregates of the events that were new, and the cursor.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use tbg_events::EventData;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
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

fn truncate(ts: f64, period_seconds: f64) -> SystemTime {
    let start = (ts / period_seconds).floor() * period_seconds;
    UNIX_EPOCH + Duration::from_secs_f64(start.max(0.0))
}

/// Monday 00:00 UTC of the week holding `ts` (1970-01-01 was a Thursday).
fn week_start(ts: f64) -> SystemTime {
    let day = (ts / 86_400.0).floor();
    let monday = day - (day + 3.0).rem_euclid(7.0);
    UNIX_EPOCH + Duration::from_secs_f64((monday * 86_400.0).max(0.0))
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

fn max_option(current: Option<f64>, candidate: Option<f64>) -> Option<f64> {
    match (current, candidate) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
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
            if !copy_mining_events(&transaction, batch).await?
                || !copy_shares(&transaction, &all).await?
            {
                return Ok(None);
            }
            all
        }
        Insert::SkipExisting => {
            let ids = insert_mining_events(&transaction, batch).await?;
            let new_records: Vec<&ParsedRecord> = batch
                .iter()
                .filter(|record| ids.contains(record.event_id.as_str()))
                .collect();
            insert_shares(&transaction, &new_records).await?;
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
    insert_blocks(&transaction, new_records).await?;
    // From every record, not only new ones: setting the answer is
    // idempotent, and a replay then also repairs a blocks row restored
    // from an older backup.
    record_block_submissions(&transaction, batch).await?;
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
    futures::try_join!(upsert_aggregates(&transaction, new_records), advance_cursor)?;
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

/// The `payload` column in COPY's binary format: jsonb is a version byte
/// and the JSON text, which `parse_record` already checked.
#[derive(Debug)]
struct JsonbText<'a>(&'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(format!("jsonb text cannot be sent as {ty}").into());
        }
        self.to_sql(ty, out)
    }
}

/// Streams rows with binary COPY (no statement parsing, no unnest).
async fn copy_rows<'a, I>(
    transaction: &Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: I,
) -> Result<(), tokio_postgres::Error>
where
    I: IntoIterator<Item = Vec<&'a (dyn ToSql + Sync)>>,
{
    let sink = transaction.copy_in(statement).await?;
    let writer = std::pin::pin!(BinaryCopyInWriter::new(sink, types));
    let mut writer = writer;
    for row in rows {
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Runs a COPY; false when it met a row already stored (a unique
/// violation, which also aborts the transaction).
async fn try_copy<'a, I>(
    transaction: &Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: I,
    context: &'static str,
) -> Result<bool, CollectorError>
where
    I: IntoIterator<Item = Vec<&'a (dyn ToSql + Sync)>>,
{
    match copy_rows(transaction, statement, types, rows).await {
        Ok(()) => Ok(true),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(false),
        Err(source) => Err(CollectorError::Postgres { context, source }),
    }
}

/// The `mining_events` columns of a batch.
struct EventColumns<'a> {
    times: Vec<SystemTime>,
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    sources: Vec<&'a str>,
    regions: Vec<&'a str>,
    payloads: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn new(batch: &'a [ParsedRecord]) -> EventColumns<'a> {
        EventColumns {
            times: batch.iter().map(|r| r.time).collect(),
            ids: batch.iter().map(|r| r.event_id.as_str()).collect(),
            types: batch.iter().map(|r| r.event.event_type()).collect(),
            sources: batch.iter().map(|r| r.event.source.as_str()).collect(),
            regions: batch.iter().map(|r| r.region.as_str()).collect(),
            payloads: batch.iter().map(|r| r.payload.as_str()).collect(),
        }
    }
}

/// COPYs the events; false when one was already stored.
async fn copy_mining_events(
    transaction: &Transaction<'_>,
    batch: &[ParsedRecord],
) -> Result<bool, CollectorError> {
    let columns = EventColumns::new(batch);
    let jsonb: Vec<JsonbText<'_>> = columns.payloads.iter().map(|p| JsonbText(p)).collect();
    let rows = (0..batch.len()).map(|i| -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &columns.times[i],
            &columns.ids[i],
            &columns.types[i],
            &columns.sources[i],
            &columns.regions[i],
            &jsonb[i],
        ]
    });
    try_copy(
        transaction,
        "COPY mining_events (ts, event_id, event_type, source, region, payload)
         FROM STDIN (FORMAT binary)",
        &[
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
        ],
        rows,
        "copying mining_events",
    )
    .await
}

const INSERT_EVENTS: &str =
    "INSERT INTO mining_events (ts, event_id, event_type, source, region, payload)
     SELECT ts, event_id, event_type, source, region, payload::jsonb
     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
          AS input(ts, event_id, event_type, source, region, payload)
     ON CONFLICT DO NOTHING RETURNING event_id";

/// Inserts the events not stored yet; returns their ids.
async fn insert_mining_events(
    transaction: &Transaction<'_>,
    batch: &[ParsedRecord],
) -> Result<HashSet<String>, CollectorError> {
    let c = EventColumns::new(batch);
    let params: [&(dyn ToSql + Sync); 6] = [
        &c.times,
        &c.ids,
        &c.types,
        &c.sources,
        &c.regions,
        &c.payloads,
    ];
    let rows = transaction
        .query(INSERT_EVENTS, &params)
        .await
        .map_err(CollectorError::pg("inserting mining_events"))?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

/// The `shares` columns of the share events among `records`.
#[derive(Default)]
struct ShareColumns<'a> {
    times: Vec<SystemTime>,
    addresses: Vec<&'a str>,
    workers: Vec<&'a str>,
    difficulties: Vec<Option<f64>>,
    share_diffs: Vec<Option<f64>>,
    valid: Vec<bool>,
    ips: Vec<&'a str>,
    sources: Vec<&'a str>,
    regions: Vec<&'a str>,
    ids: Vec<&'a str>,
    reasons: Vec<Option<&'a str>>,
}

impl<'a> ShareColumns<'a> {
    fn new(records: &[&'a ParsedRecord]) -> ShareColumns<'a> {
        let mut c = ShareColumns::default();
        for record in records {
            if let EventData::ShareSubmitted {
                user,
                worker,
                diff,
                sdiff,
                accepted,
                reject_reason,
                ip,
                ..
            } = &record.event.data
            {
                c.times.push(record.time);
                c.addresses.push(user.as_str());
                c.workers.push(worker.as_str());
                c.difficulties.push(finite(*diff));
                c.share_diffs.push(finite(*sdiff));
                c.valid.push(*accepted);
                c.ips.push(ip.as_str());
                c.sources.push(record.event.source.as_str());
                c.regions.push(record.region.as_str());
                c.ids.push(record.event_id.as_str());
                c.reasons.push(reject_reason.as_deref());
            }
        }
        c
    }
}

/// COPYs the share rows; false when one was already stored (a share row
/// outlives its mining_events row, 90 vs 30 days, so a replay of an old
/// event may meet it).
async fn copy_shares(
    transaction: &Transaction<'_>,
    records: &[&ParsedRecord],
) -> Result<bool, CollectorError> {
    let c = ShareColumns::new(records);
    if c.times.is_empty() {
        return Ok(true);
    }
    const IS_BLOCK: bool = false;
    let rows = (0..c.times.len()).map(|i| -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &c.times[i],
            &c.addresses[i],
            &c.workers[i],
            &c.difficulties[i],
            &c.share_diffs[i],
            &c.valid[i],
            &IS_BLOCK,
            &c.ips[i],
            &c.sources[i],
            &c.regions[i],
            &c.ids[i],
            &c.reasons[i],
        ]
    });
    try_copy(
        transaction,
        "COPY shares (time, btc_address, worker_name, difficulty, share_diff, is_valid,
                      is_block, ip_address, source, region, event_id, reject_reason)
         FROM STDIN (FORMAT binary)",
        &[
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::BOOL,
            Type::BOOL,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
        rows,
        "copying shares",
    )
    .await
}

const INSERT_SHARES: &str =
    "INSERT INTO shares (time, btc_address, worker_name, difficulty, share_diff, is_valid,
                         is_block, ip_address, source, region, event_id, reject_reason)
     SELECT time, btc_address, worker_name, difficulty, share_diff, is_valid,
            false, ip_address, source, region, event_id, reject_reason
     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::float8[], $5::float8[],
                 $6::bool[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
          AS input(time, btc_address, worker_name, difficulty, share_diff, is_valid,
                   ip_address, source, region, event_id, reject_reason)
     ON CONFLICT DO NOTHING";

/// Inserts the share rows not stored yet.
async fn insert_shares(
    transaction: &Transaction<'_>,
    records: &[&ParsedRecord],
) -> Result<(), CollectorError> {
    let c = ShareColumns::new(records);
    if c.times.is_empty() {
        return Ok(());
    }
    let params: [&(dyn ToSql + Sync); 11] = [
        &c.times,
        &c.addresses,
        &c.workers,
        &c.difficulties,
        &c.share_diffs,
        &c.valid,
        &c.ips,
        &c.sources,
        &c.regions,
        &c.ids,
        &c.reasons,
    ];
    transaction
        .execute(INSERT_SHARES, &params)
        .await
        .map_err(CollectorError::pg("inserting shares"))?;
    Ok(())
}

async fn insert_blocks(
    transaction: &Transaction<'_>,
    records: &[&ParsedRecord],
) -> Result<(), CollectorError> {
    for record in records {
        if let EventData::BlockFound {
            user,
            worker,
            height,
            hash,
            diff,
            network_diff,
            reward_sats,
            coinbase_sig,
        } = &record.event.data
        {
            transaction
                .execute(
                    "INSERT INTO blocks (block_height, block_hash, \"user\", worker_name, reward,
                                         difficulty, network_difficulty, coinbase_sig, source,
                                         region, found_at, event_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (event_id) DO NOTHING",
                    &[
                        &seq_to_i64(*height),
                        hash,
                        user,
                        worker,
                        &seq_to_i64(*reward_sats),
                        &finite(*diff),
                        &finite(*network_diff),
                        coinbase_sig,
                        &record.event.source,
                        &record.region,
                        &record.time,
                        &record.event_id,
                    ],
                )
                .await
                .map_err(CollectorError::pg("inserting blocks"))?;
        }
    }
    Ok(())
}

/// A found block's changes of status on its row: the nodes' answer
/// (`block_submitted`), then `block_confirmed` or `block_orphaned`. Each
/// update is idempotent and an older event never overwrites a newer
/// status, so replays and repeats change nothing.
async fn record_block_submissions(
    transaction: &Transaction<'_>,
    records: &[ParsedRecord],
) -> Result<(), CollectorError> {
    for record in records {
        let result = match &record.event.data {
            EventData::BlockSubmitted {
                hash,
                accepted,
                answers,
                status,
                ..
            } => {
                // Events journaled before `status` existed: accepted or not.
                let status = match status.as_str() {
                    "" if *accepted => "accepted",
                    "" => "rejected",
                    other => other,
                };
                transaction
                    .execute(
                        // An orphaned block that a deeper reorganisation
                        // put back is submitted again later than it was
                        // orphaned; a replay of the first answer is not.
                        "UPDATE blocks SET status = $2, submitted_at = $3, node_answers = $4,
                                replaced_by = CASE WHEN status = 'orphaned' THEN NULL ELSE replaced_by END,
                                settled_at = CASE WHEN status = 'orphaned' THEN NULL ELSE settled_at END
                         WHERE block_hash = $1 AND (submitted_at IS NULL OR submitted_at <= $3)
                           AND status <> 'confirmed'
                           AND (status <> 'orphaned' OR settled_at < $3)",
                        &[hash, &status, &record.time, answers],
                    )
                    .await
            }
            EventData::BlockConfirmed {
                hash,
                confirmations,
                ..
            } => {
                transaction
                    .execute(
                        "UPDATE blocks SET status = 'confirmed', confirmed = true,
                                confirmations = $2, settled_at = $3
                         WHERE block_hash = $1",
                        &[hash, &seq_to_i64(*confirmations), &record.time],
                    )
                    .await
            }
            EventData::BlockOrphaned {
                hash, replaced_by, ..
            } => {
                transaction
                    .execute(
                        // Not over a later verdict (a replay of the whole
                        // history passes through it in order anyway).
                        "UPDATE blocks SET status = 'orphaned', confirmed = false,
                                replaced_by = $2, settled_at = $3
                         WHERE block_hash = $1 AND status <> 'confirmed'
                           AND (submitted_at IS NULL OR submitted_at <= $3)",
                        &[hash, replaced_by, &record.time],
                    )
                    .await
            }
            _ => continue,
        };
        result.map_err(CollectorError::pg("recording a block's status"))?;
    }
    Ok(())
}

#[derive(Default)]
struct UserDelta {
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    total: i64,
    accepted: i64,
    rejected: i64,
    best: Option<f64>,
    blocks: i64,
}

impl UserDelta {
    fn seen(&mut self, time: SystemTime) {
        self.first_seen = Some(self.first_seen.map_or(time, |t| t.min(time)));
        self.last_seen = Some(self.last_seen.map_or(time, |t| t.max(time)));
    }
}

struct WorkerDelta<'a> {
    first_seen: SystemTime,
    last_seen: SystemTime,
    hashrates: Option<[Option<f64>; 4]>,
    /// The state of the worker's last connect/disconnect event in the batch.
    online: Option<bool>,
    source: &'a str,
    region: &'a str,
}

#[derive(Default)]
struct ShareBucket {
    count: i64,
    accepted: i64,
    rejected: i64,
    best: Option<f64>,
    sum: f64,
}

impl ShareBucket {
    fn add(&mut self, accepted: bool, share_diff: Option<f64>) {
        self.count += 1;
        if accepted {
            self.accepted += 1;
            self.best = max_option(self.best, share_diff);
            self.sum += share_diff.unwrap_or(0.0);
        } else {
            self.rejected += 1;
        }
    }
}

/// Aggregates only the events that were new in this transaction, in seq order.
async fn upsert_aggregates(
    transaction: &Transaction<'_>,
    records: &[&ParsedRecord],
) -> Result<(), CollectorError> {
    let mut users: HashMap<&str, UserDelta> = HashMap::new();
    let mut workers: HashMap<(&str, &str), WorkerDelta<'_>> = HashMap::new();
    let mut weekly: HashMap<(&str, SystemTime), ShareBucket> = HashMap::new();
    let mut hourly: HashMap<(&str, SystemTime), ShareBucket> = HashMap::new();
    let mut daily: HashMap<(&str, SystemTime), ShareBucket> = HashMap::new();

    for record in records {
        let time = record.time;
        let source = record.event.source.as_str();
        let region = record.region.as_str();
        let (user, worker): (&str, &str) = match &record.event.data {
            EventData::ShareSubmitted {
                user,
                worker,
                sdiff,
                accepted,
                ..
            } => {
                let share_diff = finite(*sdiff);
                let delta = users.entry(user.as_str()).or_default();
                delta.seen(time);
                delta.total += 1;
                if *accepted {
                    delta.accepted += 1;
                    delta.best = max_option(delta.best, share_diff);
                } else {
                    delta.rejected += 1;
                }
                weekly
                    .entry((user.as_str(), week_start(record.ts)))
                    .or_default()
                    .add(*accepted, share_diff);
                hourly
                    .entry((user.as_str(), truncate(record.ts, 3_600.0)))
                    .or_default()
                    .add(*accepted, share_diff);
                daily
                    .entry((user.as_str(), truncate(record.ts, 86_400.0)))
                    .or_default()
                    .add(*accepted, share_diff);
                (user, worker)
            }
            EventData::BlockFound { user, worker, .. } => {
                let delta = users.entry(user.as_str()).or_default();
                delta.seen(time);
                delta.blocks += 1;
                (user, worker)
            }
            EventData::MinerConnected { user, worker, .. }
            | EventData::MinerDisconnected { user, worker, .. }
            | EventData::HashrateUpdate { user, worker, .. } => {
                users.entry(user.as_str()).or_default().seen(time);
                (user, worker)
            }
            EventData::DiffUpdated { user, worker, .. }
            | EventData::ShareBestDiff { user, worker, .. }
            | EventData::AsicboostDetected { user, worker, .. } => (user, worker),
            // Settled after the find (a resubmission after a reorganisation
            // days later): says nothing of the worker now.
            EventData::BlockSubmitted { .. }
            | EventData::NewBlockNetwork { .. }
            | EventData::BlockConfirmed { .. }
            | EventData::BlockOrphaned { .. }
            | EventData::RegionFailover { .. }
            | EventData::RegionFailback { .. } => continue,
        };
        let entry = workers.entry((user, worker)).or_insert(WorkerDelta {
            first_seen: time,
            last_seen: time,
            hashrates: None,
            online: None,
            source,
            region,
        });
        entry.first_seen = entry.first_seen.min(time);
        entry.last_seen = entry.last_seen.max(time);
        entry.source = source;
        entry.region = region;
        match &record.event.data {
            EventData::MinerConnected { .. } | EventData::ShareSubmitted { .. } => {
                entry.online = Some(true)
            }
            EventData::MinerDisconnected { .. } => entry.online = Some(false),
            EventData::HashrateUpdate {
                hashrate_1m,
                hashrate_5m,
                hashrate_1h,
                hashrate_1d,
                ..
            } => {
                entry.hashrates = Some([
                    finite(*hashrate_1m),
                    finite(*hashrate_5m),
                    finite(*hashrate_1h),
                    finite(*hashrate_1d),
                ])
            }
            _ => {}
        }
    }

    let bucket_sql = |table: &str, bucket_column: &str, bucket_expr: &str| {
        format!(
            "INSERT INTO {table} (btc_address, {bucket_column}, share_count, accepted, rejected,
                                  best_share_diff, sum_share_diff)
             SELECT address, {bucket_expr}, count, accepted, rejected, best, sum
             FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], $6::float8[], $7::float8[])
                  AS input(address, bucket, count, accepted, rejected, best, sum)
             ON CONFLICT (btc_address, {bucket_column}) DO UPDATE SET
                 share_count = {table}.share_count + EXCLUDED.share_count,
                 accepted = {table}.accepted + EXCLUDED.accepted,
                 rejected = {table}.rejected + EXCLUDED.rejected,
                 best_share_diff = GREATEST({table}.best_share_diff, EXCLUDED.best_share_diff),
                 sum_share_diff = {table}.sum_share_diff + EXCLUDED.sum_share_diff"
        )
    };
    let hourly_sql = bucket_sql("hourly_shares", "bucket", "bucket");
    let daily_sql = bucket_sql("daily_shares", "day", "(bucket AT TIME ZONE 'UTC')::date");
    // Different tables: sent together, in one round trip.
    futures::try_join!(
        upsert_users(transaction, &users),
        upsert_workers(transaction, &workers),
        upsert_buckets(
            transaction,
            &weekly,
            "INSERT INTO weekly_best_diff (btc_address, week_start, best_difficulty, total_shares)
             SELECT address, (bucket AT TIME ZONE 'UTC')::date, best, count
             FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], $6::float8[], $7::float8[])
                  AS input(address, bucket, count, accepted, rejected, best, sum)
             ON CONFLICT (btc_address, week_start) DO UPDATE SET
                 best_difficulty = GREATEST(weekly_best_diff.best_difficulty, EXCLUDED.best_difficulty),
                 total_shares = weekly_best_diff.total_shares + EXCLUDED.total_shares",
        ),
        upsert_buckets(transaction, &hourly, &hourly_sql),
        upsert_buckets(transaction, &daily, &daily_sql),
    )?;
    Ok(())
}

async fn upsert_users(
    transaction: &Transaction<'_>,
    users: &HashMap<&str, UserDelta>,
) -> Result<(), CollectorError> {
    if users.is_empty() {
        return Ok(());
    }
    let mut addresses = Vec::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut totals = Vec::new();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut best = Vec::new();
    let mut blocks = Vec::new();
    for (address, delta) in users {
        let (Some(first_seen), Some(last_seen)) = (delta.first_seen, delta.last_seen) else {
            continue;
        };
        addresses.push(*address);
        first.push(first_seen);
        last.push(last_seen);
        totals.push(delta.total);
        accepted.push(delta.accepted);
        rejected.push(delta.rejected);
        best.push(delta.best);
        blocks.push(delta.blocks);
    }
    transaction
        .execute(
            "INSERT INTO users (btc_address, first_seen, last_seen, total_shares, accepted_shares,
                                rejected_shares, best_difficulty, blocks_found)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int8[],
                                  $5::int8[], $6::int8[], $7::float8[], $8::int8[])
             ON CONFLICT (btc_address) DO UPDATE SET
                 first_seen = LEAST(users.first_seen, EXCLUDED.first_seen),
                 last_seen = GREATEST(users.last_seen, EXCLUDED.last_seen),
                 total_shares = users.total_shares + EXCLUDED.total_shares,
                 accepted_shares = users.accepted_shares + EXCLUDED.accepted_shares,
                 rejected_shares = users.rejected_shares + EXCLUDED.rejected_shares,
                 best_difficulty = GREATEST(users.best_difficulty, EXCLUDED.best_difficulty),
                 blocks_found = users.blocks_found + EXCLUDED.blocks_found",
            &[
                &addresses, &first, &last, &totals, &accepted, &rejected, &best, &blocks,
            ],
        )
        .await
        .map_err(CollectorError::pg("upserting users"))?;
    Ok(())
}

async fn upsert_workers(
    transaction: &Transaction<'_>,
    workers: &HashMap<(&str, &str), WorkerDelta<'_>>,
) -> Result<(), CollectorError> {
    if workers.is_empty() {
        return Ok(());
    }
    let mut users = Vec::new();
    let mut names = Vec::new();
    let mut rates: [Vec<Option<f64>>; 4] = Default::default();
    let mut online = Vec::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut sources = Vec::new();
    let mut regions = Vec::new();
    for ((user, name), delta) in workers {
        users.push(*user);
        names.push(*name);
        let values = delta.hashrates.unwrap_or([None; 4]);
        for (column, value) in rates.iter_mut().zip(values) {
            column.push(value);
        }
        online.push(delta.online);
        first.push(delta.first_seen);
        last.push(delta.last_seen);
        sources.push(delta.source);
        regions.push(delta.region);
    }
    // NULL hash rates / online state mean "this batch says nothing about
    // it": the stored value stays.
    transaction
        .execute(
            "INSERT INTO workers (\"user\", worker_name, hashrate_1m, hashrate_5m, hashrate_1h,
                                  hashrate_24h, is_online, first_seen, last_seen, source, region)
             SELECT w_user, w_name, r1, r5, r60, r1440, COALESCE(w_online, false), w_first, w_last,
                    w_source, w_region
             FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[],
                         $6::float8[], $7::bool[], $8::timestamptz[], $9::timestamptz[],
                         $10::text[], $11::text[])
                  AS input(w_user, w_name, r1, r5, r60, r1440, w_online, w_first, w_last,
                           w_source, w_region)
             ON CONFLICT (\"user\", worker_name) DO UPDATE SET
                 hashrate_1m = COALESCE(EXCLUDED.hashrate_1m, workers.hashrate_1m),
                 hashrate_5m = COALESCE(EXCLUDED.hashrate_5m, workers.hashrate_5m),
                 hashrate_1h = COALESCE(EXCLUDED.hashrate_1h, workers.hashrate_1h),
                 hashrate_24h = COALESCE(EXCLUDED.hashrate_24h, workers.hashrate_24h),
                 last_seen = GREATEST(workers.last_seen, EXCLUDED.last_seen),
                 first_seen = LEAST(workers.first_seen, EXCLUDED.first_seen),
                 source = EXCLUDED.source,
                 region = EXCLUDED.region",
            &[
                &users, &names, &rates[0], &rates[1], &rates[2], &rates[3], &online, &first, &last,
                &sources, &regions,
            ],
        )
        .await
        .map_err(CollectorError::pg("upserting workers"))?;
    transaction
        .execute(
            "UPDATE workers SET is_online = input.w_online
             FROM unnest($1::text[], $2::text[], $3::bool[]) AS input(w_user, w_name, w_online)
             WHERE workers.\"user\" = input.w_user AND workers.worker_name = input.w_name
               AND input.w_online IS NOT NULL
               AND workers.is_online IS DISTINCT FROM input.w_online",
            &[&users, &names, &online],
        )
        .await
        .map_err(CollectorError::pg("updating worker state"))?;
    Ok(())
}

async fn upsert_buckets(
    transaction: &Transaction<'_>,
    buckets: &HashMap<(&str, SystemTime), ShareBucket>,
    sql: &str,
) -> Result<(), CollectorError> {
    if buckets.is_empty() {
        return Ok(());
    }
    let mut addresses = Vec::new();
    let mut starts = Vec::new();
    let mut counts = Vec::new();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut best = Vec::new();
    let mut sums = Vec::new();
    for ((address, start), bucket) in buckets {
        addresses.push(*address);
        starts.push(*start);
        counts.push(bucket.count);
        accepted.push(bucket.accepted);
        rejected.push(bucket.rejected);
        best.push(bucket.best);
        sums.push(bucket.sum);
    }
    transaction
        .execute(
            sql,
            &[
                &addresses, &starts, &counts, &accepted, &rejected, &best, &sums,
            ],
        )
        .await
        .map_err(CollectorError::pg("upserting share aggregates"))?;
    Ok(())
}
