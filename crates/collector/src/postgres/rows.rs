//! The rows of a batch's events in `mining_events` and `shares`: binary
//! COPY when every event is new, `INSERT ... ON CONFLICT DO NOTHING` when
//! some may be stored already (a replay).

use std::collections::HashSet;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use tbg_events::EventData;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Transaction;

use super::finite;
use crate::{CollectorError, ParsedRecord};

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
pub(super) async fn copy_mining_events(
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
pub(super) async fn insert_mining_events(
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
pub(super) async fn copy_shares(
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
pub(super) async fn insert_shares(
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
