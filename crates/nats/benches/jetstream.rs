//! What JetStream itself allows on this machine for the events' messages,
//! with nothing else running: a 3-server cluster on loopback, the stream as
//! the regions make it (R3 and R1), two relay journals of share events.
//!
//! - `raw publish`: async-nats alone, 4,000 acks outstanding (the client allows 5,000): the ceiling
//!   of JetStream for these messages, whatever the publisher does;
//! - `publishers`: our two publishers, from their journals;
//! - `ingest`: the primary's ingest from the stream into its journal
//!   (explicit ack per message, no PostgreSQL or Redis behind it);
//! - `catch-up`: publishers and ingest at once, a relay's backlog end to end.
//!
//! `EVENTS` (default 200,000) in all; `REPLICAS` (default `3,1`).
//! `cargo bench -p tbg-nats --bench jetstream`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tbg_events::{EventData, EventFactory};
use tbg_journal::{Journal, JournalConfig};
use tbg_nats::{
    ensure_stream, Ingest, IngestConfig, IngestStats, Publisher, PublisherConfig, PublisherStats,
    StreamSettings,
};
use tokio_util::sync::CancellationToken;

const RELAYS: [&str; 2] = ["eu-west", "ap-south"];

/// Three `nats-server -js` processes routed to each other on loopback.
struct Cluster {
    servers: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| tbg_testkit::free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| tbg_testkit::free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("\"nats://127.0.0.1:{}\"", routes[j]))
                .collect();
            let config = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{ name: bench, listen: \"127.0.0.1:{route}\", routes: [{others}] }}\n",
                port = ports[i],
                store = dir.path().join(format!("n{i}")).display(),
                route = routes[i],
                others = others.join(", "),
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, config).expect("write the server's config");
            servers.push(
                Command::new(tbg_testkit::nats_server_binary())
                    .arg("-c")
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("nats-server runs (scripts/setup.sh installs it)"),
            );
        }
        Cluster {
            servers,
            ports,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// CPU seconds the three servers have used so far.
    fn cpu_seconds(&self) -> f64 {
        self.servers
            .iter()
            .map(|child| cpu_seconds(child.id()))
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// utime + stime of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn share(n: usize) -> EventData {
    EventData::ShareSubmitted {
        user: format!("bc1qminer{:04}", n % 1000),
        worker: "rig".into(),
        client_id: n as u64,
        diff: 1.0,
        sdiff: 2.0,
        accepted: true,
        reject_reason: None,
        ip: "203.0.113.7".into(),
    }
}

/// One journal per relay with `per_relay` share events each.
async fn fill_journals(dir: &Path, per_relay: usize) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for region in RELAYS {
        let path = dir.join(format!("{region}.db"));
        let journal = Journal::open(JournalConfig::new(&path)).expect("journal");
        let factory = EventFactory::new(region, "hosted");
        let mut last = 0;
        for n in 0..per_relay {
            let event = factory.make(share(n));
            last = loop {
                match journal.append(&event) {
                    Ok(seq) => break seq,
                    // The stage is full: let the writer commit it.
                    Err(tbg_journal::JournalError::Full { .. }) => {
                        journal.wait_committed(last).await.expect("commit")
                    }
                    Err(error) => panic!("append: {error}"),
                }
            };
        }
        journal.wait_committed(last).await.expect("commit");
        journal.close().await.expect("close");
        paths.push(path);
    }
    paths
}

async fn context(url: &str) -> jetstream::Context {
    let client = tbg_nats::connect(url, Duration::from_secs(2), &Default::default())
        .await
        .expect("NATS");
    jetstream::new(client)
}

