//! Test helpers: an embedded regtest node and the pool on free ports, wired
//! as in production, plus payout addresses of every type and private
//! PostgreSQL and Redis servers.

pub mod browser;
pub mod pki;
mod ports;
pub mod servers;
pub mod webhook;

pub use ports::free_port;
pub use servers::{nats_server_binary, NatsServer, PgServer, RedisServer};

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use bitcoin::key::{Secp256k1, UntweakedPublicKey};
use bitcoin::secp256k1::{rand, SecretKey};
use bitcoin::{Address, CompressedPublicKey, Network, ScriptBuf};
use tbg_devnode::{DevNode, DevNodeHandle, DevNodeOptions};
use tbg_events::{Event, EventFactory, MemorySink};
use tbg_node::{NodeAuth, NodeEndpoint, WatcherConfig};
use tbg_pool::{NodeSettings, PoolService, PoolSettings};

/// Logs for failing tests: `RUST_LOG=debug cargo test`.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// The five payout address types a miner may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    P2pkh,
    P2sh,
    P2wpkh,
    P2wsh,
    P2tr,
}

impl AddressKind {
    pub const ALL: [AddressKind; 5] = [
        AddressKind::P2pkh,
        AddressKind::P2sh,
        AddressKind::P2wpkh,
        AddressKind::P2wsh,
        AddressKind::P2tr,
    ];
}

/// A fresh regtest address of `kind` and its scriptPubKey.
pub fn regtest_address(kind: AddressKind) -> (String, ScriptBuf) {
    let secp = Secp256k1::new();
    let secret = SecretKey::new(&mut rand::thread_rng());
    let public = bitcoin::PublicKey::new(secret.public_key(&secp));
    let compressed = CompressedPublicKey(secret.public_key(&secp));
    let network = Network::Regtest;
    let address = match kind {
        AddressKind::P2pkh => Address::p2pkh(public, network),
        AddressKind::P2sh => {
            let redeem = ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash());
            Address::p2sh(&redeem, network).expect("a p2wpkh redeem script is small")
        }
        AddressKind::P2wpkh => Address::p2wpkh(&compressed, network),
        AddressKind::P2wsh => {
            let witness_script = ScriptBuf::new_p2pk(&public);
            Address::p2wsh(&witness_script, network)
        }
        AddressKind::P2tr => {
            let internal: UntweakedPublicKey = secret.x_only_public_key(&secp).0;
            Address::p2tr(&secp, internal, None, network)
        }
    };
    let script = address.script_pubkey();
    (address.to_string(), script)
}

/// Settings for tests: regtest, fractional difficulty a CPU finds quickly.
pub fn test_settings() -> PoolSettings {
    let mut settings = PoolSettings::new(Network::Regtest);
    settings.stratum_bind = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.min_difficulty = 0.0001;
    settings.start_difficulty = 0.0001;
    settings.share_interval = Duration::from_secs(1);
    settings.authorize_timeout = Duration::from_secs(20);
    // A pending block is retried within half a second; accepted blocks
    // are followed every 200 ms (tests mine their confirmations at once).
    settings.block_retry_max = Duration::from_millis(500);
    settings.block_follow_interval = Duration::from_millis(200);
    // The tests open many connections from loopback: exempt from the
    // per-source limits (per-connection limits stay at their defaults).
    // Tests of the limits use `limit_test_settings` instead.
    settings.limits.allow_list = vec!["127.0.0.0/8".parse().expect("a CIDR")];
    settings
}

/// [`test_settings`] with the default limits for every source, loopback
/// included.
pub fn limit_test_settings() -> PoolSettings {
    let mut settings = test_settings();
    settings.limits = tbg_pool::limits::LimitSettings::default();
    settings
}

/// Watcher settings for tests: fast polling.
pub fn test_watcher() -> WatcherConfig {
    WatcherConfig {
        block_poll: Duration::from_millis(100),
        update_interval: Duration::from_secs(30),
        zmq_hashblock: None,
        tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
    }
}

/// An embedded node plus the pool pointed at it.
pub struct TestEnv {
    pub node: DevNodeHandle,
    pub service: PoolService,
    pub events: Arc<MemorySink>,
    /// The pool's block store, when the test did not give one.
    pub block_dir: Option<tempfile::TempDir>,
}

