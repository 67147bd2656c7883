//! Two regions as an operator runs them: `tbg devnet` as the primary (its
//! relay link on a loopback port, consuming NATS) and `tbg devnet` as a
//! relay with its own embedded node and `tbg publisher`, configured by
//! `[region]` and `[nats]` alone, watched by `tbg health-monitor`. The relay
//! follows the primary, its events reach the primary's journal over a real
//! NATS JetStream, `/status`, `/metrics` and the monitor say so; when the
//! primary process is killed the relay fails over and the monitor names the
//! primary as down.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tbg_testkit::{free_port, NatsServer};

const SECRET: &str = "a relay secret for the test, long enough";

struct Region {
    child: Child,
    metrics: u16,
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

fn journal_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("journal.db")
}

/// `tbg devnet` for region `name`, its data in `<dir>/<name>`.
fn start(dir: &Path, name: &str, nats: &str, region_keys: &str) -> Region {
    let metrics = free_port();
    let config = config_path(dir, name);
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[events]\nsocket_path = {:?}\nregion = \"{name}\"\n[journal]\npath = {:?}\n[metrics]\nbind = \"127.0.0.1:{metrics}\"\ncollector_bind = \"127.0.0.1:0\"\n[nats]\nurl = \"{nats}\"\n[region]\n{region_keys}",
            dir.join(format!("{name}.sock")),
            journal_path(dir, name),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tbg"))
        .args([
            "devnet",
            "--stratum",
            &format!("127.0.0.1:{}", free_port()),
            "--rpc",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join(name))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Region { child, metrics }
}

/// `GET path` on the region's HTTP endpoints: the body, or `None` while
/// nothing answers yet.
fn get(region: &Region, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", region.metrics)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn status(region: &Region) -> Option<serde_json::Value> {
    serde_json::from_str(&get(region, "/status")?).ok()
}

/// `tbg <subcommand> --config <dir>/<name>.toml` in the background.
fn spawn(subcommand: &str, dir: &Path, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
        .args([subcommand, "--config"])
        .arg(config_path(dir, name))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Regions of the primary's journal.
fn regions_in_journal(path: &Path) -> BTreeSet<String> {
    let Ok(reader) = tbg_journal::JournalReader::open(path) else {
        return BTreeSet::new();
    };
    reader
        .read_after(0, 100_000)
        .unwrap_or_default()
        .into_iter()
        .map(|record| record.region)
        .collect()
}

/// The `ckpool_*` names the monitoring files use that only a region of
/// several (or the health monitor) exports.
fn multi_region_names_in_monitoring() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring");
    let mut text = String::new();
    for sub in ["alerts", "grafana/dashboards"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("ckpool_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if ["ckpool_region_", "ckpool_nats_ingest", "ckpool_health_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    assert!(wait_until(timeout, check), "timed out waiting for: {what}");
}

/// Whether `check` held within `timeout`.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn a_relay_region_follows_its_primary_converges_its_events_and_fails_over_when_the_primary_dies() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let link = free_port();
    let timing = "heartbeat_s = 1\nfailover_timeout_s = 3\nfailback_after_s = 2\n";
    let mut primary = start(
        dir.path(),
        "us-east",
        &nats.url(),
        &format!(
            "instance_id = 1\nrelay_bind = \"127.0.0.1:{link}\"\nrelay_secret = \"{SECRET}\"\n{timing}"
        ),
    );
    let relay = start(
        dir.path(),
        "eu-west",
        &nats.url(),
        &format!(
            "mode = \"relay\"\ninstance_id = 2\nprimary_url = \"127.0.0.1:{link}\"\nrelay_secret = \"{SECRET}\"\n{timing}"
        ),
    );
    let mut publisher = ChildGuard(spawn("publisher", dir.path(), "eu-west"));
    let monitor_port = free_port();
    std::fs::write(
        config_path(dir.path(), "monitor"),
        format!(
            "network = \"regtest\"\n[health_monitor]\nnats_url = \"{}\"\nbind = \"127.0.0.1:{monitor_port}\"\ninterval_s = 1\ntimeout_s = 1\n[[health_monitor.regions]]\nname = \"us-east\"\nurl = \"http://127.0.0.1:{}\"\n[[health_monitor.regions]]\nname = \"eu-west\"\nurl = \"http://127.0.0.1:{}\"\n",
            nats.url(),
            primary.metrics,
            relay.metrics
        ),
    )
    .unwrap();
    let monitor = Region {
        child: spawn("health-monitor", dir.path(), "monitor"),
        metrics: monitor_port,
    };

    wait_for(
        "the relay on the primary's work",
        Duration::from_secs(90),
        || status(&relay).is_some_and(|s| s["region"]["relay_link"]["source"] == "primary"),
    );
    let relay_status = status(&relay).unwrap();
    assert_eq!(relay_status["region"]["mode"], "relay", "{relay_status}");
    assert_eq!(
        relay_status["region"]["relay_link"]["primary_region"], "us-east",
        "{relay_status}"
    );
    let primary_status = status(&primary).unwrap();
    let relays = &primary_status["region"]["relays"];
    assert_eq!(relays[0]["region"], "eu-west", "{primary_status}");
    assert_eq!(relays[0]["instance_id"], 2, "{primary_status}");

    // The relay's events (its new_block_network at start, at least) reach
    // the primary's journal through its publisher, NATS and the ingest.
    wait_for(
        "the relay's events in the primary's journal",
        Duration::from_secs(30),
        || regions_in_journal(&journal_path(dir.path(), "us-east")).contains("eu-west"),
    );

    // The health monitor: both regions up, NATS up.
    let mut last = None;
    let healthy = wait_until(Duration::from_secs(30), || {
        last = get(&monitor, "/health");
        last.as_deref()
            .is_some_and(|body| body.contains("\"status\":\"healthy\""))
    });
    assert!(healthy, "the monitor never said healthy: {last:?}");

    // Every multi-region metric the alerts and dashboards use is exported
    // by one of the regions or the monitor.
    let expositions = [
        get(&primary, "/metrics").unwrap(),
        get(&relay, "/metrics").unwrap(),
        get(&monitor, "/metrics").unwrap(),
    ]
    .concat();
    assert!(
        expositions.contains("ckpool_region_on_primary 1")
            && expositions.contains("ckpool_region_primary_behind_blocks 0"),
        "{expositions}"
    );
    assert!(
        expositions.contains("ckpool_region_relays_connected 1"),
        "{expositions}"
    );
    let missing: Vec<String> = multi_region_names_in_monitoring()
        .into_iter()
        .filter(|name| !expositions.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used by monitoring/ but not exported: {missing:?}"
    );

    // The primary's host is gone.
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    wait_for("the relay's failover", Duration::from_secs(20), || {
        status(&relay).is_some_and(|s| s["region"]["relay_link"]["source"] == "local")
    });
    let relay_status = status(&relay).unwrap();
    assert_eq!(
        relay_status["region"]["relay_link"]["failovers"], 1,
        "{relay_status}"
    );
    assert_eq!(relay_status["region"]["relay_link"]["connected"], false);
    let metrics = get(&relay, "/metrics").unwrap();
    assert!(
        metrics.contains("ckpool_region_on_primary 0")
            && metrics.contains("ckpool_region_failovers_total 1"),
        "{metrics}"
    );
    wait_for(
        "the monitor to name the primary down",
        Duration::from_secs(30),
        || {
            let Some(body) = get(&monitor, "/health") else {
                return false;
            };
            let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            report["status"] == "degraded"
                && report["regions"]["us-east"]["state"] == "down"
                && report["regions"]["eu-west"]["state"] == "up"
        },
    );
    let _ = publisher.0.kill();
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
