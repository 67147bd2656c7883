//! The pool's checked runtime settings (the config file, once validated).

use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::Network;

/// Everything the stratum server needs to know, in checked types.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub network: Network,
    pub stratum_bind: SocketAddr,
    /// Pool tag written into every coinbase (ckpool's `btcsig`).
    pub pool_tag: String,
    /// ckpool's `nonce1length` (2..=8).
    pub extranonce1_len: usize,
    /// ckpool's `nonce2length` (2..=8).
    pub extranonce2_len: usize,
    pub min_difficulty: f64,
    pub start_difficulty: f64,
    /// `None` = no upper bound (ckpool's `maxdiff` 0).
    pub max_difficulty: Option<f64>,
    /// Vardiff aims at one share per this interval.
    pub share_interval: Duration,
    /// BIP310 mask the pool allows miners to roll.
    pub version_mask: u32,
    /// 0 = unlimited.
    pub max_clients: usize,
    /// Connections from one IP at once; 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub max_line_bytes: usize,
    /// A connection that has not authorized by then is closed (slowloris).
    pub authorize_timeout: Duration,
    /// An authorized connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// A miner that cannot take our writes for this long is dropped.
    pub write_timeout: Duration,
    /// More invalid shares than this in a minute closes the connection.
    pub max_invalid_shares_per_minute: u32,
    /// How long a closed session's extranonce1 can be resumed.
    pub session_resume_window: Duration,
    /// How long a worker's difficulty is remembered across reconnects.
    pub difficulty_memory: Duration,
    /// Accepted ntime: [job ntime - this... ] see `ntime_future_window`.
    pub ntime_future_window: Duration,
    /// How often a hashrate_update event is sent per worker.
    pub hashrate_event_interval: Duration,
    pub redis_url: Option<String>,
    pub user_sig_refresh: Duration,
}

impl PoolSettings {
    /// Defaults for a network, as documented in the example config.
    pub fn new(network: Network) -> PoolSettings {
        PoolSettings {
            network,
            stratum_bind: SocketAddr::from(([0, 0, 0, 0], 3333)),
            pool_tag: "/tbg/".to_string(),
            extranonce1_len: 4,
            extranonce2_len: 8,
            min_difficulty: 1.0,
            start_difficulty: 42.0,
            max_difficulty: None,
            share_interval: Duration::from_secs(10),
            version_mask: 0x1fff_e000,
            max_clients: 0,
            max_connections_per_ip: 0,
            max_line_bytes: 16 * 1024,
            authorize_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(900),
            write_timeout: Duration::from_secs(10),
            max_invalid_shares_per_minute: 100,
            session_resume_window: Duration::from_secs(3600),
            difficulty_memory: Duration::from_secs(24 * 3600),
            ntime_future_window: Duration::from_secs(7000),
            hashrate_event_interval: Duration::from_secs(60),
            redis_url: None,
            user_sig_refresh: Duration::from_secs(60),
        }
    }
}
