//! A found block's life against the embedded kernel node: kept across a
//! restart of the pool while no node can take it, followed to 100
//! confirmations, orphaned by a reorganisation, or passed by the chain
//! while the node was unreachable (stale).

use std::str::FromStr;
use std::time::Duration;

use bitcoin::BlockHash;
use serde_json::json;
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_events::EventData;
use tbg_pool::{BlockRecord, BlockStatus};
use tbg_testkit::{
    node_endpoint, regtest_address, test_settings, AddressKind, ManualMiner, TestEnv,
};

const WAIT: Duration = Duration::from_secs(30);

/// The pool's record of `hash`, once `check` holds for it.
async fn block_when(
    env: &TestEnv,
    hash: &str,
    what: &str,
    check: impl Fn(&BlockRecord) -> bool,
) -> BlockRecord {
    env.wait_until(what, WAIT, |env| {
        env.service
            .pool
            .blocks()
            .iter()
            .any(|b| b.hash == hash && check(b))
    })
    .await;
    env.service
        .pool
        .blocks()
        .into_iter()
        .find(|b| b.hash == hash)
        .unwrap()
}

/// Submits a share (every share is a block on regtest) and returns the
/// hash of the block the pool found.
async fn find_block(env: &TestEnv, miner: &mut ManualMiner, counter: u64) -> String {
    let before = env.service.pool.blocks().len();
    let reply = miner.submit_valid(counter).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    env.wait_until("block recorded", WAIT, |env| {
        env.service.pool.blocks().len() > before
    })
    .await;
    env.service.pool.blocks()[before].hash.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_no_node_took_survives_a_pool_restart_and_is_accepted_after_it() {
    let env = TestEnv::start().await;
    let (address, script) = regtest_address(AddressKind::P2tr);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    env.node.stop_rpc().await;
    let hash = find_block(&env, &mut miner, 1).await;
    block_when(&env, &hash, "on disk and retried", |b| {
        b.durable && b.attempts >= 1
    })
    .await;
    drop(miner);

    // The pool stops (the node still down), then a new pool starts on the
    // same block store and the node comes back.
    let TestEnv {
        node,
        service,
        block_dir,
        ..
    } = env;
    service.shutdown(Duration::from_millis(200)).await;
    let block_dir = block_dir.expect("the test's block store");
    node.start_rpc().await.unwrap();
    let height = node.block_count();
    let mut settings = test_settings();
    settings.block_dir = Some(block_dir.path().to_path_buf());
    let endpoint = node_endpoint(&node);
    let env = TestEnv::start_pool(node, vec![endpoint], settings).await;
    block_when(&env, &hash, "resubmitted and accepted", |b| {
        b.status == BlockStatus::Accepted && b.durable
    })
    .await;
    let block = env
        .node
        .get_block(&BlockHash::from_str(&hash).unwrap())
        .expect("the node has the block found before the restart");
    assert_eq!(
        block.txdata[0].output[0].script_pubkey, script,
        "pays the finder"
    );
    assert_eq!(env.node.block_count(), height + 1);
    // The new run journals the outcome; the find itself was journaled by
    // the first run and is not announced twice.
    assert!(env.events_of("block_found").is_empty());
    assert!(matches!(env.events_of("block_submitted").as_slice(),
        [e] if matches!(&e.data, EventData::BlockSubmitted { accepted: true, hash: h, .. } if *h == hash)));
    env.shutdown().await;
    drop(block_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_block_is_followed_to_100_confirmations() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wsh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let hash = find_block(&env, &mut miner, 1).await;
    block_when(&env, &hash, "accepted", |b| {
        b.status == BlockStatus::Accepted
    })
    .await;
    let (_, others) = regtest_address(AddressKind::P2pkh);
    env.node.mine_blocks(50, &others).await.unwrap();
    let halfway = block_when(&env, &hash, "51 confirmations seen", |b| {
        b.confirmations == 51
    })
    .await;
    assert_eq!(halfway.status, BlockStatus::Accepted, "not mature yet");
    assert!(env.events_of("block_confirmed").is_empty());
    env.node.mine_blocks(49, &others).await.unwrap();
    let confirmed = block_when(&env, &hash, "confirmed", |b| {
        b.status == BlockStatus::Confirmed
    })
    .await;
    assert_eq!(confirmed.confirmations, 100);
    let events = env.events_of("block_confirmed");
    assert!(
        matches!(events.as_slice(), [e] if matches!(&e.data,
            EventData::BlockConfirmed { hash: h, confirmations: 100, user, .. } if *h == hash && *user == address)),
        "{events:?}"
    );
    assert_eq!(env.service.pool.status().blocks_confirmed, 1);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_reorganised_away_is_reported_orphaned() {
    let env = TestEnv::start().await;
    // Another node with our node's chain: its next two blocks compete with
    // ours at our height and then outweigh it.
    let rival = tbg_testkit::node_with_chain_of(&env.node).await;
    let (address, _) = regtest_address(AddressKind::P2sh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let hash = find_block(&env, &mut miner, 1).await;
    let ours = block_when(&env, &hash, "accepted", |b| {
        b.status == BlockStatus::Accepted
    })
    .await;

    let (_, rival_payout) = regtest_address(AddressKind::P2pkh);
    let rival_blocks = rival.mine_blocks(2, &rival_payout).await.unwrap();
    relay_blocks(&rival, &env.node, &rival_blocks).await;
    assert_eq!(
        env.node.best_block_hash(),
        rival_blocks[1],
        "the node reorganised"
    );

    let orphaned = block_when(&env, &hash, "orphaned", |b| {
        b.status == BlockStatus::Orphaned
    })
    .await;
    let by = rival_blocks[0].to_string();
    assert_eq!(orphaned.replaced_by.as_deref(), Some(by.as_str()));
    assert_eq!(orphaned.height, ours.height);
    let events = env.events_of("block_orphaned");
    assert!(
        matches!(events.as_slice(), [e] if matches!(&e.data,
            EventData::BlockOrphaned { hash: h, replaced_by, .. } if *h == hash && *replaced_by == by)),
        "{events:?}"
    );
    assert_eq!(env.service.pool.status().blocks_orphaned, 1);
    env.shutdown().await;
    rival.shutdown().await;
}

/// `hashes` of `from`'s chain submitted to `to`, as a peer relays them.
async fn relay_blocks(
    from: &tbg_devnode::DevNodeHandle,
    to: &tbg_devnode::DevNodeHandle,
    hashes: &[BlockHash],
) {
    let client = tbg_node::RpcClient::new(node_endpoint(to), WAIT).unwrap();
    for hash in hashes {
        let block = from.get_block(hash).unwrap();
        let hex = bitcoin::consensus::encode::serialize_hex(&block);
        let _: Option<String> = client.call("submitblock", json!([hex])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_block_a_deeper_reorganisation_puts_back_is_accepted_again() {
    let env = TestEnv::start().await;
    let rival = tbg_testkit::node_with_chain_of(&env.node).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    let hash = find_block(&env, &mut miner, 1).await;
    block_when(&env, &hash, "accepted", |b| {
        b.status == BlockStatus::Accepted
    })
    .await;
    // A node that keeps our block: its miners go on building on it.
    let ours = tbg_testkit::node_with_chain_of(&env.node).await;
    let (_, others) = regtest_address(AddressKind::P2pkh);
    let rival_blocks = rival.mine_blocks(2, &others).await.unwrap();
    relay_blocks(&rival, &env.node, &rival_blocks).await;
    block_when(&env, &hash, "orphaned", |b| {
        b.status == BlockStatus::Orphaned
    })
    .await;

    // Our branch gets 3 more blocks: 4 on top of the fork against 2.
    let ours_blocks = ours.mine_blocks(3, &others).await.unwrap();
    relay_blocks(&ours, &env.node, &ours_blocks).await;
    assert_eq!(
        env.node.best_block_hash(),
        ours_blocks[2],
        "the node reorganised back"
    );
    let back = block_when(&env, &hash, "accepted again", |b| {
        b.status == BlockStatus::Accepted && b.confirmations == 4
    })
    .await;
    assert_eq!(back.replaced_by, None);
    let submitted: Vec<bool> = env
        .events_of("block_submitted")
        .iter()
        .filter_map(|e| match &e.data {
            EventData::BlockSubmitted {
                hash: h, accepted, ..
            } if *h == hash => Some(*accepted),
            _ => None,
        })
        .collect();
    assert_eq!(
        submitted,
        [true, true],
        "accepted, then accepted again after the reorg"
    );
    // And it is followed to maturity as any accepted block.
    env.node.mine_blocks(96, &others).await.unwrap();
    block_when(&env, &hash, "confirmed", |b| {
        b.status == BlockStatus::Confirmed
    })
    .await;
    assert_eq!(env.events_of("block_confirmed").len(), 1);
    env.shutdown().await;
    rival.shutdown().await;
    ours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_the_chain_passed_while_the_node_was_unreachable_is_stale_not_rejected() {
    let env = TestEnv::start().await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    env.node.stop_rpc().await;
    let hash = find_block(&env, &mut miner, 1).await;
    block_when(&env, &hash, "pending", |b| b.status == BlockStatus::Pending).await;
    // Meanwhile the network finds two blocks: ours lost the race.
    let (_, others) = regtest_address(AddressKind::P2pkh);
    let passed_by = env.node.mine_blocks(2, &others).await.unwrap();
    env.node.start_rpc().await.unwrap();
    let stale = block_when(&env, &hash, "stale", |b| b.status.is_settled()).await;
    assert_eq!(stale.status, BlockStatus::Stale, "{stale:?}");
    let by = passed_by[0].to_string();
    assert_eq!(stale.replaced_by.as_deref(), Some(by.as_str()));
    let status = env.service.pool.status();
    assert_eq!(
        (
            status.blocks_stale,
            status.blocks_rejected,
            status.blocks_pending
        ),
        (1, 0, 0)
    );
    assert!(matches!(env.events_of("block_submitted").as_slice(),
        [e] if matches!(&e.data, EventData::BlockSubmitted { accepted: false, status, .. } if status == "stale")));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_when_the_block_was_found_gets_it_when_it_is_back() {
    tbg_testkit::init_tracing();
    let primary = DevNode::start(DevNodeOptions::default()).await.unwrap();
    // Same chain block for block: two nodes' own initial chains differ
    // whenever their blocks were mined in different seconds.
    let backup = tbg_testkit::node_with_chain_of(&primary).await;
    assert_eq!(primary.best_block_hash(), backup.best_block_hash());
    let endpoints = vec![node_endpoint(&primary), node_endpoint(&backup)];
    let env = TestEnv::start_pool(primary, endpoints, test_settings()).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &address).await;
    env.node.stop_rpc().await;
    let hash = find_block(&env, &mut miner, 1).await;
    block_when(&env, &hash, "accepted by the backup", |b| {
        b.status == BlockStatus::Accepted
    })
    .await;
    let block_hash = BlockHash::from_str(&hash).unwrap();
    assert!(backup.get_block(&block_hash).is_some());
    assert!(env.node.get_block(&block_hash).is_none());

    // The primary answers again: the pool sends it the block it missed.
    env.node.start_rpc().await.unwrap();
    env.wait_until("the primary has the block", WAIT, |env| {
        env.node.get_block(&block_hash).is_some()
    })
    .await;
    assert_eq!(
        env.node.best_block_hash(),
        block_hash,
        "on the primary's best chain"
    );
    env.shutdown().await;
    backup.shutdown().await;
}
