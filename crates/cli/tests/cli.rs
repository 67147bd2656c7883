//! The `tbg` binary as an operator uses it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tbg_testkit::free_port;

mod support;
use support::{kill_and_reap, signal, tbg, wait_exit, LogLines};

/// Tests run in parallel: no fixed metrics ports.
const METRICS_ON_FREE_PORTS: &str =
    "[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n[web]\nbind = \"127.0.0.1:0\"\n";

/// `tbg check-config --config <path>`, run to the end.
fn check_config(path: &Path) -> Output {
    tbg()
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `tbg <subcommand> --config <config>`, stdout discarded.
/// Run in the config's directory, as systemd runs it in /var/lib/tbg: the
/// files a config names relatively (the dashboard's state) stay in the
/// test's directory.
fn tbg_with_config(subcommand: &str, config: &Path) -> Command {
    let mut command = tbg();
    if let Some(dir) = config.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        command.current_dir(dir);
    }
    command
        .args([subcommand, "--config"])
        .arg(config)
        .stdout(Stdio::null());
    command
}

/// Starts `tbg <subcommand> --config <config>`; `stderr` piped to read it
/// with [`LogLines`], or discarded.
fn spawn_with_config(subcommand: &str, config: &Path, stderr: Stdio) -> Child {
    tbg_with_config(subcommand, config)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// SIGTERM, then the process exits with code 0 within 5 s.
fn stops_cleanly_on_sigterm(child: &mut Child) {
    signal(child, "TERM");
    assert_eq!(wait_exit(child, Duration::from_secs(5)), Some(0));
}

#[test]
fn a_bad_config_value_is_named_and_exits_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tbg.toml");
    std::fs::write(&path, "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:18443\"\nuser = \"u\"\npass = \"p\"\n[pool]\nnonce1length = 12\n")
        .unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pool.nonce1length = 12"), "{stderr}");

    std::fs::write(&path, "network = \"regtest\"\n[pool\n").unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(2), "TOML syntax error");

    let output = tbg()
        .args(["check-config", "--config", "/nonexistent/tbg.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "missing file");
}

#[test]
fn sv2_keygen_makes_a_pair_that_check_config_takes_and_a_wrong_pair_stops_it() {
    let output = tbg().arg("sv2-keygen").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{key} = \"")))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{key} in {text}"))
            .to_string()
    };
    let (secret, public) = (value("authority_secret_key"), value("authority_public_key"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tbg.toml");
    let config = |public: &str| {
        format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"http://127.0.0.1:18443\"\nuser = \"u\"\npass = \"p\"\n[stratum_v2]\nbind = \"127.0.0.1:3336\"\nauthority_public_key = \"{public}\"\n"
        )
    };
    std::fs::write(&path, config(&public)).unwrap();
    // The secret from the environment, as the unit's EnvironmentFile gives it.
    let checked = tbg()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TBG_SV2_SECRET_KEY", &secret)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    // No secret: a config error naming the key.
    let missing = check_config(&path);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("stratum_v2.authority_secret_key"));
    // Another pair's public key: refused, and the secret is never printed.
    let other = String::from_utf8(tbg().arg("sv2-keygen").output().unwrap().stdout).unwrap();
    let other_public = other
        .lines()
        .find_map(|line| line.strip_prefix("authority_public_key = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_string();
    std::fs::write(&path, config(&other_public)).unwrap();
    let wrong = tbg()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TBG_SV2_SECRET_KEY", &secret)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("stratum_v2.authority_public_key"),
        "{stderr}"
    );
    assert!(!stderr.contains(&secret), "{stderr}");
}

