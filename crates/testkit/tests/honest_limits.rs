//! What the abuse limits must never do to honest miners, against the real
//! pool and the embedded kernel node (issue 16 review): a fast miner over
//! the submit limit is neither closed nor banned, its difficulty still
//! rises and a block in its burst is submitted; a farm behind one address
//! reconnecting all at once is served over time, never banned; and a
//! source that is really abusive is still banned, until the ban expires.
//!
//! Sources: every test has 127.0.0.x addresses of its own (all of
//! 127.0.0.0/8 is this host's on Linux) and the default limits for every
//! source, loopback included.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use serde_json::{json, Value};
use tbg_events::EventData;
use tbg_miner::MinerError;
use tbg_pool::limits::{LimitKind, LimitSettings};
use tbg_pool::{BlockStatus, PoolSettings};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, StratumClient, TestEnv};

/// Regtest's network difficulty is ~4.66e-10: below it a share can be
/// valid without being a block (every hash meets 1e-10, about half are
/// blocks), so a test can send plain shares and one block at will.
const BELOW_NETWORK: f64 = 1e-10;

const FARM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const ABUSER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
const BANNED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
/// How long past a configured timeout the pool may take to act on it.
const SLACK: Duration = Duration::from_secs(3);

async fn start(adjust: impl FnOnce(&mut PoolSettings)) -> TestEnv {
    TestEnv::start_with(|settings| {
        settings.limits = LimitSettings::default();
        adjust(settings);
    })
    .await
}

/// A pool whose miners start below the network difficulty.
async fn start_below_network(adjust: impl FnOnce(&mut PoolSettings)) -> TestEnv {
    start(|settings| {
        settings.min_difficulty = BELOW_NETWORK;
        settings.start_difficulty = BELOW_NETWORK;
        adjust(settings);
    })
    .await
}

fn refusals(env: &TestEnv, kind: LimitKind) -> u64 {
    env.service.pool.counters().limit_refusals(kind)
}

fn bans(env: &TestEnv) -> u64 {
    tbg_pool::PoolCounters::get(&env.service.pool.counters().ip_bans)
}

fn error_text(message: &Value) -> String {
    message["error"][1].as_str().unwrap_or_default().to_string()
}

fn is_rate_limited(answer: &Value) -> bool {
    error_text(answer).contains("Rate limit")
}

/// One `mining.submit` line of `miner` on its current job.
fn submit_line(miner: &ManualMiner, id: u64, extranonce2: &[u8], nonce: u32) -> String {
    let en2: String = extranonce2.iter().map(|b| format!("{b:02x}")).collect();
    let mut line = json!({"id": id, "method": "mining.submit", "params": [
        miner.username, miner.job.job_id, en2,
        format!("{:08x}", miner.job.ntime), format!("{nonce:08x}")]})
    .to_string();
    line.push('\n');
    line
}

/// A share on the miner's job that is valid at 1e-10 and not a block.
fn plain_share(miner: &ManualMiner, counter: u64) -> (Vec<u8>, u32) {
    let extranonce2 = miner.extranonce2(counter);
    let job = &miner.job;
    let nonce = job.find_failing_nonce(
        &miner.extranonce1,
        &extranonce2,
        job.ntime,
        job.version,
        4e-10,
    );
    (extranonce2, nonce)
}

/// A block share on the miner's job, with its hash.
fn block_share(miner: &ManualMiner, counter: u64) -> (Vec<u8>, u32, BlockHash) {
    let extranonce2 = miner.extranonce2(counter);
    let job = &miner.job;
    let (nonce, hash) = job
        .find_nonce(
            &miner.extranonce1,
            &extranonce2,
            job.ntime,
            job.version,
            1e-6,
            0,
        )
        .expect("regtest blocks are easy");
    (extranonce2, nonce, BlockHash::from_byte_array(hash))
}

/// What the pool sent back for a batch of submits.
#[derive(Default)]
struct Answers {
    /// Answers (not pushes), in order.
    answers: Vec<Value>,
    /// Every `mining.set_difficulty` pushed meanwhile.
    difficulties: Vec<f64>,
}

