//! Multi-region figures of issue 17, on the chaos suite's three regions
//! (network namespaces, a 3-server NATS cluster; needs root):
//!
//! 1. template latency: a new block on the primary's node, from the
//!    primary's own miners' new job to each relay's miners' new job;
//! 2. event convergence: every region's event load at once, the lag of the
//!    primary's PostgreSQL behind each region (now - the newest row's ts,
//!    sampled every 200 ms);
//! 3. catch-up: both relays cut off the WAN while their loads run (a
//!    compressed "hour"), then healed: the backlog's rate into the
//!    primary's sinks.
//!
//! `TBG=target/release/tbg cargo bench -p tbg-chaos --bench regions`
//! (`scripts/bench-regions.sh` builds and runs it). Knobs: `BLOCKS` (20),
//! `CLIENTS` per region (36: about 11,000 events/s in all), `INTERVAL_MS`
//! between one client's submits (5), `SECONDS` of load (20),
//! `CUT_SECONDS` (60).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tbg_chaos::load::{load_usernames, EventLoad, MinerStats, StratumConn};
use tbg_chaos::regions::{Regions, RegionsOptions, REGION_NAMES};
use tbg_testkit::{regtest_address, AddressKind};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A connection that only reads jobs, each arrival recorded in its stats.
fn watch(addr: std::net::SocketAddr, name: &str) -> (Arc<MinerStats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(MinerStats::default());
    let task_stats = stats.clone();
    let username = format!("{}.watch{name}", regtest_address(AddressKind::P2wpkh).0);
    let task = tokio::spawn(async move {
        let Ok(mut conn) = StratumConn::connect(addr, Duration::from_secs(5)).await else {
            eprintln!("watcher {username}: cannot connect");
            return;
        };
        conn.stats = Some(task_stats);
        if let Err(error) = conn.handshake(&username, Duration::from_secs(10)).await {
            eprintln!("watcher {username}: {error}");
            return;
        }
        while conn
            .wait_for_job(conn.jobs_seen, Duration::from_secs(1))
            .await
            .is_ok()
        {}
    });
    (stats, task)
}

