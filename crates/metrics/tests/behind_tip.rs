//! A best tip no answering node builds on (issue 16 review), with two
//! embedded kernel nodes: the backup is ahead and serves the pool, then
//! stops answering while the primary is behind. The pool keeps miners on
//! the backup's tip for `tip_memory` (a restart must not move them back)
//! and says it is not ready meanwhile (`/health` 503, the work may be
//! going stale); then it forgets the silent node's tip, follows what the
//! primary says and is ready again, instead of serving stale work for
//! ever while reporting healthy.

use std::time::{Duration, Instant};

use serde_json::Value;
use tbg_devnode::{DevNode, DevNodeOptions};
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_testkit::{
    node_endpoint, regtest_address, test_settings, test_watcher, AddressKind, TestEnv,
};

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the endpoint answers");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json"))
}

async fn metric(base: &str, name: &str) -> Option<String> {
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::to_owned))
}

/// The tip the pool's current work builds on.
fn current_prev(env: &TestEnv) -> String {
    env.service
        .pool
        .current_work()
        .expect("work")
        .template
        .previous_block_hash
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_tip_no_answering_node_has_is_not_ready_then_forgotten() {
    tbg_testkit::init_tracing();
    let memory = Duration::from_secs(3);
    let primary = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let backup = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let (_, someone) = regtest_address(AddressKind::P2pkh);
    backup.mine_blocks(3, &someone).await.unwrap();
    let endpoints = vec![node_endpoint(&primary), node_endpoint(&backup)];
    let mut watcher = test_watcher();
    watcher.tip_memory = memory;
    let env =
        TestEnv::start_pool_watching(primary, endpoints, test_settings(), None, watcher).await;
    let server = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .expect("metrics server");
    let base = format!("http://{}", server.local_addr());

    let backup_tip = backup.best_block_hash().to_string();
    env.wait_until("work on the backup's tip", Duration::from_secs(10), |env| {
        current_prev(env) == backup_tip
    })
    .await;
    let (code, ready) = get_json(&format!("{base}/health")).await;
    assert_eq!(code, 200, "{ready}");

    // The backup goes silent; only the primary answers, three blocks behind.
    backup.stop_rpc().await;
    let silent = Instant::now();
    let not_ready = loop {
        let (code, health) = get_json(&format!("{base}/health")).await;
        if code == 503 {
            break health;
        }
        assert!(
            silent.elapsed() < memory,
            "still ready with every answering node behind: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reasons = not_ready["reasons"].to_string();
    assert!(reasons.contains("behind the best known tip"), "{reasons}");
    assert_eq!(
        metric(&base, "ckpool_bitcoin_behind").await.as_deref(),
        Some("1.0")
    );
    assert_eq!(
        metric(&base, "ckpool_bitcoin_connected").await.as_deref(),
        Some("1.0")
    );
    // Within the memory: miners stay on the backup's tip (a restart of
    // the node with the best tip must not move them back).
    assert_eq!(current_prev(&env), backup_tip);

    // Silent for longer: its tip is forgotten, the primary's is followed.
    let primary_tip = env.node.best_block_hash().to_string();
    env.wait_until(
        "work on the primary's tip",
        memory + Duration::from_secs(10),
        |env| current_prev(env) == primary_tip,
    )
    .await;
    assert!(
        silent.elapsed() >= memory - Duration::from_millis(200),
        "followed after {:?}",
        silent.elapsed()
    );
    let (code, health) = get_json(&format!("{base}/health")).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(
        metric(&base, "ckpool_bitcoin_behind").await.as_deref(),
        Some("0.0")
    );
    assert_eq!(
        env.service.pool.current_work().unwrap().template.height,
        env.node.block_count() + 1
    );

    // The backup comes back, still ahead: followed again at once.
    backup.start_rpc().await.unwrap();
    env.wait_until("back on the backup's tip", Duration::from_secs(10), |env| {
        current_prev(env) == backup_tip
    })
    .await;
    server.shutdown().await;
    env.shutdown().await;
    backup.shutdown().await;
}
