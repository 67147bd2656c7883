//! A ckpool.conf runs unchanged: it names no network (ckpool mines on
//! whatever its node is), so the pool asks the node. Against the embedded
//! kernel node on a random, non-default RPC port (regtest is the network it
//! can be), with a regtest payout address that a mainnet guess would refuse.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tbg_devnode::{DevNode, DevNodeHandle, DevNodeOptions};
use tbg_testkit::{free_port, regtest_address, AddressKind};

fn tbg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
}

fn ckpool_conf(dir: &Path, node: &DevNodeHandle, stratum: u16, extra: &str) -> PathBuf {
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    ckpool_conf_paying(dir, node, stratum, &address, extra)
}

fn ckpool_conf_paying(
    dir: &Path,
    node: &DevNodeHandle,
    stratum: u16,
    address: &str,
    extra: &str,
) -> PathBuf {
    let url = node.rpc_url().trim_start_matches("http://");
    let path = dir.join("ckpool.conf");
    let text = format!(
        r#"{{
  "btcd": [{{"url": "{url}", "auth": "{user}", "pass": "{pass}", "notify": true}}],
  "btcaddress": "{address}",
  "btcsig": "/drop-in/",
  "serverurl": ["127.0.0.1:{stratum}"],
  "logdir": "{logs}",
  "event_socket_path": "{socket}",
  "metrics_port": 0{extra}
}}"#,
        user = node.rpc_user(),
        pass = node.rpc_password(),
        logs = dir.join("logs").display(),
        socket = dir.join("events.sock").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `tbg pool --ckpool-conf`, run where its journal and block store go;
/// killed when dropped (a failed assertion leaves nothing running).
struct Pool(Option<Child>);

impl Pool {
    fn start(dir: &Path, conf: &Path) -> Pool {
        let child = tbg()
            .args(["pool", "--ckpool-conf"])
            .arg(conf)
            .current_dir(dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Pool(Some(child))
    }

    /// Its exit code and log, killing it after `timeout` (code `None`).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let code = output.status.code();
        (code, String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A stratum subscribe + authorize as `user`; the authorize answer line.
fn authorize(port: u16, user: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("the pool never listened: {error}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    writeln!(
        writer,
        r#"{{"id":1,"method":"mining.subscribe","params":["test/1"]}}"#
    )
    .unwrap();
    writeln!(
        writer,
        r#"{{"id":2,"method":"mining.authorize","params":["{user}","x"]}}"#
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed");
        if line.contains("\"id\":2") {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ckpool_conf_without_a_network_runs_unchanged_on_the_nodes_network() {
    let rpc_port = free_port();
    let node = DevNode::start(DevNodeOptions {
        rpc_bind: ([127, 0, 0, 1], rpc_port).into(),
        ..DevNodeOptions::default()
    })
    .await
    .unwrap();
    assert_ne!(rpc_port, 18443, "not the network's default port");
    let dir = tempfile::tempdir().unwrap();
    let stratum = free_port();
    let conf = ckpool_conf(dir.path(), &node, stratum, "");
    let pool = Pool::start(dir.path(), &conf);
    let (miner, _) = regtest_address(AddressKind::P2tr);
    let answer = tokio::task::spawn_blocking(move || authorize(stratum, &format!("{miner}.rig")))
        .await
        .unwrap();
    assert!(answer.contains("\"result\":true"), "{answer}");
    let (_, log) = pool.finish(Duration::ZERO);
    assert!(
        log.lines()
            .any(|l| l.contains("(the ckpool config names none)") && l.contains("regtest")),
        "{log}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_the_node_is_not_on_stops_the_start_with_the_reason() {
    let node = DevNode::start(DevNodeOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A signet payout address, as an operator who meant signet has.
    let (_, script) = regtest_address(AddressKind::P2wpkh);
    let signet = bitcoin::Address::from_script(&script, bitcoin::Network::Signet)
        .unwrap()
        .to_string();
    let conf = ckpool_conf_paying(
        dir.path(),
        &node,
        free_port(),
        &signet,
        r#", "network": "signet""#,
    );
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        Pool::start(dir.path(), &conf).finish(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("network = signet") && stderr.contains("is on regtest"),
        "{stderr}"
    );
    node.shutdown().await;
}
