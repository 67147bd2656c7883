//! Difficulty nobody else can set (issue 16, item 4), against the real pool
//! on an embedded node: a stranger who authorizes as a victim's worker and
//! suggests an absurd difficulty changes only its own connection; only what
//! the victim's shares earned follows the victim; a flood of suggestions
//! writes a bounded number of `diff_updated` events into the journal; no
//! difficulty passes the maximum or the network difficulty.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_events::EventData;
use tbg_testkit::{
    mine_shares, node_endpoint, regtest_address, test_settings, AddressKind, ManualMiner,
    MinerConfig, MinerEvent, StratumClient, TestEnv,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// An authorized connection as `username` that has read its first difficulty.
async fn authorized(env: &TestEnv, username: &str) -> (StratumClient, f64) {
    let mut client = StratumClient::connect(env.stratum_addr())
        .await
        .expect("connect");
    let reply = client
        .request("mining.subscribe", json!(["attacker/1.0"]))
        .await
        .expect("subscribe answered");
    assert!(reply.is_ok(), "{reply:?}");
    let reply = client
        .request("mining.authorize", json!([username, "x"]))
        .await
        .expect("authorize answered");
    assert!(reply.is_ok(), "{reply:?}");
    let first = client
        .wait_push("mining.set_difficulty")
        .await
        .expect("a difficulty")[0]
        .as_f64()
        .expect("a number");
    (client, first)
}

async fn suggest(client: &mut StratumClient, difficulty: Value) {
    let reply = client
        .request("mining.suggest_difficulty", json!([difficulty]))
        .await
        .expect("suggest answered");
    assert_eq!(reply.result, json!(true), "{reply:?}");
}

/// Closes `client` and waits until the pool has seen it go (its
/// `miner_disconnected`), so the pool's memory is final.
async fn disconnect(env: &TestEnv, client: StratumClient, user: &str, before: usize) {
    drop(client);
    env.wait_until("the pool sees the disconnect", Duration::from_secs(10), |env| {
        env.events_of("miner_disconnected")
            .iter()
            .filter(|e| matches!(&e.data, EventData::MinerDisconnected { user: u, .. } if u == user))
            .count()
            > before
    })
    .await;
}

fn disconnects_of(env: &TestEnv, user: &str) -> usize {
    env.events_of("miner_disconnected")
        .iter()
        .filter(|e| matches!(&e.data, EventData::MinerDisconnected { user: u, .. } if u == user))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn difficulty_poisoning_by_another_connection_never_reaches_the_victim() {
    let env = TestEnv::start().await;
    let start = test_settings().start_difficulty;
    let (victim, _) = regtest_address(AddressKind::P2wpkh);
    let rig = format!("{victim}.rig");

    // The victim mines: vardiff raises its difficulty from its shares.
    let mut config = MinerConfig::new(env.stratum_addr(), rig.clone());
    config.max_accepted = Some(30);
    let (summary, events) = mine_shares(config, Duration::from_secs(120))
        .await
        .expect("the victim mines");
    assert_eq!(summary.accepted, 30);
    let peak = events
        .iter()
        .filter_map(|e| match e {
            MinerEvent::Difficulty(d) => Some(*d),
            _ => None,
        })
        .fold(0.0, f64::max);
    assert!(peak > start, "vardiff raised the victim: {events:?}");
    env.wait_until(
        "the victim's session ended",
        Duration::from_secs(10),
        |env| disconnects_of(env, &victim) >= 1,
    )
    .await;
    // What the victim earned: its next connection starts there.
    let baseline = ManualMiner::connect(env.stratum_addr(), &rig).await;
    let earned = baseline.difficulty;
    assert!(earned > start, "earned {earned} vs start {start}");
    disconnect(
        &env,
        baseline.client,
        &victim,
        disconnects_of(&env, &victim),
    )
    .await;

    // The attacker authorizes as the victim's worker and suggests 1e9, then
    // 1e308 (within the change interval: coalesced), and leaves.
    let (mut attacker, attacker_first) = authorized(&env, &rig).await;
    assert_eq!(
        attacker_first, earned,
        "the attacker gets the earned start, nothing more"
    );
    suggest(&mut attacker, json!(1e9)).await;
    let raised = attacker
        .wait_push("mining.set_difficulty")
        .await
        .expect("the suggestion applies to the attacker's connection")[0]
        .as_f64()
        .unwrap();
    assert_eq!(raised, 1_000_000.0, "capped at the default maxdiff");
    suggest(&mut attacker, json!(1e308)).await;
    disconnect(&env, attacker, &victim, disconnects_of(&env, &victim)).await;

    // A second attacker: mining.configure's minimum-difficulty before authorize.
    let mut configured = StratumClient::connect(env.stratum_addr()).await.unwrap();
    configured
        .request("mining.subscribe", json!([]))
        .await
        .unwrap();
    let reply = configured
        .request(
            "mining.configure",
            json!([["minimum-difficulty"], {"minimum-difficulty.value": 1e9}]),
        )
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let reply = configured
        .request("mining.authorize", json!([rig, "x"]))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let configured_difficulty = configured.wait_push("mining.set_difficulty").await.unwrap()[0]
        .as_f64()
        .unwrap();
    assert_eq!(configured_difficulty, 1_000_000.0);
    disconnect(&env, configured, &victim, disconnects_of(&env, &victim)).await;

    // The victim is back: its own earned difficulty, never the attacker's.
    let mut back = ManualMiner::connect(env.stratum_addr(), &rig).await;
    assert_eq!(back.difficulty, earned, "victim after the attack");
    let reply = back.submit_valid(1).await;
    assert_eq!(reply.result, json!(true), "{:?}", reply.error);

    // A worker name that never mined: the start difficulty, whatever was
    // suggested under it.
    let fresh = format!("{victim}.fresh");
    let (mut attacker, _) = authorized(&env, &fresh).await;
    suggest(&mut attacker, json!(1e9)).await;
    attacker.wait_push("mining.set_difficulty").await.unwrap();
    disconnect(&env, attacker, &victim, disconnects_of(&env, &victim)).await;
    let fresh_miner = ManualMiner::connect(env.stratum_addr(), &fresh).await;
    assert_eq!(fresh_miner.difficulty, start);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_difficulty_exceeds_the_network_difficulty() {
    // A pool minimum under regtest's network difficulty (4.7e-10), so that
    // the network difficulty is the binding cap.
    let env = TestEnv::start_with(|settings| {
        settings.min_difficulty = 1e-12;
        settings.start_difficulty = 1e-12;
        settings.max_difficulty = None;
    })
    .await;
    let network = env
        .service
        .pool
        .current_work()
        .expect("work")
        .network_difficulty;
    assert!(network < 1e-9, "regtest: {network}");
    let (address, _) = regtest_address(AddressKind::P2tr);
    let (mut client, first) = authorized(&env, &format!("{address}.cap")).await;
    assert_eq!(first, 1e-12);
    suggest(&mut client, json!(1e308)).await;
    let capped = client
        .wait_push("mining.set_difficulty")
        .await
        .expect("a new difficulty")[0]
        .as_f64()
        .unwrap();
    assert_eq!(capped, network, "capped at the network difficulty");
    env.shutdown().await;
}

/// Floods one connection with `mining.suggest_difficulty` for `length`
/// (10 lines every 10 ms, alternating far apart) while reading what the
/// pool sends; returns how many `mining.set_difficulty` it received and
/// how many suggestions were answered.
async fn flood(addr: std::net::SocketAddr, username: String, length: Duration) -> (usize, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        let (mut set_difficulty, mut answered) = (0usize, 0usize);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("mining.set_difficulty") {
                set_difficulty += 1;
            } else if line.contains("\"result\":true") {
                answered += 1;
            }
        }
        (set_difficulty, answered)
    });
    let hello = format!(
        "{}\n{}\n",
        json!({"id": 1, "method": "mining.subscribe", "params": []}),
        json!({"id": 2, "method": "mining.authorize", "params": [username, "x"]})
    );
    write.write_all(hello.as_bytes()).await.expect("hello");
    let until = Instant::now() + length;
    let mut id = 10u64;
    while Instant::now() < until {
        let mut batch = String::new();
        for _ in 0..10 {
            id += 1;
            let difficulty = if id.is_multiple_of(2) { 1e9 } else { 1e-4 };
            batch.push_str(&format!(
                "{{\"id\":{id},\"method\":\"mining.suggest_difficulty\",\"params\":[{difficulty}]}}\n"
            ));
        }
        if write.write_all(batch.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(write);
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the pool closes after us")
        .expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggest_flood_writes_a_bounded_number_of_diff_updated_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let journal = tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&path)).unwrap();
    let handle = journal.clone();
    let node = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let endpoint = node_endpoint(&node);
    let mut settings = test_settings();
    // The worst case: no per-connection request limit stops the flood
    // first; only the difficulty change interval bounds it.
    settings.limits.other_requests_per_minute = 0;
    settings.limits.protocol_errors_per_minute = 0;
    let interval = settings.difficulty_change_interval;
    let env = TestEnv::start_pool_with(node, vec![endpoint], settings, Some(journal)).await;

    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let length = Duration::from_secs(8);
    // Four connections at ~1000 suggestions a second each, as in the issue.
    let floods: Vec<_> = (0..4)
        .map(|i| tokio::spawn(flood(env.stratum_addr(), format!("{address}.f{i}"), length)))
        .collect();
    // An honest miner meanwhile: its shares are accepted.
    let (honest, _) = regtest_address(AddressKind::P2tr);
    let mut config = MinerConfig::new(env.stratum_addr(), format!("{honest}.honest"));
    config.max_accepted = Some(5);
    let (summary, _) = mine_shares(config, Duration::from_secs(60))
        .await
        .expect("honest miner runs");
    assert_eq!(summary.accepted, 5, "{summary:?}");
    let mut lines = Vec::new();
    for flood in floods {
        lines.push(flood.await.unwrap());
    }
    // One initial difficulty, then at most one change per interval (and a
    // waiting one applied at the end).
    let bound = 2 + (length.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    for (i, (count, answered)) in lines.iter().enumerate() {
        assert!(
            *answered >= 2_000,
            "connection {i}: only {answered} suggestions answered"
        );
        assert!(
            (2..=bound).contains(count),
            "connection {i}: {count} set_difficulty (bound {bound}): {lines:?}"
        );
    }
    env.wait_until("all four closed", Duration::from_secs(10), |env| {
        disconnects_of(env, &address) >= 4
    })
    .await;
    handle
        .wait_committed(handle.stats().staged_seq)
        .await
        .unwrap();
    let reader = tbg_journal::JournalReader::open(&path).unwrap();
    let diff_updated = reader
        .read_after(0, 1_000_000)
        .unwrap()
        .iter()
        .filter(|r| r.event_type == "diff_updated")
        .filter_map(|r| r.event().ok())
        .filter(|e| matches!(&e.data, EventData::DiffUpdated { user, .. } if *user == address))
        .count();
    assert!(
        (4..=4 * (bound - 1)).contains(&diff_updated),
        "{diff_updated} diff_updated in the journal for ~32,000 suggestions"
    );
    env.shutdown().await;
}
