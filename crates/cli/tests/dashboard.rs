//! The dashboard as a new user meets it: `tbg devnet --miner` (the embedded
//! node and the built-in CPU miner, no database), its pages opened in
//! headless Chromium while it mines: blocks found by the miner listed with
//! their status, the miner's own page with its worker and blocks. Phone
//! screenshots kept under the target dir's `tmp/devnet-dashboard/`.

use std::path::Path;
use std::time::Duration;

use tbg_testkit::browser::{chromium, text_of};
use tbg_testkit::{free_port, regtest_address, AddressKind};

mod support;
use support::{devnet, signal, wait_exit, LogLines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_with_its_miner_serves_pages_that_show_the_mining() {
    let dir = tempfile::tempdir().unwrap();
    let web_port = free_port();
    let config = dir.path().join("tbg.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\n[metrics]\nbind = \"127.0.0.1:0\"\ncollector_bind = \"127.0.0.1:0\"\n\
             [web]\nbind = \"127.0.0.1:{web_port}\"\nsample_interval_s = 1\n"
        ),
    )
    .unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut devnet = devnet(&config)
        .args(["--miner", "--miner-address", &address, "--data-dir"])
        .arg(dir.path().join("data"))
        .spawn()
        .unwrap();
    let mut log = LogLines::of(&mut devnet);
    log.wait_for("dashboard listening");
    for _ in 0..2 {
        log.wait_for("block accepted");
    }
    // A chart point or two with the miner's hashrate in it.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("devnet-dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://127.0.0.1:{web_port}");
    let pool = chromium(&format!("{base}/"), Some(&shots.join("pool.png"))).await;
    assert!(pool.console.is_empty(), "console: {:?}", pool.console);
    let found: u64 = text_of(&pool.dom, "blocks-found").parse().unwrap();
    assert!(found >= 2, "blocks found: {found}");
    assert_eq!(text_of(&pool.dom, "miners"), "1");
    assert!(
        pool.dom.contains("class=\"badge accepted\"")
            || pool.dom.contains("class=\"badge confirmed\"")
    );
    assert!(pool.dom.contains("<svg"), "the hashrate chart");

    let mine = chromium(
        &format!("{base}/address/{address}"),
        Some(&shots.join("address.png")),
    )
    .await;
    assert!(mine.console.is_empty(), "console: {:?}", mine.console);
    assert_eq!(text_of(&mine.dom, "address-shown"), address);
    assert!(
        mine.dom.contains("<th scope=\"row\">cpu</th>"),
        "the built-in miner's worker"
    );
    assert!(
        mine.dom.matches("class=\"badge ").count() >= 2,
        "its blocks"
    );
    assert_ne!(text_of(&mine.dom, "best-share-alltime"), "0");

    signal(&devnet, "TERM");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut devnet, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(status, Some(0));
    assert!(
        dir.path().join("data/dashboard-best.json").exists(),
        "the best shares are kept in the data dir"
    );
}
