//! Webhooks as an operator sets them up: `[[notify.webhooks]]` in the
//! config, the secret from `TBG_WEBHOOK_<N>_SECRET` in its `whsec_` form,
//! `tbg devnet --miner` finds a block, and real HTTP receivers get the
//! signed notice: the testkit's (Rust, the HMAC crate) and the Python one
//! of docs/notifications.md, run as the docs give it (skipped without
//! python3). The secret and the URL's token appear in no log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;

use tbg_testkit::webhook::{Receiver, KEY};

mod support;
use support::{devnet, kill_and_reap, tbg, wait_exit, LogLines};

/// The receiver of docs/notifications.md on `port`, if python3 is here.
fn docs_receiver(port: u16, secret: &str) -> Option<std::process::Child> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: the docs' receiver is not run");
        return None;
    }
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/notifications.md"
    ))
    .unwrap();
    let section = docs
        .split("## A receiver")
        .nth(1)
        .expect("the receiver section");
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block");
    assert!(code.contains("8099"), "the docs' port");
    let code = code.replace("8099", &port.to_string());
    Some(
        Command::new("python3")
            .args(["-c", &code])
            .env("TBG_WEBHOOK_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_sends_a_signed_block_notice_to_a_webhook_and_keeps_its_secrets() {
    let (receiver, addr, server) = Receiver::start(0).await;
    let docs_port = tbg_testkit::free_port();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    let mut python = docs_receiver(docs_port, &secret);
    if python.is_some() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", docs_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the docs' receiver listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n\
             [web]\nbind = \"127.0.0.1:0\"\n\
             [[notify.webhooks]]\nname = \"phone\"\nurl = \"http://{addr}/hook/secret-token\"\nevents = [\"block_found\"]\n\
             [[notify.webhooks]]\nname = \"docs\"\nurl = \"http://127.0.0.1:{docs_port}/\"\nevents = [\"block_found\"]\n"
        ),
    )
    .unwrap();

    // Without its secret the webhook is refused at start, naming the variable.
    let refused = tbg()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TBG_WEBHOOK_0_SECRET"), "{stderr}");

    let mut devnet = devnet(&config)
        .args(["--miner", "--blocks", "1"])
        .env("TBG_WEBHOOK_0_SECRET", &secret)
        .env("TBG_WEBHOOK_1_SECRET", &secret)
        .spawn()
        .unwrap();
    let mut log = LogLines::of(&mut devnet);
    let found = receiver
        .wait_for("block_found", 1, Duration::from_secs(90))
        .await;
    assert!(found[0].body["data"]["user"]
        .as_str()
        .is_some_and(|u| u.starts_with("bcrt1")));
    let ts = found[0].body["timestamp"].as_str().unwrap().to_owned();
    assert!(ts.ends_with('Z'), "{ts}");
    // Named by its name in the log.
    let delivered = log.wait_for("webhook=phone");
    assert!(delivered.contains("webhook delivered"), "{delivered}");

    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut devnet, Duration::from_secs(30));
        kill_and_reap(&mut devnet);
        status
    })
    .await
    .unwrap();
    assert_eq!(status, Some(0), "devnet exits after --blocks 1");
    // Give the reader thread the rest of the log.
    while let Ok(line) = log.lines_recv(Duration::from_millis(200)) {
        log.seen.push_str(&line);
        log.seen.push('\n');
    }
    assert!(!log.seen.contains(&secret), "the secret is never logged");
    assert!(
        !log.seen.contains("secret-token"),
        "the URL (its token) is never logged"
    );
    let ids: Vec<String> = receiver
        .of_kind("block_found")
        .into_iter()
        .map(|r| r.id)
        .collect();
    // One notice per block found (the miner may find a second before it
    // stops), none twice.
    let blocks = log
        .seen
        .lines()
        .filter(|l| l.contains("BLOCK FOUND"))
        .count();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert!(blocks >= 1);
    assert_eq!((ids.len(), unique.len()), (blocks, blocks), "{ids:?}");
    if let Some(python) = python.as_mut() {
        // The docs' receiver printed the notice it verified.
        let stdout = python.stdout.take().unwrap();
        let user = found[0].body["data"]["user"].as_str().unwrap().to_owned();
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).next()
        });
        let line = tokio::time::timeout(Duration::from_secs(10), line)
            .await
            .expect("the docs' receiver printed the notice")
            .unwrap()
            .unwrap_or_default();
        assert!(
            line.starts_with("block_found ") && line.ends_with(&user),
            "{line}"
        );
        kill_and_reap(python);
    }
    server.abort();
}
