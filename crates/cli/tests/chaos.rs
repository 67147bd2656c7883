//! The chaos suite: the plan's failure scenarios (and ours), each against a
//! fresh set of real processes and servers (`tbg pool`, `tbg collector`, the
//! embedded kernel node, private PostgreSQL and Redis on free ports), with
//! the fault, the recovery time and the event accounting printed.
//!
//! `scripts/chaos.sh [--list] [--only a,b] [--skip a,b]`, or as part of
//! `cargo test` (every scenario). Other libtest flags are ignored. The last
//! line is libtest's `test result: ...`; the exit code is non-zero when a
//! scenario fails. `CHAOS_REPORT=path` also writes the figures as JSON.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tbg_chaos::ledger::{accepted_shares_of, journal_events, Ledger};
use tbg_chaos::load::{load_usernames, EventLoad, MinerStats, PacedMiner, StratumConn};
use tbg_chaos::process::{ManagedProcess, RestartPolicy};
use tbg_chaos::proxy::ProxyMode;
use tbg_chaos::report::{self, ScenarioReport};
use tbg_chaos::stack::{http_get, Stack, StackOptions};
use tbg_chaos::wait_until;
use tbg_testkit::{regtest_address, AddressKind};

#[path = "chaos/block_outage.rs"]
mod block_outage;
#[path = "chaos/regions.rs"]
mod regions;

type Shared = Arc<Mutex<ScenarioReport>>;
type ScenarioFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

struct Scenario {
    name: &'static str,
    about: &'static str,
    timeout: Duration,
    run: fn(Shared) -> ScenarioFuture,
}

fn scenarios() -> Vec<Scenario> {
    let secs = Duration::from_secs;
    vec![
        Scenario {
            name: "malformed-stratum",
            about: "garbage, >64 KB line, unknown method, deep nesting, NUL, no newline, SQL/emoji workers",
            timeout: secs(120),
            run: |r| Box::pin(malformed_stratum(r)),
        },
        Scenario {
            name: "connection-flood",
            about: "500 connections from one source in bursts of 50: limited at its connect rate",
            timeout: secs(120),
            run: |r| Box::pin(connection_flood(r)),
        },
        Scenario {
            name: "redis-down",
            about: "Redis stopped 10 s",
            timeout: secs(120),
            run: |r| Box::pin(redis_down(r)),
        },
        Scenario {
            name: "postgres-down",
            about: "PostgreSQL stopped 20 s",
            timeout: secs(150),
            run: |r| Box::pin(postgres_down(r)),
        },
        Scenario {
            name: "disk-full",
            about: "journal on a 16 MB tmpfs filled up, then freed",
            timeout: secs(150),
            run: |r| Box::pin(disk_full(r)),
        },
        Scenario {
            name: "node-down",
            about: "the node's RPC stopped 30 s",
            timeout: secs(150),
            run: |r| Box::pin(node_down(r)),
        },
        Scenario {
            name: "network-partition",
            about: "pool cut from the node 30 s (blackholing proxy)",
            timeout: secs(150),
            run: |r| Box::pin(network_partition(r)),
        },
        Scenario {
            name: "block-during-outage",
            about: "a block found while the node is unreachable, then kill -9 of the pool before any node took it",
            timeout: secs(150),
            run: |r| Box::pin(block_outage::block_during_outage(r)),
        },
        Scenario {
            name: "pool-sigkill",
            about: "SIGKILL of the pool, restarted as its systemd unit says",
            timeout: secs(120),
            run: |r| Box::pin(pool_sigkill(r)),
        },
        Scenario {
            name: "backup-restore",
            about: "tbg backup, more data, database lost, tbg restore + collector --replay",
            timeout: secs(180),
            run: |r| Box::pin(backup_restore(r)),
        },
        Scenario {
            name: "clock-skew",
            about: "the pool's clock +2 h (libfaketime)",
            timeout: secs(120),
            run: |r| Box::pin(clock_skew(r)),
        },
        Scenario {
            name: "cpu-stress",
            about: "all cores busy 30 s",
            timeout: secs(150),
            run: |r| Box::pin(cpu_stress(r)),
        },
        Scenario {
            name: "event-socket-removed",
            about: "the event datagram socket file deleted, a new receiver bound",
            timeout: secs(120),
            run: |r| Box::pin(event_socket_removed(r)),
        },
        Scenario {
            name: "collector-sigkill",
            about: "kill -9 of the collector under load, restarted",
            timeout: secs(120),
            run: |r| Box::pin(collector_sigkill(r)),
        },
        Scenario {
            name: "region-primary-lost",
            about: "three regions: the primary's pool and node killed 15 s, then back",
            timeout: secs(240),
            run: |r| Box::pin(regions::primary_lost(r)),
        },
        Scenario {
            name: "region-partition",
            about: "three regions: a relay cut off the WAN 20 s (network namespaces)",
            timeout: secs(240),
            run: |r| Box::pin(regions::partition(r)),
        },
        Scenario {
            name: "nats-server-lost",
            about: "three regions: one of the three NATS servers killed 20 s",
            timeout: secs(240),
            run: |r| Box::pin(regions::nats_server_lost(r)),
        },
        Scenario {
            name: "nats-all-down",
            about: "three regions: the whole NATS cluster down 20 s (60 s with CHAOS_FULL=1)",
            timeout: secs(300),
            run: |r| Box::pin(regions::nats_all_down(r)),
        },
        Scenario {
            name: "relay-restart",
            about: "three regions: a relay's pool and node killed and restarted",
            timeout: secs(240),
            run: |r| Box::pin(regions::relay_restart(r)),
        },
        Scenario {
            name: "primary-long-outage",
            about: "three regions: the primary and its NATS server gone 60 s (300 s with CHAOS_FULL=1), catch-up",
            timeout: secs(600),
            run: |r| Box::pin(regions::primary_long_outage(r)),
        },
    ]
}

// ---------------------------------------------------------------- arguments

struct Selection {
    list: bool,
    /// `--ignored`: only ignored tests, and no scenario is ignored.
    ignored_only: bool,
    /// `--exact`: filters are whole names.
    exact: bool,
    terse: bool,
    only: Vec<String>,
    skip: Vec<String>,
    filters: Vec<String>,
}

fn split_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Our flags, libtest's filters; every other libtest flag is ignored (with
/// its value, for those that take one).
fn parse_args(args: &[String]) -> Selection {
    const LIBTEST_WITH_VALUE: [&str; 8] = [
        "--test-threads",
        "--logfile",
        "--format",
        "--color",
        "-Z",
        "--shuffle-seed",
        "--report-time",
        "--ensure-time",
    ];
    let mut selection = Selection {
        list: false,
        ignored_only: false,
        exact: false,
        terse: false,
        only: Vec::new(),
        skip: Vec::new(),
        filters: Vec::new(),
    };
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let value = |iter: &mut std::iter::Peekable<std::slice::Iter<String>>| {
            inline
                .clone()
                .or_else(|| iter.next().cloned())
                .unwrap_or_default()
        };
        match flag {
            "--list" => selection.list = true,
            "--ignored" => selection.ignored_only = true,
            "--exact" => selection.exact = true,
            "--only" => selection.only.extend(split_names(&value(&mut iter))),
            "--skip" => selection.skip.extend(split_names(&value(&mut iter))),
            "--format" => selection.terse = value(&mut iter) == "terse",
            flag if LIBTEST_WITH_VALUE.contains(&flag) => {
                if inline.is_none() && flag != "--report-time" && flag != "--ensure-time" {
                    iter.next();
                }
            }
            flag if flag.starts_with('-') => {}
            filter => selection.filters.push(filter.to_string()),
        }
    }
    selection
}

