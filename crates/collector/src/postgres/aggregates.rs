//! The aggregates a batch's new events add to: `users`, `workers`,
//! `weekly_best_diff`, `hourly_shares` and `daily_shares`, each upserted
//! once per batch from deltas summed in memory.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tbg_events::EventData;
use tokio_postgres::Transaction;

use super::finite;
use crate::{CollectorError, ParsedRecord};

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

fn max_option(current: Option<f64>, candidate: Option<f64>) -> Option<f64> {
    match (current, candidate) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
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
pub(super) async fn upsert_aggregates(
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
