//! The dashboard in a real headless browser (Debian's `chromium`, installed
//! by scripts/setup.sh): a pool with real shares and blocks (embedded
//! kernel node), each page rendered by Chromium, its numbers checked
//! against the operator's `/status`, no console message, and a phone-sized
//! screenshot of each page kept under the target dir's
//! `tmp/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tbg_metrics::{MetricsServer, PoolSources};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, TestEnv};
use tbg_web::{WebServer, WebSources};

struct Rendered {
    dom: String,
    console: Vec<String>,
}

/// Loads `url` in headless Chromium; returns the DOM after load and every
/// console line Chromium logged; with `screenshot`, also a 390×844 (phone)
/// PNG of the page.
async fn chromium(url: &str, screenshot: Option<&Path>) -> Rendered {
    let url = url.to_owned();
    let screenshot = screenshot.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let command = || {
            let mut command = Command::new("chromium");
            command.args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=390,844",
            ]);
            command.arg(format!("--user-data-dir={}", profile.path().display()));
            command
        };
        let dom = command()
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("chromium is installed by scripts/setup.sh (Debian package chromium)");
        assert!(dom.status.success(), "chromium --dump-dom {url}: {dom:?}");
        if let Some(path) = &screenshot {
            let shot = command()
                .arg(format!("--screenshot={}", path.display()))
                .arg(&url)
                .output()
                .unwrap();
            assert!(shot.status.success(), "chromium --screenshot: {shot:?}");
            let png = std::fs::read(path).expect("a screenshot");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 5_000,
                "a real picture"
            );
        }
        let stderr = String::from_utf8_lossy(&dom.stderr);
        Rendered {
            dom: String::from_utf8(dom.stdout).unwrap(),
            console: stderr
                .lines()
                .filter(|l| l.contains(":CONSOLE"))
                .map(str::to_owned)
                .collect(),
        }
    })
    .await
    .unwrap()
}

/// The text of the element with `id` (our pages keep figures in leaf
/// elements).
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("#{id} in the page"))
        + marker.len();
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_owned()
}

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
    let web = WebServer::start(
        "127.0.0.1:0",
        WebSources {
            pool: env.service.pool.view(),
            network: "regtest".to_owned(),
            sample_interval: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    let ops = MetricsServer::start_pool("127.0.0.1:0", PoolSources::new(&env.service, None))
        .await
        .unwrap();
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut rig = ManualMiner::connect(env.stratum_addr(), &format!("{address}.bitaxe")).await;
    // On regtest every valid share is a block too: the pages show both.
    for counter in 1..=3 {
        assert!(rig.submit_valid(counter).await.is_ok());
        env.wait_until("the block accepted", Duration::from_secs(30), |env| {
            env.service.pool.status().blocks_accepted >= counter
        })
        .await;
        // The next share on the next block's work.
        rig.job_on(env.node.best_block_hash()).await;
    }
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
}