#[test]
fn a_ckpool_config_is_read_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpool.conf");
    std::fs::write(
        &path,
        r#"{
  "btcd": [{"url": "127.0.0.1:38332", "auth": "tbg", "pass": "secret", "notify": true}],
  "btcsig": "/TheBitcoinGame/",
  "blockpoll": 500,
  "update_interval": 30,
  "serverurl": ["0.0.0.0:3333"],
  "mindiff": 1,
  "startdiff": 42,
  "maxdiff": 0,
  "version_mask": "1fffe000",
  "nonce1length": 4,
  "nonce2length": 8,
  "logdir": "/var/log/ckpool",
  "maxclients": 10000,
  "event_socket_path": "/tmp/ckpool/events.sock",
  "redis_url": "redis://127.0.0.1:6379/0",
  "tbg_region": "eu-west"
}"#,
    )
    .unwrap();
    let output = tbg()
        .args(["check-config", "--ckpool-conf"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for expected in [
        "/TheBitcoinGame/",
        "maxclients = 10000",
        "eu-west",
        "38332",
        "redis://127.0.0.1:6379/0",
    ] {
        assert!(stdout.contains(expected), "{expected} in {stdout}");
    }
}

#[test]
fn logs_have_no_colour_when_piped_and_are_json_lines_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpool.conf");
    // No network key: the import warns, which is the log line looked at.
    std::fs::write(
        &path,
        r#"{"btcd": [{"url": "127.0.0.1:8332", "auth": "u", "pass": "p"}], "btcaddress": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"}"#,
    )
    .unwrap();
    let text = tbg()
        .args(["check-config", "--ckpool-conf"])
        .arg(&path)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("network"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no ANSI escapes into a pipe: {stderr:?}"
    );

    let json = tbg()
        .args(["--log-format", "json", "check-config", "--ckpool-conf"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&json.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.iter().any(
            |l| l["level"] == "WARN" && l["message"].as_str().unwrap_or("").contains("network")
        ),
        "{stderr}"
    );
    assert!(lines.iter().all(|l| l["timestamp"].is_string()), "{stderr}");
}

/// The README's first command, shortened: embedded node, pool and CPU miner
/// in one process; blocks found; events on the plan's datagram socket.
#[test]
fn devnet_mines_blocks_and_emits_events_to_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("events.sock");
    let listener = UnixDatagram::bind(&socket_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[events]\nsocket_path = {:?}\nregion = \"test-region\"\n{METRICS_ON_FREE_PORTS}",
            socket_path
        ),
    )
    .unwrap();
    let mut child = tbg()
        .args([
            "devnet",
            "--stratum",
            "127.0.0.1:0",
            "--rpc",
            "127.0.0.1:0",
            "--miner",
            "--blocks",
            "2",
            "--config",
        ])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut blocks_found = 0;
    let mut types = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut buf = vec![0u8; 65536];
    while blocks_found < 2 && Instant::now() < deadline {
        let Ok(len) = listener.recv(&mut buf) else {
            break;
        };
        let event: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
        assert_eq!(event["region"], "test-region");
        assert_eq!(event["source"], "hosted");
        assert!(event["id"].as_str().is_some_and(|id| id.len() == 36));
        let kind = event["event"].as_str().unwrap().to_string();
        if kind == "block_found" {
            blocks_found += 1;
            assert!(event["data"]["user"].as_str().unwrap().starts_with("bcrt1"));
        }
        types.insert(kind);
    }
    assert_eq!(blocks_found, 2, "event types seen: {types:?}");
    for expected in ["miner_connected", "share_submitted", "new_block_network"] {
        assert!(types.contains(expected), "{expected} in {types:?}");
    }
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status, Some(0), "devnet exits by itself after --blocks");
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    assert!(log.contains("block accepted"), "{log}");
    // One line per connection event at info; the shares stay at debug.
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("miner authorized")),
        "{log}"
    );
    assert!(
        !log.contains("share accepted"),
        "shares are logged at debug only: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains("bcrt1")),
        "a closed connection names its miner: {log}"
    );
}

/// SIGTERM: miners are told to reconnect and the process is gone within 2 s.
#[test]
fn sigterm_stops_gracefully_and_tells_miners_to_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[events]\nsocket_path = {:?}\n{METRICS_ON_FREE_PORTS}",
            dir.path().join("e.sock")
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = tbg()
        .args([
            "devnet",
            "--stratum",
            &format!("127.0.0.1:{port}"),
            "--rpc",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break stream;
        }
        assert!(Instant::now() < deadline, "pool did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"id\":1"), "{line}");

    let stop = Instant::now();
    signal(&child, "TERM");
    let mut saw_reconnect = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => saw_reconnect |= line.contains("client.reconnect"),
        }
    }
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(saw_reconnect, "client.reconnect received");
    assert_eq!(status, Some(0));
    assert!(
        stop.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        stop.elapsed()
    );
}