fn selected(selection: &Selection, name: &str) -> bool {
    let only = selection.only.is_empty() || selection.only.iter().any(|o| o == name);
    let skipped = selection.skip.iter().any(|s| s == name);
    let filtered = selection.filters.is_empty()
        || selection.filters.iter().any(|f| {
            if selection.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        });
    only && !skipped && filtered && !selection.ignored_only
}

// ---------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let selection = parse_args(&args);
    let all = scenarios();
    for name in selection.only.iter().chain(&selection.skip) {
        if !all.iter().any(|s| s.name == name) {
            eprintln!("unknown scenario {name:?}; --list shows them");
            std::process::exit(2);
        }
    }
    if selection.list {
        for scenario in all.iter().filter(|s| selected(&selection, s.name)) {
            if selection.terse {
                println!("{}: test", scenario.name);
            } else {
                println!(
                    "{:<22} {} (timeout {} s)",
                    scenario.name,
                    scenario.about,
                    scenario.timeout.as_secs()
                );
            }
        }
        return;
    }
    init_tracing();
    let started = Instant::now();
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| selected(&selection, s.name))
        .collect();
    let filtered_out = all.len() - chosen.len();
    println!("\nrunning {} chaos scenarios (sequentially)", chosen.len());
    let mut reports = Vec::new();
    for scenario in chosen {
        println!("\n=== {}: {}", scenario.name, scenario.about);
        let report = run_scenario(scenario);
        print!("{}", report::block(&report));
        println!("test {} ... {}", scenario.name, report.result);
        reports.push(report);
    }
    println!("\nchaos suite summary\n{}", report::table(&reports));
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        match std::fs::write(&path, report::json(&reports)) {
            Ok(()) => println!("figures written to {path}"),
            Err(error) => println!("cannot write CHAOS_REPORT {path}: {error}"),
        }
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed;
    if failed > 0 {
        println!("\nfailures:");
        for report in reports.iter().filter(|r| !r.passed()) {
            println!(
                "    {}: {}",
                report.name,
                report.failure.lines().next().unwrap_or("")
            );
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one scenario on its own runtime, with its timeout; panics and
/// timeouts become failures. Its stack is dropped (processes killed, mounts
/// and temp dirs removed) before this returns.
fn run_scenario(scenario: &Scenario) -> ScenarioReport {
    let shared: Shared = Arc::new(Mutex::new(ScenarioReport {
        name: scenario.name.to_string(),
        ..ScenarioReport::default()
    }));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome: Result<()> = runtime.block_on(async {
        let mut task = tokio::spawn((scenario.run)(shared.clone()));
        match tokio::time::timeout(scenario.timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) if join.is_panic() => {
                let panic = join.into_panic();
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                Err(anyhow!("panicked: {message}"))
            }
            Ok(Err(join)) => Err(anyhow!("task failed: {join}")),
            Err(_) => {
                task.abort();
                let _ = task.await;
                Err(anyhow!("timed out after {} s", scenario.timeout.as_secs()))
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(10));
    let mut report = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.wall_s = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => report.result = "ok".into(),
        Err(error) => {
            report.result = "FAILED".into();
            report.failure = format!("{error:#}");
        }
    }
    report
}

// ---------------------------------------------------------------- shared steps

fn tbg_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tbg"))
}

fn set(report: &Shared, f: impl FnOnce(&mut ScenarioReport)) {
    f(&mut report.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The fault, in words, and what the scenario's recovery time measures.
fn describe(report: &Shared, injected: impl Into<String>, recovery_of: &str) {
    let (injected, recovery_of) = (injected.into(), recovery_of.to_string());
    set(report, |r| {
        r.injected = injected;
        r.recovery_of = recovery_of;
    });
}

fn record_recovery(report: &Shared, recovery: Duration) {
    set(report, |r| r.recovery_s = Some(secs(recovery)));
}

/// The event accounting of a ledger, for the table.
fn record_ledger(report: &Shared, ledger: &Ledger) {
    set(report, |r| {
        r.lost = Some(ledger.lost());
        r.duplicates = Some(ledger.duplicates());
        r.journaled_events = Some(ledger.journaled);
    });
}

fn figure(report: &Shared, name: &str, value: impl std::fmt::Display) {
    let value = value.to_string();
    set(report, |r| r.figures.push((name.to_string(), value)));
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every recovery target of the plan.
const RECOVERY_TARGET: Duration = Duration::from_secs(5);

/// Checks a recovery target; a miss fails the scenario.
fn target(report: &Shared, what: &str, measured: Duration) -> Result<()> {
    let limit = RECOVERY_TARGET;
    let met = measured <= limit;
    figure(
        report,
        &format!("target {what} < {} s", limit.as_secs_f64()),
        if met { "met" } else { "MISSED" },
    );
    ensure!(
        met,
        "{what}: {:.2} s, target < {} s",
        secs(measured),
        limit.as_secs_f64()
    );
    Ok(())
}

/// A scenario's stack with its load: two paced miners finding real shares
/// and two clients whose (rejected) submits make a steady event stream.
struct Run {
    stack: Stack,
    miners: Vec<PacedMiner>,
    load: Option<EventLoad>,
    pool_pid: u32,
    report: Shared,
    next_miner: usize,
}

/// A miner's worker name, accepted and rejected shares, reject reasons.
type Acknowledged = (String, u64, u64, std::collections::BTreeMap<String, u64>);

fn miner_name(index: usize) -> String {
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    format!("{address}.chaosminer{index}")
}

impl Run {
    async fn start(report: &Shared, options: StackOptions) -> Result<Run> {
        let setup = Instant::now();
        let mut stack = Stack::start(options).await.context("starting the stack")?;
        let pool_pid = stack.pool.pid().context("the pool is not running")?;
        let mut run = Run {
            stack,
            miners: Vec::new(),
            load: None,
            pool_pid,
            report: report.clone(),
            next_miner: 0,
        };
        run.add_miner();
        run.add_miner();
        run.load = Some(EventLoad::start(
            run.stack.pool_addr,
            load_usernames(2),
            Duration::from_millis(20),
        ));
        let miners = &run.miners;
        let load = run.load.as_ref().map(|l| l.latencies.clone());
        wait_until(
            "shares accepted and load answered",
            Duration::from_secs(60),
            || {
                miners.iter().all(|m| m.stats.accepted() >= 1)
                    && load.as_ref().is_some_and(|l| l.answered() >= 50)
            },
        )
        .await
        .map_err(|e| {
            anyhow!(
                "{e}; miner errors: {:?}; pool log:\n{}",
                run.miners
                    .iter()
                    .map(|m| m.stats.last_error())
                    .collect::<Vec<_>>(),
                run.stack.pool.log_tail(15)
            )
        })?;
        figure(
            report,
            "setup",
            format!(
                "{:.1} s (node, PostgreSQL, Redis, pool, collector, load)",
                secs(setup.elapsed())
            ),
        );
        Ok(run)
    }

    fn add_miner(&mut self) -> usize {
        let index = self.next_miner;
        self.next_miner += 1;
        self.miners.push(PacedMiner::start(
            self.stack.pool_addr,
            miner_name(index),
            Duration::from_millis(250),
        ));
        self.miners.len() - 1
    }

    fn accepted(&self) -> u64 {
        self.miners.iter().map(|m| m.stats.accepted()).sum()
    }

    fn rejected(&self) -> u64 {
        self.miners.iter().map(|m| m.stats.rejected()).sum()
    }

    /// Every miner's rejects so far, by reason.
    fn reject_reasons(&self) -> std::collections::BTreeMap<String, u64> {
        let mut reasons = std::collections::BTreeMap::new();
        for miner in &self.miners {
            for (reason, count) in miner.stats.reject_reasons() {
                *reasons.entry(reason).or_insert(0) += count;
            }
        }
        reasons
    }

    fn with_pool_log(&self, error: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{error}; pool log:\n{}", self.stack.pool.log_tail(15))
    }

    fn answered(&self) -> u64 {
        self.miners
            .iter()
            .map(|m| m.stats.accepted() + m.stats.rejected())
            .sum::<u64>()
            + self.load.as_ref().map_or(0, |l| l.latencies.answered())
    }

    /// Waits until `seen` (what a miner saw, at or after `since`) holds at
    /// any miner; the time from `since` to the earliest.
    async fn wait_earliest(
        &self,
        what: &str,
        since: Instant,
        timeout: Duration,
        seen: impl Fn(&MinerStats) -> Option<Instant>,
    ) -> Result<Duration> {
        let earliest = || self.miners.iter().filter_map(|m| seen(&m.stats)).min();
        wait_until(what, timeout, || earliest().is_some())
            .await
            .map_err(|e| self.with_pool_log(e))?;
        Ok(earliest()
            .context(what.to_string())?
            .saturating_duration_since(since))
    }

    async fn wait_first_accept(&self, since: Instant, timeout: Duration) -> Result<Duration> {
        self.wait_earliest("an accepted share", since, timeout, |stats| {
            stats.first_accept_after(since)
        })
        .await
    }

    /// Adds a miner after an injection ended; the time from `since` to its
    /// first accepted share.
    async fn fresh_miner_recovery(&mut self, what: &str, since: Instant) -> Result<Duration> {
        let fresh = self.add_miner();
        let stats = self.miners[fresh].stats.clone();
        wait_until(what, Duration::from_secs(30), || stats.accepted() >= 1).await?;
        Ok(stats
            .first_accept_after(since)
            .context("an accepted share")?
            .saturating_duration_since(since))
    }

    /// The tip the miners currently work on.
    fn prevhash(&self) -> Option<String> {
        self.miners.iter().find_map(|m| m.stats.last_prevhash())
    }

    /// Fault cleared -> the first job on a new tip at any miner: the pool
    /// reached the node (block submitted, new template fetched and sent).
    async fn wait_new_tip(
        &self,
        since: Instant,
        prevhash: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        self.wait_earliest("a job on a new tip", since, timeout, |stats| {
            stats.first_new_tip_after(since, prevhash)
        })
        .await
    }

    /// Stops the event load and the miners; what each miner was answered:
    /// (worker name, accepted, rejected, reject reasons).
    async fn stop_load(&mut self) -> Vec<Acknowledged> {
        if let Some(load) = self.load.take() {
            load.stop().await;
        }
        let mut acknowledged = Vec::new();
        for miner in self.miners.drain(..) {
            let marker = miner
                .username
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            let stats = miner.stats.clone();
            miner.stop().await;
            acknowledged.push((
                marker,
                stats.accepted(),
                stats.rejected(),
                stats.reject_reasons(),
            ));
        }
        acknowledged
    }

    fn alive(&mut self) -> Result<()> {
        self.stack
            .assert_pool_alive(self.pool_pid)
            .map_err(|e| anyhow!("{e}"))
    }

    /// Stops the load, waits for the sinks, fills the accounting, checks
    /// 0 lost / 0 duplicated and that every share a miner was told is
    /// accepted is in the journal; stops the stack.
    async fn finish(mut self, expected_restarts: usize) -> Result<()> {
        let report = self.report.clone();
        let acknowledged = self.stop_load().await;
        let restarts = self.stack.pool.restarts();
        set(&report, |r| r.pool_restarts = Some(restarts));
        if !self.stack.pool.is_running() {
            bail!(
                "the pool is not running at the end ({:?}); log:\n{}",
                self.stack.pool.last_exit(),
                self.stack.pool.log_tail(30)
            );
        }
        // Disconnect events of the stopped miners are journaled a moment later.
        let mut last = self.stack.journal_last_seq();
        let mut stable_since = Instant::now();
        let quiet = Instant::now();
        while stable_since.elapsed() < Duration::from_millis(700)
            && quiet.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.stack.journal_last_seq();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        let (catch_up, ledger) = self
            .stack
            .settled_ledger(Duration::from_secs(60))
            .await
            .map_err(|e| anyhow!("{e}; collector log:\n{}", self.stack.collector.log_tail(15)))?;
        figure(
            &report,
            "sinks caught up after the load stopped",
            format!("{:.2} s", secs(catch_up)),
        );
        record_ledger(&report, &ledger);
        figure(
            &report,
            "stores",
            format!(
                "journal {}, PostgreSQL {}, Redis streams {} (lost pg {} / redis {}, dup journal {} / pg {} / redis {}, unknown {}, in flight {})",
                ledger.journaled,
                ledger.in_postgres,
                ledger.in_redis,
                ledger.lost_postgres,
                ledger.lost_redis,
                ledger.dup_journal,
                ledger.dup_postgres,
                ledger.dup_redis,
                ledger.unknown,
                ledger.in_flight
            ),
        );
        let events = journal_events(&self.stack.journal_path)?;
        let mut unjournaled = 0;
        let mut shares = Vec::new();
        for (marker, accepted, rejected, reasons) in &acknowledged {
            let journaled = accepted_shares_of(&events, marker);
            unjournaled += (*accepted as usize).saturating_sub(journaled);
            shares.push(format!("{marker}: {accepted} accepted ({journaled} journaled), {rejected} rejected {reasons:?}"));
        }
        figure(&report, "miners", shares.join("; "));
        ensure!(ledger.journaled > 0, "nothing was journaled");
        ensure!(
            unjournaled == 0,
            "{unjournaled} shares were acknowledged as accepted but are not in the journal"
        );
        ensure!(
            ledger.lost() == 0 && ledger.duplicates() == 0 && ledger.unknown == 0,
            "{} lost, {} duplicated, {} unknown; e.g. {:?}",
            ledger.lost(),
            ledger.duplicates(),
            ledger.unknown,
            ledger.examples
        );
        ensure!(
            restarts == expected_restarts,
            "{restarts} pool restarts, expected {expected_restarts}"
        );
        for (name, log) in [
            ("pool", self.stack.pool.log_text()),
            ("collector", self.stack.collector.log_text()),
        ] {
            ensure!(!log.contains("panicked"), "the {name} panicked:\n{log}");
        }
        self.stack.shutdown().await;
        Ok(())
    }
}

fn options() -> StackOptions {
    StackOptions {
        tbg: tbg_binary(),
        ..StackOptions::default()
    }
}

async fn health(stack: &Stack) -> String {
    let Some(addr) = stack.metrics_addr() else {
        return "no metrics address logged".into();
    };
    match http_get(addr, "/health", Duration::from_secs(3)).await {
        Ok((code, body)) => format!("{code} {}", body.trim()),
        Err(error) => format!("no answer: {error}"),
    }
}

async fn metrics_up(stack: &Stack) -> Result<()> {
    let addr = stack
        .metrics_addr()
        .context("no metrics address in the pool log")?;
    let (code, body) = http_get(addr, "/metrics", Duration::from_secs(3))
        .await
        .map_err(|e| anyhow!(e))?;
    ensure!(
        code == 200 && body.contains("ckpool_"),
        "/metrics answered {code}"
    );
    Ok(())
}

// ---------------------------------------------------------------- scenarios

/// Sends `payload` on a fresh connection and reads what comes back (up to
/// `wait`): the answer text and whether the pool closed the connection.
async fn send_malformed(
    pool: SocketAddr,
    payload: &[u8],
    close_after: bool,
    wait: Duration,
) -> Result<(String, bool)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(pool).await?;
    // The pool may close mid-write on an oversize line: that is an answer too.
    let _ = stream.write_all(payload).await;
    if close_after {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + wait;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&answer)
        .chars()
        .take(160)
        .collect::<String>();
    Ok((text.replace('\n', " | "), closed))
}

async fn malformed_stratum(report: Shared) -> Result<()> {
    describe(
        &report,
        "binary garbage (4 KB), a 70 KB line, an unknown method, JSON nested 5000 deep, NUL bytes, a request without newline then close, SQL and emoji worker names",
        "end of the injection -> first accepted share of a miner connecting afterwards",
    );
    let mut run = Run::start(&report, options()).await?;
    let pool = run.stack.pool_addr;
    let mut garbage = Vec::with_capacity(4096);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        // xorshift: reproducible bytes across the whole range, newlines included.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        garbage.push((x & 0xff) as u8);
    }
    garbage.push(b'\n');
    let mut long_line = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"".to_vec();
    long_line.resize(long_line.len() + 70_000, b'a');
    long_line.extend_from_slice(b"\"]}\n");
    let deep = format!(
        "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":{}{}}}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("binary garbage", garbage, false),
        ("70 KB line", long_line, false),
        (
            "unknown method",
            b"{\"id\":7,\"method\":\"mining.frobnicate\",\"params\":[]}\n".to_vec(),
            false,
        ),
        ("nesting 5000 deep", deep.into_bytes(), false),
        (
            "NUL bytes",
            b"\0\0\0\0\n{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"a\0b\"]}\n"
                .to_vec(),
            false,
        ),
        (
            "no newline, then close",
            b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}".to_vec(),
            true,
        ),
    ];
    for (name, payload, close) in cases {
        let (answer, closed) =
            send_malformed(pool, &payload, close, Duration::from_millis(1500)).await?;
        figure(
            &report,
            name,
            format!(
                "{} ; {}",
                if closed {
                    "connection closed"
                } else {
                    "connection kept"
                },
                if answer.is_empty() {
                    "no answer".to_string()
                } else {
                    answer
                }
            ),
        );
        run.alive()?;
    }
    // Worker names a careless pool would paste into SQL or logs.
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let hostile = [
        format!("{address}.x'); DROP TABLE mining_events;--"),
        format!("{address}.⛏️🚀矿工"),
    ];
    for username in &hostile {
        let outcome = async {
            let mut conn = StratumConn::connect(pool, Duration::from_secs(5)).await?;
            conn.handshake(username, Duration::from_secs(5)).await?;
            let answer = conn
                .request(
                    "mining.submit",
                    serde_json::json!([
                        username,
                        "00000000deadbeef",
                        "0000000000000000",
                        "60000000",
                        "00000001"
                    ]),
                    Duration::from_secs(5),
                )
                .await?;
            Ok::<String, String>(format!("authorized; submit answered ({})", answer.reason()))
        }
        .await
        .unwrap_or_else(|e| format!("refused: {e}"));
        figure(&report, &format!("worker {username:?}"), outcome);
        run.alive()?;
    }
    let injection_end = Instant::now();
    let recovery = run
        .fresh_miner_recovery("a fresh miner's accepted share", injection_end)
        .await?;
    record_recovery(&report, recovery);
    run.alive()?;
    figure(&report, "same pool pid", run.pool_pid);
    run.finish(0).await?;
    Ok(())
}

