//! One fresh set per scenario: the embedded regtest node (optionally behind
//! a fault proxy), the scenario's own PostgreSQL and Redis on free ports,
//! `tbg pool` and `tbg collector` as real processes on one config file.
//! Everything stops and is removed when the stack is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tbg_devnode::{DevNode, DevNodeHandle, DevNodeOptions};
use tbg_testkit::{free_port, PgServer, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ledger::{self, Ledger};
use crate::process::ManagedProcess;
use crate::proxy::FaultProxy;
use crate::{wait_until, ChaosError};

/// How a scenario wants its stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// The `tbg` binary.
    pub tbg: PathBuf,
    /// Directory for the journal (e.g. a small tmpfs); the stack's temp dir if `None`.
    pub journal_dir: Option<PathBuf>,
    /// The pool reaches the node through a [`FaultProxy`].
    pub node_via_proxy: bool,
    /// Extra environment of the pool process (e.g. libfaketime).
    pub pool_env: Vec<(String, String)>,
    /// Lines appended to the `[pool]` section.
    pub pool_extra: String,
    /// Lines appended to the `[journal]` section.
    pub journal_extra: String,
    /// The collector's `batch_wait_ms`; 100 if `None` (production's default is 1000).
    pub collector_batch_wait_ms: Option<u64>,
}

/// The scenario's own PostgreSQL and Redis (persistent), side by side.
pub async fn start_sinks() -> Result<(PgServer, RedisServer), ChaosError> {
    let pg = tokio::task::spawn_blocking(PgServer::start);
    let redis = tokio::task::spawn_blocking(RedisServer::start_persistent)
        .await
        .map_err(|e| ChaosError::Failed(format!("redis-server: {e}")))?;
    let pg = pg
        .await
        .map_err(|e| ChaosError::Failed(format!("PostgreSQL: {e}")))?;
    Ok((pg, redis))
}

pub struct Stack {
    // Field order is drop order: processes first, the temp dir last.
    pub pool: ManagedProcess,
    pub collector: ManagedProcess,
    pub proxy: Option<FaultProxy>,
    node: Option<DevNodeHandle>,
    pub pg: PgServer,
    pub redis: RedisServer,
    pub pool_addr: SocketAddr,
    pub journal_path: PathBuf,
    /// The pool's block store.
    pub block_dir: PathBuf,
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
    pub tbg: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> Result<Stack, ChaosError> {
        let dir = tempfile::Builder::new()
            .prefix("tbg-chaos-")
            .tempdir()
            .map_err(|e| ChaosError::io("temp dir", e))?;
        // PostgreSQL's initdb and the node's first 110 blocks take the longest: in parallel.
        let sinks = tokio::spawn(start_sinks());
        let node = DevNode::start(DevNodeOptions::default())
            .await
            .map_err(|e| ChaosError::Failed(format!("devnode: {e}")))?;
        let (pg, redis) = sinks
            .await
            .map_err(|e| ChaosError::Failed(format!("starting the sinks: {e}")))??;
        let proxy = if options.node_via_proxy {
            Some(FaultProxy::start(node.rpc_addr()).await?)
        } else {
            None
        };
        let node_url = match &proxy {
            Some(proxy) => format!("http://{}", proxy.local_addr()),
            None => node.rpc_url.clone(),
        };
        let pool_port = free_port();
        let journal_dir = options
            .journal_dir
            .clone()
            .unwrap_or_else(|| dir.path().to_path_buf());
        let journal_path = journal_dir.join("journal.db");
        let socket_path = dir.path().join("events.sock");
        let block_dir = dir.path().join("blocks");
        let config_path = dir.path().join("tbg.toml");
        let config = format!(
            r#"network = "regtest"
[[nodes]]
url = "{node_url}"
user = "{user}"
pass = "{pass}"
[pool]
bind = "127.0.0.1:{pool_port}"
mindiff = 0.0001
startdiff = 0.0001
blockpoll_ms = 100
# Vardiff keeps the paced miners (a few shares/s) near the minimum difficulty.
share_interval_s = 0.5
# The event load submits invalid shares on purpose; it must not be cut off.
max_invalid_shares_per_minute = 1000000
# The suite's own miners and load (many connections, reconnects after each
# fault) come from 127.0.0.1: trusted, as a farm would be. Attacks come from
# 127.0.0.2 and meet the default limits.
allow_list = ["127.0.0.1"]
{pool_extra}
[events]
socket_path = "{socket}"
region = "chaos"
[journal]
path = "{journal}"
{journal_extra}
[blocks]
dir = "{blocks}"
# Pending blocks retried within a second: scenarios time their recovery.
retry_max_ms = 1000
follow_interval_s = 1
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
[collector]
postgres_url = "{pg}"
redis_url = "{redis}"
batch_wait_ms = {batch_wait_ms}
"#,
            user = node.rpc_user,
            pass = node.rpc_password,
            pool_extra = options.pool_extra,
            journal_extra = options.journal_extra,
            batch_wait_ms = options.collector_batch_wait_ms.unwrap_or(100),
            socket = socket_path.display(),
            journal = journal_path.display(),
            blocks = block_dir.display(),
            pg = pg.conninfo(),
            redis = redis.url(),
        );
        std::fs::write(&config_path, config)
            .map_err(|e| ChaosError::io("writing the config", e))?;
        let config_arg = config_path.to_string_lossy().to_string();
        let mut pool = ManagedProcess::new(
            "pool",
            &options.tbg,
            &["pool", "--config", &config_arg],
            dir.path(),
        );
        for (key, value) in &options.pool_env {
            pool = pool.env(key, value);
        }
        let collector = ManagedProcess::new(
            "collector",
            &options.tbg,
            &["collector", "--config", &config_arg],
            dir.path(),
        );
        pool.spawn()?;
        let mut stack = Stack {
            pool,
            collector,
            proxy,
            node: Some(node),
            pg,
            redis,
            pool_addr: SocketAddr::from(([127, 0, 0, 1], pool_port)),
            journal_path,
            block_dir,
            config_path,
            socket_path,
            tbg: options.tbg,
            dir,
        };
        stack.wait_pool_up(Duration::from_secs(60)).await?;
        // Only now: a collector opening the journal while the pool is still
        // creating it exits ("not an event journal" / "schema version 0").
        stack.collector.spawn()?;
        Ok(stack)
    }

