//! Longer history from PostgreSQL when the collector runs: an address's
//! all-time best (`users`), its best of the last 7 days and its last 30
//! days (`daily_shares`), across restarts, regions and whatever the pool's
//! memory has forgotten. Read-only, each query bounded by a timeout, each
//! address's answer cached for [`CACHE_FOR`]; a database that does not
//! answer leaves the page to the pool's own figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_postgres::{Client, NoTls};

/// How long one address's figures are reused.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// Addresses cached at most; past it the cache starts over.
const CACHE_ADDRESSES: usize = 10_000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One day of an address (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub accepted: i64,
    pub rejected: i64,
    pub best: Option<f64>,
}

/// What PostgreSQL knows of an address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressHistory {
    pub all_time_best: Option<f64>,
    pub week_best: Option<f64>,
    /// Newest first, at most 30.
    pub days: Vec<Day>,
}

impl AddressHistory {
    pub fn is_empty(&self) -> bool {
        self.all_time_best.is_none() && self.days.is_empty()
    }
}

pub struct PgAggregates {
    conninfo: String,
    client: tokio::sync::Mutex<Option<Client>>,
    cache: Mutex<HashMap<String, (Instant, AddressHistory)>>,
}

impl std::fmt::Debug for PgAggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The conninfo may hold a password.
        f.debug_struct("PgAggregates").finish_non_exhaustive()
    }
}

impl PgAggregates {
    pub fn new(conninfo: String) -> PgAggregates {
        PgAggregates {
            conninfo,
            client: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The address's history; `None` when the database cannot be asked
    /// now (logged at debug: the page says nothing of it).
    pub async fn address(&self, address: &str) -> Option<AddressHistory> {
        if let Some((at, cached)) = self.cache.lock().get(address) {
            if at.elapsed() < CACHE_FOR {
                return Some(cached.clone());
            }
        }
        let fetched = tokio::time::timeout(QUERY_TIMEOUT, self.fetch(address)).await;
        let history = match fetched {
            Ok(Ok(history)) => history,
            Ok(Err(error)) => {
                tracing::debug!(%error, "dashboard: PostgreSQL history unavailable");
                *self.client.lock().await = None;
                return None;
            }
            Err(_) => {
                tracing::debug!("dashboard: PostgreSQL history timed out");
                *self.client.lock().await = None;
                return None;
            }
        };
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ADDRESSES {
            cache.clear();
        }
        cache.insert(address.to_owned(), (Instant::now(), history.clone()));
        Some(history)
    }

    async fn fetch(&self, address: &str) -> Result<AddressHistory, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = tokio_postgres::connect(&self.conninfo, NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "dashboard: PostgreSQL connection ended");
                }
            });
            *slot = Some(client);
        }
        let Some(client) = slot.as_ref() else {
            unreachable!("connected above");
        };
        let best = client
            .query_opt(
                "SELECT best_difficulty FROM users WHERE btc_address = $1",
                &[&address],
            )
            .await?
            .map(|row| row.try_get::<_, Option<f64>>(0))
            .transpose()?
            .flatten();
        let rows = client
            .query(
                "SELECT to_char(day, 'YYYY-MM-DD'), accepted, rejected, best_share_diff,
                        day > (now() AT TIME ZONE 'utc')::date - 7
                 FROM daily_shares WHERE btc_address = $1
                 ORDER BY day DESC LIMIT 30",
                &[&address],
            )
            .await?;
        let mut history = AddressHistory {
            all_time_best: best,
            ..AddressHistory::default()
        };
        // try_get: a column of another type (a schema changed by hand) is
        // an error for this page, never a panic.
        for row in rows {
            let best: Option<f64> = row.try_get(3)?;
            if row.try_get::<_, bool>(4)? {
                history.week_best = match (history.week_best, best) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            history.days.push(Day {
                day: row.try_get(0)?,
                accepted: row.try_get(1)?,
                rejected: row.try_get(2)?,
                best,
            });
        }
        Ok(history)
    }
}
