//! From the validated config file to the runtime settings of each part.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::Config;
use tbg_node::{NodeAuth, NodeEndpoint, WatcherConfig};
use tbg_pool::{NodeSettings, PoolSettings};

/// Stratum settings from a validated config.
pub fn pool_settings(config: &Config) -> Result<PoolSettings> {
    let pool = &config.pool;
    let mut settings = PoolSettings::new(config.network.to_bitcoin());
    settings.stratum_bind =
        resolve_bind(&pool.bind).with_context(|| format!("pool.bind = {}", pool.bind))?;
    settings.pool_tag = pool.pool_tag.clone();
    settings.extranonce1_len = usize::from(pool.nonce1length);
    settings.extranonce2_len = usize::from(pool.nonce2length);
    settings.min_difficulty = pool.mindiff;
    settings.start_difficulty = pool.startdiff.max(pool.mindiff);
    settings.max_difficulty = (pool.maxdiff > 0.0).then_some(pool.maxdiff);
    settings.share_interval = Duration::from_secs_f64(pool.share_interval_s);
    settings.version_mask = u32::from_str_radix(&pool.version_mask, 16)
        .with_context(|| format!("pool.version_mask = {}", pool.version_mask))?;
    settings.max_clients = pool.maxclients as usize;
    settings.max_line_bytes = pool.max_line_bytes;
    settings.max_invalid_shares_per_minute = pool.max_invalid_shares_per_minute;
    settings.max_connections_per_ip = pool.max_connections_per_ip as usize;
    settings.redis_url = config.redis.url.clone();
    Ok(settings)
}

/// Node endpoints and polling from a validated config.
pub fn node_settings(config: &Config) -> NodeSettings {
    let endpoints = config
        .nodes
        .iter()
        .map(|node| {
            let url = if node.url.starts_with("http://") || node.url.starts_with("https://") {
                node.url.clone()
            } else {
                format!("http://{}", node.url)
            };
            let auth = match (&node.cookie_file, &node.user, &node.pass) {
                (Some(cookie), _, _) => NodeAuth::Cookie(cookie.clone()),
                (None, user, pass) => NodeAuth::UserPass {
                    user: user.clone().unwrap_or_default(),
                    pass: pass.clone().unwrap_or_default(),
                },
            };
            NodeEndpoint { url, auth }
        })
        .collect();
    NodeSettings {
        endpoints,
        rpc_timeout: Duration::from_secs(10),
        watcher: WatcherConfig {
            block_poll: Duration::from_millis(config.pool.blockpoll_ms),
            update_interval: Duration::from_secs(config.pool.update_interval_s),
            zmq_hashblock: config.nodes.iter().find_map(|n| n.zmq_hashblock.clone()),
        },
    }
}

fn resolve_bind(text: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()?.next().context("no address")
}
