//! A primary and a relay region, each with its own embedded node and pool,
//! joined by the relay link over loopback: the relay mines the primary's
//! work, its blocks reach the primary's node, it fails over to its own
//! node when the primary goes silent and back once the primary is steady,
//! and its miner stays connected throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tbg_devnode::{DevNode, DevNodeHandle, DevNodeOptions};
use tbg_pool::{BlockStatus, RegionWiring, StoredBlock};
use tbg_relay::{PrimaryConfig, PrimaryLink, RelayConfig, RelayLink};
use tbg_testkit::{
    free_port, node_endpoint, node_with_chain_of, regtest_address, test_settings, AddressKind,
    ManualMiner, TestEnv,
};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"the relay link's secret, for tests";

async fn primary_link(env: &TestEnv, port: u16) -> PrimaryLink {
    let bind = SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = PrimaryConfig::new(bind, SECRET, "us-east");
    config.instance_id = Some(1);
    config.heartbeat = Duration::from_secs(1);
    config.peer_timeout = Duration::from_secs(5);
    PrimaryLink::start(
        config,
        env.service.templates.clone(),
        env.service.pool.link(),
    )
    .await
    .expect("the relay link listens")
}

fn relay_config(port: u16, secret: &[u8], instance_id: u8) -> RelayConfig {
    let primary = format!("127.0.0.1:{port}");
    let mut config = RelayConfig::new(&primary, secret, "eu-west", instance_id);
    config.heartbeat = Duration::from_secs(1);
    config.failover_timeout = Duration::from_secs(3);
    config.failback_after = Duration::from_secs(2);
    config.retry_max = Duration::from_millis(500);
    config
}

async fn start_primary() -> TestEnv {
    let node = DevNode::start(DevNodeOptions::default())
        .await
        .expect("devnode starts");
    let mut settings = test_settings();
    settings.instance_id = Some(1);
    TestEnv::start_region(node, settings, "us-east", RegionWiring::default()).await
}