    pub fn node(&self) -> &DevNodeHandle {
        self.node.as_ref().expect("the node runs until shutdown")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the pool accepts TCP connections and logged its metrics address.
    pub async fn wait_pool_up(&mut self, timeout: Duration) -> Result<Duration, ChaosError> {
        let started = Instant::now();
        loop {
            if !self.pool.is_running() {
                return Err(ChaosError::Failed(format!(
                    "the pool exited ({:?}); log:\n{}",
                    self.pool.last_exit(),
                    self.pool.log_tail(20)
                )));
            }
            let listening = tokio::net::TcpStream::connect(self.pool_addr).await.is_ok();
            if listening && self.pool.logged_http_addr().is_some() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(ChaosError::Timeout(timeout, "the pool to listen".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pool's `/metrics` `/health` address (from its log, last start).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.pool.logged_http_addr()
    }

    /// The pool still runs, with the pid it started with; an error with its log otherwise.
    pub fn assert_pool_alive(&mut self, pid: u32) -> Result<(), ChaosError> {
        match self.pool.pid() {
            Some(now) if now == pid => Ok(()),
            Some(now) => Err(ChaosError::Failed(format!(
                "pool pid changed {pid} -> {now}"
            ))),
            None => Err(ChaosError::Failed(format!(
                "the pool died ({:?}); last log lines:\n{}",
                self.pool.last_exit(),
                self.pool.log_tail(30)
            ))),
        }
    }

    /// The collector's cursor in PostgreSQL (0 when unknown).
    pub fn postgres_cursor(&self) -> u64 {
        self.pg
            .psql("SELECT seq FROM collector_cursor WHERE sink = 'postgres'")
            .parse()
            .unwrap_or(0)
    }

    /// The collector's cursor in Redis (0 when unknown).
    pub fn redis_cursor(&self) -> u64 {
        self.redis
            .cli(&["GET", "tbg:collector:cursor:redis"])
            .parse()
            .unwrap_or(0)
    }

    pub fn journal_last_seq(&self) -> u64 {
        ledger::journal_last_seq(&self.journal_path).unwrap_or(0)
    }

    /// Waits until both sinks hold everything journaled so far.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<Duration, ChaosError> {
        let target = ledger::journal_last_seq(&self.journal_path)?;
        wait_until("both sinks to catch up with the journal", timeout, || {
            self.postgres_cursor() >= target && self.redis_cursor() >= target
        })
        .await
    }

    /// Journal vs PostgreSQL vs Redis, now: every event both sinks'
    /// cursors have passed must be in both; later ones are in flight
    /// ([`Ledger::compare_settled`]), since the pool may journal an event
    /// at any moment (a timer, a late disconnect).
    pub fn ledger(&self) -> Result<Ledger, ChaosError> {
        // The cursors first: whatever they cover was already in the journal.
        let settled = self.postgres_cursor().min(self.redis_cursor());
        let journal = ledger::journal_events(&self.journal_path)?;
        let postgres: Vec<String> = self
            .pg
            .psql("SELECT event_id FROM mining_events")
            .lines()
            .map(str::to_string)
            .collect();
        let redis = ledger::redis_stream_ids(&self.redis.url())?;
        Ok(Ledger::compare_settled(
            &journal, settled, &postgres, &redis,
        ))
    }

    /// Waits until both sinks caught up with the journal, then takes the
    /// ledger; again while events journaled meanwhile are in flight.
    pub async fn settled_ledger(
        &self,
        timeout: Duration,
    ) -> Result<(Duration, Ledger), ChaosError> {
        let start = std::time::Instant::now();
        loop {
            self.wait_caught_up(timeout.saturating_sub(start.elapsed()))
                .await?;
            let ledger = self.ledger()?;
            if ledger.in_flight == 0 || start.elapsed() >= timeout {
                return Ok((start.elapsed(), ledger));
            }
        }
    }

    /// Runs `tbg` with these arguments (backup, restore, ...), returning
    /// (success, stdout, stderr).
    pub fn run_tbg(&self, args: &[&str]) -> Result<(bool, String, String), ChaosError> {
        let output = std::process::Command::new(&self.tbg)
            .args(args)
            .env_remove("TBG_CONFIG")
            .env_remove("TBG_POSTGRES_URL")
            .env_remove("TBG_BACKUP_DIR")
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| ChaosError::io("running tbg", e))?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Stops the processes, then the node cleanly.
    pub async fn shutdown(mut self) {
        self.pool.terminate(Duration::from_secs(5));
        self.collector.terminate(Duration::from_secs(5));
        self.proxy = None;
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {:.80}", text))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {timeout:?}"))?
}

/// A sample from the Prometheus text (`name` or `name{labels}` exactly).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
}
