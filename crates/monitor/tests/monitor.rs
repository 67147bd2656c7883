//! The health monitor against real parts: a running pool (embedded node,
//! its real HTTP endpoints), a region whose host is gone (nothing listens
//! on its port), and a real `nats-server -js` that is then killed.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_monitor::{Monitor, MonitorConfig, NatsTarget};
use tbg_testkit::{free_port, NatsServer, TestEnv};

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the monitor answers");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap())
}

async fn health_until(monitor: &Monitor, what: &str, check: impl Fn(u16, &Value) -> bool) -> Value {
    let url = format!("http://{}/health", monitor.local_addr());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(&url).await;
        let report: Value = serde_json::from_str(&body).expect("a JSON report");
        if check(code, &report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {code} {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(regions: Vec<(String, String)>, nats: &NatsServer) -> MonitorConfig {
    MonitorConfig {
        regions,
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        token: None,
        nats: Some(NatsTarget {
            url: nats.url(),
            stream: "EVENTS".to_owned(),
            consumer: "tbg-collector".to_owned(),
            access: Default::default(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_is_gone_and_nats_down_make_the_whole_degraded_and_are_named() {
    let env = TestEnv::start().await;
    let pool_http = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .unwrap();
    let mut nats = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    tbg_nats::ensure_stream(
        &async_nats::jetstream::new(client),
        &tbg_nats::StreamSettings::default(),
    )
    .await
    .unwrap();
    let primary = (
        "us-east".to_owned(),
        format!("http://{}", pool_http.local_addr()),
    );
    let gone = (
        "eu-west".to_owned(),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));

    // One region's host is gone: degraded, and the report says which.
    let monitor = Monitor::start(config(vec![primary.clone(), gone], &nats), any_port)
        .await
        .unwrap();
    let report = health_until(&monitor, "both regions polled", |_, report| {
        report["regions"]["eu-west"]["state"] == "down"
            && report["regions"]["us-east"]["state"] == "up"
    })
    .await;
    let (code, _) = get(&format!("http://{}/health", monitor.local_addr())).await;
    assert_eq!(code, 503);
    assert_eq!(report["status"], "degraded");
    assert!(
        report["regions"]["eu-west"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{report}"
    );
    let up = &report["regions"]["us-east"];
    assert_eq!(up["mode"], "primary", "{report}");
    assert!(up["template_height"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["nats"]["state"], "up", "{report}");
    let (_, metrics) = get(&format!("http://{}/metrics", monitor.local_addr())).await;
    for line in [
        "ckpool_health_region_up{region=\"eu-west\"} 0",
        "ckpool_health_region_up{region=\"us-east\"} 1",
        "ckpool_health_nats_up 1",
        "ckpool_health_healthy 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    monitor.stop().await;

    // Every region up and NATS answering: healthy, 200.
    let monitor = Monitor::start(config(vec![primary], &nats), any_port)
        .await
        .unwrap();
    health_until(&monitor, "healthy", |code, report| {
        code == 200 && report["status"] == "healthy"
    })
    .await;

    // NATS goes away: degraded again, NATS named.
    nats.kill();
    let report = health_until(&monitor, "NATS down", |code, report| {
        code == 503 && report["nats"]["state"] == "down"
    })
    .await;
    assert_eq!(report["regions"]["us-east"]["state"], "up");
    monitor.stop().await;
    pool_http.shutdown().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_behind_an_operator_token_is_read_with_it_and_named_without_it() {
    const TOKEN: &str = "region-operator-token-42";
    let env = TestEnv::start().await;
    let pool_http = MetricsServer::start_pool(
        "127.0.0.1:0",
        PoolSources::new(&env.service, None).with_operator_token(Some(TOKEN.to_owned())),
    )
    .await
    .unwrap();
    let nats = NatsServer::start();
    let region = vec![(
        "us-east".to_owned(),
        format!("http://{}", pool_http.local_addr()),
    )];
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));

    // With the token: the region's details as without one.
    let monitor = Monitor::start(
        MonitorConfig {
            token: Some(TOKEN.to_owned()),
            ..config(region.clone(), &nats)
        },
        any_port,
    )
    .await
    .unwrap();
    let report = health_until(&monitor, "the region read", |_, report| {
        report["regions"]["us-east"]["template_height"].as_u64() > Some(0)
    })
    .await;
    let up = &report["regions"]["us-east"];
    assert_eq!(
        (up["state"].as_str(), up["mode"].as_str()),
        (Some("up"), Some("primary"))
    );
    assert!(up["error"].is_null(), "{report}");
    monitor.stop().await;

    // Without: /health still says up, and the report names the missing token.
    let monitor = Monitor::start(config(region, &nats), any_port)
        .await
        .unwrap();
    let report = health_until(&monitor, "the region polled", |_, report| {
        report["regions"]["us-east"]["state"] == "up"
    })
    .await;
    let error = report["regions"]["us-east"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("401") && error.contains("metrics.token"),
        "{report}"
    );
    monitor.stop().await;
    pool_http.shutdown().await;
    env.shutdown().await;
}