async fn connection_flood(report: Shared) -> Result<()> {
    describe(
        &report,
        "500 TCP connections from one source (127.0.0.2) in 10 bursts of 50 (100 ms apart), \
         each asking for a subscription, served ones held open; the suite's miners \
         (127.0.0.1, allow-listed) keep mining",
        "end of the flood -> first accepted share of a miner connecting then",
    );
    let mut run = Run::start(&report, options()).await?;
    let pool = run.stack.pool_addr;
    let flood_start = Instant::now();
    let accepted_before = run.accepted();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let burst = (0..50).map(|_| flood_connection(pool));
        for result in futures_join_all(burst).await {
            match result {
                Some(stream) => held.push(stream),
                None => refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flood_end = Instant::now();
    figure(
        &report,
        "flood",
        format!(
            "{} served, {refused} refused, in {:.2} s",
            held.len(),
            secs(flood_end - flood_start)
        ),
    );
    run.alive()?;
    let recovery = run
        .fresh_miner_recovery("a new miner's accepted share during the flood", flood_end)
        .await?;
    record_recovery(&report, recovery);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = run.accepted() - accepted_before;
    figure(
        &report,
        "shares accepted for the normal miners during and after the flood",
        during,
    );
    ensure!(during > 0, "no share accepted during the flood");
    // The default limits: a burst of 10 connections a minute from one
    // source, the rest refused at once. Refusals are not strikes (a farm
    // reconnecting at once is served over time), so no ban.
    ensure!(
        (1..=12).contains(&held.len()) && held.len() + refused == 500,
        "{} of 500 flood connections served, {refused} refused",
        held.len()
    );
    let addr = run
        .stack
        .metrics_addr()
        .context("no metrics address in the pool log")?;
    let (_, metrics) = http_get(addr, "/metrics", Duration::from_secs(3))
        .await
        .map_err(|e| anyhow!(e))?;
    let bans = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ckpool_ip_bans_total "))
        .unwrap_or("none")
        .to_string();
    figure(&report, "bans (ckpool_ip_bans_total)", &bans);
    ensure!(bans == "0", "ckpool_ip_bans_total {bans}, expected 0");
    drop(held);
    run.alive()?;
    run.finish(0).await
}

/// One flood connection from 127.0.0.2: `Some` when the pool answered its
/// subscribe, `None` when it closed the connection unanswered.
async fn flood_connection(pool: SocketAddr) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).ok()?;
    let mut stream = socket.connect(pool).await.ok()?;
    stream
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .ok()?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
        Ok(Ok(1)) => Some(stream),
        _ => None,
    }
}