async fn template_latency(set: &Regions) {
    let blocks = knob("BLOCKS", 20);
    let watchers: Vec<_> = set
        .regions
        .iter()
        .map(|region| watch(region.stratum, region.name))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let address = regtest_address(AddressKind::P2wpkh).0;
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); set.regions.len()];
    for _ in 0..blocks {
        let before = Instant::now();
        let previous = watchers[0].0.last_prevhash().unwrap_or_default();
        let mined: Result<serde_json::Value, _> = set.regions[0]
            .node
            .call("generatetoaddress", json!([1, address]))
            .await;
        if let Err(error) = mined {
            eprintln!("generatetoaddress: {error}");
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let arrivals = loop {
            let arrivals: Vec<Option<Instant>> = watchers
                .iter()
                .map(|(stats, _)| stats.first_new_tip_after(before, &previous))
                .collect();
            if arrivals.iter().all(Option::is_some) || Instant::now() >= deadline {
                break arrivals;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Some(primary) = arrivals[0] else {
            eprintln!("the primary's miner saw no new job");
            continue;
        };
        for (index, arrival) in arrivals.iter().enumerate().skip(1) {
            if let Some(arrival) = *arrival {
                // Signed: a relay's miner served before the primary's own
                // (scheduling) shows as a negative figure, not as 0.
                let ms = if arrival >= primary {
                    (arrival - primary).as_secs_f64() * 1e3
                } else {
                    -(primary - arrival).as_secs_f64() * 1e3
                };
                latencies[index].push(ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("\n1. template latency, primary's miners -> relay's miners ({blocks} blocks):");
    for (index, values) in latencies.iter_mut().enumerate().skip(1) {
        values.sort_by(f64::total_cmp);
        println!(
            "   {:<9} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {blocks} blocks)",
            REGION_NAMES[index],
            quantile(values, 0.5),
            quantile(values, 0.99),
            values.last().copied().unwrap_or(f64::NAN),
            values.len()
        );
    }
    for (_, task) in watchers {
        task.abort();
    }
}

/// `now - max(ts)` of each region's rows in the primary's PostgreSQL, in s.
fn lags(set: &Regions) -> Vec<(String, f64)> {
    set.pg
        .psql(
            "SELECT region, extract(epoch from now() - max(ts)) FROM mining_events GROUP BY region",
        )
        .lines()
        .filter_map(|line| {
            let (region, lag) = line.split_once('|')?;
            Some((region.to_owned(), lag.trim().parse().ok()?))
        })
        .collect()
}

fn loads(set: &Regions) -> Vec<EventLoad> {
    let clients = knob("CLIENTS", 36) as usize;
    let interval = Duration::from_millis(knob("INTERVAL_MS", 5));
    set.regions
        .iter()
        .map(|region| EventLoad::start(region.stratum, load_usernames(clients), interval))
        .collect()
}

async fn convergence(set: &Regions) {
    let seconds = knob("SECONDS", 20);
    let before = set.own_events().map(|e| e.len()).unwrap_or(0);
    let running = loads(set);
    let started = Instant::now();
    let mut samples: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    // The first seconds fill the pipes; sample after them, once every
    // region has rows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = lags(set);
        if now.len() == set.regions.len() {
            for (region, lag) in now {
                samples.entry(region).or_default().push(lag);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for load in running {
        load.stop().await;
    }
    let made = set
        .own_events()
        .map(|e| e.len())
        .unwrap_or(0)
        .saturating_sub(before);
    println!(
        "\n2. convergence: {made} events from 3 regions in {elapsed:.1} s ({:.0} events/s); \
         lag of the primary's PostgreSQL behind each region (now - its newest row, every 200 ms):",
        made as f64 / elapsed
    );
    for (region, values) in &mut samples {
        values.sort_by(f64::total_cmp);
        println!(
            "   {region:<9} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
            quantile(values, 0.5) * 1e3,
            quantile(values, 0.99) * 1e3,
            values.last().copied().unwrap_or(f64::NAN) * 1e3,
            values.len()
        );
    }
}

async fn catch_up(set: &Regions) {
    let cut_for = Duration::from_secs(knob("CUT_SECONDS", 60));
    for index in 1..set.regions.len() {
        set.isolate(index).expect("cut a relay off");
    }
    let running = loads(set);
    tokio::time::sleep(cut_for).await;
    for load in running {
        load.stop().await;
    }
    // Per region: what its journal holds now, which the primary's
    // PostgreSQL must reach (Redis streams are trimmed at stream_maxlen,
    // so Redis is followed by the collector's cursor instead).
    let mut expected: std::collections::BTreeMap<String, usize> = Default::default();
    for event in set.own_events().expect("journals") {
        *expected.entry(event.region).or_default() += 1;
    }
    let before = set.postgres_counts();
    let backlog: usize = expected
        .iter()
        .map(|(region, count)| count.saturating_sub(before.get(region).copied().unwrap_or(0)))
        .sum();
    let healed = Instant::now();
    for index in 1..set.regions.len() {
        set.rejoin(index).expect("heal the cut");
    }
    let mut last_report = Instant::now();
    loop {
        let counts = set.postgres_counts();
        let done = expected
            .iter()
            .all(|(region, count)| counts.get(region).copied().unwrap_or(0) >= *count);
        if done && set.collector_caught_up() {
            break;
        }
        if healed.elapsed() > Duration::from_secs(600) {
            println!("\n3. catch-up: not done after 600 s: {counts:?} of {expected:?}");
            return;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            // Which stage holds the rest: JetStream (the primary's ingest
            // pending) or the primary's journal (its collector behind).
            let ingest = set.status(0).await.map(|s| s["region"]["ingest"].clone());
            eprintln!(
                "   catch-up after {:.0} s: {counts:?} of {expected:?}; primary ingest {}",
                healed.elapsed().as_secs_f64(),
                ingest.unwrap_or_default()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = healed.elapsed().as_secs_f64();
    let ids: BTreeSet<String> = set
        .own_events()
        .expect("journals")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let in_postgres: BTreeSet<String> = set.postgres_ids().into_iter().collect();
    println!(
        "\n3. catch-up after both relays were cut off {} s: {backlog} events in {took:.1} s \
         ({:.0} events/s, from the heal to the last in PostgreSQL and both collector cursors \
         at the end of the primary's journal); {} of {} events missing in PostgreSQL",
        cut_for.as_secs(),
        backlog as f64 / took,
        ids.difference(&in_postgres).count(),
        ids.len()
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let tbg = std::env::var("TBG").map(PathBuf::from).unwrap_or_else(|_| {
        eprintln!("set TBG to a tbg binary (scripts/bench-regions.sh does)");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The regions are dropped (processes stopped, namespaces removed)
    // before the exit, whatever the outcome.
    let outcome = runtime.block_on(async {
        let set = Regions::start(RegionsOptions {
            tbg,
            heartbeat_s: 3,
            failover_timeout_s: 10,
            failback_after_s: 5,
        })
        .await
        .map_err(|error| format!("cannot start the regions: {error}"))?;
        set.wait_relays_on_primary(Duration::from_secs(60))
            .await
            .map_err(|error| error.to_string())?;
        // The relays' events flowing (publishers, cluster, ingest) first.
        let deadline = Instant::now() + Duration::from_secs(60);
        while set.postgres_counts().len() < set.regions.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        template_latency(&set).await;
        convergence(&set).await;
        catch_up(&set).await;
        Ok::<(), String>(())
    });
    if let Err(error) = outcome {
        eprintln!("{error}");
        std::process::exit(1);
    }
}
