//! Reaching a PostgreSQL server: connection strings (URL or `key=value`),
//! client binaries of a matching version, and the queries backups need.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, GenericClient, NoTls};

use crate::OpsError;

/// A PostgreSQL server and database, parsed from a connection string.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password in logs.
        f.debug_struct("PgTarget")
            .field("database", &self.database())
            .finish()
    }
}

impl PgTarget {
    pub fn parse(conninfo: &str) -> Result<PgTarget, OpsError> {
        let config: Config = conninfo
            .parse()
            .map_err(|error: tokio_postgres::Error| OpsError::BadDatabaseUrl(error.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(OpsError::BadDatabaseUrl("no host given".into()));
        }
        Ok(PgTarget { config })
    }

    /// The database name (libpq's default: the user name, else `postgres`).
    pub fn database(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_string()
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> PgTarget {
        let mut config = self.config.clone();
        config.dbname(database);
        PgTarget { config }
    }

    pub async fn connect(&self) -> Result<Client, OpsError> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(OpsError::pg(format!(
                    "connecting to database {}",
                    self.database()
                )))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection closed");
            }
        });
        Ok(client)
    }

    /// libpq environment for the client binaries: keeps the password out of
    /// the command line (visible to every user through `ps`).
    pub(crate) fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGDATABASE", self.database())];
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => env.push(("PGHOST", host.clone())),
            #[cfg(unix)]
            Some(Host::Unix(path)) => env.push(("PGHOST", path.display().to_string())),
            None => {}
        }
        if let Some(port) = self.config.get_ports().first() {
            env.push(("PGPORT", port.to_string()));
        }
        if let Some(user) = self.config.get_user() {
            env.push(("PGUSER", user.to_string()));
        }
        if let Some(password) = self.config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
        }
        let sslmode = match self.config.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            _ => "prefer",
        };
        env.push(("PGSSLMODE", sslmode.to_string()));
        if let Some(timeout) = self.config.get_connect_timeout() {
            env.push(("PGCONNECT_TIMEOUT", timeout.as_secs().max(1).to_string()));
        }
        env
    }

    /// A client binary command aimed at this database.
    pub(crate) fn command(&self, tool: &Path) -> Command {
        let mut command = Command::new(tool);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.libpq_env())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// Major version of a client binary (`pg_dump (PostgreSQL) 15.20 (...)` -> 15).
pub(crate) async fn tool_major(path: &Path) -> Option<u32> {
    let output = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    version.split('.').next()?.parse().ok()
}

/// Finds `tool` (pg_dump, pg_restore) of major version >= `min_major`,
/// preferring exactly `min_major` (the server's): `bin_dir` first, then
/// `/usr/lib/postgresql/<min_major>/bin`, `PATH`, the other
/// `/usr/lib/postgresql/*/bin` from the newest.
pub async fn find_tool(
    tool: &str,
    min_major: u32,
    bin_dir: Option<&Path>,
) -> Result<PathBuf, OpsError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = bin_dir {
        candidates.push(dir.join(tool));
    }
    candidates.push(PathBuf::from(format!(
        "/usr/lib/postgresql/{min_major}/bin/{tool}"
    )));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(tool)));
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((major, entry.path().join("bin").join(tool)))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    candidates.extend(versioned.into_iter().map(|(_, path)| path));
    for candidate in &candidates {
        if !candidate.is_file() {
            continue;
        }
        if let Some(major) = tool_major(candidate).await {
            if major >= min_major {
                return Ok(candidate.clone());
            }
        }
    }
    Err(OpsError::ToolMissing {
        tool: tool.to_string(),
        min_major,
        searched: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Runs a prepared command; its stdout on success, a `ToolFailed` otherwise.
pub(crate) async fn run_tool(tool: &Path, command: &mut Command) -> Result<String, OpsError> {
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(OpsError::io("cannot run", tool))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(OpsError::ToolFailed {
            tool: tool
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            status: output.status.to_string(),
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `"schema"."table"` for SQL.
pub(crate) fn quote_qualified(qualified: &str) -> String {
    let (schema, table) = qualified.split_once('.').unwrap_or(("public", qualified));
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// User tables as `schema.table`: not partitions or TimescaleDB chunks
/// (their rows are counted through the parent), not extension-owned.
const USER_TABLES: &str = r"
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
  AND n.nspname NOT LIKE '\_timescaledb%'
  AND n.nspname NOT LIKE 'timescaledb\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1";

pub(crate) async fn user_tables(client: &impl GenericClient) -> Result<Vec<String>, OpsError> {
    let rows = client
        .query(USER_TABLES, &[])
        .await
        .map_err(OpsError::pg("listing tables"))?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

pub(crate) async fn row_counts(
    client: &impl GenericClient,
    tables: &[String],
) -> Result<std::collections::BTreeMap<String, i64>, OpsError> {
    let mut counts = std::collections::BTreeMap::new();
    for table in tables {
        let count: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}", quote_qualified(table)),
                &[],
            )
            .await
            .map_err(OpsError::pg(format!("counting rows of {table}")))?
            .get(0);
        counts.insert(table.clone(), count);
    }
    Ok(counts)
}

/// `(server_version text, major)`.
pub(crate) async fn server_version(client: &impl GenericClient) -> Result<(String, u32), OpsError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(OpsError::pg("reading the server version"))?;
    let number: i32 = row.get(1);
    Ok((row.get(0), u32::try_from(number / 10_000).unwrap_or(0)))
}

pub(crate) async fn timescaledb_version(
    client: &impl GenericClient,
) -> Result<Option<String>, OpsError> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map_err(OpsError::pg("checking for timescaledb"))?;
    Ok(row.map(|row| row.get(0)))
}

/// The journal seq the collector has committed to PostgreSQL (its
/// `collector_cursor` row, sink `postgres`); `None` without the row. Call
/// only when `public.collector_cursor` exists.
pub(crate) async fn collector_cursor(client: &impl GenericClient) -> Result<Option<u64>, OpsError> {
    let row = client
        .query_opt(
            "SELECT seq FROM public.collector_cursor WHERE sink = 'postgres'",
            &[],
        )
        .await
        .map_err(OpsError::pg("reading the collector cursor"))?;
    Ok(row.and_then(|row| u64::try_from(row.get::<_, i64>(0)).ok()))
}