/// `futures::future::join_all` without the dependency.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// Storage outage: both cursors before, the fault, then the time until the
/// sink stores a new event and until it caught up.
async fn sink_recovery(
    run: &Run,
    report: &Shared,
    cursor: impl Fn(&Stack) -> u64,
    before: u64,
    cleared: Instant,
) -> Result<()> {
    let journal_at_clear = run.stack.journal_last_seq();
    wait_until(
        "the sink to store a new event",
        Duration::from_secs(30),
        || cursor(&run.stack) > before,
    )
    .await
    .map_err(|e| anyhow!("{e}; collector log:\n{}", run.stack.collector.log_tail(20)))?;
    let first = cleared.elapsed();
    record_recovery(report, first);
    let caught_up = wait_until("the sink to catch up", Duration::from_secs(60), || {
        cursor(&run.stack) >= journal_at_clear
    })
    .await?;
    figure(
        report,
        "backlog",
        format!(
            "{} events journaled during the outage, caught up {:.2} s after the restart",
            journal_at_clear.saturating_sub(before),
            secs(caught_up.max(first))
        ),
    );
    target(report, "first event stored after the fault cleared", first)
}

/// After a store's outage: the pool and the collector still run; the shares
/// accepted meanwhile (a figure).
fn survived_outage(
    run: &mut Run,
    report: &Shared,
    store: &str,
    accepted_before: u64,
) -> Result<u64> {
    run.alive()?;
    ensure!(
        run.stack.collector.is_running(),
        "the collector died: {}",
        run.stack.collector.log_tail(20)
    );
    let during = run.accepted() - accepted_before;
    figure(
        report,
        &format!("shares accepted while {store} was down"),
        during,
    );
    Ok(during)
}

