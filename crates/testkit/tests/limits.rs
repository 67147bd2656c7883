//! The plan's abuse limits against the real pool, with the default figures:
//! each attack is refused beyond its limit while an honest miner from
//! another source mines on, its shares and stats untouched.
//!
//! Sources: the attacker is 127.0.0.1, the honest miner 127.0.0.2 (all of
//! 127.0.0.0/8 is this host's on Linux). The IPv6 /64 sweep adds addresses
//! of a documentation /64 to `lo` (needs root; skipped, loudly, without).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tbg_events::EventData;
use tbg_miner::cpu::run_miner;
use tbg_miner::{MinerError, MinerSummary};
use tbg_pool::limits::{LimitKind, LimitSettings};
use tbg_pool::PoolSettings;
use tbg_testkit::{regtest_address, AddressKind, MinerConfig, StratumClient, TestEnv};
use tokio::sync::watch;

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
/// How long past a configured timeout the pool may take to act on it.
const SLACK: Duration = Duration::from_secs(3);

/// The pool with the default limits for every source, loopback included.
async fn start(adjust: impl FnOnce(&mut PoolSettings)) -> TestEnv {
    TestEnv::start_with(|settings| {
        settings.limits = LimitSettings::default();
        adjust(settings);
    })
    .await
}

/// An honest miner mining from `local` until [`Honest::finish`].
struct Honest {
    address: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<MinerSummary, MinerError>>,
}

impl Honest {
    fn start(env: &TestEnv, local: IpAddr) -> Honest {
        let (address, _) = regtest_address(AddressKind::P2wpkh);
        let mut config = MinerConfig::new(env.stratum_addr(), format!("{address}.honest"));
        config.local_ip = Some(local);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_miner(config, stop_rx, None));
        Honest {
            address,
            stop,
            task,
        }
    }

    /// Waits for `shares` accepted shares in all, stops the miner, and
    /// checks that the pool's stats of the worker are exactly what the
    /// miner saw: nothing an attacker did was counted against it.
    async fn finish(self, env: &TestEnv, shares: u64) -> MinerSummary {
        let user = |env: &TestEnv| env.service.pool.stats().user(&self.address, Instant::now());
        env.wait_until(
            "the honest miner's shares",
            Duration::from_secs(60),
            |env| user(env).is_some_and(|u| u.shares_accepted >= shares),
        )
        .await;
        assert!(!self.task.is_finished(), "the honest miner was cut off");
        let _ = self.stop.send(true);
        let summary = self
            .task
            .await
            .expect("miner task")
            .expect("the honest miner ran without an error");
        // The miner stops without waiting for the answers to the shares it
        // had in flight: the pool may have judged those too, and nothing
        // else may be counted.
        let settled = |env: &TestEnv| {
            user(env).is_some_and(|u| {
                u.shares_accepted + u.shares_rejected >= summary.accepted + summary.rejected
            })
        };
        env.wait_until("stats settled", Duration::from_secs(5), settled)
            .await;
        let snapshot = user(env).expect("honest user known");
        assert!(
            snapshot.shares_accepted >= summary.accepted
                && snapshot.shares_rejected >= summary.rejected
                && snapshot.shares_accepted + snapshot.shares_rejected
                    <= summary.accepted + summary.rejected + summary.unanswered,
            "the pool counted only the honest miner's own shares: {snapshot:?} {summary:?}"
        );
        assert_eq!(
            snapshot.workers.len(),
            1,
            "only its own worker: {snapshot:?}"
        );
        let rejected_events = env
            .events_of("share_submitted")
            .into_iter()
            .filter(|e| {
                matches!(&e.data, EventData::ShareSubmitted { user, accepted: false, .. } if *user == self.address)
            })
            .count() as u64;
        assert!(
            (summary.rejected..=summary.rejected + summary.unanswered).contains(&rejected_events),
            "{rejected_events} rejected share events, {summary:?}"
        );
        summary
    }
}

/// Outcome of one flood connection.
enum Fate {
    Served(StratumClient),
    Refused,
}

/// Connects from `local` and asks for a subscription: served, or closed
/// without an answer.
async fn try_connect(addr: SocketAddr, local: IpAddr) -> Fate {
    let Ok(mut client) = StratumClient::connect_from(addr, Some(local)).await else {
        return Fate::Refused;
    };
    client.timeout = Duration::from_secs(5);
    match client.request("mining.subscribe", json!(["flood"])).await {
        Ok(reply) if reply.is_ok() => Fate::Served(client),
        Ok(reply) => panic!("a subscribe refused with an answer: {reply:?}"),
        Err(MinerError::Closed | MinerError::Io(_)) => Fate::Refused,
        Err(other) => panic!("flood connection: {other}"),
    }
}

