//! The multi-region scenarios: three regions on hosts of their own
//! (network namespaces), a 3-server NATS JetStream cluster, real cuts.
//! Each prints the failover time, the relays' miners disconnected, shares
//! refused while switching, the blocks found during the fault and where
//! they were accepted, the events lost and duplicated across regions and
//! the time to convergence after the fault clears.
//!
//! `CHAOS_FULL=1` runs the long forms (NATS down 60 s, a 5-minute
//! "hour-like" outage); CI runs the short ones.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use tbg_chaos::ledger::Ledger;
use tbg_chaos::load::{load_usernames, EventLoad, PacedMiner};
use tbg_chaos::regions::{Regions, RegionsOptions, REGION_NAMES};
use tbg_chaos::wait_until;

use super::{
    describe, figure, miner_name, record_ledger, record_recovery, secs, tbg_binary, unix_now,
    Shared,
};

/// The plan's failover timeout and heartbeat (the defaults); failback
/// after 5 s of a steady primary (compressed from production's minutes).
fn options() -> RegionsOptions {
    RegionsOptions {
        tbg: tbg_binary(),
        heartbeat_s: 3,
        failover_timeout_s: 10,
        failback_after_s: 5,
    }
}

fn full() -> bool {
    std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// The regions with their load: a paced miner on each relay (every share
/// is a block on regtest) and event clients on every region.
struct RegionRun {
    set: Regions,
    miners: Vec<(usize, PacedMiner)>,
    loads: Vec<EventLoad>,
    report: Shared,
}

impl RegionRun {
    async fn start(report: Shared) -> Result<RegionRun> {
        let set = Regions::start(options()).await?;
        set.wait_relays_on_primary(Duration::from_secs(60)).await?;
        let mut run = RegionRun {
            set,
            miners: Vec::new(),
            loads: Vec::new(),
            report,
        };
        for index in 1..REGION_NAMES.len() {
            let miner = PacedMiner::start(
                run.set.regions[index].stratum,
                miner_name(index),
                Duration::from_secs(2),
            );
            run.miners.push((index, miner));
        }
        for region in &run.set.regions {
            run.loads.push(EventLoad::start(
                region.stratum,
                load_usernames(2),
                Duration::from_millis(100),
            ));
        }
        // Every relay's miner has had a share accepted, and the monitor
        // sees every region up.
        for (index, miner) in &run.miners {
            let stats = miner.stats.clone();
            wait_until(
                &format!("a share accepted on {}", REGION_NAMES[*index]),
                Duration::from_secs(30),
                || stats.accepted() > 0,
            )
            .await
            .map_err(|e| anyhow!("{e}; last error {}", stats.last_error()))?;
        }
        // Steady state before any fault: every relay's events reach the
        // primary's PostgreSQL (the publishers, the cluster, the ingest).
        let started = Instant::now();
        for name in REGION_NAMES.into_iter().skip(1) {
            wait_until(
                &format!("{name}'s events in the primary's PostgreSQL"),
                Duration::from_secs(90),
                || run.set.postgres_counts().get(name).copied().unwrap_or(0) > 0,
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
        }
        figure(
            &run.report,
            "relays' events flowing to the primary after",
            format!("{:.2} s", secs(started.elapsed())),
        );
        run.wait_monitor("every region up", Duration::from_secs(30), |health| {
            health["status"] == "healthy"
        })
        .await?;
        Ok(run)
    }

    async fn wait_monitor(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < timeout {
            if let Some(health) = self.set.monitor_health().await {
                if check(&health) {
                    return Ok(started.elapsed());
                }
                last = health;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(anyhow!(
            "the monitor never showed {what}; last /health {last}"
        ))
    }

    /// Waits until relay `index` mines `source`'s work; the time it took.
    async fn wait_source(&self, index: usize, source: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        while self.set.source(index).await.as_deref() != Some(source) {
            if started.elapsed() > timeout {
                return Err(anyhow!(
                    "{} not on {source} work after {} s: {:?}",
                    REGION_NAMES[index],
                    timeout.as_secs(),
                    self.set.status(index).await.map(|s| s["region"].clone())
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(started.elapsed())
    }

    /// Seconds from `since` (unix) to relay `index`'s first
    /// `region_failover` (or `region_failback`) event after it.
    fn switch_logged_after(&self, index: usize, event_type: &str, since: f64) -> Option<f64> {
        let events =
            tbg_chaos::ledger::journal_events(&self.set.regions[index].journal_path).ok()?;
        events
            .iter()
            .find(|e| e.event_type == event_type && e.ts >= since)
            .map(|e| e.ts - since)
    }

    /// As [`Self::switch_logged_after`], waiting for the journal's writer.
    async fn wait_switch_logged(&self, index: usize, event_type: &str, since: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.switch_logged_after(index, event_type, since);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The relays' miners' reconnections (each connect after the first).
    fn miner_reconnects(&self) -> u64 {
        self.miners
            .iter()
            .map(|(_, m)| {
                m.stats
                    .connects
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(1)
            })
            .sum()
    }

    fn miner_rejects(&self) -> u64 {
        self.miners.iter().map(|(_, m)| m.stats.rejected()).sum()
    }

    /// The failover figures of every relay: time to the failover event
    /// and to the miner's first job after `since`.
    async fn record_switch(
        &self,
        label: &str,
        event_type: &str,
        since_unix: f64,
        since: Instant,
    ) -> Result<f64> {
        let mut worst: f64 = 0.0;
        for (index, miner) in &self.miners {
            let name = REGION_NAMES[*index];
            let logged = self
                .wait_switch_logged(*index, event_type, since_unix)
                .await
                .with_context(|| format!("{name} journaled no {event_type}"))?;
            worst = worst.max(logged);
            figure(
                &self.report,
                &format!("{name}: {label} after"),
                format!("{logged:.2} s"),
            );
            if let Some(job) = miner.stats.first_job_after(since) {
                figure(
                    &self.report,
                    &format!("{name}: first job to its miner after the fault"),
                    format!("{:.2} s", secs(job - since)),
                );
            }
        }
        Ok(worst)
    }

    /// Blocks the relays found since `since_unix`: (found, on their own
    /// node's best chain), from each relay's `/status`.
    async fn relay_blocks_since(&self, since_unix: f64) -> (Vec<String>, usize) {
        let mut hashes = Vec::new();
        let mut on_chain = 0;
        for (index, _) in &self.miners {
            let Some(status) = self.set.status(*index).await else {
                continue;
            };
            for block in status["blocks"].as_array().into_iter().flatten() {
                if block["found_at"].as_f64().unwrap_or(0.0) < since_unix {
                    continue;
                }
                let Some(hash) = block["hash"].as_str() else {
                    continue;
                };
                hashes.push(hash.to_owned());
                let header: Option<Value> = self.set.regions[*index]
                    .node
                    .call("getblockheader", serde_json::json!([hash]))
                    .await
                    .ok();
                if header.is_some_and(|h| h["confirmations"].as_i64().unwrap_or(-1) >= 1) {
                    on_chain += 1;
                }
            }
        }
        (hashes, on_chain)
    }

    /// Blocks the relays found that the primary has not stored yet.
    async fn blocks_unconfirmed(&self) -> u64 {
        let mut total = 0;
        for (index, _) in &self.miners {
            if let Some(status) = self.set.status(*index).await {
                total += status["region"]["relay_link"]["blocks_unconfirmed"]
                    .as_u64()
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Event ids every region journaled itself, so far.
    fn own_event_ids(&self) -> Result<Vec<String>> {
        Ok(self.set.own_events()?.into_iter().map(|e| e.id).collect())
    }

    /// Convergence after a fault cleared at `cleared`: everything the
    /// regions journaled until then in the primary's sinks.
    async fn record_convergence(&self, cleared: Instant) -> Result<()> {
        let expected: BTreeSet<String> = self.own_event_ids()?.into_iter().collect();
        self.set
            .wait_converged(&expected, Duration::from_secs(90))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let converged = cleared.elapsed();
        figure(
            &self.report,
            "events of every region in the primary's PostgreSQL and Redis after",
            format!("{:.2} s ({} events)", secs(converged), expected.len()),
        );
        record_recovery(&self.report, converged);
        Ok(())
    }

    /// Stops the load, then checks that every event of every region is in
    /// the primary's sinks exactly once.
    async fn finish(mut self) -> Result<()> {
        for load in std::mem::take(&mut self.loads) {
            load.stop().await;
        }
        let reconnects = self.miner_reconnects();
        for (_, miner) in std::mem::take(&mut self.miners) {
            miner.stop().await;
        }
        let expected = self
            .set
            .own_events()?
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>();
        let expected_set: BTreeSet<String> = expected.iter().cloned().collect();
        let waited = self
            .set
            .wait_converged(&expected_set, Duration::from_secs(90))
            .await;
        let postgres = self.set.postgres_ids();
        let redis = self.set.redis_ids()?;
        let ledger = Ledger::compare(&expected, &postgres, &redis);
        record_ledger(&self.report, &ledger);
        figure(&self.report, "relay miners disconnected", reconnects);
        ensure!(
            ledger.lost() == 0 && ledger.duplicates() == 0,
            "across regions: {} lost, {} duplicated of {} ({:?}); {}",
            ledger.lost(),
            ledger.duplicates(),
            ledger.journaled,
            ledger.examples,
            waited.err().map(|e| e.to_string()).unwrap_or_default()
        );
        ensure!(
            reconnects == 0,
            "{reconnects} relay miner reconnections (target 0)"
        );
        Ok(())
    }
}

/// "region-primary-lost": the primary's host (pool and node) is killed;
/// the relays fail over at once (the link closes), keep mining on their
/// own nodes, fail back when it returns; a block found during the outage
/// reaches the primary's `blocks` table.
pub(super) async fn primary_lost(report: Shared) -> Result<()> {
    describe(
        &report,
        "SIGKILL of the primary's tbg devnet (pool + node) for 15 s, then restarted",
        "the fault cleared -> every region's events in the primary's sinks",
    );
    let mut run = RegionRun::start(report.clone()).await?;
    let rejects_before = run.miner_rejects();
    let (killed_unix, killed) = (unix_now(), Instant::now());
    run.set.regions[0].pool.kill9();
    for index in 1..REGION_NAMES.len() {
        run.wait_source(index, "local", Duration::from_secs(15))
            .await?;
    }
    let worst = run
        .record_switch("failover", "region_failover", killed_unix, killed)
        .await?;
    figure(
        &report,
        "target failover <= 1 s after a lost primary",
        if worst <= 1.0 { "met" } else { "MISSED" },
    );
    ensure!(
        worst <= 1.0,
        "failover {worst:.2} s after the primary was lost, target <= 1 s"
    );
    let seen = run
        .wait_monitor("the primary down", Duration::from_secs(10), |h| {
            h["regions"][REGION_NAMES[0]]["state"] == "down" && h["status"] == "degraded"
        })
        .await?;
    figure(
        &report,
        "health monitor: primary DOWN after",
        format!("{:.2} s", secs(seen)),
    );
    // The relays mine on their own nodes meanwhile.
    let outage_end = killed + Duration::from_secs(15);
    tokio::time::sleep(outage_end.saturating_duration_since(Instant::now())).await;
    let (found, on_chain) = run.relay_blocks_since(killed_unix).await;
    figure(
        &report,
        "blocks found on the relays during the outage",
        found.len(),
    );
    figure(
        &report,
        "of which on the finder's node's best chain",
        on_chain,
    );
    ensure!(
        on_chain > 0,
        "no block found during the outage is on a relay's chain ({found:?})"
    );
    figure(
        &report,
        "relay shares refused during the outage",
        run.miner_rejects() - rejects_before,
    );
    // Each of them waits on its relay for the primary, and /status says so.
    let unconfirmed = run.blocks_unconfirmed().await;
    figure(
        &report,
        "relay blocks waiting for the primary (blocks_unconfirmed)",
        unconfirmed,
    );
    ensure!(
        unconfirmed >= found.len() as u64,
        "the relays show {unconfirmed} blocks waiting for the primary, {} were found",
        found.len()
    );
    run.set.regions[0].pool.spawn()?;
    let back = Instant::now();
    run.set.wait_http(0, Duration::from_secs(60)).await?;
    for index in 1..REGION_NAMES.len() {
        run.wait_source(index, "primary", Duration::from_secs(30))
            .await?;
    }
    let failed_back = back.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.blocks_unconfirmed().await > 0 {
        ensure!(
            Instant::now() < deadline,
            "the primary never stored the relays' blocks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figure(
        &report,
        "every relay block stored by the primary after its return",
        format!("{:.2} s", secs(back.elapsed())),
    );
    figure(
        &report,
        "relays back on the primary's work after",
        format!("{:.2} s", secs(failed_back)),
    );
    run.record_convergence(back).await?;
    // The outage's blocks, found on relays, are in the primary's table.
    let listed = found
        .iter()
        .map(|hash| format!("'{hash}'"))
        .collect::<Vec<_>>()
        .join(",");
    let in_table: usize = run
        .set
        .pg
        .psql(&format!(
            "SELECT count(*) FROM blocks WHERE block_hash IN ({listed}) AND region <> '{}'",
            REGION_NAMES[0]
        ))
        .trim()
        .parse()
        .unwrap_or(0);
    figure(
        &report,
        "outage blocks in the primary's blocks table",
        format!("{in_table} of {}", found.len()),
    );
    ensure!(
        in_table == found.len(),
        "{in_table} of {} outage blocks in the primary's blocks table",
        found.len()
    );
    run.finish().await
}

/// "region-partition": a relay's host cut off the WAN (silence, no
/// reset): it fails over after the failover timeout, its events wait in
/// its journal (its NATS server is in the minority), and everything
/// converges once the cut heals.
pub(super) async fn partition(report: Shared) -> Result<()> {
    let cut_for = Duration::from_secs(20);
    describe(
        &report,
        format!(
            "{} cut off the WAN for {} s (its bridge port down)",
            REGION_NAMES[1],
            cut_for.as_secs()
        ),
        "the cut healed -> every region's events in the primary's sinks",
    );
    let run = RegionRun::start(report.clone()).await?;
    let rejects_before = run.miner_rejects();
    let (cut_unix, cut) = (unix_now(), Instant::now());
    run.set.isolate(1)?;
    run.wait_source(1, "local", Duration::from_secs(20)).await?;
    let logged = run
        .wait_switch_logged(1, "region_failover", cut_unix)
        .await
        .context("no region_failover journaled")?;
    figure(
        &report,
        &format!("{}: failover after the cut", REGION_NAMES[1]),
        format!("{logged:.2} s"),
    );
    let timeout = options().failover_timeout_s as f64;
    figure(
        &report,
        "target failover <= 10.5 s of silence",
        if logged <= timeout + 0.5 {
            "met"
        } else {
            "MISSED"
        },
    );
    ensure!(
        logged <= timeout + 0.5,
        "failover {logged:.2} s after the cut, target <= {:.1} s",
        timeout + 0.5
    );
    ensure!(
        run.set.source(2).await.as_deref() == Some("primary"),
        "the other relay left the primary"
    );
    let seen = run
        .wait_monitor("the cut relay on local work", Duration::from_secs(5), |h| {
            h["regions"][REGION_NAMES[1]]["source"] == "local"
        })
        .await?;
    figure(
        &report,
        "health monitor: relay on local work shown after failover + ",
        format!("{:.2} s", secs(seen)),
    );
    tokio::time::sleep((cut + cut_for).saturating_duration_since(Instant::now())).await;
    figure(
        &report,
        "relay shares refused during the cut",
        run.miner_rejects() - rejects_before,
    );
    run.set.rejoin(1)?;
    let healed = Instant::now();
    run.wait_source(1, "primary", Duration::from_secs(40))
        .await?;
    figure(
        &report,
        "back on the primary's work after the heal",
        format!("{:.2} s", secs(healed.elapsed())),
    );
    run.record_convergence(healed).await?;
    run.finish().await
}

/// "nats-server-lost": one server of the three killed, restarted 20 s later;
/// the cluster keeps its quorum and no event waits.
pub(super) async fn nats_server_lost(report: Shared) -> Result<()> {
    describe(
        &report,
        format!("SIGKILL of the NATS server of {} for 20 s", REGION_NAMES[2]),
        "the server restarted -> every region's events in the primary's sinks",
    );
    let mut run = RegionRun::start(report.clone()).await?;
    run.set.regions[2].nats.kill9();
    let killed = Instant::now();
    // Its region's publisher moves to another server of the cluster: the
    // events keep arriving while the server is down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expected: BTreeSet<String> = run.own_event_ids()?.into_iter().collect();
    run.set
        .wait_converged(&expected, Duration::from_secs(12))
        .await
        .map_err(|e| anyhow!("while one NATS server was down: {e}"))?;
    figure(
        &report,
        "events of the first 5 s of the fault in the primary's sinks after",
        format!("{:.2} s (still down)", secs(killed.elapsed())),
    );
    run.wait_monitor(
        "NATS up with two servers of three",
        Duration::from_secs(5),
        |h| h["nats"]["state"] == "up",
    )
    .await?;
    tokio::time::sleep(
        (killed + Duration::from_secs(20)).saturating_duration_since(Instant::now()),
    )
    .await;
    run.set.regions[2].nats.spawn()?;
    let back = Instant::now();
    run.record_convergence(back).await?;
    run.finish().await
}

/// "nats-all-down": the whole cluster down (60 s; 20 s in CI): the
/// regions keep mining, their events wait in their journals.
pub(super) async fn nats_all_down(report: Shared) -> Result<()> {
    let down_for = Duration::from_secs(if full() { 60 } else { 20 });
    describe(
        &report,
        format!(
            "SIGKILL of all three NATS servers for {} s",
            down_for.as_secs()
        ),
        "the cluster restarted -> every region's events in the primary's sinks",
    );
    let mut run = RegionRun::start(report.clone()).await?;
    let accepted_before: u64 = run.miners.iter().map(|(_, m)| m.stats.accepted()).sum();
    for region in &mut run.set.regions {
        region.nats.kill9();
    }
    let seen = run
        .wait_monitor("NATS down", Duration::from_secs(5), |h| {
            h["nats"]["state"] == "down" && h["status"] == "degraded"
        })
        .await?;
    figure(
        &report,
        "health monitor: NATS down after",
        format!("{:.2} s", secs(seen)),
    );
    tokio::time::sleep(down_for.saturating_sub(seen)).await;
    let accepted_during = run
        .miners
        .iter()
        .map(|(_, m)| m.stats.accepted())
        .sum::<u64>()
        - accepted_before;
    figure(
        &report,
        "relay shares accepted while NATS was down",
        accepted_during,
    );
    ensure!(accepted_during > 0, "no share accepted while NATS was down");
    // The relays' events of the outage are in their journals, not yet in
    // the primary's sinks: they wait, and nothing else carries them.
    let in_sinks: BTreeSet<String> = run.set.postgres_ids().into_iter().collect();
    let waiting = run
        .own_event_ids()?
        .into_iter()
        .filter(|id| !in_sinks.contains(id))
        .count();
    figure(
        &report,
        "events waiting in the relays' journals when NATS came back",
        waiting,
    );
    ensure!(waiting > 0, "no relay event waited while NATS was down");
    for region in &mut run.set.regions {
        region.nats.spawn()?;
    }
    let back = Instant::now();
    run.record_convergence(back).await?;
    run.finish().await
}

/// "relay-restart": a relay's pool and node killed and restarted; it comes
/// back on the primary's work and its events converge.
pub(super) async fn relay_restart(report: Shared) -> Result<()> {
    describe(
        &report,
        format!(
            "SIGKILL of {}'s tbg devnet, restarted at once",
            REGION_NAMES[2]
        ),
        "the relay restarted -> every region's events in the primary's sinks",
    );
    let mut run = RegionRun::start(report.clone()).await?;
    // Its miner reconnects, as any miner of a restarted pool does: not counted.
    let (_, miner) = run.miners.pop().context("a miner on the last relay")?;
    miner.stop().await;
    run.set.regions[2].pool.kill9();
    run.set.regions[2].pool.spawn()?;
    let back = Instant::now();
    run.set.wait_http(2, Duration::from_secs(60)).await?;
    run.wait_source(2, "primary", Duration::from_secs(30))
        .await?;
    figure(
        &report,
        "restarted relay on the primary's work after",
        format!("{:.2} s", secs(back.elapsed())),
    );
    run.record_convergence(back).await?;
    run.finish().await
}

/// "primary-long-outage": the primary gone for an "hour" (compressed:
/// 60 s, 5 min with CHAOS_FULL), the relays piling up events; the catch-up
/// rate once it is back.
pub(super) async fn primary_long_outage(report: Shared) -> Result<()> {
    let down_for = Duration::from_secs(if full() { 300 } else { 60 });
    describe(
        &report,
        format!(
            "the primary's host and its NATS server down {} s",
            down_for.as_secs()
        ),
        "the primary back -> every region's events in the primary's sinks",
    );
    let mut run = RegionRun::start(report.clone()).await?;
    let before: usize = run.set.postgres_ids().len();
    run.set.regions[0].pool.kill9();
    run.set.regions[0].nats.kill9();
    tokio::time::sleep(down_for).await;
    let waiting = run.own_event_ids()?.len().saturating_sub(before);
    run.set.regions[0].nats.spawn()?;
    run.set.regions[0].pool.spawn()?;
    let back = Instant::now();
    run.set.wait_http(0, Duration::from_secs(60)).await?;
    // The rate counts from the primary serving again, not its boot.
    let serving = Instant::now();
    run.record_convergence(back).await?;
    let took = serving.elapsed();
    figure(
        &report,
        "catch-up from the primary serving again",
        format!(
            "{waiting} events in {:.2} s: {:.0} events/s",
            secs(took),
            waiting as f64 / secs(took)
        ),
    );
    for index in 1..REGION_NAMES.len() {
        run.wait_source(index, "primary", Duration::from_secs(30))
            .await?;
    }
    run.finish().await
}
