//! A tip never moves backwards (issue 16, item 7): two embedded kernel
//! nodes at different heights as primary and backup. The pool works on the
//! best tip any node knows, skips a node that is behind it, and uses that
//! node again once it has more work; a competitor of equal work is not
//! followed (first seen, as Bitcoin Core), so the pool does not move its
//! miners off its own miner's block.

use std::time::{Duration, Instant};

use bitcoin::BlockHash;
use serde_json::json;
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_node::NodeHealth;
use tbg_pool::BlockStatus;
use tbg_testkit::{
    node_endpoint, regtest_address, stratum_prevhash, test_settings, AddressKind, ManualMiner,
    TestEnv,
};

/// Every job `miner` receives during `length` builds on `prev`.
async fn only_jobs_on(miner: &mut ManualMiner, prev: BlockHash, length: Duration) {
    let expected = stratum_prevhash(&prev);
    let until = Instant::now() + length;
    loop {
        assert_eq!(miner.job.prevhash_hex, expected, "a job on another tip");
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, miner.next_job()).await.is_err() {
            return;
        }
    }
}

fn current_prev(env: &TestEnv) -> BlockHash {
    env.service
        .pool
        .current_work()
        .expect("work")
        .template
        .previous_block_hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_primary_is_behind_keeps_the_backups_tip() {
    tbg_testkit::init_tracing();
    let primary = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let backup = tbg_testkit::node_with_chain_of(&primary).await;
    let (_, someone) = regtest_address(AddressKind::P2pkh);
    backup.mine_blocks(3, &someone).await.unwrap();
    let start_height = primary.block_count();
    assert_eq!(backup.block_count(), start_height + 3);
    let endpoints = vec![node_endpoint(&primary), node_endpoint(&backup)];
    let env = TestEnv::start_pool(primary, endpoints, test_settings()).await;

    // The backup's tip, three blocks ahead, is the one served.
    let backup_tip = backup.best_block_hash();
    env.wait_until("work on the backup's tip", Duration::from_secs(10), |env| {
        current_prev(env) == backup_tip
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    miner.job_on(backup_tip).await;
    assert_eq!(
        env.service.pool.current_work().unwrap().template.height,
        start_height + 4
    );

    // The primary finds a block of its own but is still behind: the pool
    // keeps the backup's tip, and a block mined there lands on the backup.
    env.node.mine_blocks(1, &someone).await.unwrap();
    only_jobs_on(&mut miner, backup_tip, Duration::from_secs(2)).await;
    let before = env.service.pool.blocks().len();
    let reply = miner.submit_valid(1).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    env.wait_until("block verdict", Duration::from_secs(20), |env| {
        env.service
            .pool
            .blocks()
            .get(before)
            .is_some_and(|b| b.status != BlockStatus::Pending)
    })
    .await;
    assert_eq!(
        env.service.pool.blocks()[before].status,
        BlockStatus::Accepted
    );
    assert_eq!(backup.block_count(), start_height + 4);
    let backup_tip = backup.best_block_hash();
    miner.job_on(backup_tip).await;

    // The primary catches up to the same height on its own chain: a
    // competitor of equal work to the backup's tip, which is our miner's
    // block. Not followed, although the primary is first in the list: the
    // pool keeps the tip it saw first (as Bitcoin Core does) rather than
    // help orphan its own miner's block.
    let our_block = backup_tip;
    env.node.mine_blocks(3, &someone).await.unwrap();
    assert_eq!(env.node.block_count(), backup.block_count());
    only_jobs_on(&mut miner, our_block, Duration::from_secs(3)).await;
    assert_eq!(current_prev(&env), our_block);
    assert!(
        matches!(
            env.service.pool.view().node_health(),
            NodeHealth::Up { node_index: 1 }
        ),
        "{:?}",
        env.service.pool.view().node_health()
    );

    // One more block on the primary: strictly more work, followed.

    env.node.mine_blocks(1, &someone).await.unwrap();
    let primary_tip = env.node.best_block_hash();
    miner.job_on(primary_tip).await;
    assert_eq!(current_prev(&env), primary_tip);
    // The backup has fallen behind in turn: never served. With the primary
    // silent, only the lagging backup answers: miners keep the primary's
    // tip (a restart must not move them back; the primary's tip counts
    // for `tip_memory`, 180 s), and the pool says every answering node is
    // behind (`/health` not ready, crates/metrics/tests/behind_tip.rs).
    env.node.stop_rpc().await;
    only_jobs_on(&mut miner, primary_tip, Duration::from_secs(3)).await;
    assert_eq!(current_prev(&env), primary_tip);
    assert!(
        matches!(
            env.service.pool.view().node_health(),
            NodeHealth::Behind { .. }
        ),
        "{:?}",
        env.service.pool.view().node_health()
    );
    env.shutdown().await;
    backup.shutdown().await;
}
