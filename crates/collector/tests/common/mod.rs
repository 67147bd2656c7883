//! Private PostgreSQL and Redis servers for tests: each on a free port in a
//! temp dir, stopped and removed on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tbg_collector::Record;
use tbg_events::{EventData, EventFactory};

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn find_binary(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    for version in ["17", "16", "15", "14", "13"] {
        candidates.push(PathBuf::from(format!(
            "/usr/lib/postgresql/{version}/bin/{name}"
        )));
    }
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH or in /usr/lib/postgresql"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(binary: &str) -> Command {
    let path = find_binary(binary);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the data dir failed");
        }
        let data = dir.path().join("data");
        let output = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let server = PgServer {
            dir,
            port: free_port(),
        };
        server.pg_ctl_start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
            self.port
        )
    }

    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let status = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("postgres.log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(status.success(), "pg_ctl start failed: {}", self.log());
    }

    /// `pg_ctl stop -m immediate`: a crash as far as clients can tell.
    pub fn stop_immediate(&self) {
        let status = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl stop");
        assert!(status.success(), "pg_ctl stop failed");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        tbg_collector::postgres::connect(&self.conninfo())
            .await
            .expect("connect to the test postgresql")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL); its data is lost (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut connection) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        tbg_collector::redis_sink::connect(&self.url())
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes journal-like records with seqs from `first_seq`.
pub struct RecordMaker {
    factory: EventFactory,
    next_seq: u64,
    last_stream_ms: u64,
}

impl RecordMaker {
    pub fn new() -> RecordMaker {
        RecordMaker {
            factory: EventFactory::new("eu", "hosted"),
            next_seq: 1,
            last_stream_ms: 0,
        }
    }

    pub fn record(&mut self, data: EventData, ts: f64) -> Record {
        let event = self.factory.make_at(data, ts);
        let seq = self.next_seq;
        self.next_seq += 1;
        let ms = ((ts * 1000.0) as u64).max(self.last_stream_ms);
        self.last_stream_ms = ms;
        Record {
            seq,
            event_id: event.id.clone(),
            ts,
            event_type: event.event_type().to_string(),
            region: event.region.clone(),
            stream_id: format!("{ms}-{seq}"),
            payload: event.to_json(),
        }
    }

    /// A record whose payload is not an event.
    pub fn garbage(&mut self, ts: f64) -> Record {
        let mut record = self.record(share("bc1qgarbage", "w", 1.0, true), ts);
        record.payload = "{\"event\":\"share_submitted\",\"data\":{\"user\":".to_string();
        record
    }
}

pub fn share(user: &str, worker: &str, sdiff: f64, accepted: bool) -> EventData {
    EventData::ShareSubmitted {
        user: user.into(),
        worker: worker.into(),
        client_id: 1,
        diff: 1.0,
        sdiff,
        accepted,
        reject_reason: (!accepted).then(|| "Stale".to_string()),
        ip: "127.0.0.1".into(),
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn path_display(path: &Path) -> String {
    path.display().to_string()
}
