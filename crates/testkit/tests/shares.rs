//! Share verdicts a miner (and the pool's owner) would check, against the
//! real pool and the embedded kernel node: a header is credited once across
//! retargets and resumed sessions, a block on a job made stale a moment ago
//! is still submitted (once), and version rolling negotiated before
//! authorize is announced.

use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use serde_json::json;
use tbg_events::EventData;
use tbg_pool::BlockStatus;
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};

/// Regtest's network difficulty is ~4.66e-10: below it, a share can be
/// valid without being a block, so the duplicate store is what answers.
const BELOW_NETWORK: f64 = 1e-10;

async fn env_below_network_difficulty() -> TestEnv {
    TestEnv::start_with(|settings| {
        settings.min_difficulty = BELOW_NETWORK;
        settings.start_difficulty = BELOW_NETWORK;
        // A suggestion retargets at once (the retarget test needs one).
        settings.difficulty_change_interval = Duration::ZERO;
    })
    .await
}

fn reject_message(reply: &tbg_miner::Reply) -> String {
    reply
        .error_message()
        .unwrap_or_else(|| format!("accepted: {:?}", reply.result))
}

/// A nonce for `extranonce2` on the miner's job that is not a block.
fn plain_share(miner: &ManualMiner, extranonce2: &[u8]) -> u32 {
    let job = &miner.job;
    job.find_failing_nonce(
        &miner.extranonce1,
        extranonce2,
        job.ntime,
        job.version,
        // Fails the network target, so any difficulty below it.
        4e-10,
    )
}

/// A nonce for `extranonce2` that is a block, with its hash.
fn block_share(miner: &ManualMiner, extranonce2: &[u8]) -> (u32, BlockHash) {
    let job = &miner.job;
    let (nonce, hash) = job
        .find_nonce(
            &miner.extranonce1,
            extranonce2,
            job.ntime,
            job.version,
            1e-6,
            0,
        )
        .expect("regtest blocks are easy");
    (nonce, BlockHash::from_byte_array(hash))
}

fn accepted_shares(env: &TestEnv) -> usize {
    env.events_of("share_submitted")
        .iter()
        .filter(|e| matches!(e.data, EventData::ShareSubmitted { accepted: true, .. }))
        .count()
}