impl TestEnv {
    /// Node and pool with [`test_settings`].
    pub async fn start() -> TestEnv {
        TestEnv::start_with(|_| {}).await
    }

    /// Node and pool, with the settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut PoolSettings)) -> TestEnv {
        init_tracing();
        let node = DevNode::start(DevNodeOptions::default())
            .await
            .expect("devnode starts");
        let mut settings = test_settings();
        adjust(&mut settings);
        let endpoint = node_endpoint(&node);
        TestEnv::start_pool(node, vec![endpoint], settings).await
    }

    /// Node and pool journaling every event to `journal` before answering.
    pub async fn start_with_journal(journal: tbg_journal::Journal) -> TestEnv {
        init_tracing();
        let node = DevNode::start(DevNodeOptions::default())
            .await
            .expect("devnode starts");
        let endpoint = node_endpoint(&node);
        TestEnv::start_pool_with(node, vec![endpoint], test_settings(), Some(journal)).await
    }

    /// The pool with the given node endpoints (for failover tests).
    pub async fn start_pool(
        node: DevNodeHandle,
        endpoints: Vec<NodeEndpoint>,
        settings: PoolSettings,
    ) -> TestEnv {
        TestEnv::start_pool_with(node, endpoints, settings, None).await
    }

    /// The pool with the given endpoints, settings and journal.
    pub async fn start_pool_with(
        node: DevNodeHandle,
        endpoints: Vec<NodeEndpoint>,
        settings: PoolSettings,
        journal: Option<tbg_journal::Journal>,
    ) -> TestEnv {
        TestEnv::start_pool_watching(node, endpoints, settings, journal, test_watcher()).await
    }

    /// The pool with the given endpoints, settings, journal and watcher
    /// settings (a short `tip_memory`, say).
    pub async fn start_pool_watching(
        node: DevNodeHandle,
        endpoints: Vec<NodeEndpoint>,
        settings: PoolSettings,
        journal: Option<tbg_journal::Journal>,
        watcher: WatcherConfig,
    ) -> TestEnv {
        TestEnv::start_pool_in_region(
            node,
            endpoints,
            settings,
            journal,
            watcher,
            "test",
            tbg_pool::RegionWiring::default(),
        )
        .await
    }

    /// One region of several: `node` is the region's own node, `region`
    /// its name in the events, `wiring` its relay link.
    pub async fn start_region(
        node: DevNodeHandle,
        settings: PoolSettings,
        region: &str,
        wiring: tbg_pool::RegionWiring,
    ) -> TestEnv {
        init_tracing();
        let endpoint = node_endpoint(&node);
        TestEnv::start_pool_in_region(
            node,
            vec![endpoint],
            settings,
            None,
            test_watcher(),
            region,
            wiring,
        )
        .await
    }

    async fn start_pool_in_region(
        node: DevNodeHandle,
        endpoints: Vec<NodeEndpoint>,
        settings: PoolSettings,
        journal: Option<tbg_journal::Journal>,
        watcher: WatcherConfig,
        region: &str,
        wiring: tbg_pool::RegionWiring,
    ) -> TestEnv {
        let mut settings = settings;
        // Every test pool keeps its found blocks on disk, as in production.
        let block_dir = match settings.block_dir {
            Some(_) => None,
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("tbg-blocks-")
                    .tempdir()
                    .expect("block store dir");
                settings.block_dir = Some(dir.path().to_path_buf());
                Some(dir)
            }
        };
        let events = Arc::new(MemorySink::new(200_000));
        let service = PoolService::start_in_region(
            settings,
            NodeSettings {
                endpoints,
                rpc_timeout: Duration::from_secs(5),
                watcher,
            },
            events.clone(),
            journal,
            EventFactory::new(region, "hosted"),
            wiring,
        )
        .await
        .expect("pool starts");
        service
            .pool
            .wait_for_work(Duration::from_secs(30))
            .await
            .expect("the pool gets a template");
        TestEnv {
            node,
            service,
            events,
            block_dir,
        }
    }

    pub fn stratum_addr(&self) -> SocketAddr {
        self.service.pool.local_addr()
    }

    /// Events of one type seen so far.
    pub fn events_of(&self, event_type: &str) -> Vec<Event> {
        self.events
            .events()
            .into_iter()
            .filter(|e| e.event_type() == event_type)
            .collect()
    }

    /// Waits until `check` holds, polling every 20 ms, or panics after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&TestEnv) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits `count` valid shares from `miner` (on regtest each is a
    /// block), waiting after each for the node to accept it and for the
    /// job on the new tip.
    pub async fn find_blocks(&self, miner: &mut ManualMiner, count: u64) {
        let start = self.service.pool.status().blocks_accepted;
        for found in 1..=count {
            let reply = miner.submit_valid(found).await;
            assert!(reply.is_ok(), "share {found}: {:?}", reply.error);
            self.wait_until("the block accepted", Duration::from_secs(30), |env| {
                env.service.pool.status().blocks_accepted >= start + found
            })
            .await;
            miner.job_on(self.node.best_block_hash()).await;
        }
    }

    pub async fn shutdown(self) {
        self.service.shutdown(Duration::from_secs(2)).await;
        self.node.shutdown().await;
    }
}

