//! Longer history from the collector's PostgreSQL (a real server of the
//! test's own, filled by the real collector from the pool's journal): after
//! the pool restarted with an empty memory and no state file, an address's
//! page still shows its all-time and 7-day best and its days, in headless
//! Chromium.

use std::sync::Arc;
use std::time::Duration;

use tbg_collector::{Collector, CollectorConfig, PostgresConfig, SinkKind};
use tbg_journal::{Journal, JournalConfig, JournalReader};
use tbg_testkit::browser::{chromium, text_of};
use tbg_testkit::{regtest_address, AddressKind, ManualMiner, PgServer, TestEnv};
use tbg_web::{WebServer, WebSources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_page_shows_the_databases_history_after_a_restart() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let env = TestEnv::start_with_journal(Journal::open(JournalConfig::new(&path)).unwrap()).await;
    let (address, _) = regtest_address(AddressKind::P2wpkh);
    let mut rig = ManualMiner::connect(env.stratum_addr(), &format!("{address}.rig")).await;
    env.find_blocks(&mut rig, 3).await;
    let best_ever = env
        .service
        .pool
        .stats()
        .user(&address, std::time::Instant::now())
        .unwrap()
        .best_difficulty;
    drop(rig);
    env.shutdown().await;

    // The collector puts the journal into PostgreSQL.
    let reader = Arc::new(JournalReader::open(&path).unwrap());
    let last = reader.last_seq().unwrap();
    let collector = Collector::start(
        CollectorConfig {
            postgres: Some(PostgresConfig {
                conninfo: pg.conninfo(),
            }),
            redis: None,
            ..CollectorConfig::default()
        },
        reader,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while collector.sink_stats(SinkKind::Postgres).map(|s| s.cursor) != Some(last) {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector.shutdown().await;

    // A new pool, its memory empty, no state file: only the database knows.
    let env = TestEnv::start().await;
    let sources = |postgres: Option<String>| WebSources {
        pool: env.service.pool.view(),
        network: "regtest".to_owned(),
        sample_interval: Duration::from_secs(60),
        state_file: None,
        postgres,
    };
    let web = WebServer::start("127.0.0.1:0", sources(Some(pg.conninfo())))
        .await
        .unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let page = chromium(
        &format!("http://{}/address/{address}", web.local_addr()),
        Some(&shots.join("address-from-postgres.png")),
    )
    .await;
    assert!(page.console.is_empty(), "console: {:?}", page.console);
    let best = tbg_web::format::difficulty(best_ever);
    assert_eq!(text_of(&page.dom, "best-share-alltime"), best);
    assert_eq!(text_of(&page.dom, "best-share-week"), best);
    assert_eq!(text_of(&page.dom, "workers-connected"), "0");
    let days = &page.dom[page.dom.find("id=\"days\"").expect("the days table")..];
    let today = time_today();
    let row = &days[days.find(&today).expect("today's row")..];
    assert!(
        row[..row.find("</tr>").unwrap()].contains("<td>3</td>"),
        "three accepted shares today: {}",
        &row[..row.find("</tr>").unwrap()]
    );
    web.shutdown().await;

    // Without the database the pool does not know the address.
    let web = WebServer::start("127.0.0.1:0", sources(None))
        .await
        .unwrap();
    let page = chromium(
        &format!("http://{}/address/{address}", web.local_addr()),
        None,
    )
    .await;
    assert!(page.dom.contains("No miner seen with this address"));
    web.shutdown().await;
    env.shutdown().await;
}

/// Today (UTC) as `YYYY-MM-DD`, as the page writes it.
fn time_today() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    )
}
