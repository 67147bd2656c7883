//! The monitoring files checked by Prometheus itself: promtool validates and
//! unit-tests the alert rules, a real Prometheus scrapes a running pool and
//! collector, and every metric named by a dashboard or an alert is exported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tbg_collector::{Collector, CollectorConfig, MemorySource, RedisConfig};
use tbg_metrics::{CollectorSources, MetricsServer, PoolSources};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};

fn monitoring_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../monitoring")).to_path_buf()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("monitoring dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no yml in {}", dir.display());
    files
}

fn promtool(args: &[&str], files: &[PathBuf]) {
    let output = Command::new("promtool")
        .args(args)
        .args(files)
        .output()
        .expect("promtool is installed by scripts/setup.sh (Debian package prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_validates_and_unit_tests_the_alert_rules() {
    let dir = monitoring_dir();
    promtool(&["check", "rules"], &yaml_files(&dir.join("alerts")));
    // Each test file fires every alert on a bad series and not on a good one.
    let tests = yaml_files(&dir.join("tests"));
    let status = Command::new("promtool")
        .args(["test", "rules"])
        .args(&tests)
        .current_dir(dir.join("tests"))
        .output()
        .expect("promtool");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    promtool(&["check", "config"], &[dir.join("prometheus.yml")]);
}

/// The operator token both servers of the scrape test require.
const TOKEN: &str = "test-operator-token-0123456789";

/// Kills the child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("http get");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json body"))
}