/// A second node with `node`'s chain, block for block (two nodes' own
/// initial chains differ: their blocks carry the time they were mined at).
/// From there on each node mines its own blocks.
pub async fn node_with_chain_of(node: &DevNodeHandle) -> DevNodeHandle {
    let copy = DevNode::start(DevNodeOptions {
        initial_blocks: 0,
        ..DevNodeOptions::default()
    })
    .await
    .expect("devnode starts");
    let mut history = Vec::new();
    let mut cursor = node.best_block_hash();
    while cursor != copy.best_block_hash() {
        let block = node.get_block(&cursor).expect("a block of the chain");
        cursor = block.header.prev_blockhash;
        history.push(block);
    }
    let client = tbg_node::RpcClient::new(node_endpoint(&copy), Duration::from_secs(30))
        .expect("rpc client");
    for block in history.iter().rev() {
        let hex = bitcoin::consensus::encode::serialize_hex(block);
        let answer: Option<String> = client
            .call("submitblock", serde_json::json!([hex]))
            .await
            .expect("submitblock");
        assert_eq!(answer, None, "the copy takes the block");
    }
    assert_eq!(copy.best_block_hash(), node.best_block_hash());
    copy
}

/// User/password endpoint of a devnode.
pub fn node_endpoint(node: &DevNodeHandle) -> NodeEndpoint {
    NodeEndpoint {
        url: node.rpc_url.clone(),
        auth: NodeAuth::UserPass {
            user: node.rpc_user.clone(),
            pass: node.rpc_password.clone(),
        },
    }
}

pub use tbg_miner::{mine_shares, MinerConfig, MinerEvent, StratumClient};

/// A miner driven step by step: subscribed and authorized, holding the
/// latest job and difficulty, submitting exactly what a test asks for.
pub struct ManualMiner {
    pub client: StratumClient,
    pub username: String,
    pub session_id: String,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub difficulty: f64,
    pub job: tbg_miner::MinerJob,
    /// The answer to the mining.configure sent before authorize, if any.
    pub configure_result: Option<serde_json::Value>,
}

impl ManualMiner {
    /// Connects, subscribes, authorizes and waits for the first difficulty and job.
    pub async fn connect(addr: SocketAddr, username: &str) -> ManualMiner {
        ManualMiner::connect_with(addr, username, None, None).await
    }

