//! The `tbg` binary as an operator uses it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Tests run in parallel: no fixed metrics ports.
const METRICS_ON_FREE_PORTS: &str =
    "[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n";

fn tbg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
}

#[test]
fn a_bad_config_value_is_named_and_exits_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tbg.toml");
    std::fs::write(&path, "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:18443\"\nuser = \"u\"\npass = \"p\"\n[pool]\nnonce1length = 12\n")
        .unwrap();
    let output = tbg()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pool.nonce1length = 12"), "{stderr}");

    std::fs::write(&path, "network = \"regtest\"\n[pool\n").unwrap();
    let output = tbg()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "TOML syntax error");

    let output = tbg()
        .args(["check-config", "--config", "/nonexistent/tbg.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "missing file");
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
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
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

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pool_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("pool-{port}.toml"));
    let journal = dir.join(format!("journal-{port}.db"));
    let socket = dir.join("events.sock");
    // No node answers on port 1: the pool starts anyway and waits for one.
    std::fs::write(
        &path,
        format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[pool]\nbind = \"127.0.0.1:{port}\"\n[events]\nsocket_path = {socket:?}\n[journal]\npath = {journal:?}\n[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    path
}

fn wait_listening(port: u16, child: &mut std::process::Child) {
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
        tbg()
            .args(["pool", "--config"])
            .arg(pool_config(dir.path(), port))
            .arg("--pid-file")
            .arg(&pid_file)
            .stdout(Stdio::null())
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
