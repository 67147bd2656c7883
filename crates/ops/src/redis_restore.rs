//! Restoring a Redis snapshot (`tbg backup --redis`, an RDB file) into a
//! running Redis.
//!
//! A running server cannot load an RDB file without a restart, and the
//! production Redis may keep nothing on disk at all. So the snapshot is
//! loaded into a private `redis-server` (no TCP port: a Unix socket in a
//! temporary directory, no persistence), which checks the file completely
//! (header, RDB version, CRC64); then each key is copied with `DUMP` from
//! there and `RESTORE ... REPLACE` (with its remaining TTL) into the target,
//! database by database. Keys of the target that the snapshot lacks are left
//! alone. The original file is only read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::IntoConnectionInfo;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::OpsError;

/// Keys copied per round trip.
const BATCH: usize = 200;
/// How long the private server may take to load the snapshot.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The content of one database of a snapshot (or of the target).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisDbContent {
    pub index: i64,
    pub keys: u64,
    /// Keys by prefix (the text before the first ':'), e.g. `mining` 9.
    pub by_prefix: BTreeMap<String, u64>,
    /// Stream keys with their length, e.g. `mining:share_submitted` 1200.
    pub streams: BTreeMap<String, u64>,
}

/// What a restore would do; shown before anything changes.
#[derive(Debug, Clone)]
pub struct RedisRestorePlan {
    pub snapshot: PathBuf,
    pub size_bytes: u64,
    pub rdb_version: u32,
    pub databases: Vec<RedisDbContent>,
    /// The target URL without its password.
    pub target: String,
    /// Keys now in the target databases the snapshot writes to.
    pub target_keys: u64,
    /// Of those, keys the snapshot replaces.
    pub replaced_keys: u64,
}

impl std::fmt::Display for RedisRestorePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "snapshot: {} ({} bytes, RDB version {}, loads cleanly)",
            self.snapshot.display(),
            self.size_bytes,
            self.rdb_version
        )?;
        if self.databases.is_empty() {
            writeln!(f, "  the snapshot holds no keys")?;
        }
        for db in &self.databases {
            writeln!(f, "  db{}: {} keys", db.index, db.keys)?;
            for (prefix, count) in &db.by_prefix {
                writeln!(f, "    {prefix}:* {count}")?;
            }
            for (stream, length) in &db.streams {
                writeln!(f, "    stream {stream} ({length} entries)")?;
            }
        }
        writeln!(
            f,
            "target: {} ({} keys in those databases now)",
            self.target, self.target_keys
        )?;
        let total: u64 = self.databases.iter().map(|db| db.keys).sum();
        write!(
            f,
            "plan: RESTORE {} keys (REPLACE: {} existing keys overwritten; {} other keys of the target kept)",
            total,
            self.replaced_keys,
            self.target_keys.saturating_sub(self.replaced_keys)
        )
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RedisRestoreReport {
    pub restored_keys: u64,
    /// Keys that expired between loading and copying.
    pub expired_keys: u64,
    /// The target's databases after the restore.
    pub databases: Vec<RedisDbContent>,
}

/// A snapshot loaded into a private `redis-server`; stopped on drop.
pub struct LoadedRedisSnapshot {
    path: PathBuf,
    size_bytes: u64,
    rdb_version: u32,
    connection: MultiplexedConnection,
    socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

fn invalid(detail: impl Into<String>) -> OpsError {
    OpsError::Invalid {
        what: "redis restore",
        detail: detail.into(),
    }
}

fn redis_error(context: &str) -> impl FnOnce(redis::RedisError) -> OpsError + '_ {
    move |error| invalid(format!("{context}: {error}"))
}

