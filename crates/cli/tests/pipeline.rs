//! Issue 3's outage test: with the pool under a steady share load, kill -9
//! the collector, stop PostgreSQL for 20 s, stop Redis for 10 s, kill -9 and
//! restart the pool; then the event ids the pool journaled, the rows in
//! PostgreSQL and the entries of every Redis stream are the same set, with
//! no duplicates. Real processes and servers throughout: the `tbg` binary,
//! the embedded kernel node, the test's own PostgreSQL and Redis (the chaos
//! suite's stack, `tbg_chaos`).

use std::path::PathBuf;
use std::time::Duration;

use tbg_chaos::load::{load_usernames, EventLoad, LatencyLog};
use tbg_chaos::stack::{Stack, StackOptions};
use tbg_chaos::wait_until;

/// Waits until the load got `at_least` more answers than when called.
async fn wait_for_answers(what: &str, load: &LatencyLog, at_least: u64, timeout: Duration) {
    let start = load.answered();
    wait_until(what, timeout, || load.answered() >= start + at_least)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_lost_or_duplicated_through_collector_database_redis_and_pool_crashes() {
    tbg_testkit::init_tracing();
    let mut stack = Stack::start(StackOptions {
        tbg: PathBuf::from(env!("CARGO_BIN_EXE_tbg")),
        collector_batch_wait_ms: Some(200),
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // Four clients that keep submitting shares (rejected ones are events
    // too) and reconnect whenever the pool goes away.
    let load = EventLoad::start(
        stack.pool_addr,
        load_usernames(4),
        Duration::from_millis(20),
    );
    let answers = load.latencies.clone();
    wait_for_answers("load running", &answers, 200, Duration::from_secs(30)).await;

    // 1. The collector dies without warning, and comes back.
    stack.collector.kill9();
    wait_for_answers(
        "shares while the collector is down",
        &answers,
        100,
        Duration::from_secs(30),
    )
    .await;
    stack.collector.spawn().unwrap();

    // 2. PostgreSQL down for 20 s.
    tokio::task::block_in_place(|| stack.pg.stop_immediate());
    tokio::time::sleep(Duration::from_secs(20)).await;
    tokio::task::block_in_place(|| stack.pg.pg_ctl_start());

    // 3. Redis down for 10 s (killed; its append-only file keeps what it acknowledged).
    stack.redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::task::block_in_place(|| stack.redis.restart());

    // 4. The pool dies without warning and is restarted; miners come back by themselves.
    stack.pool.kill9();
    stack.pool.spawn().unwrap();
    wait_for_answers(
        "shares after the pool restart",
        &answers,
        200,
        Duration::from_secs(60),
    )
    .await;

    load.stop().await;
    assert!(
        stack.pool.terminate(Duration::from_secs(10)),
        "the pool did not stop on SIGTERM"
    );

    // Everything journaled reaches both stores.
    stack
        .wait_caught_up(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}; collector log:\n{}", stack.collector.log_tail(20)));
    assert!(
        stack.collector.terminate(Duration::from_secs(10)),
        "the collector did not stop on SIGTERM"
    );

    let ledger = stack.ledger().unwrap();
    assert!(
        ledger.journaled > 500,
        "a real load: {} events",
        ledger.journaled
    );
    assert_eq!(ledger.dup_journal, 0, "duplicates in the journal");
    assert_eq!(ledger.dup_postgres, 0, "duplicates in PostgreSQL");
    assert_eq!(ledger.dup_redis, 0, "duplicates in Redis");
    assert_eq!(ledger.lost_postgres, 0, "lost in PostgreSQL: {ledger:?}");
    assert_eq!(ledger.lost_redis, 0, "lost in Redis: {ledger:?}");
    // Nothing lost and nothing a store has that the journal lacks: the same ids.
    assert_eq!(ledger.unknown, 0, "ids in a store but not journaled");

    // The plan's quick-reference commands answer.
    let by_type = stack
        .pg
        .psql("SELECT event_type, COUNT(*) FROM mining_events GROUP BY event_type ORDER BY 1");
    assert!(by_type.contains("share_submitted|"), "{by_type}");
    assert!(by_type.contains("miner_connected|"), "{by_type}");
    let xlen: usize = stack
        .redis
        .cli(&["XLEN", "mining:share_submitted"])
        .parse()
        .unwrap();
    assert!(xlen > 0);
    let xlen_connected: usize = stack
        .redis
        .cli(&["XLEN", "mining:miner_connected"])
        .parse()
        .unwrap();
    assert!(
        xlen_connected >= 8,
        "4 miners connected before and after the pool restart"
    );
    assert!(stack.pool.log_text().contains("event journal open"));
    let collector_log = stack.collector.log_text();
    assert!(!collector_log.contains("panicked"), "{collector_log}");
    stack.shutdown().await;
}