async fn stream_on(cluster: &Cluster, replicas: usize) -> jetstream::Context {
    let js = context(&cluster.url()).await;
    let settings = StreamSettings {
        replicas,
        ..StreamSettings::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = ensure_stream(&js, &settings).await {
        assert!(Instant::now() < deadline, "no stream: {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    js
}

fn start_publishers(
    url: &str,
    journals: &[PathBuf],
    stop: &CancellationToken,
) -> Vec<Arc<PublisherStats>> {
    let mut all = Vec::new();
    for journal in journals {
        let config = PublisherConfig::new(journal.clone(), journal.with_extension("cursor"));
        let (url, stop) = (url.to_owned(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            let publisher = Publisher::new(config, context(&url).await);
            tx.send(publisher.stats()).unwrap();
            publisher.run(stop).await.expect("publisher");
        });
        all.push(rx);
    }
    all.into_iter().map(|rx| rx.recv().unwrap()).collect()
}

fn start_ingest(js: &jetstream::Context, dir: &Path, stop: &CancellationToken) -> Arc<IngestStats> {
    let journal = Journal::open(JournalConfig::new(dir.join("primary.db"))).expect("journal");
    let ingest = Ingest::new(
        IngestConfig::new("EVENTS", "tbg-collector", "us-east"),
        js.clone(),
        journal,
    );
    let stats = ingest.stats();
    tokio::spawn(ingest.run(stop.clone()));
    stats
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A phase's start: its wall time and the servers' CPU so far.
struct Phase {
    started: Instant,
    cpu: f64,
}

impl Phase {
    fn start(cluster: &Cluster) -> Phase {
        Phase {
            started: Instant::now(),
            cpu: cluster.cpu_seconds(),
        }
    }

    fn report(&self, what: &str, replicas: usize, events: usize, cluster: &Cluster) {
        let seconds = self.started.elapsed().as_secs_f64();
        println!(
            "R{replicas} {what:<12} {events} events in {seconds:.2} s = {:>7.0} events/s; \
             NATS servers {:.2} cores",
            events as f64 / seconds,
            (cluster.cpu_seconds() - self.cpu) / seconds
        );
    }
}

/// Two relay journals of `per_relay` events each and a new cluster with
/// the stream.
struct Round {
    dir: tempfile::TempDir,
    journals: Vec<PathBuf>,
    cluster: Cluster,
    js: jetstream::Context,
    stop: CancellationToken,
}

impl Round {
    async fn new(replicas: usize, per_relay: usize) -> Round {
        let dir = tempfile::tempdir().expect("tempdir");
        let journals = fill_journals(dir.path(), per_relay).await;
        let cluster = Cluster::start();
        let js = stream_on(&cluster, replicas).await;
        Round {
            dir,
            journals,
            cluster,
            js,
            stop: CancellationToken::new(),
        }
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// async-nats alone: `events` messages like the publishers', 4,000 acks
/// outstanding.
async fn raw_publish(js: &jetstream::Context, events: usize) {
    let factory = EventFactory::new("eu-west", "hosted");
    let payloads: Vec<(String, bytes::Bytes)> = (0..1000)
        .map(|n| {
            let event = factory.make(share(n));
            (event.id.clone(), event.to_json().into())
        })
        .collect();
    let mut acks = std::collections::VecDeque::new();
    for n in 0..events {
        let (id, payload) = &payloads[n % payloads.len()];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{id}-{n}").as_str(),
        );
        acks.push_back(
            js.publish_with_headers("events.eu-west.share_submitted", headers, payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() == 4_000 {
            acks.pop_front().unwrap().await.expect("ack");
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}

async fn run(replicas: usize, events: usize) {
    let per_relay = events / RELAYS.len();
    let events = per_relay * RELAYS.len();

    let cluster = Cluster::start();
    let js = stream_on(&cluster, replicas).await;
    let phase = Phase::start(&cluster);
    raw_publish(&js, events).await;
    phase.report("raw publish", replicas, events, &cluster);
    drop(cluster);

    // Publishers, then the ingest, one after the other.
    let round = Round::new(replicas, per_relay).await;
    let phase = Phase::start(&round.cluster);
    let stats = start_publishers(&round.cluster.url(), &round.journals, &round.stop);
    wait_until("the publishers", || {
        stats
            .iter()
            .all(|s| s.cursor.load(Ordering::Relaxed) >= per_relay as u64)
    })
    .await;
    phase.report("publishers", replicas, events, &round.cluster);
    let phase = Phase::start(&round.cluster);
    let ingest = start_ingest(&round.js, round.dir.path(), &round.stop);
    wait_until("the ingest", || {
        ingest.ingested.load(Ordering::Relaxed) >= events as u64
    })
    .await;
    phase.report("ingest", replicas, events, &round.cluster);
    drop(round);

    // Both at once: a backlog end to end.
    let round = Round::new(replicas, per_relay).await;
    let phase = Phase::start(&round.cluster);
    start_publishers(&round.cluster.url(), &round.journals, &round.stop);
    let ingest = start_ingest(&round.js, round.dir.path(), &round.stop);
    wait_until("the catch-up", || {
        ingest.ingested.load(Ordering::Relaxed) >= events as u64
    })
    .await;
    phase.report("catch-up", replicas, events, &round.cluster);
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let replicas: Vec<usize> = std::env::var("REPLICAS")
        .unwrap_or_else(|_| "3,1".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "JetStream on {} cores, {events} share events",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for replicas in replicas {
        runtime.block_on(run(replicas, events));
    }
}
