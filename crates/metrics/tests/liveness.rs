//! Liveness apart from readiness (issue 16, item 8), on the real pool and an
//! embedded node: a node outage makes `/health` (readiness) 503 while
//! `/health/live` stays 200, so systemd, which restarts on liveness alone,
//! leaves the pool up serving the last work (plan scenario 2); a pool whose
//! Stratum accept loop is gone is not live.

use std::time::Duration;

use serde_json::Value;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_testkit::TestEnv;

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the endpoint answers");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outage_is_not_ready_but_live_and_a_dead_accept_loop_is_not_live() {
    let env = TestEnv::start().await;
    let server = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .expect("metrics server");
    let base = format!("http://{}", server.local_addr());

    // The node goes away (a bitcoind restart).
    env.node.stop_rpc().await;
    env.wait_until(
        "the pool sees the node down",
        Duration::from_secs(10),
        |env| !env.service.pool.status().node_up,
    )
    .await;
    let (code, ready) = get(&format!("{base}/health")).await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["reasons"][0].as_str().unwrap().contains("no node"),
        "{ready}"
    );
    let (code, same) = get(&format!("{base}/health/ready")).await;
    assert_eq!((code, same["ready"].clone()), (503, Value::Bool(false)));
    let (code, live) = get(&format!("{base}/health/live")).await;
    assert_eq!(code, 200, "a node outage is no reason to restart: {live}");
    assert_eq!(live["live"], true);
    assert!(live["stratum_answer_ms"].as_f64().is_some(), "{live}");
    env.node.start_rpc().await.unwrap();

    // The Stratum side stops (its accept loop ends, the port closes) while
    // the HTTP side still answers: not live.
    let TestEnv { node, service, .. } = env;
    let sources = PoolSources::new(&service, None);
    service.shutdown(Duration::from_secs(1)).await;
    let fresh = MetricsServer::start_pool("127.0.0.1:0", sources)
        .await
        .expect("metrics server");
    let (code, live) = get(&format!("http://{}/health/live", fresh.local_addr())).await;
    assert_eq!(code, 503, "{live}");
    assert_eq!(live["live"], false);
    assert!(
        live["reasons"][0].as_str().unwrap().contains("refuses"),
        "{live}"
    );
    fresh.shutdown().await;
    server.shutdown().await;
    node.shutdown().await;
}
