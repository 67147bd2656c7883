//! A share is answered only once its event is in the durable journal.

use std::time::Duration;

use serde_json::json;
use tbg_journal::Durability;
use tbg_pool::WorkerSnapshot;
use tbg_stratum::RejectReason;
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};

/// What `/status/workers/<address>.<worker>` shows for this worker.
fn worker_snapshot(env: &TestEnv, address: &str, worker: &str) -> WorkerSnapshot {
    env.service
        .pool
        .stats()
        .user(address, std::time::Instant::now())
        .expect("the user is known")
        .workers
        .into_iter()
        .find(|w| w.worker == worker)
        .expect("the worker is known")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_hears_accepted_only_after_the_share_is_journaled() {
    miner_hears_accepted_only_after_the_share_is_durable(Durability::PowerLoss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_hears_accepted_only_after_the_share_is_staged() {
    miner_hears_accepted_only_after_the_share_is_durable(Durability::ProcessCrash).await;
}

/// With `PowerLoss` the reply waits for the SQLite commit, so the share is
/// readable by another process when the reply arrives. With `ProcessCrash`
/// it waits only for the stage file: every seq staged at the moment the
/// reply arrives, once committed, must include the share.
async fn miner_hears_accepted_only_after_the_share_is_durable(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut config = tbg_journal::JournalConfig::new(&path);
    config.durability = durability;
    let journal = tbg_journal::Journal::open(config).unwrap();
    let handle = journal.clone();
    let env = TestEnv::start_with_journal(journal).await;
    let reader = tbg_journal::JournalReader::open(&path).unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    for counter in 1..=5u64 {
        // Keep the chain still so every share lands on the same job.
        if counter == 1 {
            env.node.stop_rpc().await;
        }
        let reply = miner.submit_valid(counter).await;
        assert_eq!(reply.result, json!(true), "{:?}", reply.error);
        if durability == Durability::ProcessCrash {
            let staged_at_reply = handle.stats().staged_seq;
            handle.wait_committed(staged_at_reply).await.unwrap();
        }
        // The reply is out: the event must be readable by another process
        // (at once, or from the seqs staged before the reply).
        let records = reader.read_after(0, 10_000).unwrap();
        let accepted = records
            .iter()
            .filter_map(|r| r.event().ok())
            .filter(|e| {
                matches!(&e.data, tbg_events::EventData::ShareSubmitted { accepted: true, user, .. } if *user == address)
            })
            .count();
        assert_eq!(
            accepted as u64, counter,
            "accepted shares journaled before the reply"
        );
    }
    let records = reader.read_after(0, 10_000).unwrap();
    let types: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
    assert!(types.contains(&"miner_connected"));
    assert!(types.contains(&"new_block_network"));
    // Ids are unique and seqs increase.
    let mut ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), records.len());
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    env.node.start_rpc().await.unwrap();
    drop(miner);
    env.shutdown().await;
    // Shutdown committed the disconnect too.
    let records = reader.read_after(0, 10_000).unwrap();
    assert!(records.iter().any(|r| r.event_type == "miner_disconnected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_shares_with_an_error_and_the_pool_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut config = tbg_journal::JournalConfig::new(&path);
    config.stage_bytes = tbg_journal::MIN_STAGE_BYTES;
    let journal = tbg_journal::Journal::open(config).unwrap();
    let handle = journal.clone();
    let env = TestEnv::start_with_journal(journal).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    // Every valid share is a block at these difficulties: keep the chain
    // still so every share lands on the same job.
    env.node.stop_rpc().await;
    let reply = miner.submit_valid(1).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);

    // SQLite stops taking commits (as with a full disk) until the ring is full.
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let factory = tbg_events::EventFactory::new("test", "hosted");
    let filler = factory.make(tbg_events::EventData::MinerConnected {
        user: "bcrt1qfiller".into(),
        worker: "filler".into(),
        client_id: 0,
        ip: "127.0.0.1".into(),
        useragent: "filler".into(),
        initial_diff: 1.0,
    });
    // A commit the writer began before the lock frees its ring space when
    // it ends: fill only once the writer has tried a commit under the lock
    // and failed (CI saw the ring get room again after the fill).
    handle.append(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while handle.stats().consecutive_failures == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never failed a commit under the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while handle.append(&filler).is_ok() {}
    assert!(
        !handle.is_healthy(),
        "a full journal makes the pool not ready"
    );

    let reply = miner.submit_valid(2).await;
    assert_eq!(reply.error, json!([20, "Journal full", null]));
    assert_eq!(reply.result, json!(false));
    // The refused share is counted as refused everywhere a user looks, and
    // credits the worker nothing.
    let pool = &env.service.pool;
    let status = pool.status();
    assert_eq!(
        (status.shares_accepted, status.shares_rejected),
        (1, 1),
        "{status:?}"
    );
    assert_eq!(pool.counters().rejected(RejectReason::JournalFull), 1);
    let worker = worker_snapshot(&env, &address, "rig");
    assert_eq!((worker.shares_accepted, worker.shares_rejected), (1, 1));
    let shares = env.events_of("share_submitted");
    let sdiff_of = |event: &tbg_events::Event| match &event.data {
        tbg_events::EventData::ShareSubmitted { sdiff, .. } => *sdiff,
        _ => unreachable!("filtered on share_submitted"),
    };
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert_eq!(
        worker.best_difficulty,
        sdiff_of(&shares[0]),
        "the refused share never counts as the worker's best"
    );
    // The event sink hears what the miner heard.
    assert!(
        matches!(&shares[1].data, tbg_events::EventData::ShareSubmitted { accepted: false, reject_reason: Some(reason), .. } if reason == "Journal full"),
        "{:?}",
        shares[1]
    );
    // The block in that share still went to the node and to the event sink.
    env.wait_until(
        "block_found for the refused share",
        Duration::from_secs(10),
        |env| env.events_of("block_found").len() == 2,
    )
    .await;

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    handle
        .wait_committed(handle.stats().staged_seq)
        .await
        .unwrap();
    let reply = miner.submit_valid(3).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    assert!(handle.is_healthy());
    let status = env.service.pool.status();
    assert_eq!((status.shares_accepted, status.shares_rejected), (2, 1));
    let worker = worker_snapshot(&env, &address, "rig");
    assert_eq!((worker.shares_accepted, worker.shares_rejected), (2, 1));
    env.node.start_rpc().await.unwrap();
    drop(miner);
    env.shutdown().await;

    // Exactly the shares confirmed to the miner are journaled as accepted.
    let reader = tbg_journal::JournalReader::open(&path).unwrap();
    let accepted = reader
        .read_after(0, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|record| record.event().ok())
        .filter(|event| {
            matches!(&event.data, tbg_events::EventData::ShareSubmitted { accepted: true, user, .. } if *user == address)
        })
        .count();
    assert_eq!(accepted, 2);
}