async fn redis_down(report: Shared) -> Result<()> {
    describe(
        &report,
        "redis-server SIGKILLed, down 10 s, restarted on the same port (append-only file)",
        "Redis restarted -> first new event stored in Redis by the collector",
    );
    let mut run = Run::start(&report, options()).await?;
    let before = run.stack.redis_cursor();
    let accepted_before = run.accepted();
    run.stack.redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = survived_outage(&mut run, &report, "Redis", accepted_before)?;
    ensure!(during > 0, "mining stopped while Redis was down");
    tokio::task::block_in_place(|| run.stack.redis.restart());
    let cleared = Instant::now();
    sink_recovery(&run, &report, Stack::redis_cursor, before, cleared).await?;
    run.finish(0).await
}

async fn postgres_down(report: Shared) -> Result<()> {
    describe(
        &report,
        "PostgreSQL stopped (pg_ctl -m immediate) 20 s, then started",
        "PostgreSQL started -> first new event stored in PostgreSQL by the collector",
    );
    let mut run = Run::start(&report, options()).await?;
    let before = run.stack.postgres_cursor();
    let accepted_before = run.accepted();
    let journal_before = run.stack.journal_last_seq();
    tokio::task::block_in_place(|| run.stack.pg.stop_immediate());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = survived_outage(&mut run, &report, "PostgreSQL", accepted_before)?;
    figure(
        &report,
        "events journaled while PostgreSQL was down",
        run.stack.journal_last_seq() - journal_before,
    );
    ensure!(during > 0, "mining stopped while PostgreSQL was down");
    tokio::task::block_in_place(|| run.stack.pg.pg_ctl_start());
    let cleared = Instant::now();
    sink_recovery(&run, &report, Stack::postgres_cursor, before, cleared).await?;
    run.finish(0).await
}

