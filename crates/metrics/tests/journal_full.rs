//! What an operator sees over HTTP when the journal's staging ring fills
//! because SQLite stops taking commits (as with a full disk): `/health`
//! says so plainly, `/metrics` exports the ring, and a share refused with
//! "Journal full" is counted as rejected, not accepted.

use std::time::Duration;

use serde_json::Value;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("http get");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json body"))
}

/// The value of one series (`name` or `name{labels}`) in an exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("exposition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_shows_in_health_and_metrics_and_its_shares_count_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut config = tbg_journal::JournalConfig::new(&path);
    config.stage_bytes = tbg_journal::MIN_STAGE_BYTES;
    let journal = tbg_journal::Journal::open(config).unwrap();
    let handle = journal.clone();
    let env = TestEnv::start_with_journal(journal).await;
    let server = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .expect("pool metrics server");
    let base = format!("http://{}", server.local_addr());
    let http = reqwest::Client::new();

    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    let (code, health) = get_json(&http, &format!("{base}/health")).await;
    assert_eq!(code, 200, "{health}");
    // Keep the chain still so every share (a block on regtest) lands on the
    // same job.
    env.node.stop_rpc().await;
    let reply = miner.submit_valid(1).await;
    assert!(reply.is_ok(), "{reply:?}");
    let exposition = scrape(&http, &base).await;
    let capacity = tbg_journal::MIN_STAGE_BYTES as f64;
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_capacity_bytes"),
        Some(capacity)
    );
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_refusing"),
        Some(0.0)
    );
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_refused_full_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_recovered_events"),
        Some(0.0)
    );

    // SQLite stops taking commits until the ring is full.
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let filler = tbg_events::EventFactory::new("test", "hosted").make(
        tbg_events::EventData::MinerConnected {
            user: "bcrt1qfiller".into(),
            worker: "filler".into(),
            client_id: 0,
            ip: "127.0.0.1".into(),
            useragent: "filler".into(),
            initial_diff: 1.0,
        },
    );
    while handle.append(&filler).is_ok() {}
    let reply = miner.submit_valid(2).await;
    assert_eq!(reply.error_message().as_deref(), Some("Journal full"));

    // Nothing commits while the lock is held: the ring stays as it is.
    let stats = handle.stats();
    let (code, health) = get_json(&http, &format!("{base}/health")).await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["ready"], false);
    let expected = format!(
        "journal full: {} of {} bytes staged, shares are refused until the journal can write again (last error: {})",
        stats.stage_used_bytes,
        stats.stage_capacity_bytes,
        stats.last_error.as_deref().unwrap_or_default()
    );
    assert!(
        health["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str() == Some(expected.as_str())),
        "expected {expected:?} in {health}"
    );
    let exposition = scrape(&http, &base).await;
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_refusing"),
        Some(1.0)
    );
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_used_bytes"),
        Some(stats.stage_used_bytes as f64)
    );
    assert!(stats.stage_used_bytes as f64 > capacity / 2.0);
    let refused = sample(&exposition, "ckpool_journal_stage_refused_full_total").unwrap();
    // The filler loop's last append and the share's events at least; the
    // scrape may have seen more refusals (hashrate events) than `stats`.
    assert!(
        refused >= stats.rejected_full as f64 && refused >= 2.0,
        "{refused}"
    );
    assert_eq!(sample(&exposition, "ckpool_shares_valid_total"), Some(1.0));
    assert_eq!(
        sample(
            &exposition,
            r#"ckpool_shares_rejected_total{reason="journal_full"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&exposition, "ckpool_shares_invalid_total"),
        Some(0.0)
    );
    let (_, worker) = get_json(&http, &format!("{base}/status/workers/{address}.rig")).await;
    assert_eq!(worker["worker"]["shares_accepted"], 1, "{worker}");
    assert_eq!(worker["worker"]["shares_rejected"], 1, "{worker}");
    let (_, status) = get_json(&http, &format!("{base}/status")).await;
    assert_eq!(status["pool"]["shares_accepted"], 1, "{status}");
    assert_eq!(status["pool"]["shares_rejected"], 1, "{status}");
    assert_eq!(status["pool"]["shares_refused_journal_full"], 1, "{status}");

    // SQLite writes again: the ring drains and the pool recovers by itself.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    handle
        .wait_committed(handle.stats().staged_seq)
        .await
        .unwrap();
    let reply = miner.submit_valid(3).await;
    assert!(reply.is_ok(), "{reply:?}");
    let exposition = scrape(&http, &base).await;
    assert_eq!(
        sample(&exposition, "ckpool_journal_stage_refusing"),
        Some(0.0)
    );
    assert_eq!(sample(&exposition, "ckpool_shares_valid_total"), Some(2.0));
    env.node.start_rpc().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, health) = get_json(&http, &format!("{base}/health")).await;
        if code == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop(miner);
    server.shutdown().await;
    env.shutdown().await;
}