fn pool_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join(format!("pool-{port}.toml"));
    let journal = dir.join(format!("journal-{port}.db"));
    let socket = dir.join("events.sock");
    // No node answers on port 1: the pool starts anyway and waits for one.
    std::fs::write(
        &path,
        format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[pool]\nbind = \"127.0.0.1:{port}\"\n[events]\nsocket_path = {socket:?}\n[journal]\npath = {journal:?}\n[blocks]\ndir = {blocks:?}\n{METRICS_ON_FREE_PORTS}",
            blocks = dir.join(format!("blocks-{port}")),
        ),
    )
    .unwrap();
    path
}

fn wait_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "pool exited early");
        assert!(Instant::now() < deadline, "pool did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The plan's "PID file stale" restart loop cannot happen: a second pool on
/// the same pid file refuses to start, a file left by kill -9 does not block.
#[test]
fn pid_file_blocks_a_second_pool_but_never_a_restart_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("run/main.pid");
    let (port_a, port_b) = (free_port(), free_port());
    let start = |port: u16| {
        tbg_with_config("pool", &pool_config(dir.path(), port))
            .arg("--pid-file")
            .arg(&pid_file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = start(port_a);
    wait_listening(port_a, &mut first);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first.id().to_string()
    );

    let second = start(port_b).wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("locked by pid {}", first.id())),
        "{stderr}"
    );

    first.kill().unwrap();
    first.wait().unwrap();
    let mut restarted = start(port_b);
    wait_listening(port_b, &mut restarted);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        restarted.id().to_string()
    );
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

/// Subscribes and authorizes a new miner; returns the difficulty the pool
/// sets for it (its first mining.set_difficulty).
fn start_difficulty_of_a_new_miner(port: u16) -> f64 {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let (address, _) = tbg_testkit::regtest_address(tbg_testkit::AddressKind::P2wpkh);
    writer
        .write_all(
            format!(
                "{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}}\n{{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"{address}.w\",\"x\"]}}\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "pool closed");
        let message: serde_json::Value = serde_json::from_str(&line).unwrap();
        if message["method"] == "mining.set_difficulty" {
            return message["params"][0].as_f64().unwrap();
        }
    }
}

fn reload_config(dir: &Path, port: u16, pool_keys: &str) -> String {
    format!(
        "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[pool]\nbind = \"127.0.0.1:{port}\"\nmindiff = 0.001\n{pool_keys}\n[events]\nsocket_path = {:?}\n[journal]\npath = {:?}\n[blocks]\ndir = {:?}\n{METRICS_ON_FREE_PORTS}",
        dir.join("events.sock"),
        dir.join("journal.db"),
        dir.join("blocks"),
    )
}

/// SIGHUP: a live key (startdiff) applies to the next miner without a
/// restart; a broken file is refused with an error and the pool keeps
/// serving on the old config; a key that needs a restart is named.
#[test]
fn sighup_reloads_live_keys_and_survives_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("tbg.toml");
    std::fs::write(&config, reload_config(dir.path(), port, "startdiff = 0.5")).unwrap();
    let mut child = spawn_with_config("pool", &config, Stdio::piped());
    let mut log = LogLines::of(&mut child);
    wait_listening(port, &mut child);
    assert_eq!(start_difficulty_of_a_new_miner(port), 0.5);

    // A live key.
    std::fs::write(&config, reload_config(dir.path(), port, "startdiff = 2.5")).unwrap();
    signal(&child, "HUP");
    let applied = log.wait_for("configuration reload: applied");
    assert!(applied.contains("pool.startdiff"), "{applied}");
    log.wait_for("configuration reloaded");
    assert_eq!(start_difficulty_of_a_new_miner(port), 2.5);
    assert!(child.try_wait().unwrap().is_none(), "same process");

    // The event socket and the node polling periods move live too: the
    // next miner's events arrive at the new socket.
    let moved_socket = dir.path().join("moved.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&moved_socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let moved = reload_config(
        dir.path(),
        port,
        "startdiff = 2.5\nblockpoll_ms = 250\nupdate_interval_s = 7",
    )
    .replace(
        &format!("{:?}", dir.path().join("events.sock")),
        &format!("{moved_socket:?}"),
    );
    std::fs::write(&config, moved).unwrap();
    signal(&child, "HUP");
    let reloaded = log.wait_for("configuration reloaded");
    for key in [
        "events.socket_path",
        "pool.blockpoll_ms",
        "pool.update_interval_s",
    ] {
        assert!(reloaded.contains(key), "{key} applied live: {reloaded}");
    }
    assert!(!reloaded.contains("restart_keys=events"), "{reloaded}");
    start_difficulty_of_a_new_miner(port);
    let mut datagram = vec![0u8; 64 * 1024];
    let len = listener
        .recv(&mut datagram)
        .expect("an event at the new socket path");
    let event: serde_json::Value = serde_json::from_slice(&datagram[..len]).unwrap();
    assert_eq!(event["event"], "miner_connected", "{event}");

    // A broken file, then a bad value: refused, old config kept.
    std::fs::write(&config, "network = \"regtest\"\n[pool\n").unwrap();
    signal(&child, "HUP");
    log.wait_for("configuration reload failed");
    std::fs::write(
        &config,
        reload_config(dir.path(), port, "startdiff = 9\nnonce1length = 12"),
    )
    .unwrap();
    signal(&child, "HUP");
    let failed = log.wait_for("configuration reload failed");
    assert!(failed.contains("pool.nonce1length"), "{failed}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(
        start_difficulty_of_a_new_miner(port),
        2.5,
        "old config kept"
    );

    // A restart-only key: named, not applied; the live key beside it is.
    let other_port = free_port();
    let moved = reload_config(dir.path(), other_port, "startdiff = 4");
    std::fs::write(&config, moved).unwrap();
    signal(&child, "HUP");
    log.wait_for("pool.bind cannot change while running; restart to apply it");
    log.wait_for("configuration reloaded");
    assert_eq!(start_difficulty_of_a_new_miner(port), 4.0);
    assert!(std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err());

    stops_cleanly_on_sigterm(&mut child);
}