/// `total` connections from `locals` (round robin), `burst` at a time;
/// the served ones are kept open.
async fn flood(
    addr: SocketAddr,
    locals: &[IpAddr],
    total: usize,
    burst: usize,
) -> (Vec<StratumClient>, usize) {
    let mut served = Vec::new();
    let mut refused = 0;
    let mut next = 0;
    while next < total {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..burst.min(total - next) {
            let local = locals[next % locals.len()];
            next += 1;
            set.spawn(try_connect(addr, local));
        }
        while let Some(fate) = set.join_next().await {
            match fate.expect("flood task") {
                Fate::Served(client) => served.push(client),
                Fate::Refused => refused += 1,
            }
        }
    }
    (served, refused)
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

/// Reads `count` answers (not pushes) into `into`; false when the pool
/// closed the connection first.
async fn read_answers(client: &mut StratumClient, count: usize, into: &mut Vec<Value>) -> bool {
    client.timeout = Duration::from_secs(10);
    let target = into.len() + count;
    while into.len() < target {
        match client.read_message().await {
            Ok(message) if message.get("method").is_some_and(|m| !m.is_null()) => {}
            Ok(message) => into.push(message),
            Err(MinerError::Closed | MinerError::Io(_)) => return false,
            Err(other) => panic!("no answer: {other}"),
        }
    }
    true
}

/// Reads answers (not pushes) until the pool closes the connection.
async fn answers_until_closed(client: &mut StratumClient, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        client.timeout = deadline.saturating_duration_since(Instant::now());
        match client.read_message().await {
            Ok(message) if message.get("method").is_some_and(|m| !m.is_null()) => {}
            Ok(message) => seen.push(message),
            Err(MinerError::Closed | MinerError::Io(_)) => return seen,
            Err(other) => panic!(
                "still open after {limit:?} ({other}); {} answers",
                seen.len()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_from_one_source_is_refused_while_another_mines() {
    let env = start(|_| {}).await;
    let honest = Honest::start(&env, HONEST);
    let started = Instant::now();
    let (served, refused) = flood(env.stratum_addr(), &[ATTACKER], 2000, 100).await;
    let took = started.elapsed();
    // A burst of 10, plus one per 6 s while the flood lasts.
    let allowed = 10 + took.as_secs() as usize / 6 + 1;
    assert!(
        served.len() <= allowed,
        "{} served in {took:?}",
        served.len()
    );
    assert_eq!(served.len() + refused, 2000);
    assert_eq!(refusals(&env, LimitKind::ConnectRate), refused as u64);
    // Refused connections are not strikes (a farm reconnecting at once
    // must not be banned, see honest_limits.rs): each costs the pool an
    // accept and a close, so a pure flood needs no ban.
    assert_eq!(bans(&env), 0);
    // Still limited: a new burst from it gets at most what refilled.
    let (more, _) = flood(env.stratum_addr(), &[ATTACKER], 20, 20).await;
    assert!(more.len() <= 2, "{} of 20 more served", more.len());
    assert!(matches!(
        try_connect(env.stratum_addr(), HONEST).await,
        Fate::Served(_)
    ));
    drop((served, more));
    honest.finish(&env, 3).await;
    env.shutdown().await;
}

/// Addresses added to `lo` for the test, removed on drop.
struct LoopbackAddresses(Vec<Ipv6Addr>);

impl LoopbackAddresses {
    fn add(ips: impl IntoIterator<Item = Ipv6Addr>) -> Option<LoopbackAddresses> {
        let mut added = LoopbackAddresses(Vec::new());
        for ip in ips {
            let status = std::process::Command::new("ip")
                .args([
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])
                .stderr(std::process::Stdio::null())
                .status();
            if !status.is_ok_and(|s| s.success()) {
                return None;
            }
            added.0.push(ip);
        }
        Some(added)
    }
}

impl Drop for LoopbackAddresses {
    fn drop(&mut self) {
        for ip in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["-6", "addr", "del", &format!("{ip}/128"), "dev", "lo"])
                .status();
        }
    }
}

/// The addresses `hosts` on `lo`, a pool on `[::1]` and an honest miner
/// there; `None` (the test skipped, loudly) without root, `unit_test`
/// naming where the same keying is tested without it.
async fn ipv6_sweep(
    hosts: impl IntoIterator<Item = Ipv6Addr>,
    unit_test: &str,
) -> Option<(LoopbackAddresses, TestEnv, Honest, Vec<IpAddr>)> {
    let Some(addresses) = LoopbackAddresses::add(hosts) else {
        eprintln!(
            "SKIPPED: cannot add IPv6 addresses to lo (needs root); the keying is \
             unit-tested in tbg-pool ({unit_test})"
        );
        return None;
    };
    let env = start(|settings| {
        settings.stratum_bind = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    })
    .await;
    let honest = Honest::start(&env, IpAddr::V6(Ipv6Addr::LOCALHOST));
    let locals = addresses.0.iter().copied().map(IpAddr::V6).collect();
    Some((addresses, env, honest, locals))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_addresses_of_one_ipv6_64_is_limited_as_one_source() {
    // A /64 of its own per run, so parallel runs do not share a source.
    let prefix = (std::process::id() & 0xffff) as u16;
    let hosts = (1..=40).map(|host| Ipv6Addr::new(0x2001, 0xdb8, 0x7b6, prefix, 0, 0, 0, host));
    let Some((addresses, env, honest, locals)) =
        ipv6_sweep(hosts, "limits::tests::ipv6_sources_are_keyed_by_their_64").await
    else {
        return;
    };
    // Each connection from another address of the same /64, as an attacker
    // holding a /64 would.
    let (served, refused) = flood(env.stratum_addr(), &locals, 40, 40).await;
    assert!(served.len() <= 11, "{} of 40 served", served.len());
    assert_eq!(served.len() + refused, 40);
    assert_eq!(
        refusals(&env, LimitKind::ConnectRate),
        refused as u64,
        "the /64 is one source, at one connect rate"
    );
    // The pool remembers two sources: the /64 and ::1.
    assert_eq!(
        tbg_pool::PoolCounters::get(&env.service.pool.counters().ip_sources),
        2
    );
    drop(served);
    honest.finish(&env, 3).await;
    env.shutdown().await;
    drop(addresses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_64s_of_one_ipv6_48_is_limited_as_one_site() {
    // A /48 of its own per run (the /64 test's is 2001:db8:7b6::/48), and
    // one address in each of 80 of its /64s: an attacker holding a whole
    // site, each connection from a fresh source.
    let site = 0x8000 | (std::process::id() & 0x7fff) as u16;
    let hosts = (1..=80).map(|n| Ipv6Addr::new(0x2001, 0xdb8, site, n, 0, 0, 0, 1));
    let Some((addresses, env, honest, locals)) = ipv6_sweep(
        hosts,
        "limits::tests::a_site_is_allowed_a_few_sources_worth",
    )
    .await
    else {
        return;
    };
    let (served, refused) = flood(env.stratum_addr(), &locals, 80, 80).await;
    // Each /64 is within its own rate; the site gets 4 sources' worth (40
    // a minute, and what refills while the sweep runs).
    assert!(
        (40..=42).contains(&served.len()),
        "{} of 80 served",
        served.len()
    );
    assert_eq!(served.len() + refused, 80);
    assert_eq!(refusals(&env, LimitKind::ConnectRate), refused as u64);
    drop(served);
    honest.finish(&env, 3).await;
    env.shutdown().await;
    drop(addresses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_authorize_and_submit_floods_are_refused_and_bound_the_journal() {
    // Invalid shares have their own limit (tested in security.rs): raised
    // here so that the submit limit is the one that acts.
    let env = start(|settings| settings.max_invalid_shares_per_minute = 1_000_000).await;
    let honest = Honest::start(&env, HONEST);
    let addr = env.stratum_addr();

    // 10 subscribes at once: 3 answered, 7 refused, the connection lives.
    let mut client = StratumClient::connect_from(addr, Some(ATTACKER))
        .await
        .unwrap();
    let ids: Vec<u64> = send_many(&mut client, "mining.subscribe", 10, |_| json!([])).await;
    let mut ok = 0;
    for id in ids {
        let reply = client.wait_reply(id).await.expect("answered");
        if reply.is_ok() {
            ok += 1;
        } else {
            assert!(
                reply
                    .error_message()
                    .unwrap_or_default()
                    .contains("Rate limit"),
                "{reply:?}"
            );
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(refusals(&env, LimitKind::SubscribeRate), 7);

    // 10 authorizes of 10 workers: 5 taken.
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut client = StratumClient::connect_from(addr, Some(ATTACKER))
        .await
        .unwrap();
    client.request("mining.subscribe", json!([])).await.unwrap();
    let ids = send_many(&mut client, "mining.authorize", 10, |n| {
        json!([format!("{address}.w{n}"), "x"])
    })
    .await;
    let mut authorized = 0;
    for id in ids {
        if client.wait_reply(id).await.expect("answered").is_ok() {
            authorized += 1;
        }
    }
    assert_eq!(authorized, 5);
    assert_eq!(refusals(&env, LimitKind::AuthorizeRate), 5);

    // 1,100 submits at once: every one judged (rejected: no such job),
    // even past the 1,000 a minute, because one of them could be a block;
    // the ones past the limit write no event and are no protocol error,
    // so the connection stays open (honest_limits.rs has a fast miner).
    // In chunks, reading the answers of each: a miner that never reads is
    // dropped after the write timeout, which is another test.
    let mut answers = Vec::new();
    for chunk in 0..11 {
        let mut lines = String::new();
        for n in chunk * 100..(chunk + 1) * 100 {
            lines.push_str(
                &json!({"id": 1000 + n, "method": "mining.submit",
                    "params": [format!("{address}.w0"), "nojob", "00000000", "00000000", "00000000"]})
                .to_string(),
            );
            lines.push('\n');
        }
        client.send_raw(lines.as_bytes()).await.expect("open");
        let before = answers.len();
        assert!(
            read_answers(&mut client, 100, &mut answers).await,
            "closed after {} submits",
            answers.len()
        );
        assert_eq!(answers.len() - before, 100);
    }
    let mut texts: Vec<String> = answers.iter().map(error_text).collect();
    texts.dedup();
    assert_eq!(texts, ["Invalid JobID"]);
    assert_eq!(refusals(&env, LimitKind::ProtocolErrors), 0);
    // The bucket refills by one per 60 ms while the lines are read.
    let journaled = || {
        env.events_of("share_submitted")
            .iter()
            .filter(
                |e| matches!(&e.data, EventData::ShareSubmitted { user, .. } if *user == address),
            )
            .count()
    };
    let judged = journaled();
    assert!((1000..=1010).contains(&judged), "{judged} journaled");
    drop(client);
    env.wait_until("the attacker's disconnect events", Duration::from_secs(10), |env| {
        env.events_of("miner_disconnected")
            .iter()
            .filter(|e| matches!(&e.data, EventData::MinerDisconnected { user, .. } if *user == address))
            .count()
            == 5
    })
    .await;
    // What the attacker's connections wrote to the journal: one share event
    // per submit within the rate, one connect, one disconnect per worker;
    // nothing for the refused requests.
    let of_attacker = env
        .events
        .events()
        .into_iter()
        .filter(|e| serde_json::to_string(&e.data).unwrap().contains(&address))
        .map(|e| e.event_type())
        .collect::<Vec<_>>();
    let count = |kind: &str| of_attacker.iter().filter(|k| **k == kind).count();
    assert_eq!(count("share_submitted"), judged);
    assert_eq!(count("miner_connected"), 1);
    assert_eq!(
        of_attacker.len(),
        judged + 1 + 5,
        "{:?}",
        &of_attacker[..10]
    );
    assert_eq!(refusals(&env, LimitKind::ProtocolErrors), 0);
    honest.finish(&env, 3).await;
    env.shutdown().await;
}

/// Sends `count` requests of `method` without waiting; their ids.
async fn send_many(
    client: &mut StratumClient,
    method: &str,
    count: usize,
    params: impl Fn(usize) -> Value,
) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(client.send(method, params(n)).await.expect("sent"));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_flood_is_answered_20_times_then_closed() {
    let env = start(|_| {}).await;
    let honest = Honest::start(&env, HONEST);
    for flood in [
        // 5,000 unknown methods, then 5,000 lines of garbage.
        (0..5000)
            .map(|n| format!("{{\"id\":{n},\"method\":\"mining.nonsense\",\"params\":[]}}\n"))
            .collect::<String>(),
        "\u{1}garbage{{[\n".repeat(5000),
    ] {
        let mut client = StratumClient::connect_from(env.stratum_addr(), Some(ATTACKER))
            .await
            .unwrap();
        // The pool may close while the lines are still being written.
        let _ = client.send_raw(flood.as_bytes()).await;
        let answers = answers_until_closed(&mut client, Duration::from_secs(10)).await;
        assert_eq!(answers.len(), 21, "20 errors and the closing line");
        assert!(error_text(&answers[20]).contains("protocol errors"));
    }
    env.wait_until("both closes counted", Duration::from_secs(5), |env| {
        refusals(env, LimitKind::ProtocolErrors) == 2
    })
    .await;
    honest.finish(&env, 3).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_methods_do_not_keep_a_connection_alive() {
    let idle = Duration::from_secs(3);
    let authorize = Duration::from_secs(2);
    let env = start(|settings| {
        settings.idle_timeout = idle;
        settings.authorize_timeout = authorize;
    })
    .await;
    let addr = env.stratum_addr();
    let (address, _) = regtest_address(AddressKind::P2wpkh);

    let chatter = |mut client: StratumClient, work: bool| {
        let address = address.clone();
        async move {
            let started = Instant::now();
            let mut n = 0u64;
            loop {
                n += 1;
                let line = match (work, n % 2) {
                (true, _) => json!({"id": n, "method": "mining.submit",
                    "params": [format!("{address}.w"), "nojob", "00000000", "00000000", "00000000"]})
                .to_string(),
                (false, 0) => json!({"id": n, "method": "mining.nonsense", "params": []}).to_string(),
                (false, _) => "garbage{{".to_string(),
            };
                if client
                    .send_raw(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return started.elapsed();
                }
                client.timeout = Duration::from_millis(400);
                loop {
                    match client.read_message().await {
                        Ok(message) if error_text(&message).contains("protocol errors") => {
                            panic!("closed for errors, not for silence")
                        }
                        Ok(_) => continue,
                        Err(MinerError::Timeout) => break,
                        Err(_) => return started.elapsed(),
                    }
                }
                if started.elapsed() > Duration::from_secs(15) {
                    return started.elapsed();
                }
            }
        }
    };
    let connect = || async {
        let mut client = StratumClient::connect_from(addr, Some(HONEST))
            .await
            .unwrap();
        client.request("mining.subscribe", json!([])).await.unwrap();
        client
    };
    // Authorized, then only garbage and unknown methods: closed one idle
    // timeout after the authorize.
    let mut idler = connect().await;
    let reply = idler
        .request("mining.authorize", json!([format!("{address}.w"), "x"]))
        .await
        .unwrap();
    assert!(reply.is_ok());
    let idle_run = tokio::spawn(chatter(idler, false));
    // Never authorized: closed at the authorize timeout.
    let loiterer = connect().await;
    let loiter_run = tokio::spawn(chatter(loiterer, false));
    // Authorized and submitting (work, even rejected): kept open.
    let mut worker = connect().await;
    worker
        .request("mining.authorize", json!([format!("{address}.w"), "x"]))
        .await
        .unwrap();
    let work_run = tokio::spawn(chatter(worker, true));

    let idle_lasted = idle_run.await.unwrap();
    assert!(
        idle_lasted >= idle - Duration::from_millis(500) && idle_lasted <= idle + SLACK,
        "authorized idler closed after {idle_lasted:?}"
    );
    let loiter_lasted = loiter_run.await.unwrap();
    assert!(
        loiter_lasted <= authorize + SLACK,
        "unauthorized loiterer closed after {loiter_lasted:?}"
    );
    let work_lasted = work_run.await.unwrap();
    assert!(
        work_lasted > idle * 3,
        "a submitting miner was closed after {work_lasted:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_source_is_exempt_from_the_per_source_limits() {
    let env = start(|settings| {
        settings.limits.allow_list = vec!["127.0.0.2/32".parse().unwrap()];
        settings.authorize_timeout = Duration::from_secs(60);
    })
    .await;
    // 60 at once from the farm: more than 10 a minute and 50 at a time.
    let (farm, refused) = flood(env.stratum_addr(), &[HONEST], 60, 60).await;
    assert_eq!((farm.len(), refused), (60, 0));
    // The same from an unlisted source: its 10 a minute.
    let (served, refused) = flood(env.stratum_addr(), &[ATTACKER], 15, 15).await;
    assert_eq!((served.len(), refused), (10, 5));
    assert_eq!(bans(&env), 0);
    drop((farm, served));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_limits_live() {
    let env = start(|settings| settings.limits.max_connections_per_ip = 2).await;
    let addr = env.stratum_addr();
    let (mut held, refused) = flood(addr, &[ATTACKER], 3, 1).await;
    assert_eq!((held.len(), refused), (2, 1));
    let mut file = (*env.service.pool.live_settings()).clone();
    file.limits.max_connections_per_ip = 4;
    file.limits.subscribes_per_minute = 0;
    let changes = env.service.pool.reload(&file);
    assert!(changes.iter().any(|c| c.name == "limits"), "{changes:?}");
    // A new limit for new connections...
    assert!(matches!(try_connect(addr, ATTACKER).await, Fate::Served(_)));
    // ...and for connections already open: subscribes are now unlimited on
    // one that had 2 left of its 3.
    let client = &mut held[0];
    for n in 0..10 {
        let reply = client.request("mining.subscribe", json!([])).await.unwrap();
        assert!(reply.is_ok(), "subscribe {n} after the reload: {reply:?}");
    }
    env.shutdown().await;
}