impl Answers {
    /// Sends `lines` and reads one answer per line; panics if the pool
    /// closes the connection first.
    async fn exchange(&mut self, client: &mut StratumClient, lines: &[String]) {
        client
            .send_raw(lines.concat().as_bytes())
            .await
            .expect("the pool reads");
        client.timeout = Duration::from_secs(10);
        let target = self.answers.len() + lines.len();
        while self.answers.len() < target {
            match client.read_message().await {
                Ok(push) if push.get("method").is_some_and(|m| !m.is_null()) => {
                    if push["method"] == "mining.set_difficulty" {
                        self.difficulties.extend(push["params"][0].as_f64());
                    }
                }
                Ok(answer) => {
                    let closing = error_text(&answer).contains("closing");
                    self.answers.push(answer);
                    assert!(!closing, "closed: {:?}", self.answers.last());
                }
                Err(MinerError::Closed | MinerError::Io(_)) => panic!(
                    "the pool closed a fast honest miner after {} answers",
                    self.answers.len()
                ),
                Err(other) => panic!("no answer: {other}"),
            }
        }
    }

    fn count(&self, f: impl Fn(&Value) -> bool) -> usize {
        self.answers.iter().filter(|a| f(a)).count()
    }
}

fn accepted(answer: &Value) -> bool {
    answer["result"] == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_miner_over_the_submit_limit_is_kept_and_its_block_in_the_burst_is_submitted() {
    // An ASIC at a low start difficulty: far above 1000 shares a minute
    // until vardiff has raised its difficulty.
    let env = start_below_network(|_| {}).await;
    let (address, script) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.s19")).await;
    assert!(miner.difficulty < 2e-10, "starts at {}", miner.difficulty);
    let started = Instant::now();
    let mut answers = Answers::default();
    // 1,200 shares in a second or so, in chunks the way a miner sends
    // them, all on the first job (valid at its difficulty whatever
    // vardiff does meanwhile).
    let mut counter = 0u64;
    for _ in 0..12 {
        let lines: Vec<String> = (0..100)
            .map(|_| {
                counter += 1;
                let (en2, nonce) = plain_share(&miner, counter);
                submit_line(&miner, counter, &en2, nonce)
            })
            .collect();
        answers.exchange(&mut miner.client, &lines).await;
    }
    // Then a block, right after shares that are over the limit.
    let mut lines: Vec<String> = (0..50)
        .map(|_| {
            counter += 1;
            let (en2, nonce) = plain_share(&miner, counter);
            submit_line(&miner, counter, &en2, nonce)
        })
        .collect();
    let (en2, nonce, hash) = block_share(&miner, 1_000_000);
    lines.push(submit_line(&miner, 1_000_000, &en2, nonce));
    answers.exchange(&mut miner.client, &lines).await;
    let took = started.elapsed();

    let block_answer = answers.answers.last().unwrap();
    assert!(
        accepted(block_answer),
        "the block over the limit: {block_answer}"
    );
    let before_block = &answers.answers[answers.answers.len() - 2];
    assert!(
        is_rate_limited(before_block),
        "the share before the block was over the limit: {before_block}"
    );
    // 1,000 a minute: a burst of 1,000, then one every 60 ms.
    let credited = answers.count(accepted);
    let limited = answers.count(is_rate_limited);
    let allowed = 1000 + (took.as_millis() / 60) as usize + 1;
    assert!(
        (1001..=allowed + 1).contains(&credited),
        "{credited} credited in {took:?}"
    );
    assert_eq!(
        credited + limited,
        1251,
        "every other answer: the rate limit"
    );
    // Its difficulty rose (to the network's, the cap on regtest).
    assert!(
        answers.difficulties.iter().any(|d| *d > 2e-10),
        "difficulties pushed: {:?}",
        answers.difficulties
    );
    // Not closed, not banned, no strike; a refusal of kind submit_rate each.
    assert_eq!(refusals(&env, LimitKind::ProtocolErrors), 0);
    assert_eq!(refusals(&env, LimitKind::InvalidShares), 0);
    assert_eq!(refusals(&env, LimitKind::SubmitRate), limited as u64);
    assert_eq!(bans(&env), 0);
    assert_eq!(env.service.pool.status().connections, 1);
    let reply = miner
        .client
        .request("mining.suggest_difficulty", json!([1e-10]))
        .await
        .expect("the connection is open");
    assert!(reply.is_ok(), "{reply:?}");
    // The block reached the node, paying the miner, and was found once.
    env.wait_until("the node has the block", Duration::from_secs(20), |env| {
        env.node.get_block(&hash).is_some()
    })
    .await;
    let block = env.node.get_block(&hash).unwrap();
    assert_eq!(block.txdata[0].output[0].script_pubkey, script);
    env.wait_until("the block accepted", Duration::from_secs(20), |env| {
        env.service
            .pool
            .blocks()
            .iter()
            .any(|b| b.hash == hash.to_string() && b.status == BlockStatus::Accepted)
    })
    .await;
    let found = env
        .events_of("block_found")
        .into_iter()
        .filter(
            |e| matches!(&e.data, EventData::BlockFound { hash: h, .. } if *h == hash.to_string()),
        )
        .count();
    assert_eq!(found, 1);
    // The journal holds one share event per credited share and none for
    // the rate-limited ones: the limit still bounds what a miner writes.
    let share_events = env
        .events_of("share_submitted")
        .into_iter()
        .filter(|e| matches!(&e.data, EventData::ShareSubmitted { user, .. } if *user == address))
        .count();
    assert_eq!(share_events, credited);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_over_the_submit_limit_still_raise_the_difficulty() {
    // 10 a minute: fewer shares than vardiff needs to see a burst (16), so
    // only the shares over the limit can raise the difficulty.
    let env = start_below_network(|settings| settings.limits.submits_per_minute = 10).await;
    let (address, _) = regtest_address(AddressKind::P2tr);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    let lines: Vec<String> = (1..=100)
        .map(|counter| {
            let (en2, nonce) = plain_share(&miner, counter);
            submit_line(&miner, counter, &en2, nonce)
        })
        .collect();
    let mut answers = Answers::default();
    answers.exchange(&mut miner.client, &lines).await;
    let credited = answers.count(accepted);
    assert!((10..=11).contains(&credited), "{credited} credited");
    assert_eq!(answers.count(is_rate_limited), 100 - credited);
    assert!(
        answers.difficulties.iter().any(|d| *d > 2e-10),
        "no retarget: {:?}",
        answers.difficulties
    );
    let raised = env.events_of("diff_updated").into_iter().any(|e| {
        matches!(&e.data, EventData::DiffUpdated { user, new_diff, .. } if *user == address && *new_diff > 2e-10)
    });
    assert!(raised, "a diff_updated event for the rise");
    assert_eq!(refusals(&env, LimitKind::ProtocolErrors), 0);
    assert_eq!(env.service.pool.status().connections, 1);
    env.shutdown().await;
}

/// Connects from `local`, subscribes and authorizes as `username`: the
/// client, or `None` when the pool closed the connection unanswered (a
/// per-source limit).
async fn try_miner(addr: SocketAddr, local: IpAddr, username: &str) -> Option<StratumClient> {
    let mut client = StratumClient::connect_from(addr, Some(local)).await.ok()?;
    client.timeout = Duration::from_secs(5);
    match client
        .request("mining.subscribe", json!(["farm/1.0"]))
        .await
    {
        Ok(reply) => assert!(reply.is_ok(), "{reply:?}"),
        Err(MinerError::Closed | MinerError::Io(_)) => return None,
        Err(other) => panic!("subscribe: {other}"),
    }
    let reply = client
        .request("mining.authorize", json!([username, "x"]))
        .await
        .expect("authorize answered");
    assert!(reply.is_ok(), "{reply:?}");
    Some(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_miners_behind_one_address_reconnecting_at_once_are_served_and_never_banned() {
    // A farm whose operator raised the concurrency limit for it, but not
    // the connect rate (40 a minute here, to keep the test short: a burst
    // of 40, then one every 1.5 s). After a pool restart all 60 reconnect
    // at once and retry every second until served.
    let env = start(|settings| {
        settings.limits.max_connections_per_ip = 100;
        settings.limits.connects_per_minute_per_ip = 40;
    })
    .await;
    let addr = env.stratum_addr();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let started = Instant::now();
    let mut miners = tokio::task::JoinSet::new();
    for n in 0..60 {
        let username = format!("{address}.rig{n}");
        miners.spawn(async move {
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                if let Some(client) = try_miner(addr, FARM, &username).await {
                    return (client, attempts);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let mut served = Vec::new();
    let mut retries = 0;
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(90), miners.join_next())
        .await
        .ok()
        .flatten()
    {
        let (client, attempts) = joined.expect("miner task");
        served.push(client);
        retries += attempts - 1;
        assert_eq!(bans(&env), 0, "the farm was banned");
    }
    assert_eq!(served.len(), 60, "served in {:?}", started.elapsed());
    // Refused many more times than the ban threshold (10 a minute), and
    // yet never banned.
    assert!(retries > 20, "{retries} retries");
    assert!(refusals(&env, LimitKind::ConnectRate) >= u64::from(retries));
    assert_eq!(refusals(&env, LimitKind::Banned), 0);
    assert_eq!(bans(&env), 0);
    assert_eq!(env.service.pool.status().miners, 60);
    drop(served);
    env.shutdown().await;
}

/// One connection from `local` that floods unknown methods: true when the
/// pool answered and closed it for protocol errors (a strike), false when
/// it refused the connection unanswered (a per-source limit, or a ban).
async fn abusive_connection(addr: SocketAddr, local: IpAddr) -> bool {
    let flood: String = (0..25)
        .map(|n| format!("{{\"id\":{n},\"method\":\"mining.nonsense\",\"params\":[]}}\n"))
        .collect();
    let Ok(mut client) = StratumClient::connect_from(addr, Some(local)).await else {
        return false;
    };
    client.timeout = Duration::from_secs(5);
    let _ = client.send_raw(flood.as_bytes()).await;
    let mut closed_for_errors = false;
    while let Ok(answer) = client.read_message().await {
        closed_for_errors |= error_text(&answer).contains("protocol errors");
    }
    closed_for_errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_connections_are_closed_for_abuse_is_still_banned() {
    let env = start(|_| {}).await;
    let addr = env.stratum_addr();
    let started = Instant::now();
    let mut closed_for_abuse = 0;
    // Each connection the connect rate lets in floods unknown methods and
    // is closed for it: 10 at once, one every 6 s after. The 11th closure
    // within a minute starts the ban.
    while bans(&env) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not banned after {closed_for_abuse} closures"
        );
        if abusive_connection(addr, ABUSER).await {
            closed_for_abuse += 1;
        } else {
            // Refused at the connect rate: not a strike. Knock again.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The strike is taken when the pool has released the connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed_for_abuse, 11);
    assert_eq!(bans(&env), 1);
    // Banned now: refused at once, whatever it sends; the neighbour is not.
    let before = refusals(&env, LimitKind::Banned);
    assert!(try_miner(addr, ABUSER, "x").await.is_none());
    env.wait_until("the ban refusal counted", Duration::from_secs(5), |env| {
        refusals(env, LimitKind::Banned) > before
    })
    .await;
    let (address, _) = regtest_address(AddressKind::P2pkh);
    assert!(try_miner(addr, NEIGHBOUR, &format!("{address}.ok"))
        .await
        .is_some());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_ban_expires() {
    let ban = Duration::from_secs(3);
    let env = start(|settings| {
        settings.limits.ban_duration = ban;
        settings.limits.ban_after_refusals_per_minute = 2;
    })
    .await;
    let addr = env.stratum_addr();
    // Three connections closed for protocol errors: the third is one
    // strike too many.
    for _ in 0..3 {
        assert!(abusive_connection(addr, BANNED).await);
    }
    env.wait_until("the ban", Duration::from_secs(5), |env| bans(env) == 1)
        .await;
    let banned_at = Instant::now();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let username = format!("{address}.back");
    assert!(try_miner(addr, BANNED, &username).await.is_none());
    // Knock until let in.
    let served = loop {
        if let Some(client) = try_miner(addr, BANNED, &username).await {
            break client;
        }
        assert!(banned_at.elapsed() < ban + SLACK, "still banned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(banned_at.elapsed() >= ban - Duration::from_millis(500));
    drop(served);
    assert_eq!(bans(&env), 1);
    env.shutdown().await;
}