    /// As `connect`, passing `session_id` to subscribe and sending a
    /// mining.configure with `configure` params between subscribe and authorize.
    pub async fn connect_with(
        addr: SocketAddr,
        username: &str,
        session_id: Option<&str>,
        configure: Option<serde_json::Value>,
    ) -> ManualMiner {
        let mut client = StratumClient::connect(addr)
            .await
            .expect("connect to the pool");
        let params = match session_id {
            Some(id) => serde_json::json!(["test-miner/1.0", id]),
            None => serde_json::json!(["test-miner/1.0"]),
        };
        let subscribed = client
            .request("mining.subscribe", params)
            .await
            .expect("subscribe answered");
        let result = &subscribed.result;
        let session_id = result[0][0][1].as_str().expect("session id").to_string();
        let extranonce1 = hex_decode(result[1].as_str().expect("extranonce1"));
        let extranonce2_size = result[2].as_u64().expect("extranonce2 size") as usize;
        let configure_result = match configure {
            Some(params) => Some(
                client
                    .request("mining.configure", params)
                    .await
                    .expect("configure answered")
                    .result,
            ),
            None => None,
        };
        let authorized = client
            .request("mining.authorize", serde_json::json!([username, "x"]))
            .await
            .expect("authorize answered");
        assert_eq!(
            authorized.result,
            serde_json::Value::Bool(true),
            "authorize: {:?}",
            authorized.error
        );
        let difficulty = client
            .wait_push("mining.set_difficulty")
            .await
            .expect("difficulty")[0]
            .as_f64()
            .expect("difficulty is a number");
        let notify = client.wait_push("mining.notify").await.expect("a job");
        let job = tbg_miner::MinerJob::from_notify_params(&notify).expect("a valid job");
        ManualMiner {
            client,
            username: username.to_string(),
            session_id,
            extranonce1,
            extranonce2_size,
            difficulty,
            job,
            configure_result,
        }
    }

    /// Sends a mining.submit with these fields and returns the pool's answer.
    pub async fn submit(
        &mut self,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version_bits: Option<u32>,
    ) -> tbg_miner::Reply {
        let mut params = vec![
            serde_json::json!(self.username),
            serde_json::json!(job_id),
            serde_json::json!(hex_encode(extranonce2)),
            serde_json::json!(format!("{ntime:08x}")),
            serde_json::json!(format!("{nonce:08x}")),
        ];
        if let Some(bits) = version_bits {
            params.push(serde_json::json!(format!("{bits:08x}")));
        }
        self.client
            .request("mining.submit", serde_json::Value::Array(params))
            .await
            .expect("submit answered")
    }

    /// An extranonce2 of the right size from a counter.
    pub fn extranonce2(&self, counter: u64) -> Vec<u8> {
        let mut bytes = counter.to_le_bytes().to_vec();
        bytes.resize(self.extranonce2_size, 0);
        bytes
    }

    /// Finds a nonce meeting the current difficulty for the current job.
    pub fn grind(&self, extranonce2: &[u8], version: u32) -> u32 {
        self.job
            .find_nonce(
                &self.extranonce1,
                extranonce2,
                self.job.ntime,
                version,
                self.difficulty,
                0,
            )
            .expect("a nonce exists at test difficulties")
            .0
    }

    /// Grinds and submits one valid share on the current job.
    pub async fn submit_valid(&mut self, counter: u64) -> tbg_miner::Reply {
        let extranonce2 = self.extranonce2(counter);
        let nonce = self.grind(&extranonce2, self.job.version);
        let job_id = self.job.job_id.clone();
        let ntime = self.job.ntime;
        self.submit(&job_id, &extranonce2, ntime, nonce, None).await
    }

    /// Reads jobs until one is built on `prev`; panics after 20 s.
    pub async fn job_on(&mut self, prev: bitcoin::BlockHash) {
        let expected = stratum_prevhash(&prev);
        while self.job.prevhash_hex != expected {
            tokio::time::timeout(Duration::from_secs(20), self.next_job())
                .await
                .expect("a job on the expected tip in time");
        }
    }

    /// Reads pushes until a new job arrives; updates difficulty on the way.
    pub async fn next_job(&mut self) -> &tbg_miner::MinerJob {
        loop {
            let push = self.client.next_push().await.expect("a push from the pool");
            match push["method"].as_str() {
                Some("mining.set_difficulty") => {
                    if let Some(d) = push["params"][0].as_f64() {
                        self.difficulty = d;
                    }
                }
                Some("mining.notify") => {
                    self.job = tbg_miner::MinerJob::from_notify_params(&push["params"])
                        .expect("a valid job");
                    return &self.job;
                }
                _ => {}
            }
        }
    }
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A block hash as `mining.notify` sends it (internal byte order, each
/// 4-byte word reversed).
pub fn stratum_prevhash(hash: &bitcoin::BlockHash) -> String {
    use bitcoin::hashes::Hash;
    let bytes = hash.to_byte_array();
    let mut out = String::with_capacity(64);
    for word in bytes.chunks_exact(4) {
        for byte in word.iter().rev() {
            out.push_str(&format!("{byte:02x}"));
        }
    }
    out
}