/// `REDIS0011` -> 11; anything else is not an RDB file.
async fn read_rdb_header(path: &Path) -> Result<(u64, u32), OpsError> {
    let metadata = tokio::fs::metadata(path).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            OpsError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            OpsError::Io {
                context: "cannot read",
                path: path.to_path_buf(),
                source: error,
            }
        }
    })?;
    if metadata.len() == 0 {
        return Err(OpsError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut header = [0u8; 9];
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(OpsError::io("cannot read", path))?;
    let read = file
        .read(&mut header)
        .await
        .map_err(OpsError::io("cannot read", path))?;
    let version = (read == 9 && &header[..5] == b"REDIS")
        .then(|| std::str::from_utf8(&header[5..]).ok()?.parse::<u32>().ok())
        .flatten();
    match version {
        Some(version) => Ok((metadata.len(), version)),
        None => Err(invalid(format!(
            "{} is not a Redis snapshot (no REDIS<version> RDB header); `tbg backup --redis` writes them under <backup-dir>/redis/",
            path.display()
        ))),
    }
}

impl LoadedRedisSnapshot {
    /// Checks the header, then loads a copy of the snapshot into a private
    /// `redis-server` (`redis_server`: the binary, `redis-server` on PATH by
    /// default). A truncated, corrupt or too new file is refused here.
    pub async fn open(
        snapshot: &Path,
        redis_server: Option<&Path>,
    ) -> Result<LoadedRedisSnapshot, OpsError> {
        let (size_bytes, rdb_version) = read_rdb_header(snapshot).await?;
        let dir = tempfile::Builder::new()
            .prefix("tbg-redis-restore-")
            .tempdir()
            .map_err(OpsError::io(
                "cannot create a temporary directory in",
                std::env::temp_dir(),
            ))?;
        let copy = dir.path().join("snapshot.rdb");
        tokio::fs::copy(snapshot, &copy)
            .await
            .map_err(OpsError::io("cannot copy", snapshot))?;
        let socket = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let binary = redis_server.unwrap_or(Path::new("redis-server"));
        let mut command = Command::new(binary);
        command
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(dir.path())
            .arg("--dbfilename")
            .arg("snapshot.rdb")
            .arg("--logfile")
            .arg(&log)
            .arg("--databases")
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(OpsError::io("cannot run", binary))?;
        let url = format!("unix://{}", socket.display());
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        let connection = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                let reason: Vec<&str> = log_text
                    .lines()
                    .filter(|line| !line.contains("oO0OoO0OoO0Oo") && !line.trim().is_empty())
                    .rev()
                    .take(3)
                    .collect();
                return Err(invalid(format!(
                    "{} does not load as a Redis snapshot (redis-server {status}): {}",
                    snapshot.display(),
                    reason.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if socket.exists() {
                if let Ok(connection) = connect_ready(&url).await {
                    break connection;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(invalid(format!(
                    "the private redis-server did not finish loading {} in {:?}",
                    snapshot.display(),
                    LOAD_TIMEOUT
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(LoadedRedisSnapshot {
            path: snapshot.to_path_buf(),
            size_bytes,
            rdb_version,
            connection,
            socket,
            child,
            _dir: dir,
        })
    }

    /// What a restore into `target_url` would do; changes nothing.
    pub async fn plan(&self, target_url: &str) -> Result<RedisRestorePlan, OpsError> {
        let mut source = self.connection.clone();
        let databases = content(&mut source, &self.socket_url()).await?;
        let mut target_keys = 0;
        let mut replaced_keys = 0;
        for db in &databases {
            let mut target = connect_db(target_url, db.index).await?;
            target_keys += redis::cmd("DBSIZE")
                .query_async::<u64>(&mut target)
                .await
                .map_err(redis_error("target DBSIZE"))?;
            let mut source = connect_db(&self.socket_url(), db.index).await?;
            for keys in scan_keys(&mut source).await?.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("EXISTS").arg(key.as_slice());
                }
                let exists: Vec<u64> = pipe
                    .query_async(&mut target)
                    .await
                    .map_err(redis_error("target EXISTS"))?;
                replaced_keys += exists.iter().sum::<u64>();
            }
        }
        Ok(RedisRestorePlan {
            snapshot: self.path.clone(),
            size_bytes: self.size_bytes,
            rdb_version: self.rdb_version,
            databases,
            target: redact(target_url),
            target_keys,
            replaced_keys,
        })
    }

    /// Copies every key into `target_url` (`DUMP` / `RESTORE ... REPLACE`,
    /// TTLs kept), then reads the target back.
    pub async fn restore_into(&self, target_url: &str) -> Result<RedisRestoreReport, OpsError> {
        let databases = content(&mut self.connection.clone(), &self.socket_url()).await?;
        let mut restored_keys = 0;
        let mut expired_keys = 0;
        for db in &databases {
            let mut source = connect_db(&self.socket_url(), db.index).await?;
            let mut target = connect_db(target_url, db.index).await?;
            for keys in scan_keys(&mut source).await?.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("DUMP").arg(key.as_slice());
                    pipe.cmd("PTTL").arg(key.as_slice());
                }
                let answers: Vec<redis::Value> = pipe
                    .query_async(&mut source)
                    .await
                    .map_err(redis_error("DUMP from the snapshot"))?;
                let mut restore = redis::pipe();
                let mut queued = 0;
                for (key, pair) in keys.iter().zip(answers.chunks(2)) {
                    let payload: Option<Vec<u8>> =
                        redis::from_redis_value(&pair[0]).map_err(redis_error("DUMP answer"))?;
                    let pttl: i64 =
                        redis::from_redis_value(&pair[1]).map_err(redis_error("PTTL answer"))?;
                    let Some(payload) = payload.filter(|_| pttl != -2) else {
                        expired_keys += 1;
                        continue;
                    };
                    restore
                        .cmd("RESTORE")
                        .arg(key.as_slice())
                        .arg(pttl.max(0))
                        .arg(payload)
                        .arg("REPLACE")
                        .ignore();
                    queued += 1;
                }
                if queued > 0 {
                    restore.query_async::<()>(&mut target).await.map_err(|error| {
                        invalid(format!(
                            "RESTORE into {} failed after {restored_keys} keys: {error} (an older Redis than the snapshot's refuses its payloads)",
                            redact(target_url)
                        ))
                    })?;
                    restored_keys += queued;
                }
            }
        }
        let mut after = Vec::new();
        for db in &databases {
            let mut target = connect_db(target_url, db.index).await?;
            after.push(db_content(&mut target, db.index).await?);
        }
        Ok(RedisRestoreReport {
            restored_keys,
            expired_keys,
            databases: after,
        })
    }

    fn socket_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops the private server.
    pub async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Connects once the server answers PING (not while it is still loading).
async fn connect_ready(url: &str) -> Result<MultiplexedConnection, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await?;
    Ok(connection)
}

async fn connect_db(url: &str, index: i64) -> Result<MultiplexedConnection, OpsError> {
    let mut info = url
        .into_connection_info()
        .map_err(redis_error("invalid Redis url"))?;
    info.redis.db = index;
    let client = redis::Client::open(info).map_err(redis_error("invalid Redis url"))?;
    let connect = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(invalid(format!(
            "cannot connect to {}: {error}",
            redact(url)
        ))),
        Err(_) => Err(invalid(format!(
            "cannot connect to {}: timed out",
            redact(url)
        ))),
    }
}

/// The databases holding keys, from `INFO keyspace` (`db0:keys=3,...`).
async fn content(
    connection: &mut MultiplexedConnection,
    url: &str,
) -> Result<Vec<RedisDbContent>, OpsError> {
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(connection)
        .await
        .map_err(redis_error("INFO keyspace"))?;
    let mut databases = Vec::new();
    for line in info.lines() {
        let Some((name, _)) = line.split_once(':') else {
            continue;
        };
        let Some(index) = name.strip_prefix("db").and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let mut db = connect_db(url, index).await?;
        databases.push(db_content(&mut db, index).await?);
    }
    Ok(databases)
}

async fn scan_keys(connection: &mut MultiplexedConnection) -> Result<Vec<Vec<u8>>, OpsError> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .map_err(redis_error("SCAN"))?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

async fn db_content(
    connection: &mut MultiplexedConnection,
    index: i64,
) -> Result<RedisDbContent, OpsError> {
    let keys = scan_keys(connection).await?;
    let mut content = RedisDbContent {
        index,
        keys: keys.len() as u64,
        ..RedisDbContent::default()
    };
    for chunk in keys.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("TYPE").arg(key.as_slice());
        }
        let types: Vec<String> = pipe
            .query_async(connection)
            .await
            .map_err(redis_error("TYPE"))?;
        for (key, kind) in chunk.iter().zip(types) {
            let name = String::from_utf8_lossy(key).into_owned();
            let prefix = name.split_once(':').map_or(name.as_str(), |(p, _)| p);
            *content.by_prefix.entry(prefix.to_string()).or_default() += 1;
            if kind == "stream" {
                let length: u64 = redis::cmd("XLEN")
                    .arg(key.as_slice())
                    .query_async(connection)
                    .await
                    .map_err(redis_error("XLEN"))?;
                content.streams.insert(name, length);
            }
        }
    }
    Ok(content)
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_plan() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[tokio::test]
    async fn a_foreign_file_is_refused_before_any_server_starts() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("x.rdb");
        std::fs::write(&foreign, b"PGDMP not redis").unwrap();
        let error = LoadedRedisSnapshot::open(&foreign, Some(Path::new("/nonexistent")))
            .await
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("not a Redis snapshot"),
            "{error}"
        );
        std::fs::write(&foreign, b"").unwrap();
        let error = LoadedRedisSnapshot::open(&foreign, None)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("empty file"), "{error}");
    }
}
