//! Webhooks against a real HTTP receiver (`tbg_testkit::webhook`: axum on
//! a free port, checking each signature with the HMAC crate directly, as a
//! receiver written from the Standard Webhooks specification would) and
//! the real pool: the embedded node, the journal, a CPU miner.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tbg_miner::{mine_shares, MinerConfig};
use tbg_notify::{DeliverySettings, Endpoint, Notifier, SigningKey};
use tbg_testkit::webhook::{unix_now, Receiver, KEY};
use tbg_testkit::{node_endpoint, regtest_address, test_settings, AddressKind, TestEnv};

fn endpoint(name: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        name: name.into(),
        url: format!("http://{addr}/hook/secret-token"),
        key: SigningKey::new(KEY.to_vec()),
        kinds: Vec::new(),
        addresses: Vec::new(),
    }
}

fn settings(journal: &Path, offline_after_s: u64) -> DeliverySettings {
    DeliverySettings {
        journal: journal.to_owned(),
        cursor_dir_prefix: journal.to_owned(),
        worker_offline_after_s: offline_after_s,
        retry_max: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        batch: 500,
        idle_poll: Duration::from_millis(20),
    }
}

/// Node, pool (maturity 2 confirmations) and journal.
async fn pool_with_journal(dir: &Path) -> TestEnv {
    tbg_testkit::init_tracing();
    let journal_path = dir.join("journal.db");
    let journal =
        tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&journal_path)).unwrap();
    let node = tbg_devnode::DevNode::start(tbg_devnode::DevNodeOptions::default())
        .await
        .unwrap();
    let mut pool_settings = test_settings();
    pool_settings.block_maturity = 2;
    let endpoint = node_endpoint(&node);
    TestEnv::start_pool_with(node, vec![endpoint], pool_settings, Some(journal)).await
}

async fn mine_one_block(env: &TestEnv, address: &str) {
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.rig"));
    config.max_blocks = Some(1);
    let (summary, _) = mine_shares(config, Duration::from_secs(60)).await.unwrap();
    assert_eq!(summary.block_candidates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_found_block_reaches_the_receiver_signed_within_a_second_then_its_fate() {
    let dir = tempfile::tempdir().unwrap();
    let env = pool_with_journal(dir.path()).await;
    let (receiver, addr, server) = Receiver::start(0).await;
    let (other_receiver, other_addr, other_server) = Receiver::start(0).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut someone_else = endpoint("someone-else", other_addr);
    someone_else.addresses = vec!["bcrt1qsomeoneelse".into()];
    let notifier = Notifier::start(
        vec![endpoint("ops", addr), someone_else],
        settings(&dir.path().join("journal.db"), 0),
    )
    .unwrap();

    mine_one_block(&env, &address).await;
    // `block_found` is durable before the block is submitted: the node has
    // it once `block_submitted` says accepted. (On regtest half the nonces
    // are blocks, so the miner may have had a second one in flight, at the
    // same height: each gets its own notice.)
    let submitted = receiver
        .wait_for("block_submitted", 1, Duration::from_secs(10))
        .await;
    assert!(submitted
        .iter()
        .any(|notice| notice.body["data"]["status"] == "accepted"));
    let best = env.node.best_block_hash().to_string();
    let found = receiver
        .wait_for("block_found", 1, Duration::from_secs(10))
        .await;
    let notice = found
        .iter()
        .find(|notice| notice.body["data"]["hash"] == best.as_str())
        .expect("a block_found notice for the node's new tip");
    let event = env
        .events_of("block_found")
        .into_iter()
        .find(|event| event.id == notice.id)
        .expect("webhook-id is the event id");
    let delay = notice.at - event.ts;
    assert!(delay < 1.0, "received {delay:.3} s after the block");
    let data = &notice.body["data"];
    assert_eq!(data["user"], address.as_str());
    assert_eq!(data["worker"], "rig");
    assert_eq!(data["height"], u64::from(env.node.block_count()));
    let event_json = serde_json::to_value(&event).unwrap();
    for key in ["hash", "height", "reward_sats", "diff"] {
        assert_eq!(data[key], event_json["data"][key], "{key}");
    }
    assert_eq!(data["event_id"], event.id.as_str());
    assert!(notice.body["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Two more blocks on top: the found block is mature (2 here).
    let (_, other) = regtest_address(AddressKind::P2tr);
    env.node.mine_blocks(2, &other).await.unwrap();
    let confirmed = receiver
        .wait_for("block_confirmed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(confirmed[0].body["data"]["hash"], data["hash"]);

    assert!(
        other_receiver.received.lock().unwrap().is_empty(),
        "an endpoint for another address hears nothing"
    );
    let mut notice_ids: Vec<String> = receiver
        .of_kind("block_found")
        .into_iter()
        .map(|notice| notice.id)
        .collect();
    let mut event_ids: Vec<String> = env
        .events_of("block_found")
        .into_iter()
        .map(|event| event.id)
        .collect();
    notice_ids.sort();
    event_ids.sort();
    assert_eq!(notice_ids, event_ids, "each block_found event noticed once");
    notifier.shutdown().await;
    server.abort();
    other_server.abort();
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_notice_later_and_a_restart_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let env = pool_with_journal(dir.path()).await;
    let (receiver, addr, server) = Receiver::start(2).await;
    let mut blocks_only = endpoint("ops", addr);
    blocks_only.kinds = vec!["block_found".into()];
    let notifier = Notifier::start(vec![blocks_only.clone()], settings(&journal, 0)).unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    mine_one_block(&env, &address).await;
    receiver
        .wait_for("block_found", 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        *receiver.attempts.lock().unwrap(),
        3,
        "two 503s, then taken"
    );
    let stats = notifier.stats()[0].1.clone();
    assert_eq!(
        stats
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    notifier.shutdown().await;

    // A second block while the notifier is stopped, then a restart: only
    // the new one is sent.
    mine_one_block(&env, &address).await;
    env.wait_until("two block_found events", Duration::from_secs(10), |env| {
        env.events_of("block_found").len() == 2
    })
    .await;
    let notifier = Notifier::start(vec![blocks_only], settings(&journal, 0)).unwrap();
    let found = receiver
        .wait_for("block_found", 2, Duration::from_secs(10))
        .await;
    let ids: Vec<String> = env
        .events_of("block_found")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(found.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), ids);
    // Nothing else arrives: no duplicate, no other type.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), 2);
    notifier.shutdown().await;
    server.abort();
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_submitting_is_reported_offline_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = pool_with_journal(dir.path()).await;
    let (receiver, addr, server) = Receiver::start(0).await;
    let notifier = Notifier::start(
        vec![endpoint("ops", addr)],
        settings(&dir.path().join("journal.db"), 2),
    )
    .unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.attic"));
    config.max_accepted = Some(3);
    let (summary, _) = mine_shares(config, Duration::from_secs(60)).await.unwrap();
    assert!(summary.accepted >= 3);
    let stopped = unix_now();
    let offline = receiver
        .wait_for("worker_offline", 1, Duration::from_secs(10))
        .await;
    assert!(offline[0].at - stopped >= 1.0, "not before it was quiet");
    assert_eq!(offline[0].body["data"]["user"], address.as_str());
    assert_eq!(offline[0].body["data"]["worker"], "attic");
    assert!(offline[0].id.starts_with("worker_offline_"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.of_kind("worker_offline").len(), 1, "once");
    notifier.shutdown().await;
    server.abort();
    env.shutdown().await;
}
