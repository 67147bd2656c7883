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

/// The settings a running pool takes on a reload (SIGHUP), by field name.
/// Everything else (network, stratum bind, extranonce sizes, version mask,
/// timeouts) stays as the pool started: changing it under connected miners
/// would break their sessions.
pub const LIVE_SETTINGS: &[&str] = &[
    "pool_tag",
    "min_difficulty",
    "start_difficulty",
    "max_difficulty",
    "share_interval",
    "max_clients",
    "max_connections_per_ip",
    "max_invalid_shares_per_minute",
    "redis_url",
];

/// One setting a reload changed; values as text (the Redis URL without its
/// password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    pub name: &'static str,
    pub old: String,
    pub new: String,
}

impl std::fmt::Display for SettingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.name, self.old, self.new)
    }
}

impl PoolSettings {
    /// These settings with the [`LIVE_SETTINGS`] of `new`, and the list of
    /// those that differ.
    pub fn with_live_from(&self, new: &PoolSettings) -> (PoolSettings, Vec<SettingChange>) {
        let mut next = self.clone();
        let mut changes = Vec::new();
        fn take<T: PartialEq + Clone>(
            changes: &mut Vec<SettingChange>,
            name: &'static str,
            slot: &mut T,
            new: &T,
            show: impl Fn(&T) -> String,
        ) {
            if slot != new {
                changes.push(SettingChange {
                    name,
                    old: show(slot),
                    new: show(new),
                });
                *slot = new.clone();
            }
        }
        let number = |v: &f64| v.to_string();
        take(
            &mut changes,
            "pool_tag",
            &mut next.pool_tag,
            &new.pool_tag,
            |v| format!("{v:?}"),
        );
        take(
            &mut changes,
            "min_difficulty",
            &mut next.min_difficulty,
            &new.min_difficulty,
            number,
        );
        take(
            &mut changes,
            "start_difficulty",
            &mut next.start_difficulty,
            &new.start_difficulty,
            number,
        );
        take(
            &mut changes,
            "max_difficulty",
            &mut next.max_difficulty,
            &new.max_difficulty,
            |v| v.map_or("none".to_string(), |d| d.to_string()),
        );
        take(
            &mut changes,
            "share_interval",
            &mut next.share_interval,
            &new.share_interval,
            |v| format!("{v:?}"),
        );
        take(
            &mut changes,
            "max_clients",
            &mut next.max_clients,
            &new.max_clients,
            usize::to_string,
        );
        take(
            &mut changes,
            "max_connections_per_ip",
            &mut next.max_connections_per_ip,
            &new.max_connections_per_ip,
            usize::to_string,
        );
        take(
            &mut changes,
            "max_invalid_shares_per_minute",
            &mut next.max_invalid_shares_per_minute,
            &new.max_invalid_shares_per_minute,
            u32::to_string,
        );
        take(
            &mut changes,
            "redis_url",
            &mut next.redis_url,
            &new.redis_url,
            |v| v.as_deref().map_or("none".to_string(), redact_url_password),
        );
        (next, changes)
    }
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_only_the_live_settings() {
        let running = PoolSettings::new(Network::Regtest);
        let mut file = running.clone();
        file.start_difficulty = 7.0;
        file.pool_tag = "/new/".into();
        file.redis_url = Some("redis://:secret@10.0.0.1/0".into());
        file.extranonce1_len = 8;
        file.stratum_bind = SocketAddr::from(([127, 0, 0, 1], 4444));
        let (next, changes) = running.with_live_from(&file);
        assert_eq!(next.start_difficulty, 7.0);
        assert_eq!(next.pool_tag, "/new/");
        assert_eq!(next.extranonce1_len, running.extranonce1_len);
        assert_eq!(next.stratum_bind, running.stratum_bind);
        let names: Vec<_> = changes.iter().map(|c| c.name).collect();
        assert_eq!(names, ["pool_tag", "start_difficulty", "redis_url"]);
        assert_eq!(changes[2].new, "redis://:***@10.0.0.1/0");
        assert!(running.with_live_from(&running).1.is_empty());
    }
}
