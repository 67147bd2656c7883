//! A Stratum V1 miner behind the Stratum V2 reference implementation's own
//! translator proxy (crates.io `translator_sv2` 0.6.0, installed by
//! `scripts/setup.sh`) mines blocks through our V2 port that the embedded
//! node accepts, paid to the translator's user identity; the translator
//! itself checks that our coinbase pays that identity (`verify_payout`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tbg_events::EventData;
use tbg_miner::{mine_shares, MinerConfig};
use tbg_pool::sv2::Sv2Settings;
use tbg_sv2::AuthorityKey;
use tbg_testkit::{free_port, regtest_address, AddressKind, TestEnv};

/// The pinned translator: `TBG_TRANSLATOR_SV2`, else where setup puts it.
fn translator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TBG_TRANSLATOR_SV2") {
        return PathBuf::from(path);
    }
    let tools = std::env::var_os("TBG_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/tbg-tools"), PathBuf::from);
    let path = tools.join("bin/translator_sv2");
    assert!(
        path.exists(),
        "{} is missing: `TBG_SETUP_TEST_DEPS=1 scripts/setup.sh` installs translator_sv2 0.6.0",
        path.display()
    );
    path
}

/// The translator as a child process, killed with the test.
struct Translator {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Translator {
    async fn start(pool: std::net::SocketAddr, key: &AuthorityKey, identity: &str) -> Translator {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            r#"downstream_address = "127.0.0.1"
downstream_port = {port}
max_supported_version = 2
min_supported_version = 2
downstream_extranonce2_size = 4
verify_payout = true
aggregate_channels = true
supported_extensions = []

[downstream_difficulty_config]
min_individual_miner_hashrate = 1_000_000.0
shares_per_minute = 60.0
enable_vardiff = false
job_keepalive_interval_secs = 60

[[upstreams]]
address = "{host}"
port = {pool_port}
authority_pubkey = "{pubkey}"
user_identity = "{identity}"
"#,
            host = pool.ip(),
            pool_port = pool.port(),
            pubkey = key.public_base58(),
        );
        let path = dir.path().join("tproxy.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("tproxy.log")).unwrap();
        let child = tokio::process::Command::new(translator_binary())
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("translator_sv2 starts");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut translator = Translator {
            child,
            addr,
            _dir: dir,
        };
        translator.wait_listening().await;
        translator
    }

    /// The translator opens its downstream port once its upstream channel
    /// is set up.
    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("translator_sv2 exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "translator_sv2 never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("tproxy.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_miner_behind_the_reference_translator_finds_blocks_through_the_v2_port() {
    let key = AuthorityKey::generate();
    let port_key = key.clone();
    let env = TestEnv::start_with(move |settings| {
        settings.sv2 = Some(Sv2Settings::new("127.0.0.1:0".parse().unwrap(), port_key));
    })
    .await;
    let pool = env.service.pool.sv2_addr().expect("the V2 port");
    let (address, script) = regtest_address(AddressKind::P2wpkh);
    let translator = Translator::start(pool, &key, &format!("{address}.tproxy")).await;

    let start_height = env.node.block_count();
    // Any V1 username: in aggregated mode the translator mines for its
    // own identity. One block per round: a block found on a job the next
    // tip just replaced is submitted but loses (the miner, the translator
    // and the pool each see the new tip a moment apart); at most 5 rounds.
    let mut candidates = 0;
    for _ in 0..5 {
        if env.node.block_count() >= start_height + 2 {
            break;
        }
        let mut config = MinerConfig::new(translator.addr, "behind-the-translator".to_string());
        config.max_blocks = Some(1);
        let mined = mine_shares(config, Duration::from_secs(60)).await;
        let (summary, _) = mined.unwrap_or_else(|e| panic!("{e}\n{}", translator.log()));
        candidates += summary.block_candidates;
        // The block reaches the node within moments, unless it lost the
        // race (the pool then keeps it pending until the chain settles it).
        let height = env.node.block_count();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while env.node.block_count() <= height {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    assert!(candidates >= 2, "{candidates}\n{}", translator.log());
    env.wait_until("two blocks accepted", Duration::from_secs(30), |env| {
        env.node.block_count() >= start_height + 2
    })
    .await;
    // The two newest blocks, from the tip down.
    let mut hash = env.node.best_block_hash();
    for _ in 0..2 {
        let block = env.node.get_block(&hash).unwrap();
        assert_eq!(
            block.txdata[0].output[0].script_pubkey, script,
            "block {hash} pays the translator's identity"
        );
        hash = block.header.prev_blockhash;
    }
    // The translator's channel is a miner like any other.
    assert!(env
        .events_of("miner_connected")
        .iter()
        .any(|e| matches!(&e.data,
        EventData::MinerConnected { user, .. } if *user == address)));
    assert!(
        env.events_of("block_found")
            .iter()
            .filter(|e| matches!(&e.data,
            EventData::BlockFound { user, .. } if *user == address))
            .count()
            >= 2
    );
    let status = env.service.pool.status();
    assert_eq!(status.blocks_rejected, 0, "{status:?}");
    assert!(
        !translator.log().contains("panicked"),
        "{}",
        translator.log()
    );
    if std::env::var_os("TBG_TRANSLATOR_LOG").is_some() {
        eprintln!("{}", translator.log());
    }
    drop(translator);
    env.shutdown().await;
}