/// The runbook's first diagnosis commands, run as written there against a
/// pool whose only node is down: `tbg check-config`, `/health` (503 with
/// the reason), the node metrics, `/status` through jq.
#[test]
fn runbook_diagnosis_commands_on_a_pool_without_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        reload_config(dir.path(), port, "").replace(
            "bind = \"127.0.0.1:0\"\ncollector_bind",
            &format!("bind = \"127.0.0.1:{metrics_port}\"\ncollector_bind"),
        ),
    )
    .unwrap();
    let check = check_config(&config);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(&format!("127.0.0.1:{port}")));

    let mut child = spawn_with_config("pool", &config, Stdio::null());
    wait_listening(port, &mut child);
    wait_listening(metrics_port, &mut child);
    let sh = |script: String| {
        let output = Command::new("sh").args(["-c", &script]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let base = format!("http://127.0.0.1:{metrics_port}");
    let health = sh(format!("curl -s -w ' HTTP %{{http_code}}' {base}/health"));
    assert!(health.ends_with("HTTP 503"), "{health}");
    assert!(health.contains("\"ready\":false"), "{health}");
    // Not ready, but live: systemd (which restarts on liveness) leaves it up.
    let live = sh(format!(
        "curl -s -w ' HTTP %{{http_code}}' {base}/health/live"
    ));
    assert!(live.ends_with("HTTP 200"), "{live}");
    assert!(live.contains("\"live\":true"), "{live}");
    let metrics = sh(format!(
        "curl -s {base}/metrics | grep -E '^ckpool_(bitcoin_connected|uptime_seconds|journal_healthy) '"
    ));
    assert!(metrics.contains("ckpool_bitcoin_connected 0"), "{metrics}");
    assert!(metrics.contains("ckpool_journal_healthy 1"), "{metrics}");
    let node_up = sh(format!("curl -s {base}/status | jq .pool.node_up"));
    assert_eq!(node_up, "false");
    let nodes = sh(format!(
        "curl -s {base}/status | jq -c '.nodes[] | {{url, up, last_error}}'"
    ));
    assert!(nodes.contains("\"up\":false"), "{nodes}");
    assert!(nodes.contains("127.0.0.1:1"), "{nodes}");

    stops_cleanly_on_sigterm(&mut child);
}

/// A pool config (no node: it starts and accepts miners anyway) whose
/// collector writes to `redis_url`, with the journal at `journal`.
fn pool_and_collector_config(dir: &Path, port: u16, journal: &Path, redis_url: &str) -> PathBuf {
    let path = dir.join(format!("tbg-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[pool]\nbind = \"127.0.0.1:{port}\"\n[events]\nsocket_path = {socket:?}\n[journal]\npath = {journal:?}\n[blocks]\ndir = {blocks:?}\n[collector]\nredis_url = {redis_url:?}\nbatch_wait_ms = 50\n{METRICS_ON_FREE_PORTS}",
            socket = dir.join(format!("events-{port}.sock")),
            blocks = dir.join(format!("blocks-{port}")),
        ),
    )
    .unwrap();
    path
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Leaves a file at the journal path before the collector starts.
type PrepareJournal = dyn Fn(&Path);

/// The chaos suite's start-up race: the collector starts while the pool is
/// still creating the journal (the file is there, its schema is not). It
/// waits instead of exiting, then delivers the pool's events; another
/// program's database or a newer journal still stops it with a clear error.
#[test]
fn collector_waits_for_a_journal_the_pool_is_still_creating() {
    let dir = tempfile::tempdir().unwrap();
    let blank_sqlite = |path: &Path| {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection
            .execute_batch("CREATE TABLE scratch (x); DROP TABLE scratch;")
            .unwrap();
    };
    let cases: [(&str, &PrepareJournal); 2] = [
        ("empty file", &|path| std::fs::write(path, b"").unwrap()),
        ("sqlite file with schema version 0", &blank_sqlite),
    ];
    for (case, prepare) in cases {
        let redis = tbg_testkit::RedisServer::start();
        let port = free_port();
        let journal = dir.path().join(format!("journal-{port}.db"));
        prepare(&journal);
        let config = pool_and_collector_config(dir.path(), port, &journal, &redis.url());
        let mut collector = spawn_with_config("collector", &config, Stdio::piped());
        let mut collector_log = LogLines::of(&mut collector);
        collector_log.wait_for("schema is not created yet");
        assert!(
            collector.try_wait().unwrap().is_none(),
            "{case}: the collector exited: {}",
            collector_log.seen
        );

        let mut pool = spawn_with_config("pool", &config, Stdio::null());
        wait_listening(port, &mut pool);
        collector_log.wait_for("journal is ready");
        // One miner: its miner_connected event goes journal -> collector -> Redis.
        start_difficulty_of_a_new_miner(port);
        wait_until(
            &format!("{case}: miner_connected in Redis"),
            Duration::from_secs(30),
            || redis.cli(&["XLEN", "mining:miner_connected"]) == "1",
        );
        assert!(
            collector.try_wait().unwrap().is_none(),
            "{case}: {}",
            collector_log.seen
        );
        kill_and_reap(&mut pool);
        kill_and_reap(&mut collector);
    }

    // Not ours, or newer than this build: a clear error at once.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE accounts (id INTEGER);")
        .unwrap();
    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("CREATE TABLE journal (seq INTEGER PRIMARY KEY); PRAGMA user_version = 2;")
        .unwrap();
    for (journal, expected) in [
        (&foreign, "is a sqlite database but not an event journal"),
        (&newer, "has schema version 2, this build reads version 1"),
    ] {
        let config =
            pool_and_collector_config(dir.path(), free_port(), journal, "redis://127.0.0.1:1");
        let mut collector = spawn_with_config("collector", &config, Stdio::piped());
        let mut log = LogLines::of(&mut collector);
        log.wait_for(expected);
        assert!(
            matches!(wait_exit(&mut collector, Duration::from_secs(10)), Some(code) if code != 0),
            "{}",
            log.seen
        );
    }
}

/// `tbg collector --replay --from seq:N` (what `tbg restore` prints)
/// re-delivers exactly the journal's events from seq N on.
#[test]
fn collector_replays_from_a_journal_seq() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.db");
    let factory = tbg_events::EventFactory::new("eu", "hosted");
    let ids: Vec<String> = {
        let journal =
            tbg_journal::Journal::open(tbg_journal::JournalConfig::new(&journal_path)).unwrap();
        let ids = (1..=5u64)
            .map(|n| {
                let event = factory.make(tbg_events::EventData::ShareSubmitted {
                    user: "bcrt1qexample".into(),
                    worker: format!("rig{n}"),
                    client_id: n,
                    diff: 1.0,
                    sdiff: 2.0,
                    accepted: true,
                    reject_reason: None,
                    ip: "127.0.0.1".into(),
                });
                assert_eq!(journal.append(&event).unwrap(), n);
                event.id
            })
            .collect();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(journal.close())
            .unwrap();
        ids
    };
    let redis = tbg_testkit::RedisServer::start();
    let config = pool_and_collector_config(dir.path(), free_port(), &journal_path, &redis.url());
    let replay = |from: &str| {
        tbg_with_config("collector", &config)
            .args(["--replay", "--from", from])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    for (from, expected) in [
        ("seq:0", "is not a journal seq"),
        ("seq:x", "is not a journal seq"),
        ("seq:7", "the journal ends at seq 5, before seq 7"),
    ] {
        let output = replay(from).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--from {from} accepted");
        assert!(stderr.contains(expected), "--from {from}: {stderr}");
    }

    let mut collector = replay("seq:3");
    wait_until("the Redis cursor at seq 5", Duration::from_secs(30), || {
        redis.cli(&["GET", "tbg:collector:cursor:redis"]) == "5"
    });
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("mining:share_submitted")
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    let delivered: Vec<String> = entries
        .into_iter()
        .map(|(_, fields)| fields.get("id").cloned().expect("the event id"))
        .collect();
    assert_eq!(delivered, ids[2..].to_vec());
    kill_and_reap(&mut collector);
}

/// A connection from 127.0.0.1 that asked for a subscription: `Some` when
/// the pool answered, `None` when it closed the connection unanswered.
fn subscribed(port: u16) -> Option<std::net::TcpStream> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .ok()?;
    let mut line = String::new();
    let read = BufReader::new(stream.try_clone().ok()?).read_line(&mut line);
    matches!(read, Ok(n) if n > 0).then_some(stream)
}

/// SIGHUP applies new limits to the running process: with one connection
/// per source, a second one is closed unanswered; a reload to two lets the
/// second in (not a third); allow-listing the source lifts its limits.
#[test]
fn sighup_changes_the_limits_of_a_running_pool() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("tbg.toml");
    let write =
        |keys: &str| std::fs::write(&config, reload_config(dir.path(), port, keys)).unwrap();
    write("max_connections_per_ip = 1");
    let mut child = spawn_with_config("pool", &config, Stdio::piped());
    let mut log = LogLines::of(&mut child);
    wait_listening(port, &mut child);
    // wait_listening's probe may still hold the one slot for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        if let Some(stream) = subscribed(port) {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the first connection is never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(subscribed(port).is_none(), "a second connection is refused");

    write("max_connections_per_ip = 2");
    signal(&child, "HUP");
    let applied = log.wait_for("configuration reload: applied");
    assert!(applied.contains("pool.max_connections_per_ip"), "{applied}");
    log.wait_for("configuration reloaded");
    let second = subscribed(port).expect("the second connection is served after the reload");
    assert!(subscribed(port).is_none(), "a third is refused");

    write("max_connections_per_ip = 2\nallow_list = [\"127.0.0.1\"]");
    signal(&child, "HUP");
    let applied = log.wait_for("configuration reload: applied");
    assert!(applied.contains("pool.allow_list"), "{applied}");
    log.wait_for("configuration reloaded");
    let more: Vec<_> = (0..5)
        .map(|n| subscribed(port).unwrap_or_else(|| panic!("allow-listed connection {n} refused")))
        .collect();
    assert!(child.try_wait().unwrap().is_none(), "same process");
    drop((first, second, more));
    stops_cleanly_on_sigterm(&mut child);
}