/// A tmpfs mounted for one scenario, unmounted on drop (also on failure).
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size: &str) -> Result<TmpfsMount> {
        std::fs::create_dir_all(path)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        ensure!(
            output.status.success(),
            "cannot mount a tmpfs at {} (needs root / CAP_SYS_ADMIN): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Writes zeros until the file system is full; the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let Ok(mut file) = std::fs::File::create(path) else {
        return 0;
    };
    let chunk = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

async fn disk_full(report: Shared) -> Result<()> {
    describe(
        &report,
        "journal directory on a 16 MB tmpfs (journal.stage_mb = 1 so the preallocated staging ring fits); a filler file takes every free byte for 15 s, then is deleted",
        "filler deleted -> first accepted share",
    );
    let mount_dir = tempfile::Builder::new()
        .prefix("tbg-chaos-disk-")
        .tempdir()?;
    let mount = TmpfsMount::mount(&mount_dir.path().join("journal"), "16m")?;
    let mut run = Run::start(
        &report,
        StackOptions {
            journal_dir: Some(mount.path.clone()),
            journal_extra: "stage_mb = 1".into(),
            ..options()
        },
    )
    .await?;
    let filler = mount.path.join("filler");
    let journal_before = run.stack.journal_last_seq();
    let filled = tokio::task::spawn_blocking({
        let filler = filler.clone();
        move || fill(&filler)
    })
    .await?;
    let full_at = Instant::now();
    figure(
        &report,
        "filler",
        format!("{:.1} MB written until ENOSPC", filled as f64 / 1e6),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health_early = health(&run.stack).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let health_late = health(&run.stack).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.alive()?;
    let accepted_full = run
        .miners
        .iter()
        .map(|m| m.stats.accepted_since(full_at))
        .sum::<usize>();
    let reasons = run.reject_reasons();
    figure(&report, "/health 3 s after the disk filled", &health_early);
    figure(&report, "/health 14 s after the disk filled", &health_late);
    figure(
        &report,
        "while full",
        format!("{accepted_full} shares accepted; miners' rejects so far {reasons:?}"),
    );
    figure(
        &report,
        "events in the SQLite journal while full",
        run.stack.journal_last_seq().saturating_sub(journal_before),
    );
    std::fs::remove_file(&filler)?;
    let cleared = Instant::now();
    let recovery = run
        .wait_first_accept(cleared, Duration::from_secs(30))
        .await?;
    record_recovery(&report, recovery);
    let journal_at_clear = run.stack.journal_last_seq();
    let resumed = wait_until("new events in the journal", Duration::from_secs(30), || {
        run.stack.journal_last_seq() > journal_at_clear
    })
    .await?;
    figure(
        &report,
        "journal writes resumed",
        format!("{:.2} s after the filler was deleted", secs(resumed)),
    );
    figure_ready_again(&report, &run.stack).await;
    run.alive()?;
    target(
        &report,
        "first accepted share after space is back",
        recovery,
    )?;
    let result = run.finish(0).await;
    drop(mount);
    result
}

async fn node_down(report: Shared) -> Result<()> {
    describe(
        &report,
        "the node's JSON-RPC listener and connections closed for 30 s (the chain keeps its state)",
        "RPC back -> first job on a new tip at a miner (block submitted, fresh template)",
    );
    let mut run = Run::start(&report, options()).await?;
    let answered_before = run.answered();
    let accepted_before = run.accepted();
    run.stack.node().stop_rpc().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let health_down = health(&run.stack).await;
    metrics_up(&run.stack)
        .await
        .context("metrics while the node is down")?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    run.alive()?;
    let height = run.stack.node().block_count();
    figure(&report, "/health while down", health_down);
    figure(
        &report,
        "while down",
        format!(
            "{} submits answered, {} shares accepted on the last work",
            run.answered() - answered_before,
            run.accepted() - accepted_before
        ),
    );
    ensure!(
        run.accepted() > accepted_before,
        "no share accepted on the last work while the node was down"
    );
    let prevhash = run.prevhash().context("no job seen")?;
    run.stack
        .node()
        .start_rpc()
        .await
        .map_err(|e| anyhow!("restarting the node's RPC: {e}"))?;
    let cleared = Instant::now();
    let recovery = run
        .wait_new_tip(cleared, &prevhash, Duration::from_secs(30))
        .await?;
    record_recovery(&report, recovery);
    figure(
        &report,
        "node height",
        format!(
            "{height} during the outage, {} after",
            run.stack.node().block_count()
        ),
    );
    figure_ready_again(&report, &run.stack).await;
    let first_share = run
        .wait_first_accept(cleared, Duration::from_secs(30))
        .await?;
    figure(
        &report,
        "first accepted share after",
        format!("{:.2} s", secs(first_share)),
    );
    run.alive()?;
    target(&report, "fresh template after the node is back", recovery)?;
    run.finish(0).await
}

/// Waits for `/health` to answer 200 again and records after how long.
async fn figure_ready_again(report: &Shared, stack: &Stack) {
    let ready = wait_until_ready(stack, Duration::from_secs(30)).await;
    figure(
        report,
        "/health ready again",
        ready.map_or_else(|e| e, |d| format!("{:.2} s after", secs(d))),
    );
}

async fn wait_until_ready(
    stack: &Stack,
    timeout: Duration,
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if health(stack).await.starts_with("200") {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "not ready within {} s: {}",
        timeout.as_secs(),
        health(stack).await
    ))
}

async fn network_partition(report: Shared) -> Result<()> {
    describe(
        &report,
        "the pool reaches the node through a TCP proxy; the proxy blackholes (accepts, holds, never forwards) for 30 s",
        "partition ends -> first job on a new tip at a miner (block through the healed network, fresh template)",
    );
    let mut run = Run::start(
        &report,
        StackOptions {
            node_via_proxy: true,
            ..options()
        },
    )
    .await?;
    let accepted_before = run.accepted();
    let proxy = run.stack.proxy.as_ref().context("proxy")?;
    proxy.set_mode(ProxyMode::Blackhole);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let health_cut = health(&run.stack).await;
    tokio::time::sleep(Duration::from_secs(19)).await;
    let health_late = health(&run.stack).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.alive()?;
    metrics_up(&run.stack).await?;
    let held = run.stack.proxy.as_ref().map_or(0, |p| p.open_connections());
    figure(&report, "/health 10 s into the partition", health_cut);
    figure(&report, "/health 29 s into the partition", health_late);
    figure(&report, "connections held by the proxy", held);
    figure(
        &report,
        "shares accepted during the partition",
        run.accepted() - accepted_before,
    );
    let prevhash = run.prevhash().context("no job seen")?;
    run.stack
        .proxy
        .as_ref()
        .context("proxy")?
        .set_mode(ProxyMode::Pass);
    let cleared = Instant::now();
    let recovery = run
        .wait_new_tip(cleared, &prevhash, Duration::from_secs(30))
        .await?;
    record_recovery(&report, recovery);
    figure_ready_again(&report, &run.stack).await;
    run.alive()?;
    target(&report, "recovery after the partition", recovery)?;
    run.finish(0).await
}

async fn pool_sigkill(report: Shared) -> Result<()> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/tbg-pool.service");
    let policy = RestartPolicy::from_unit_file(&unit)?;
    describe(
        &report,
        format!(
            "SIGKILL to the pool; the harness is the supervisor with the unit's policy (Restart={}, RestartSec={} ms, from deploy/systemd/tbg-pool.service); the miners reconnect by themselves (the harness's paced miners: tbg_miner::run_miner has no reconnect loop)",
            policy.restart,
            policy.restart_sec.as_millis()
        ),
        "SIGKILL -> first accepted share on a connection opened after the kill",
    );
    let mut run = Run::start(&report, options()).await?;
    let killed = Instant::now();
    run.stack.pool.signal("KILL")?;
    let new_pid = run
        .stack
        .pool
        .restart_on_exit(&policy, Duration::from_secs(5))
        .await?;
    let restarted = killed.elapsed();
    run.stack.wait_pool_up(Duration::from_secs(30)).await?;
    let listening = killed.elapsed();
    let recovery = run
        .wait_earliest(
            "an accepted share on a new connection",
            killed,
            Duration::from_secs(30),
            |stats| stats.first_accept_on_connection_after(killed),
        )
        .await?;
    record_recovery(&report, recovery);
    figure(
        &report,
        "timeline",
        format!(
            "pid {} killed; restarted as {new_pid} at {:.2} s; seen listening at {:.2} s (20 ms polls); first accepted share on a new connection at {:.2} s",
            run.pool_pid,
            secs(restarted),
            secs(listening),
            secs(recovery)
        ),
    );
    run.pool_pid = new_pid;
    metrics_up(&run.stack)
        .await
        .context("metrics after the restart")?;
    let reconnects: u64 = run
        .miners
        .iter()
        .map(|m| m.stats.connects.load(Ordering::Relaxed))
        .sum();
    figure(&report, "miner connections (2 before the kill)", reconnects);
    target(&report, "kill -> first accepted share", recovery)?;
    run.finish(1).await
}

