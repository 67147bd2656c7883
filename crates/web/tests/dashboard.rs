//! The dashboard in a real headless browser (Debian's `chromium`, installed
//! by scripts/setup.sh): a pool with real shares and blocks (embedded
//! kernel node), each page rendered by Chromium, its numbers checked
//! against the operator's `/status`, no console message, and a phone-sized
//! screenshot of each page kept under the target dir's
//! `tmp/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_testkit::browser::{chromium, text_of};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};
use tbg_web::{WebServer, WebSources};

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_real_mining_in_a_real_browser_and_match_status() {
    // The console check must be able to fail: a page that logs is seen.
    let probe = chromium(
        "data:text/html,<script>console.error('console-probe')</script>",
        None,
    )
    .await;
    assert!(
        probe.console.iter().any(|l| l.contains("console-probe")),
        "chromium reports console messages on stderr: {:?}",
        probe.console
    );

    let env = TestEnv::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("dashboard-best.json");
    let web_of = |env: &TestEnv| WebSources {
        pool: env.service.pool.view(),
        network: "regtest".to_owned(),
        sample_interval: Duration::from_millis(100),
        state_file: Some(state_file.clone()),
        postgres: None,
    };
    let web = WebServer::start("127.0.0.1:0", web_of(&env)).await.unwrap();
    let ops = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut rig = ManualMiner::connect(env.stratum_addr(), &format!("{address}.bitaxe")).await;
    // On regtest every valid share is a block too: the pages show both.
    env.find_blocks(&mut rig, 3).await;
    // A few chart points with hashrate in them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status: Value = reqwest::get(format!("http://{}/status", ops.local_addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user: Value = reqwest::get(format!(
        "http://{}/status/users/{address}",
        ops.local_addr()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let base = format!("http://{}", web.local_addr());
    let shots = screenshot_dir();

    let pool = chromium(&format!("{base}/"), Some(&shots.join("pool.png"))).await;
    assert!(pool.console.is_empty(), "console: {:?}", pool.console);
    let p = &status["pool"];
    assert_eq!(text_of(&pool.dom, "miners"), p["miners"].to_string());
    assert_eq!(
        text_of(&pool.dom, "blocks-found"),
        p["blocks_found"].to_string()
    );
    assert_eq!(
        text_of(&pool.dom, "height"),
        p["template_height"].to_string()
    );
    assert_eq!(
        text_of(&pool.dom, "workers"),
        status["workers_connected"].to_string()
    );
    for block in status["blocks"].as_array().unwrap() {
        let hash = block["hash"].as_str().unwrap();
        let row = &pool.dom[pool.dom.find(hash).expect("each block listed")..];
        let badge = format!("class=\"badge {}\"", block["status"].as_str().unwrap());
        assert!(
            row[..row.find("</tr>").unwrap()].contains(&badge),
            "{hash}: {badge}"
        );
    }
    assert!(
        pool.dom.contains("<svg"),
        "the pool's hashrate chart is drawn"
    );
    let node_url = status["nodes"][0]["url"].as_str().unwrap();
    assert!(
        !pool.dom.contains(node_url),
        "no operator detail on the public page"
    );

    let mine = chromium(
        &format!("{base}/address/{address}"),
        Some(&shots.join("address.png")),
    )
    .await;
    assert!(mine.console.is_empty(), "console: {:?}", mine.console);
    assert_eq!(text_of(&mine.dom, "address-shown"), address.to_string());
    assert_eq!(
        text_of(&mine.dom, "shares-accepted"),
        user["shares_accepted"].to_string()
    );
    assert_eq!(
        text_of(&mine.dom, "workers-connected"),
        user["workers_connected"].to_string()
    );
    assert_eq!(text_of(&mine.dom, "reject-rate"), "0.0 %");
    // One session so far: its best is the week's and the all-time best.
    let best = tbg_web::format::difficulty(user["best_difficulty"].as_f64().unwrap());
    for id in [
        "best-share-session",
        "best-share-week",
        "best-share-alltime",
    ] {
        assert_eq!(text_of(&mine.dom, id), best, "{id}");
    }
    assert!(
        mine.dom.contains("<th scope=\"row\">bitaxe</th>"),
        "the worker's row"
    );
    assert!(mine.dom.contains("<svg"), "the address's chart is drawn");
    assert_eq!(
        mine.dom.matches("class=\"badge ").count(),
        3,
        "its three blocks"
    );

    // The header's search form leads to the same page; a stranger's
    // markup in the address is shown as text.
    let searched = chromium(&format!("{base}/address?address={address}"), None).await;
    assert_eq!(text_of(&searched.dom, "address-shown"), address.to_string());
    let unknown = chromium(
        &format!("{base}/address/%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
        Some(&shots.join("unknown-address.png")),
    )
    .await;
    assert!(unknown.dom.contains("No miner seen with this address"));
    assert!(unknown.dom.contains("&lt;script&gt;"), "escaped");
    assert!(unknown.console.is_empty(), "console: {:?}", unknown.console);

    ops.shutdown().await;
    web.shutdown().await;
    env.shutdown().await;

    // The pool restarted (its memory empty): the week's and all-time best
    // come back from web.state_file; the session's is the new session's.
    let env = TestEnv::start().await;
    let web = WebServer::start("127.0.0.1:0", web_of(&env)).await.unwrap();
    let mut rig = ManualMiner::connect(env.stratum_addr(), &format!("{address}.bitaxe")).await;
    assert!(rig.submit_valid(1).await.is_ok());
    let fresh = env
        .service
        .pool
        .stats()
        .user(&address, std::time::Instant::now())
        .unwrap();
    let before = user["best_difficulty"].as_f64().unwrap();
    let again = chromium(
        &format!("http://{}/address/{address}", web.local_addr()),
        None,
    )
    .await;
    assert_eq!(
        text_of(&again.dom, "best-share-session"),
        tbg_web::format::difficulty(fresh.best_difficulty_session)
    );
    let kept = tbg_web::format::difficulty(before.max(fresh.best_difficulty));
    assert_eq!(text_of(&again.dom, "best-share-alltime"), kept);
    assert_eq!(text_of(&again.dom, "best-share-week"), kept);
    web.shutdown().await;
    env.shutdown().await;
}
