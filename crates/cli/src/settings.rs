//! From the validated config file to the runtime settings of each part.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tbg_config::Config;
use tbg_node::{NodeAuth, NodeEndpoint, WatcherConfig};
use tbg_pool::limits::{Cidr, LimitSettings};
use tbg_pool::{NodeSettings, PoolSettings};

/// Stratum settings from a validated config.
pub fn pool_settings(config: &Config) -> Result<PoolSettings> {
    let pool = &config.pool;
    let mut settings = PoolSettings::new(config.network.to_bitcoin());
    settings.stratum_bind =
        resolve_bind(&pool.bind).with_context(|| format!("pool.bind = {}", pool.bind))?;
    settings.pool_tag = pool.pool_tag.clone();
    settings.extranonce1_len = usize::from(pool.nonce1length);
    settings.instance_id = config.region.instance_id;
    settings.extranonce2_len = usize::from(pool.nonce2length);
    settings.min_difficulty = pool.mindiff;
    settings.start_difficulty = pool.startdiff.max(pool.mindiff);
    // 0: no explicit limit; the pool still caps at the network difficulty
    // and the hard ceiling.
    settings.max_difficulty = (pool.maxdiff > 0.0).then_some(pool.maxdiff);
    settings.share_interval = Duration::from_secs_f64(pool.share_interval_s);
    settings.version_mask = u32::from_str_radix(&pool.version_mask, 16)
        .with_context(|| format!("pool.version_mask = {}", pool.version_mask))?;
    settings.max_clients = pool.maxclients as usize;
    settings.max_line_bytes = pool.max_line_bytes;
    settings.max_invalid_shares_per_minute = pool.max_invalid_shares_per_minute;
    settings.limits = limit_settings(pool)?;
    settings.authorize_timeout = Duration::from_secs(pool.authorize_timeout_s);
    settings.idle_timeout = Duration::from_secs(pool.idle_timeout_s);
    settings.redis_url = config.redis.url.clone();
    let blocks = &config.blocks;
    settings.block_dir = Some(blocks.dir.clone());
    settings.block_retry_max = Duration::from_millis(blocks.retry_max_ms);
    settings.block_follow_interval = Duration::from_secs(blocks.follow_interval_s);
    settings.block_maturity = blocks.maturity_confirmations;
    let tls = &config.stratum_tls;
    if tls.enabled() {
        settings.tls = Some(tbg_pool::tls::TlsSettings {
            bind: resolve_bind(&tls.bind)
                .with_context(|| format!("stratum_tls.bind = {}", tls.bind))?,
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            handshake_timeout: Duration::from_secs(tls.handshake_timeout_s),
        });
    }
    let sv2 = &config.stratum_v2;
    if sv2.enabled() {
        let key = sv2_authority_key(sv2)?;
        let mut port = if sv2.on_v1_port {
            tbg_pool::sv2::Sv2Settings::on_v1_port(key)
        } else {
            let bind = resolve_bind(&sv2.bind)
                .with_context(|| format!("stratum_v2.bind = {}", sv2.bind))?;
            tbg_pool::sv2::Sv2Settings::new(bind, key)
        };
        port.cert_validity = Duration::from_secs(sv2.cert_validity_s);
        port.handshake_timeout = Duration::from_secs(sv2.handshake_timeout_s);
        settings.sv2 = Some(port);
    }
    Ok(settings)
}

/// `[stratum_v2]`'s key pair; a config error (exit 2) naming the key, never
/// the secret, when it does not load.
pub(crate) fn sv2_authority_key(
    sv2: &tbg_config::StratumV2Section,
) -> Result<tbg_sv2::AuthorityKey> {
    let public = Some(sv2.authority_public_key.as_str()).filter(|key| !key.is_empty());
    tbg_sv2::AuthorityKey::from_base58(&sv2.authority_secret_key, public).map_err(|error| {
        let key = match error {
            tbg_sv2::KeyError::Mismatch { .. } => "stratum_v2.authority_public_key",
            _ => "stratum_v2.authority_secret_key",
        };
        tbg_config::ConfigError::new(key, "<secret or its public key>", error.to_string()).into()
    })
}

/// The abuse limits of `[pool]`.
fn limit_settings(pool: &tbg_config::PoolSection) -> Result<LimitSettings> {
    let allow_list = pool
        .allow_list
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            entry
                .parse::<Cidr>()
                .with_context(|| format!("pool.allow_list[{index}] = {entry:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LimitSettings {
        connects_per_minute_per_ip: pool.max_connects_per_minute_per_ip,
        max_connections_per_ip: pool.max_connections_per_ip,
        ban_after_refusals_per_minute: pool.ban_after_refusals_per_minute,
        ban_duration: Duration::from_secs(pool.ban_duration_s),
        allow_list,
        ip_table_size: pool.ip_table_size as usize,
        subscribes_per_minute: pool.max_subscribes_per_minute,
        authorizes_per_minute: pool.max_authorizes_per_minute,
        submits_per_minute: pool.max_submits_per_minute,
        other_requests_per_minute: pool.max_other_requests_per_minute,
        protocol_errors_per_minute: pool.max_protocol_errors_per_minute,
    })
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
            tip_memory: tbg_node::DEFAULT_TIP_MEMORY,
        },
    }
}

fn resolve_bind(text: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()?.next().context("no address")
}

#[cfg(test)]
mod difficulty_tests {
    /// The config's check and the pool's clamp name the same ceiling, and
    /// the two crates the same default maximum.
    #[test]
    fn the_difficulty_ceiling_and_default_agree() {
        assert_eq!(tbg_config::MAX_DIFFICULTY, tbg_work::MAX_DIFFICULTY);
        assert_eq!(
            tbg_pool::PoolSettings::new(bitcoin::Network::Bitcoin).max_difficulty,
            Some(tbg_config::DEFAULT_MAXDIFF)
        );
        let settings = super::pool_settings(&tbg_config::Config::default()).unwrap();
        assert_eq!(settings.max_difficulty, Some(1_000_000.0));
    }
}