async fn backup_restore(report: Shared) -> Result<()> {
    describe(
        &report,
        "collector with the default batch_wait_ms = 1000; tbg backup (pg_dump) started just after a whole second, under load; 5 s more events; the database's schema dropped (lost); tbg restore --confirm into a new database; tbg collector --replay --from <the seq:N restore prints>",
        "replay start -> every journaled event in the restored database",
    );
    // The collector as deployed: batches wait up to 1 s (the default).
    let mut run = Run::start(
        &report,
        StackOptions {
            collector_batch_wait_ms: Some(1000),
            ..options()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let backups = run.stack.dir().join("backups");
    let port = run.stack.pg.port;
    let source_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=5");
    let restored_url =
        format!("postgres://postgres@127.0.0.1:{port}/tbg_restored?connect_timeout=5");
    // The worst moment for the replay point: just after a whole second
    // (the manifest's created_at has 1 s resolution), with events in flight.
    let into_second = unix_now().fract();
    tokio::time::sleep(Duration::from_secs_f64(1.0 - into_second)).await;
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run.stack.run_tbg(&[
            "backup",
            "--backup-dir",
            &backups.to_string_lossy(),
            "--database-url",
            &source_url,
        ])
    })?;
    ensure!(ok, "tbg backup failed: {stderr}");
    figure(&report, "backup", stdout.lines().next().unwrap_or_default());
    let dump = std::fs::read_dir(backups.join("daily"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "dump"))
        .context("no .dump in backups/daily")?;
    let rows_at_backup = run.stack.pg.psql("SELECT count(*) FROM mining_events");
    // Changes after the backup: these exist only in the journal.
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.stop_load().await;
    run.stack.wait_caught_up(Duration::from_secs(60)).await?;
    run.stack.collector.terminate(Duration::from_secs(5));
    let rows_before_loss = run.stack.pg.psql("SELECT count(*) FROM mining_events");
    run.stack
        .pg
        .psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;");
    figure(
        &report,
        "database",
        format!("{rows_at_backup} events at the backup, {rows_before_loss} when it was lost (schema dropped)"),
    );
    let dump_arg = dump.to_string_lossy().to_string();
    let (ok, preview, stderr) = tokio::task::block_in_place(|| {
        run.stack
            .run_tbg(&["restore", &dump_arg, "--database-url", &restored_url])
    })?;
    ensure!(
        ok && preview.contains("nothing changed"),
        "restore preview: {preview}{stderr}"
    );
    let (ok, restored, stderr) = tokio::task::block_in_place(|| {
        run.stack.run_tbg(&[
            "restore",
            &dump_arg,
            "--database-url",
            &restored_url,
            "--confirm",
        ])
    })?;
    ensure!(ok, "tbg restore --confirm failed: {stderr}");
    let from = restored
        .split("--replay --from ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context(format!("restore printed no replay point: {restored}"))?
        .trim_matches(|c| c == '\'' || c == '"' || c == '`')
        .to_string();
    figure(
        &report,
        "restore",
        format!("into tbg_restored; it says: tbg collector --replay --from {from}"),
    );
    // The collector, pointed at the restored database, brings it forward.
    let config = std::fs::read_to_string(&run.stack.config_path)?;
    let restored_conninfo =
        format!("host=127.0.0.1 port={port} user=postgres dbname=tbg_restored connect_timeout=5");
    let config = config.replace(&run.stack.pg.conninfo(), &restored_conninfo);
    let replay_config = run.stack.dir().join("replay.toml");
    std::fs::write(&replay_config, config)?;
    let replay_config = replay_config.to_string_lossy().to_string();
    let mut replay = ManagedProcess::new(
        "collector-replay",
        &tbg_binary(),
        &[
            "collector",
            "--config",
            &replay_config,
            "--replay",
            "--from",
            &from,
        ],
        run.stack.dir(),
    );
    let replay_started = Instant::now();
    replay.spawn()?;
    let last_seq = run.stack.journal_last_seq();
    let restored_cursor = || {
        psql(
            &restored_url,
            "SELECT seq FROM collector_cursor WHERE sink = 'postgres'",
        )
        .ok()
        .and_then(|out| out.trim().parse::<u64>().ok())
        .unwrap_or(0)
    };
    wait_until(
        "the replay to reach the journal's end",
        Duration::from_secs(90),
        || restored_cursor() >= last_seq,
    )
    .await
    .map_err(|e| anyhow!("{e}; replay log:\n{}", replay.log_tail(20)))?;
    let replayed_in = replay_started.elapsed();
    record_recovery(&report, replayed_in);
    replay.terminate(Duration::from_secs(5));
    let journaled = journal_events(&run.stack.journal_path)?;
    let journal: Vec<String> = journaled.iter().map(|e| e.id.clone()).collect();
    let restored_ids: Vec<String> = psql(&restored_url, "SELECT event_id FROM mining_events")?
        .lines()
        .map(str::to_string)
        .collect();
    let redis_ids = tbg_chaos::ledger::redis_stream_ids(&run.stack.redis.url())?;
    let ledger = Ledger::compare(&journal, &restored_ids, &redis_ids);
    let present =
        100.0 * (journal.len() - ledger.lost_postgres) as f64 / journal.len().max(1) as f64;
    figure(
        &report,
        "restored database",
        format!("{} of {} journaled events present ({present:.1} %), {} duplicated; Redis {} lost, {} duplicated", journal.len() - ledger.lost_postgres, journal.len(), ledger.dup_postgres, ledger.lost_redis, ledger.dup_redis),
    );
    if ledger.lost_postgres > 0 {
        // When were the missing events created, against the replay point?
        let restored: std::collections::BTreeSet<&String> = restored_ids.iter().collect();
        let missing: Vec<String> = journaled
            .iter()
            .filter(|e| !restored.contains(&e.id))
            .map(|e| format!("seq {} at {}", e.seq, utc_time_of_day(e.ts)))
            .take(8)
            .collect();
        figure(
            &report,
            "missing from the restored database",
            format!("{} (replay point --from {from})", missing.join(", ")),
        );
    }
    record_ledger(&report, &ledger);
    let restarts = run.stack.pool.restarts();
    set(&report, |r| r.pool_restarts = Some(restarts));
    ensure!(
        ledger.lost() == 0 && ledger.duplicates() == 0,
        "after restore + replay: {} lost, {} duplicated, e.g. {:?}",
        ledger.lost(),
        ledger.duplicates(),
        ledger.examples
    );
    run.alive()?;
    run.stack.shutdown().await;
    Ok(())
}

/// `psql -At` against a database URL: its output.
fn psql(database_url: &str, sql: &str) -> Result<String> {
    let output = Command::new("psql")
        .args(["-At", "-d", database_url, "-c", sql])
        .output()
        .context("running psql")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `HH:MM:SS.mmm` UTC of a unix time.
fn utc_time_of_day(ts: f64) -> String {
    let millis = (ts * 1000.0).round() as u64 % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

async fn clock_skew(report: Shared) -> Result<()> {
    set(&report, |r| {
        r.injected = "the pool process under libfaketime: FAKETIME=+2h, FAKETIME_DONT_FAKE_MONOTONIC=1 (LD_PRELOAD); node, miners and collector on the real clock".into();
    });
    let library = libfaketime()
        .context("libfaketime not found: install the faketime package (scripts/setup.sh does)")?;
    let mut run = Run::start(
        &report,
        StackOptions {
            pool_env: vec![
                ("LD_PRELOAD".into(), library.to_string_lossy().into()),
                ("FAKETIME".into(), "+2h".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ],
            ..options()
        },
    )
    .await?;
    let mut probe = StratumConn::connect(run.stack.pool_addr, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow!(e))?;
    probe
        .handshake(&miner_name(99), Duration::from_secs(5))
        .await
        .map_err(|e| anyhow!(e))?;
    if let Some(job) = &probe.job {
        figure(
            &report,
            "job ntime vs real clock",
            format!("{:+.0} s", f64::from(job.ntime) - unix_now()),
        );
    }
    drop(probe);
    let height = run.stack.node().block_count();
    let accepted_before = run.accepted();
    let rejected_before = run.rejected();
    tokio::time::sleep(Duration::from_secs(10)).await;
    run.alive()?;
    metrics_up(&run.stack).await?;
    let accepted = run.accepted() - accepted_before;
    let rejected = run.rejected() - rejected_before;
    let blocks = run.stack.node().block_count() - height;
    let reasons = run.reject_reasons();
    figure(
        &report,
        "in 10 s",
        format!("{accepted} shares accepted, {rejected} rejected {reasons:?}"),
    );
    figure(&report, "blocks accepted by the node (real clock)", blocks);
    let events = journal_events(&run.stack.journal_path)?;
    if let Some(last) = events.last() {
        figure(
            &report,
            "event timestamps vs real clock",
            format!("{:+.0} s", last.ts - unix_now()),
        );
    }
    let log = run.stack.pool.log_text();
    let node_refusals = log
        .lines()
        .filter(|l| l.contains("time-too-new") || l.contains("rejected by"))
        .count();
    figure(
        &report,
        "pool log lines about blocks refused by the node",
        node_refusals,
    );
    figure(&report, "/health", health(&run.stack).await);
    ensure!(
        run.answered() > 0,
        "no submit answered under the skewed clock"
    );
    run.finish(0).await
}

async fn cpu_stress(report: Shared) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    describe(
        &report,
        format!("{cores} busy-looping threads (one per core) for 30 s, in the harness"),
        "stress ends -> end of the first 1 s window whose submit-answer p99 is within 2x the pre-stress p99",
    );
    let mut run = Run::start(&report, options()).await?;
    let latencies = run.load.as_ref().context("load")?.latencies.clone();
    let baseline_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline_to = Instant::now();
    let p99_before = latencies
        .quantile(baseline_from, baseline_to, 0.99)
        .context("no baseline samples")?;
    let stop = Arc::new(AtomicBool::new(false));
    let spins = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            let spins = spins.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                    spins.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let stress_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let cleared = Instant::now();
    let p99_during = latencies.quantile(stress_from, cleared, 0.99);
    let answered_during = latencies.count_between(stress_from, cleared);
    run.alive()?;
    // Sub-millisecond p99s are scheduler noise: the threshold is at least 1 ms.
    let threshold = (p99_before * 2).max(Duration::from_millis(1));
    let mut recovery = None;
    let mut window_end = cleared + Duration::from_secs(1);
    while window_end < cleared + Duration::from_secs(15) {
        let now = Instant::now();
        if now < window_end {
            tokio::time::sleep(window_end - now).await;
        }
        if let Some(p99) = latencies.quantile(window_end - Duration::from_secs(1), window_end, 0.99)
        {
            if p99 <= threshold {
                recovery = Some(window_end - cleared);
                break;
            }
        }
        window_end += Duration::from_millis(250);
    }
    figure(
        &report,
        "submit -> answer p99",
        format!(
            "before {:.2} ms; during {} ({answered_during} answers); threshold {:.2} ms",
            secs(p99_before) * 1000.0,
            p99_during.map_or("-".into(), |d| format!("{:.2} ms", secs(d) * 1000.0)),
            secs(threshold) * 1000.0
        ),
    );
    let recovery = recovery.context("latency did not come back within 15 s")?;
    record_recovery(&report, recovery);
    ensure!(answered_during > 0, "no submit answered during the stress");
    target(&report, "latency back after the stress", recovery)?;
    run.finish(0).await
}

async fn event_socket_removed(report: Shared) -> Result<()> {
    describe(
        &report,
        "a receiver bound on events.socket_path; the socket file deleted for 3 s; a new receiver bound at the same path",
        "new receiver bound -> first event datagram on it",
    );
    let mut run = Run::start(&report, options()).await?;
    let path = run.stack.socket_path.clone();
    let first = tokio::net::UnixDatagram::bind(&path)?;
    let mut buffer = vec![0u8; 65536];
    let received = tokio::time::timeout(Duration::from_secs(10), first.recv(&mut buffer))
        .await
        .context("no event datagram on the first receiver")??;
    ensure!(
        serde_json::from_slice::<serde_json::Value>(&buffer[..received])
            .is_ok_and(|v| v.get("id").is_some()),
        "the datagram is not an event"
    );
    std::fs::remove_file(&path)?;
    drop(first);
    let journal_before = run.stack.journal_last_seq();
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.alive()?;
    figure(
        &report,
        "events journaled while no socket existed",
        run.stack.journal_last_seq() - journal_before,
    );
    figure(
        &report,
        "/health while the socket was gone",
        health(&run.stack).await,
    );
    let second = tokio::net::UnixDatagram::bind(&path)?;
    let cleared = Instant::now();
    let received = tokio::time::timeout(Duration::from_secs(10), second.recv(&mut buffer))
        .await
        .context("no event on the new receiver within 10 s")??;
    let recovery = cleared.elapsed();
    record_recovery(&report, recovery);
    let event: serde_json::Value = serde_json::from_slice(&buffer[..received])?;
    figure(
        &report,
        "first event on the new receiver",
        event.get("event").cloned().unwrap_or_default(),
    );
    let mut more = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(_)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        second.recv(&mut buffer),
    )
    .await
    {
        more += 1;
    }
    figure(
        &report,
        "events on the new receiver in the next second",
        more,
    );
    drop(second);
    let _ = std::fs::remove_file(&path);
    target(&report, "events resume on the new socket", recovery)?;
    run.finish(0).await
}

async fn collector_sigkill(report: Shared) -> Result<()> {
    describe(
        &report,
        "kill -9 of the collector under load, 3 s down, restarted",
        "collector restarted -> first new event stored in both PostgreSQL and Redis",
    );
    let mut run = Run::start(&report, options()).await?;
    let pg_before = run.stack.postgres_cursor();
    let redis_before = run.stack.redis_cursor();
    run.stack.collector.signal("KILL")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        !run.stack.collector.is_running(),
        "the collector survived SIGKILL"
    );
    run.alive()?;
    let pg_at_restart = run.stack.postgres_cursor().max(pg_before);
    let redis_at_restart = run.stack.redis_cursor().max(redis_before);
    run.stack.collector.spawn()?;
    let recovery = wait_until(
        "both sinks to store new events",
        Duration::from_secs(30),
        || {
            run.stack.postgres_cursor() > pg_at_restart
                && run.stack.redis_cursor() > redis_at_restart
        },
    )
    .await?;
    record_recovery(&report, recovery);
    target(&report, "collector storing again", recovery)?;
    run.finish(0).await
}