fn blocks_found_with(env: &TestEnv, hash: &BlockHash) -> usize {
    let hash = hash.to_string();
    env.events_of("block_found")
        .iter()
        .filter(|e| matches!(&e.data, EventData::BlockFound { hash: h, .. } if *h == hash))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_resending_its_shares_gets_duplicate() {
    let env = env_below_network_difficulty().await;
    // The work stays put: no template change while the miner reconnects.
    env.node.stop_rpc().await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let username = format!("{address}.rig");
    let mut first = ManualMiner::connect(env.stratum_addr(), &username).await;
    assert!(first.difficulty < 4.66e-10, "{}", first.difficulty);
    let job_id = first.job.job_id.clone();
    let ntime = first.job.ntime;
    let en2 = first.extranonce2(1);
    let plain = plain_share(&first, &en2);
    let (block, hash) = block_share(&first, &en2);
    for nonce in [plain, block] {
        let reply = first.submit(&job_id, &en2, ntime, nonce, None).await;
        assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    }
    let session = first.session_id.clone();
    drop(first);
    env.wait_until("first connection closed", Duration::from_secs(5), |env| {
        env.service.pool.status().connections == 0
    })
    .await;
    let mut resumed =
        ManualMiner::connect_with(env.stratum_addr(), &username, Some(&session), None).await;
    assert_eq!(resumed.session_id, session, "the session was resumed");
    assert_eq!(
        resumed.job.job_id, job_id,
        "the same work after the reconnect"
    );
    // The miner resends what crossed the disconnect.
    for nonce in [plain, block] {
        let reply = resumed.submit(&job_id, &en2, ntime, nonce, None).await;
        assert_eq!(reject_message(&reply), "Duplicate", "nonce {nonce:08x}");
    }
    // A new share on the resumed session is credited.
    let en2b = resumed.extranonce2(2);
    let fresh = plain_share(&resumed, &en2b);
    let reply = resumed.submit(&job_id, &en2b, ntime, fresh, None).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    assert_eq!(accepted_shares(&env), 3);
    assert_eq!(blocks_found_with(&env, &hash), 1, "the block is found once");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_resent_on_a_retarget_job_gets_duplicate() {
    let env = env_below_network_difficulty().await;
    env.node.stop_rpc().await;
    let (address, _) = regtest_address(AddressKind::P2tr);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    let old_job = miner.job.clone();
    let en2 = miner.extranonce2(1);
    let nonce = plain_share(&miner, &en2);
    let reply = miner
        .submit(&old_job.job_id, &en2, old_job.ntime, nonce, None)
        .await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    // A new difficulty comes with a job of its own: new id, same coinbase.
    let reply = miner
        .client
        .request("mining.suggest_difficulty", json!([2e-10]))
        .await
        .unwrap();
    assert_eq!(reply.result, json!(true));
    let retarget = miner.next_job().await.clone();
    assert_ne!(retarget.job_id, old_job.job_id);
    assert_eq!(
        (&retarget.coinb1, &retarget.coinb2, &retarget.prevhash_hex),
        (&old_job.coinb1, &old_job.coinb2, &old_job.prevhash_hex),
        "the same work under a new id"
    );
    assert!(
        (miner.difficulty - 2e-10).abs() < 1e-15,
        "{}",
        miner.difficulty
    );
    for job_id in [&retarget.job_id, &old_job.job_id] {
        let reply = miner.submit(job_id, &en2, old_job.ntime, nonce, None).await;
        assert_eq!(reject_message(&reply), "Duplicate", "on job {job_id}");
    }
    assert_eq!(accepted_shares(&env), 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_a_job_just_made_stale_is_submitted_once() {
    let env = TestEnv::start().await;
    let (address, script) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.late")).await;
    let old_job = miner.job.clone();
    let parent = env.node.best_block_hash();
    let en2 = miner.extranonce2(1);
    let (nonce, hash) = block_share(&miner, &en2);
    // Someone else's block replaces our job's parent before our share arrives.
    let (_, other) = regtest_address(AddressKind::P2tr);
    env.node.mine_blocks(1, &other).await.unwrap();
    while !miner.next_job().await.clean_jobs {}
    assert_ne!(miner.job.prevhash_hex, old_job.prevhash_hex);
    let reply = miner
        .submit(&old_job.job_id, &en2, old_job.ntime, nonce, None)
        .await;
    assert_eq!(
        reply.result,
        json!(true),
        "a block is accepted whatever its job's age: {:?}",
        reply.error
    );
    // The node got it: stored beside the block that won, paying our miner.
    env.wait_until("the node has the block", Duration::from_secs(20), |env| {
        env.node.get_block(&hash).is_some()
    })
    .await;
    let block = env.node.get_block(&hash).unwrap();
    assert_eq!(block.header.prev_blockhash, parent);
    assert_eq!(block.txdata[0].output[0].script_pubkey, script);
    // Sent again: a duplicate, not a second submission.
    let reply = miner
        .submit(&old_job.job_id, &en2, old_job.ntime, nonce, None)
        .await;
    assert_eq!(reject_message(&reply), "Duplicate");
    assert_eq!(blocks_found_with(&env, &hash), 1);
    // Beside the winner, not on the best chain: the node answers
    // "inconclusive", then "duplicate", and neither is an acceptance.
    let hash_text = hash.to_string();
    let record = |env: &TestEnv| {
        env.service
            .pool
            .blocks()
            .into_iter()
            .find(|b| b.hash == hash_text)
            .expect("the pool's record of the block")
    };
    env.wait_until(
        "several rounds of submission",
        Duration::from_secs(20),
        |env| record(env).attempts >= 3,
    )
    .await;
    let pending = record(&env);
    assert_eq!(pending.status, BlockStatus::Pending, "{pending:?}");
    assert_eq!(env.service.pool.status().blocks_accepted, 0);
    // A block on top of the winner: ours lost the race.
    env.node.mine_blocks(1, &other).await.unwrap();
    env.wait_until("the block settled", Duration::from_secs(20), |env| {
        record(env).status.is_settled()
    })
    .await;
    assert_eq!(record(&env).status, BlockStatus::Stale);
    assert!(env.events_of("block_submitted").iter().any(|e| matches!(&e.data,
        EventData::BlockSubmitted { hash: h, accepted: false, status, .. } if *h == hash_text && status == "stale")));
    env.shutdown().await;
}

fn asicboost_workers(env: &TestEnv) -> Vec<String> {
    env.events_of("asicboost_detected")
        .iter()
        .filter_map(|e| match &e.data {
            EventData::AsicboostDetected { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .collect()
}

fn asicboost_miners(env: &TestEnv) -> u64 {
    env.service
        .pool
        .counters()
        .asicboost_miners
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_rolling_is_announced_once_per_connection_and_worker() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wsh);
    let configure = json!([["version-rolling"], {"version-rolling.mask": "1fffe000"}]);
    // The usual order: configure, then authorize.
    let mut miner = ManualMiner::connect_with(
        env.stratum_addr(),
        &format!("{address}.a"),
        None,
        Some(configure.clone()),
    )
    .await;
    assert_eq!(asicboost_workers(&env), ["a"]);
    // Configured again: no second announcement, no second count.
    let reply = miner
        .client
        .request("mining.configure", configure.clone())
        .await
        .unwrap();
    assert_eq!(reply.result["version-rolling"], json!(true));
    // A second worker on the connection is announced at its authorize.
    let reply = miner
        .client
        .request("mining.authorize", json!([format!("{address}.b"), "x"]))
        .await
        .unwrap();
    assert_eq!(reply.result, json!(true));
    assert_eq!(asicboost_workers(&env), ["a", "b"]);
    assert_eq!(asicboost_miners(&env), 1);

    // The other order, authorize then configure, on another connection.
    let mut late = ManualMiner::connect(env.stratum_addr(), &format!("{address}.c")).await;
    assert_eq!(asicboost_workers(&env), ["a", "b"]);
    let reply = late
        .client
        .request("mining.configure", configure)
        .await
        .unwrap();
    assert_eq!(reply.result["version-rolling"], json!(true));
    assert_eq!(asicboost_workers(&env), ["a", "b", "c"]);
    assert_eq!(asicboost_miners(&env), 2);
    env.shutdown().await;
}
