//! Two regions as an operator runs them: `tbg devnet` as the primary (its
//! relay link on a loopback port) and `tbg devnet` as a relay with its own
//! embedded node, configured by `[region]` alone. The relay follows the
//! primary, `/status` and `/metrics` of both say so, and when the primary
//! process is killed the relay fails over and says that too.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tbg_testkit::free_port;

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

fn start(dir: &Path, name: &str, region_keys: &str) -> Region {
    let metrics = free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[events]\nsocket_path = {:?}\nregion = \"{name}\"\n[metrics]\nbind = \"127.0.0.1:{metrics}\"\ncollector_bind = \"127.0.0.1:0\"\n[region]\n{region_keys}",
            dir.join(format!("{name}.sock"))
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

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_relay_region_follows_its_primary_and_fails_over_when_the_primary_dies() {
    let dir = tempfile::tempdir().unwrap();
    let link = free_port();
    let timing = "heartbeat_s = 1\nfailover_timeout_s = 3\nfailback_after_s = 2\n";
    let mut primary = start(
        dir.path(),
        "us-east",
        &format!(
            "instance_id = 1\nrelay_bind = \"127.0.0.1:{link}\"\nrelay_secret = \"{SECRET}\"\n{timing}"
        ),
    );
    let relay = start(
        dir.path(),
        "eu-west",
        &format!(
            "mode = \"relay\"\ninstance_id = 2\nprimary_url = \"127.0.0.1:{link}\"\nrelay_secret = \"{SECRET}\"\n{timing}"
        ),
    );
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
    let metrics = get(&relay, "/metrics").unwrap();
    assert!(metrics.contains("ckpool_region_on_primary 1"), "{metrics}");
    let metrics = get(&primary, "/metrics").unwrap();
    assert!(
        metrics.contains("ckpool_region_relays_connected 1"),
        "{metrics}"
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
}
