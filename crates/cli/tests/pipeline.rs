//! Issue 3's outage test: with the pool under a steady share load, kill -9
//! the collector, stop PostgreSQL for 20 s, stop Redis for 10 s, kill -9 and
//! restart the pool; then the event ids the pool journaled, the rows in
//! PostgreSQL and the entries of every Redis stream are the same set, with
//! no duplicates. Real processes and servers throughout: the `tbg` binary,
//! the embedded kernel node, the test's own PostgreSQL and Redis.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_miner::StratumClient;
use tbg_testkit::{free_port, regtest_address, AddressKind, PgServer, RedisServer};

struct Proc {
    name: &'static str,
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn start(name: &'static str, args: &[&str], dir: &Path) -> Proc {
        let mut proc = Proc {
            name,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            log: dir.join(format!("{name}.log")),
        };
        proc.spawn();
        proc
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tbg"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not stop on SIGTERM", self.name);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Miners that keep submitting shares (rejected ones are events too) and
/// reconnect whenever the pool goes away.
fn start_load(
    pool_port: u16,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|index| {
            let stop = stop.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let (address, _) = regtest_address(AddressKind::P2wpkh);
                let username = format!("{address}.load{index}");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut client) =
                        StratumClient::connect(([127, 0, 0, 1], pool_port).into()).await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    client.timeout = Duration::from_secs(5);
                    if client
                        .request("mining.subscribe", json!(["load"]))
                        .await
                        .is_err()
                        || client
                            .request("mining.authorize", json!([username, "x"]))
                            .await
                            .is_err()
                    {
                        continue;
                    }
                    let mut nonce = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        nonce = nonce.wrapping_add(1);
                        let params = json!([
                            username,
                            "00000000deadbeef",
                            "0000000000000000",
                            "60000000",
                            format!("{nonce:08x}")
                        ]);
                        match client.request("mining.submit", params).await {
                            Ok(_) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

fn journal_ids(path: &Path) -> Vec<String> {
    let reader = tbg_journal::JournalReader::open(path).unwrap();
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let batch = reader.read_after(after, 10_000).unwrap();
        let Some(last) = batch.last() else { break };
        after = last.seq;
        ids.extend(batch.into_iter().map(|r| r.event_id));
    }
    ids
}

fn redis_ids(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mining:*")
        .query(&mut connection)
        .unwrap();
    let mut ids = Vec::new();
    for key in keys {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut connection)
            .unwrap();
        for (_, fields) in entries {
            ids.push(
                fields
                    .get("id")
                    .cloned()
                    .expect("every stream entry carries the event id"),
            );
        }
    }
    ids
}

fn duplicates(ids: &[String]) -> usize {
    ids.len() - ids.iter().collect::<BTreeSet<_>>().len()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_lost_or_duplicated_through_collector_database_redis_and_pool_crashes() {
    tbg_testkit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pg = PgServer::start();
    let mut redis = RedisServer::start_persistent();
    let node = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let pool_port = free_port();
    let journal = dir.path().join("journal.db");
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            r#"network = "regtest"
[[nodes]]
url = "{url}"
user = "{user}"
pass = "{pass}"
[pool]
bind = "127.0.0.1:{pool_port}"
mindiff = 0.0001
startdiff = 0.0001
blockpoll_ms = 100
[events]
socket_path = "{socket}"
region = "e2e"
[journal]
path = "{journal}"
[metrics]
bind = "127.0.0.1:0"
collector_bind = "127.0.0.1:0"
[collector]
postgres_url = "{pg}"
redis_url = "{redis_url}"
batch_wait_ms = 200
"#,
            url = node.rpc_url,
            user = node.rpc_user,
            pass = node.rpc_password,
            socket = dir.path().join("events.sock").display(),
            journal = journal.display(),
            pg = pg.conninfo(),
            redis_url = redis.url(),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let mut pool = Proc::start("pool", &["pool", "--config", config_arg], dir.path());
    let mut collector = Proc::start(
        "collector",
        &["collector", "--config", config_arg],
        dir.path(),
    );
    wait_for("pool listening", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", pool_port)).is_ok()
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = start_load(pool_port, stop.clone(), answered.clone());
    fn progress(answered: &AtomicU64, at_least: u64) -> impl FnMut() -> bool + '_ {
        let start = answered.load(Ordering::Relaxed);
        move || answered.load(Ordering::Relaxed) >= start + at_least
    }
    wait_for(
        "load running",
        Duration::from_secs(30),
        progress(&answered, 200),
    )
    .await;

    // 1. The collector dies without warning, and comes back.
    collector.kill9();
    wait_for(
        "shares while the collector is down",
        Duration::from_secs(30),
        progress(&answered, 100),
    )
    .await;
    collector.spawn();

    // 2. PostgreSQL down for 20 s.
    pg.stop_immediate();
    tokio::time::sleep(Duration::from_secs(20)).await;
    pg.pg_ctl_start();

    // 3. Redis down for 10 s (killed; its append-only file keeps what it acknowledged).
    redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.restart();

    // 4. The pool dies without warning and is restarted; miners come back by themselves.
    pool.kill9();
    pool.spawn();
    wait_for(
        "shares after the pool restart",
        Duration::from_secs(60),
        progress(&answered, 200),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    pool.terminate();

    // Everything journaled reaches both stores.
    let journaled = journal_ids(&journal);
    let last_seq = tbg_journal::JournalReader::open(&journal)
        .unwrap()
        .last_seq()
        .unwrap();
    wait_for("both sinks caught up", Duration::from_secs(90), || {
        let pg_cursor = pg.psql("SELECT seq FROM collector_cursor WHERE sink = 'postgres'");
        let redis_cursor = redis.cli(&["GET", "tbg:collector:cursor:redis"]);
        pg_cursor == last_seq.to_string() && redis_cursor == last_seq.to_string()
    })
    .await;
    collector.terminate();

    let in_postgres: Vec<String> = pg
        .psql("SELECT event_id FROM mining_events")
        .lines()
        .map(str::to_string)
        .collect();
    let in_redis = redis_ids(&redis);
    assert!(
        journaled.len() > 500,
        "a real load: {} events",
        journaled.len()
    );
    assert_eq!(duplicates(&journaled), 0);
    assert_eq!(duplicates(&in_postgres), 0, "duplicates in PostgreSQL");
    assert_eq!(duplicates(&in_redis), 0, "duplicates in Redis");
    let journaled: BTreeSet<String> = journaled.into_iter().collect();
    let in_postgres: BTreeSet<String> = in_postgres.into_iter().collect();
    let in_redis: BTreeSet<String> = in_redis.into_iter().collect();
    assert_eq!(
        journaled.difference(&in_postgres).count(),
        0,
        "lost in PostgreSQL"
    );
    assert_eq!(journaled.difference(&in_redis).count(), 0, "lost in Redis");
    assert_eq!(in_postgres, journaled);
    assert_eq!(in_redis, journaled);

    // The plan's quick-reference commands answer.
    let by_type =
        pg.psql("SELECT event_type, COUNT(*) FROM mining_events GROUP BY event_type ORDER BY 1");
    assert!(by_type.contains("share_submitted|"), "{by_type}");
    assert!(by_type.contains("miner_connected|"), "{by_type}");
    let xlen: usize = redis
        .cli(&["XLEN", "mining:share_submitted"])
        .parse()
        .unwrap();
    assert!(xlen > 0);
    let xlen_connected: usize = redis
        .cli(&["XLEN", "mining:miner_connected"])
        .parse()
        .unwrap();
    assert!(
        xlen_connected >= 8,
        "4 miners connected before and after the pool restart"
    );
    assert!(pool.log().contains("event journal open"));
    assert!(!collector.log().contains("panicked"), "{}", collector.log());
    node.shutdown().await;
}