/// Every metric name used by an expression in the dashboards and alerts.
fn metric_names_in_monitoring_files() -> BTreeSet<String> {
    let dir = monitoring_dir();
    let mut expressions = Vec::new();
    for file in yaml_files(&dir.join("alerts")) {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for group in doc["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                expressions.push(rule["expr"].as_str().unwrap().to_owned());
            }
        }
    }
    let dashboards = yaml_dir_json(&dir.join("grafana/dashboards"));
    assert_eq!(
        dashboards.len(),
        4,
        "pool-overview, event-pipeline, bitcoin-core, regional"
    );
    for dashboard in dashboards {
        collect_exprs(&dashboard, &mut expressions);
    }
    let mut names = BTreeSet::new();
    for expr in &expressions {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("ckpool_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    assert!(names.len() > 20, "too few metric names found: {names:?}");
    names
}

/// Whether a single pool (one region, no relay link, no NATS) and the
/// collector export `name`. The relay link's (`ckpool_region_*`) and the
/// primary's NATS ingest's (`ckpool_nats_ingest*`) metrics exist only on a
/// pool that is one region of several, and `ckpool_health_*` only on
/// `tbg health-monitor`: they are checked against running regions in
/// `crates/cli/tests/regions.rs` and in the health monitor's own test.
fn exported_by_a_single_pool(name: &str) -> bool {
    const ELSEWHERE: [&str; 3] = ["ckpool_region_", "ckpool_nats_ingest", "ckpool_health_"];
    !ELSEWHERE.iter().any(|prefix| name.starts_with(prefix))
}

fn yaml_dir_json(dir: &Path) -> Vec<Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        .collect()
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_pool_and_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let journal = tbg_journal::Journal::open(tbg_journal::JournalConfig::new(
        dir.path().join("journal.db"),
    ))
    .expect("journal");
    let env = TestEnv::start_with_journal(journal).await;
    // Nothing listens on this socket: what is sent there is counted as dropped.
    let datagram = Arc::new(tbg_events::DatagramSink::new(dir.path().join("events.sock")).unwrap());
    let pool_metrics = MetricsServer::start_pool(
        "127.0.0.1:0",
        PoolSources::new(&env.service, Some(datagram)).with_operator_token(Some(TOKEN.into())),
    )
    .await
    .expect("pool metrics server");
    // A real collector whose Redis is unreachable: its sink must show down.
    let dead_redis = format!("redis://127.0.0.1:{}/0", tbg_testkit::free_port());
    let collector = Arc::new(Collector::start(
        CollectorConfig {
            redis: Some(RedisConfig {
                url: dead_redis,
                stream_maxlen: 1000,
            }),
            ..CollectorConfig::default()
        },
        Arc::new(MemorySource::new()),
    ));
    let stats_of = collector.clone();
    let collector_metrics = MetricsServer::start_collector(
        "127.0.0.1:0",
        CollectorSources::new(Arc::new(move || stats_of.stats()), 10_000)
            .with_operator_token(Some(TOKEN.into())),
    )
    .await
    .expect("collector metrics server");

    // Shares from a real miner: on regtest every valid share is a block.
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut miner = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig1")).await;
    let reply = miner.submit_valid(1).await;
    assert!(reply.is_ok(), "share accepted: {reply:?}");
    env.wait_until("block submitted", Duration::from_secs(30), |env| {
        env.service.pool.status().blocks_accepted >= 1
    })
    .await;
    let status = env.service.pool.status();

    let pool_base = format!("http://{}", pool_metrics.local_addr());
    let collector_base = format!("http://{}", collector_metrics.local_addr());
    // Without the operator token: the health checks answer, nothing else.
    let stranger = reqwest::Client::new();
    let (code, health) = get_json(&stranger, &format!("{pool_base}/health")).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["ready"], true);
    for path in ["/health/live", "/health/ready"] {
        let code = stranger
            .get(format!("{pool_base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 200, "{path} is open");
    }
    for url in [
        format!("{pool_base}/metrics"),
        format!("{pool_base}/status"),
        format!("{pool_base}/status/users/{address}"),
        format!("{collector_base}/metrics"),
    ] {
        let (code, body) = get_json(&stranger, &url).await;
        assert_eq!(code, 401, "{url} without a token: {body}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
        let wrong = stranger
            .get(&url)
            .bearer_auth("not-the-token-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{url} with a wrong token");
    }
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let (code, user) = get_json(&http, &format!("{pool_base}/status/users/{address}")).await;
    assert_eq!(code, 200);
    assert_eq!(user["shares_accepted"], 1);
    assert_eq!(user["workers_connected"], 1);
    assert!(user["hashrate_1m"].as_f64().unwrap() > 0.0);
    let (code, worker) =
        get_json(&http, &format!("{pool_base}/status/workers/{address}.rig1")).await;
    assert_eq!(code, 200);
    assert_eq!(worker["worker"]["shares_accepted"], 1);
    assert!(worker["worker"]["best_difficulty"].as_f64().unwrap() > 0.0);
    let (code, _) = get_json(&http, &format!("{pool_base}/status/workers/{address}.nope")).await;
    assert_eq!(code, 404);
    let (code, pool_status) = get_json(&http, &format!("{pool_base}/status")).await;
    assert_eq!(code, 200);
    assert_eq!(pool_status["pool"]["blocks_found"], status.blocks_found);
    let (code, collector_health) = get_json(&http, &format!("{collector_base}/health")).await;
    assert_eq!(code, 503, "redis is unreachable: {collector_health}");
    assert!(collector_health["reasons"][0]
        .as_str()
        .unwrap()
        .contains("redis"));

    // Every metric a dashboard or an alert uses is exported.
    let mut exposition = http
        .get(format!("{pool_base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    exposition += &http
        .get(format!("{collector_base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let missing: Vec<String> = metric_names_in_monitoring_files()
        .into_iter()
        .filter(|name| exported_by_a_single_pool(name))
        .filter(|name| !exposition.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");

    // A real Prometheus scraping both every second.
    let storage = tempfile::tempdir().unwrap();
    let prom_port = tbg_testkit::free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts}/*.yml\nscrape_configs:\n  - job_name: ckpool\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['{pool}']\n  - job_name: tbg-collector\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['{collector}']\n",
        alerts = monitoring_dir().join("alerts").display(),
        pool = pool_metrics.local_addr(),
        collector = collector_metrics.local_addr(),
    );
    let config_path = storage.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let _prometheus = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                storage.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by scripts/setup.sh"),
    );
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let query = |q: &str| {
        let url = format!(
            "{api}/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        let http = http.clone();
        async move {
            let Ok(response) = http.get(&url).send().await else {
                return None;
            };
            let body: Value = response.json().await.ok()?;
            let value = body["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            Some(value)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up_pool = query(r#"up{job="ckpool"}"#).await;
        let up_collector = query(r#"up{job="tbg-collector"}"#).await;
        let valid = query(r#"ckpool_shares_valid_total{job="ckpool"}"#).await;
        let blocks = query(r#"ckpool_blocks_found_total{job="ckpool"}"#).await;
        let sink_up = query(r#"ckpool_collector_sink_up{sink="redis"}"#).await;
        if up_pool == Some(1.0)
            && up_collector == Some(1.0)
            && valid == Some(status.shares_accepted as f64)
            && blocks == Some(status.blocks_found as f64)
            && sink_up == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not see the pool: up {up_pool:?}/{up_collector:?} valid {valid:?} blocks {blocks:?} sink {sink_up:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, targets) = get_json(&http, &format!("{api}/targets")).await;
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 2);
    assert!(active.iter().all(|t| t["health"] == "up"), "{targets}");
    // The block we found moved the tip: the pool mines on top of it.
    let tip = env.service.pool.status().template_height.saturating_sub(1) as f64;
    assert_eq!(
        query(r#"ckpool_block_height{job="ckpool"}"#).await,
        Some(tip)
    );

    collector_metrics.shutdown().await;
    pool_metrics.shutdown().await;
    if let Ok(collector) = Arc::try_unwrap(collector) {
        collector.shutdown().await;
    }
    env.shutdown().await;
}
