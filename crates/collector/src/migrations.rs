//! Numbered, checksummed schema migrations embedded in the binary.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

use crate::CollectorError;

/// One migration file (`migrations/NNN_name.sql`).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    /// File name, e.g. "001_core_tables.sql".
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the file, hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration of this binary, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "001_core_tables.sql",
        sql: include_str!("../migrations/001_core_tables.sql"),
    },
    Migration {
        version: 2,
        name: "002_time_series.sql",
        sql: include_str!("../migrations/002_time_series.sql"),
    },
    Migration {
        version: 3,
        name: "003_lighter_event_index_block_submission.sql",
        sql: include_str!("../migrations/003_lighter_event_index_block_submission.sql"),
    },
    Migration {
        version: 4,
        name: "004_block_lifecycle.sql",
        sql: include_str!("../migrations/004_block_lifecycle.sql"),
    },
];

/// Arbitrary constant: serializes concurrent collectors migrating one database.
const MIGRATION_LOCK_KEY: i64 = 0x0074_6267_5f6d_6967;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())";

/// The migrations not yet applied (the `--dry-run` answer), after checking
/// that every applied one is unchanged.
pub async fn pending_migrations(client: &Client) -> Result<Vec<Migration>, CollectorError> {
    pending_of(client, MIGRATIONS).await
}

/// Applies the pending migrations in order inside one transaction and returns them.
pub async fn apply_migrations(client: &mut Client) -> Result<Vec<Migration>, CollectorError> {
    apply_of(client, MIGRATIONS).await
}

/// [`pending_migrations`] for a given list (tests use altered lists).
pub async fn pending_of(
    client: &impl GenericClient,
    migrations: &[Migration],
) -> Result<Vec<Migration>, CollectorError> {
    let table_exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(CollectorError::pg("checking for schema_migrations"))?
        .get(0);
    if !table_exists {
        return Ok(migrations.to_vec());
    }
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(CollectorError::pg("reading schema_migrations"))?;
    let applied: Vec<(i32, String, String)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    check_and_filter(migrations, &applied)
}

fn check_and_filter(
    migrations: &[Migration],
    applied: &[(i32, String, String)],
) -> Result<Vec<Migration>, CollectorError> {
    for (version, name, checksum) in applied {
        match migrations.iter().find(|m| m.version == *version) {
            None => {
                return Err(CollectorError::MigrationUnknown {
                    version: *version,
                    name: name.clone(),
                })
            }
            Some(migration) if migration.checksum() != *checksum => {
                return Err(CollectorError::MigrationChanged {
                    file: migration.name.to_string(),
                    recorded: checksum.clone(),
                    embedded: migration.checksum(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.iter().any(|(version, _, _)| *version == m.version))
        .copied()
        .collect())
}

/// [`apply_migrations`] for a given list (tests use altered lists).
pub async fn apply_of(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<Migration>, CollectorError> {
    let transaction = client
        .transaction()
        .await
        .map_err(CollectorError::pg("starting the migration transaction"))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(CollectorError::pg("taking the migration lock"))?;
    transaction
        .batch_execute(CREATE_MIGRATIONS_TABLE)
        .await
        .map_err(CollectorError::pg("creating schema_migrations"))?;
    let pending = pending_of(&transaction, migrations).await?;
    for migration in &pending {
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(|source| CollectorError::Postgres {
                context: "applying a migration",
                source,
            })
            .map_err(|error| {
                tracing::error!(migration = migration.name, %error, "migration failed");
                error
            })?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &migration.checksum()],
            )
            .await
            .map_err(CollectorError::pg("recording a migration"))?;
        tracing::info!(migration = migration.name, "migration applied");
    }
    transaction
        .commit()
        .await
        .map_err(CollectorError::pg("committing migrations"))?;
    Ok(pending)
}
