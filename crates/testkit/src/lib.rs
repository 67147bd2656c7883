//! Test helpers: an embedded regtest node and the pool on free ports, wired
//! as in production, plus payout addresses of every type.

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
    pub const ALL: [AddressKind; 5] =
        [AddressKind::P2pkh, AddressKind::P2sh, AddressKind::P2wpkh, AddressKind::P2wsh, AddressKind::P2tr];
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
    settings
}

/// Watcher settings for tests: fast polling.
pub fn test_watcher() -> WatcherConfig {
    WatcherConfig {
        block_poll: Duration::from_millis(100),
        update_interval: Duration::from_secs(30),
        zmq_hashblock: None,
    }
}

/// An embedded node plus the pool pointed at it.
pub struct TestEnv {
    pub node: DevNodeHandle,
    pub service: PoolService,
    pub events: Arc<MemorySink>,
}

impl TestEnv {
    /// Node and pool with [`test_settings`].
    pub async fn start() -> TestEnv {
        TestEnv::start_with(|_| {}).await
    }

    /// Node and pool, with the settings adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut PoolSettings)) -> TestEnv {
        init_tracing();
        let node = DevNode::start(DevNodeOptions::default()).await.expect("devnode starts");
        let mut settings = test_settings();
        adjust(&mut settings);
        let endpoint = node_endpoint(&node);
        TestEnv::start_pool(node, vec![endpoint], settings).await
    }

    /// The pool with the given node endpoints (for failover tests).
    pub async fn start_pool(node: DevNodeHandle, endpoints: Vec<NodeEndpoint>, settings: PoolSettings) -> TestEnv {
        let events = Arc::new(MemorySink::new(200_000));
        let service = PoolService::start(
            settings,
            NodeSettings { endpoints, rpc_timeout: Duration::from_secs(5), watcher: test_watcher() },
            events.clone(),
            EventFactory::new("test", "hosted"),
        )
        .await
        .expect("pool starts");
        service.pool.wait_for_work(Duration::from_secs(30)).await.expect("the pool gets a template");
        TestEnv { node, service, events }
    }

    pub fn stratum_addr(&self) -> SocketAddr {
        self.service.pool.local_addr()
    }

    /// Events of one type seen so far.
    pub fn events_of(&self, event_type: &str) -> Vec<Event> {
        self.events.events().into_iter().filter(|e| e.event_type() == event_type).collect()
    }

    /// Waits until `check` holds, polling every 20 ms, or panics after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut(&TestEnv) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        self.service.shutdown(Duration::from_secs(2)).await;
        self.node.shutdown().await;
    }
}

/// User/password endpoint of a devnode.
pub fn node_endpoint(node: &DevNodeHandle) -> NodeEndpoint {
    NodeEndpoint {
        url: node.rpc_url.clone(),
        auth: NodeAuth::UserPass { user: node.rpc_user.clone(), pass: node.rpc_password.clone() },
    }
}

pub use tbg_miner::{mine_shares, MinerConfig, MinerEvent, StratumClient};
