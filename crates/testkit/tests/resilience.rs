//! The pool keeps miners working through node and Redis outages
//! (plan scenarios 2 and 5) and fails over between nodes.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::BlockHash;
use serde_json::json;
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_pool::BlockStatus;
use tbg_testkit::{
    node_endpoint, regtest_address, test_settings, AddressKind, ManualMiner, RedisServer, TestEnv,
};

/// Mines one share (a block on regtest) on the miner's current job and waits
/// for the pool's verdict on the block.
async fn mine_block(env: &TestEnv, miner: &mut ManualMiner, counter: u64) -> tbg_pool::BlockRecord {
    let before = env.service.pool.blocks().len();
    let reply = miner.submit_valid(counter).await;
    assert_eq!(
        reply.result,
        json!(true),
        "share accepted: {:?}",
        reply.error
    );
    env.wait_until("block verdict", Duration::from_secs(20), |env| {
        env.service
            .pool
            .blocks()
            .get(before)
            .is_some_and(|b| b.status != BlockStatus::Pending)
    })
    .await;
    env.service.pool.blocks()[before].clone()
}

/// Plan scenario 2 with a block in it: the pool keeps serving the last
/// work while every node is down, and a block found then is kept (on disk),
/// shown pending, never called rejected, and accepted by the node as soon
/// as it answers again, with no new share needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_found_while_every_node_is_down_is_accepted_when_the_node_is_back() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    assert!(env.service.pool.status().node_up);

    env.node.stop_rpc().await;
    env.wait_until("pool sees the node down", Duration::from_secs(10), |env| {
        !env.service.pool.status().node_up
    })
    .await;
    // Still mining on the last work: the share is accepted.
    let reply = miner.submit_valid(1).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    env.wait_until("the block retried", Duration::from_secs(20), |env| {
        env.service
            .pool
            .blocks()
            .first()
            .is_some_and(|b| b.attempts >= 2)
    })
    .await;
    let block = env.service.pool.blocks()[0].clone();
    assert_eq!(block.status, BlockStatus::Pending, "{block:?}");
    assert!(block.durable, "written to the block store");
    assert!(
        block.answers.iter().all(|a| a.contains("unreachable")),
        "an unreachable node is not a rejection: {:?}",
        block.answers
    );
    let status = env.service.pool.status();
    assert_eq!((status.blocks_pending, status.blocks_rejected), (1, 0));
    let stored: Vec<_> = std::fs::read_dir(env.block_dir.as_ref().unwrap().path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(&block.hash))
        .collect();
    assert_eq!(stored.len(), 1, "one file for the block");
    let late = ManualMiner::connect(env.stratum_addr(), &format!("{address}.late")).await;
    assert_eq!(
        late.job.prevhash_hex, miner.job.prevhash_hex,
        "stale work served while down"
    );
    assert!(env.service.pool.status().nodes_down_seconds.is_some());

    let height = env.node.block_count();
    env.node.start_rpc().await.unwrap();
    env.wait_until(
        "the pending block accepted once the node answers",
        Duration::from_secs(20),
        |env| env.service.pool.blocks()[0].status == BlockStatus::Accepted,
    )
    .await;
    let hash = BlockHash::from_str(&block.hash).unwrap();
    assert!(
        env.node.get_block(&hash).is_some(),
        "the node has the block"
    );
    assert_eq!(env.node.block_count(), height + 1);
    assert_eq!(env.node.best_block_hash(), hash);
    let status = env.service.pool.status();
    assert_eq!((status.blocks_pending, status.blocks_accepted), (0, 1));
    let submitted = env.events_of("block_submitted");
    assert!(
        matches!(submitted.as_slice(), [e] if matches!(&e.data,
            tbg_events::EventData::BlockSubmitted { accepted: true, status, .. } if status == "accepted")),
        "one block_submitted, once accepted: {submitted:?}"
    );

    // And mining goes on on top of it.
    miner.job_on(hash).await;
    let block = mine_block(&env, &mut miner, 2).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_node_and_back() {
    tbg_testkit::init_tracing();
    let primary = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let backup = tbg_testkit::node_with_chain_of(&primary).await;
    // Both nodes start from the same chain, so the pool works
    // from the primary, the first in the list.
    assert_eq!(primary.best_block_hash(), backup.best_block_hash());
    let endpoints = vec![node_endpoint(&primary), node_endpoint(&backup)];
    let env = TestEnv::start_pool(primary, endpoints, test_settings()).await;
    let (address, script) = regtest_address(AddressKind::P2sh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let work = env.service.pool.current_work().unwrap();
    assert_eq!(
        work.template.previous_block_hash,
        env.node.best_block_hash()
    );

    // Primary fails, the network moves on (a block on the backup): work
    // comes from the backup, blocks land there.
    env.node.stop_rpc().await;
    let (_, someone) = regtest_address(AddressKind::P2pkh);
    backup.mine_blocks(1, &someone).await.unwrap();
    miner.job_on(backup.best_block_hash()).await;
    let block = mine_block(&env, &mut miner, 1).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    let hash = BlockHash::from_str(&block.hash).unwrap();
    let on_backup = backup
        .get_block(&hash)
        .expect("the backup node has the block");
    assert_eq!(on_backup.txdata[0].output[0].script_pubkey, script);
    assert!(env.events_of("new_block_network").len() >= 2);

    // Primary back, but two blocks behind the backup: its older tip is not
    // served (issue 16: it used to move miners back to it).
    let backup_tip = backup.best_block_hash();
    env.node.start_rpc().await.unwrap();
    env.wait_until(
        "the pool polls the primary again",
        Duration::from_secs(10),
        |env| env.service.nodes.status()[0].up,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let work = env.service.pool.current_work().unwrap();
    assert_eq!(
        work.template.previous_block_hash, backup_tip,
        "the tip never moves back"
    );

    // The primary catches up and passes the backup (its own chain: a reorg
    // to a higher tip): preferred again, blocks land there.
    env.node.mine_blocks(3, &someone).await.unwrap();
    miner.job_on(env.node.best_block_hash()).await;
    let block = mine_block(&env, &mut miner, 2).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    assert!(env
        .node
        .get_block(&BlockHash::from_str(&block.hash).unwrap())
        .is_some());
    env.shutdown().await;
    backup.shutdown().await;
}

fn coinbase_script_sig(env: &TestEnv, hash: &str) -> Vec<u8> {
    let block = env
        .node
        .get_block(&BlockHash::from_str(hash).unwrap())
        .unwrap();
    block.txdata[0].input[0].script_sig.to_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_coinbase_signature_from_redis_and_redis_outage() {
    let mut redis = RedisServer::start();
    let env = TestEnv::start_with(|settings| {
        settings.redis_url = Some(redis.url());
        settings.user_sig_refresh = Duration::from_millis(300);
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2tr);
    let (forger, _) = regtest_address(AddressKind::P2wpkh);
    assert_eq!(
        redis.cli(&[
            "SET",
            &format!("user_coinbase:{address}"),
            "Solo #1: hi/there!"
        ]),
        "OK"
    );
    assert_eq!(
        redis.cli(&["SET", &format!("user_coinbase:{forger}"), "evil\"},{\"sig"]),
        "OK"
    );

    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let mut bad = ManualMiner::connect(env.stratum_addr(), &forger).await;
    // The signature is fetched on authorize and used from the next job on.
    env.wait_until("redis answered", Duration::from_secs(10), |env| {
        env.service.pool.status().redis_up
    })
    .await;
    let (_, other) = regtest_address(AddressKind::P2pkh);
    env.node.mine_blocks(1, &other).await.unwrap();
    miner.job_on(env.node.best_block_hash()).await;
    bad.job_on(env.node.best_block_hash()).await;
    let block = mine_block(&env, &mut miner, 1).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    let script_sig = coinbase_script_sig(&env, &block.hash);
    assert!(
        contains(&script_sig, b"/tbg//Solo #1: hi/there!"),
        "{}",
        String::from_utf8_lossy(&script_sig)
    );
    let found = env.events_of("block_found");
    assert!(found.iter().any(|e| matches!(&e.data,
        tbg_events::EventData::BlockFound { coinbase_sig, .. } if coinbase_sig == "Solo #1: hi/there!")));

    // A signature outside the allowed alphabet never reaches a block.
    bad.job_on(env.node.best_block_hash()).await;
    let block = mine_block(&env, &mut bad, 2).await;
    let script_sig = coinbase_script_sig(&env, &block.hash);
    assert!(
        !contains(&script_sig, b"evil"),
        "{}",
        String::from_utf8_lossy(&script_sig)
    );
    assert!(contains(&script_sig, b"/tbg/"));

    // Redis dies: mining goes on.
    redis.kill();
    env.wait_until(
        "pool notices redis is down",
        Duration::from_secs(10),
        |env| !env.service.pool.status().redis_up,
    )
    .await;
    miner.job_on(env.node.best_block_hash()).await;
    let block = mine_block(&env, &mut miner, 3).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_pool_mines_with_its_default_tag() {
    let closed = tbg_testkit::free_port();
    let env = TestEnv::start_with(|settings| {
        settings.redis_url = Some(format!("redis://127.0.0.1:{closed}/"));
        settings.user_sig_refresh = Duration::from_millis(300);
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2pkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let block = mine_block(&env, &mut miner, 1).await;
    assert_eq!(block.status, BlockStatus::Accepted);
    let script_sig = coinbase_script_sig(&env, &block.hash);
    assert!(contains(&script_sig, b"/tbg/"));
    assert!(!env.service.pool.status().redis_up);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_hashblock_brings_new_work_without_polling() {
    tbg_testkit::init_tracing();
    let node = DevNode::start(DevNodeOptions {
        zmq_pub_hashblock: Some(format!("tcp://127.0.0.1:{}", tbg_testkit::free_port())),
        ..DevNodeOptions::default()
    })
    .await
    .unwrap();
    let zmq = node
        .zmq_hashblock_endpoint()
        .expect("zmq endpoint")
        .to_string();
    let endpoint = node_endpoint(&node);
    let events = std::sync::Arc::new(tbg_events::MemorySink::new(10_000));
    // Polling every 10 minutes: only ZMQ can bring the new block in time.
    let service = tbg_pool::PoolService::start(
        test_settings(),
        tbg_pool::NodeSettings {
            endpoints: vec![endpoint],
            rpc_timeout: Duration::from_secs(5),
            watcher: tbg_node::WatcherConfig {
                block_poll: Duration::from_secs(600),
                update_interval: Duration::from_secs(600),
                zmq_hashblock: Some(zmq),
                tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
            },
        },
        events,
        None,
        tbg_events::EventFactory::new("test", "hosted"),
    )
    .await
    .unwrap();
    service
        .pool
        .wait_for_work(Duration::from_secs(30))
        .await
        .unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(service.pool.local_addr(), &address).await;
    // The subscriber needs a moment to connect before the first publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, other) = regtest_address(AddressKind::P2pkh);
    let mined = node.mine_blocks(1, &other).await.unwrap();
    let started = std::time::Instant::now();
    miner.job_on(mined[0]).await;
    assert!(miner.job.clean_jobs);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "new work after {:?}",
        started.elapsed()
    );
    service.shutdown(Duration::from_secs(2)).await;
    node.shutdown().await;
}