/// The relay region's pool on `node`, its templates routed by `link`;
/// `customize` changes the test's settings first.
async fn start_relay(
    node: DevNodeHandle,
    link: &Arc<RelayLink>,
    tap: mpsc::Sender<StoredBlock>,
    customize: impl FnOnce(&mut tbg_pool::PoolSettings),
) -> TestEnv {
    let mut settings = test_settings();
    settings.instance_id = Some(2);
    customize(&mut settings);
    let wiring = RegionWiring {
        route_templates: Some(link.router()),
        block_tap: Some(tap),
    };
    let env = TestEnv::start_region(node, settings, "eu-west", wiring).await;
    link.attach(env.service.pool.link());
    env
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the Bitcoin network would do between the two regions' nodes.
async fn relay_block(from: &DevNodeHandle, to: &DevNodeHandle, hash: bitcoin::BlockHash) {
    let block = from.get_block(&hash).expect("the block");
    let client = tbg_node::RpcClient::new(node_endpoint(to), Duration::from_secs(30)).unwrap();
    let hex = bitcoin::consensus::encode::serialize_hex(&block);
    let answer: Option<String> = client.call("submitblock", json!([hex])).await.unwrap();
    assert_eq!(answer, None);
}

/// Reads jobs until one with clean_jobs on `prev`.
async fn clean_job_on(miner: &mut ManualMiner, prev: bitcoin::BlockHash) {
    let expected = tbg_testkit::stratum_prevhash(&prev);
    loop {
        let job = tokio::time::timeout(Duration::from_secs(20), miner.next_job())
            .await
            .expect("a clean job on the expected tip in time");
        if job.clean_jobs && job.prevhash_hex == expected {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_mines_the_primarys_work_fails_over_and_back_and_its_blocks_reach_the_primary() {
    let primary = start_primary().await;
    let port = free_port();
    let link = primary_link(&primary, port).await;
    let relay_node = node_with_chain_of(&primary.node).await;
    let (tap, blocks) = mpsc::channel(16);
    let relay_link = RelayLink::start(relay_config(port, SECRET, 2), blocks);
    let relay = start_relay(relay_node, &relay_link, tap, |_| {}).await;
    wait_for(
        "the relay on the primary's templates",
        Duration::from_secs(20),
        || relay_link.status().source == "primary",
    )
    .await;
    let relays = link.relays();
    assert_eq!(relays.len(), 1);
    assert_eq!(
        (relays[0].region.as_str(), relays[0].instance_id),
        ("eu-west", 2)
    );
    assert_eq!(
        relay_link.status().primary_region.as_deref(),
        Some("us-east")
    );

    // The primary's chain moves on; the relay's own node has not heard of
    // it: the relay's miner mines on the primary's tip.
    let (address, script) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(relay.stratum_addr(), &address).await;
    assert_eq!(
        miner.extranonce1[0], 2,
        "the relay's extranonce1 starts with its instance id"
    );
    let primary_tip = primary.node.mine_blocks(1, &script).await.unwrap()[0];
    miner.job_on(primary_tip).await;
    assert_ne!(relay.node.best_block_hash(), primary_tip);
    relay_block(&primary.node, &relay.node, primary_tip).await;

    // A block found at the relay reaches both regions' nodes; the primary
    // keeps it (origin eu-west) without announcing it as its own.
    let reply = miner.submit_valid(1).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);
    wait_for(
        "the relay's block on the primary's node",
        Duration::from_secs(20),
        || primary.node.best_block_hash() != primary_tip,
    )
    .await;
    let found = primary.node.best_block_hash();
    wait_for(
        "the block on the relay's node",
        Duration::from_secs(20),
        || relay.node.best_block_hash() == found,
    )
    .await;
    wait_for(
        "the primary to say it stored the block",
        Duration::from_secs(20),
        || relay_link.status().blocks_stored_by_primary == 1,
    )
    .await;
    let kept = primary.service.pool.blocks();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].hash, found.to_string());
    assert_eq!(kept[0].origin.as_deref(), Some("eu-west"));
    assert_eq!(kept[0].user, address);
    primary
        .wait_until(
            "the primary's keeper sees it accepted",
            Duration::from_secs(20),
            |env| env.service.pool.blocks()[0].status == BlockStatus::Accepted,
        )
        .await;
    assert!(
        primary.events_of("block_found").is_empty(),
        "the relay region announces its block, the primary does not"
    );
    assert_eq!(relay.events_of("block_found").len(), 1);
    assert_eq!(primary.service.pool.status().blocks_found, 0);

    // The primary goes away: the relay fails over to its own node at once
    // (its link closed), and the miner, still connected, gets clean work.
    link.stop().await;
    wait_for("the failover", Duration::from_secs(15), || {
        relay_link.status().source == "local"
    })
    .await;
    let failovers = relay.events_of("region_failover");
    assert_eq!(failovers.len(), 1);
    let failover = serde_json::to_value(&failovers[0].data).unwrap()["data"].clone();
    assert_eq!(failover["primary"], "us-east", "{failover}");
    // The link closed: a lost primary, no silence to wait for.
    let reason = failover["reason"].as_str().unwrap();
    assert!(
        reason.contains("the link to the primary closed"),
        "{failover}"
    );
    clean_job_on(&mut miner, found).await;
    // Only the relay's own node moves now, and its miner follows it.
    let local_tip = relay.node.mine_blocks(1, &script).await.unwrap()[0];
    miner.job_on(local_tip).await;

    // The primary is back: once it has been steady for failback_after,
    // the relay mines its work again.
    let link = primary_link(&primary, port).await;
    wait_for("the failback", Duration::from_secs(20), || {
        relay_link.status().source == "primary"
    })
    .await;
    let failbacks = relay.events_of("region_failback");
    assert_eq!(failbacks.len(), 1);
    let failback = serde_json::to_value(&failbacks[0].data).unwrap()["data"].clone();
    assert!(failback["steady_s"].as_f64().unwrap() >= 2.0, "{failback}");
    // The primary's node is a block behind the relay's (local_tip was
    // mined here): its work would build on a passed tip, so the miner
    // keeps the local node's tip until the primary has it too.
    wait_for("the primary seen behind", Duration::from_secs(10), || {
        relay_link.status().primary_behind_blocks == 1
    })
    .await;
    relay_block(&relay.node, &primary.node, local_tip).await;
    wait_for("the primary caught up", Duration::from_secs(10), || {
        relay_link.status().primary_behind_blocks == 0
    })
    .await;
    // The primary's template on that tip comes as new work; no job ever
    // went back to the primary's older tip.
    let expected = tbg_testkit::stratum_prevhash(&local_tip);
    let mut jobs = 0;
    while let Ok(job) = tokio::time::timeout(Duration::from_millis(500), miner.next_job()).await {
        assert_eq!(
            job.prevhash_hex, expected,
            "the tip never moved back to the primary's older one"
        );
        jobs += 1;
    }
    assert!(jobs > 0, "work on the local tip after the failback");
    let status = relay_link.status();
    assert_eq!((status.failovers, status.failbacks), (1, 1));
    assert_eq!(
        relay.service.pool.status().connections,
        1,
        "the miner never reconnected"
    );

    relay_link.stop().await;
    link.stop().await;
    relay.shutdown().await;
    primary.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_and_a_taken_instance_id_are_refused_with_their_reason() {
    let primary = start_primary().await;
    let port = free_port();
    let link = primary_link(&primary, port).await;

    let (_tap, blocks) = mpsc::channel(1);
    let impostor = RelayLink::start(
        relay_config(port, b"not the link's secret at all", 2),
        blocks,
    );
    wait_for("the impostor's error", Duration::from_secs(10), || {
        impostor
            .status()
            .last_error
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert!(!impostor.status().connected);
    impostor.stop().await;

    // The primary's own instance id.
    let (_tap, blocks) = mpsc::channel(1);
    let clash = RelayLink::start(relay_config(port, SECRET, 1), blocks);
    wait_for("the clash's error", Duration::from_secs(10), || {
        clash
            .status()
            .last_error
            .is_some_and(|e| e.contains("instance_id 1 is the primary's own"))
    })
    .await;
    clash.stop().await;
    assert!(link.relays().is_empty());
    assert!(
        link.counters()
            .handshakes_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    link.stop().await;
    primary.shutdown().await;
}

/// Stratum V2 in a relay region, on the V1 port: the region's instance id
/// leads the channel's extranonce, its block reaches the primary, and its
/// work follows the failover on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_miner_on_a_relay_mines_for_the_region_and_keeps_mining_through_a_failover() {
    use tbg_sv2::client::{ChannelChoice, ClientConfig, ShareAnswer, Sv2Client};

    let primary = start_primary().await;
    let port = free_port();
    let link = primary_link(&primary, port).await;
    let relay_node = node_with_chain_of(&primary.node).await;
    let (tap, blocks) = mpsc::channel(16);
    let relay_link = RelayLink::start(relay_config(port, SECRET, 2), blocks);
    let key = tbg_sv2::AuthorityKey::generate();
    let relay = start_relay(relay_node, &relay_link, tap, |settings| {
        settings.sv2 = Some(tbg_pool::sv2::Sv2Settings::on_v1_port(key.clone()));
    })
    .await;
    wait_for(
        "the relay on the primary's templates",
        Duration::from_secs(20),
        || relay_link.status().source == "primary",
    )
    .await;

    let (address, script) = regtest_address(AddressKind::P2wpkh);
    let channel = ChannelChoice::Extended {
        min_extranonce_size: 4,
    };
    let config = ClientConfig::new(format!("{address}.v2"), channel);
    let mut client = Sv2Client::connect(relay.stratum_addr(), key.public_bytes(), &config)
        .await
        .expect("a V2 channel on the relay");
    assert_eq!(
        client.channel.extranonce_prefix.first(),
        Some(&2),
        "the relay's instance id leads the channel's extranonce"
    );

    // A block of the V2 miner reaches the primary's node and its table.
    client.wait_for_work().await.unwrap();
    client
        .take_pending(Duration::from_millis(100))
        .await
        .expect("the relay's messages");
    let extranonce = vec![0u8; client.channel.extranonce_size];
    let share = client
        .find_share(&extranonce, 0, 0, 50_000_000, true)
        .expect("a share");
    assert!(share.is_block, "on regtest a share is a block");
    let answer = client.submit_and_wait(&share).await.unwrap();
    assert_eq!(answer, ShareAnswer::Accepted);
    wait_for(
        "the V2 block on the primary's node",
        Duration::from_secs(20),
        || primary.node.best_block_hash() == share.hash,
    )
    .await;
    wait_for(
        "the primary to say it stored the block",
        Duration::from_secs(20),
        || relay_link.status().blocks_stored_by_primary == 1,
    )
    .await;
    let kept = primary.service.pool.blocks();
    assert_eq!(
        (kept[0].user.as_str(), kept[0].origin.as_deref()),
        (address.as_str(), Some("eu-west"))
    );

    // The primary goes away: the V2 miner, still connected, gets the
    // relay's own node's work.
    link.stop().await;
    wait_for("the failover", Duration::from_secs(15), || {
        relay_link.status().source == "local"
    })
    .await;
    let local_tip = relay.node.mine_blocks(1, &script).await.unwrap()[0];
    let wanted = bitcoin::hashes::Hash::to_byte_array(local_tip);
    tokio::time::timeout(Duration::from_secs(20), client.wait_for_tip(wanted))
        .await
        .expect("work on the relay's own tip")
        .expect("the relay's messages");
    assert_eq!(relay.service.pool.status().connections, 1);

    relay_link.stop().await;
    relay.shutdown().await;
    primary.shutdown().await;
}
