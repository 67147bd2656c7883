//! The pool's checked runtime settings (the config file, once validated).

use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::Network;

use crate::limits::LimitSettings;

/// The default `maxdiff`: one share per 10 s for a ~430 TH/s miner, the
/// largest single machine today; a farm behind one proxy (up to ~70 PH/s)
/// submits faster but stays under the submit rate limit. See
/// config.example.toml.
pub const DEFAULT_MAX_DIFFICULTY: f64 = 1_000_000.0;

/// Everything the stratum server needs to know, in checked types.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub network: Network,
    pub stratum_bind: SocketAddr,
    /// Pool tag written into every coinbase (ckpool's `btcsig`).
    pub pool_tag: String,
    /// ckpool's `nonce1length` (2..=8).
    pub extranonce1_len: usize,
    /// The region's instance id, the first byte of every extranonce1
    /// (multi-region); `None`: the whole extranonce1 tells sessions apart.
    pub instance_id: Option<u8>,
    /// ckpool's `nonce2length` (2..=8).
    pub extranonce2_len: usize,
    pub min_difficulty: f64,
    pub start_difficulty: f64,
    /// `None` = no explicit bound (ckpool's `maxdiff` 0). Either way no
    /// difficulty exceeds the network difficulty of the current work or
    /// `tbg_work::MAX_DIFFICULTY`.
    pub max_difficulty: Option<f64>,
    /// Fewest time between two difficulty changes of one connection
    /// (suggestions, vardiff): a change asked for sooner waits and a later
    /// one replaces it, so a flood of `mining.suggest_difficulty` costs one
    /// `mining.set_difficulty` and one `diff_updated` per worker per
    /// interval.
    pub difficulty_change_interval: Duration,
    /// Vardiff aims at one share per this interval.
    pub share_interval: Duration,
    /// BIP310 mask the pool allows miners to roll.
    pub version_mask: u32,
    /// 0 = unlimited.
    pub max_clients: usize,
    /// Per-source and per-connection abuse limits (live).
    pub limits: LimitSettings,
    pub max_line_bytes: usize,
    /// A connection that has not authorized by then is closed (slowloris).
    /// Live; nothing a miner sends extends it.
    pub authorize_timeout: Duration,
    /// An authorized connection with no well-formed subscribe, authorize or
    /// submit for this long is closed: garbage, unknown methods and refused
    /// requests do not count as activity. Live.
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
    /// Where found blocks are written before they are submitted; `None`
    /// keeps them in memory only (a crash loses a block no node took yet).
    pub block_dir: Option<std::path::PathBuf>,
    /// Longest wait between two submissions of a block no node took yet.
    pub block_retry_max: Duration,
    /// How often an accepted block is looked up on the best chain.
    pub block_follow_interval: Duration,
    /// Confirmations after which a block is confirmed (coinbase maturity).
    pub block_maturity: u32,
    /// Stratum over TLS on a port of its own; `None`: plain TCP only.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The Stratum V2 port (`[stratum_v2]`); `None`: V1 only.
    pub sv2: Option<crate::sv2::Sv2Settings>,
}

impl PoolSettings {
    /// Defaults for a network, as documented in the example config.
    pub fn new(network: Network) -> PoolSettings {
        PoolSettings {
            network,
            stratum_bind: SocketAddr::from(([0, 0, 0, 0], 3333)),
            pool_tag: "/tbg/".to_string(),
            extranonce1_len: 4,
            instance_id: None,
            extranonce2_len: 8,
            min_difficulty: 1.0,
            start_difficulty: 42.0,
            max_difficulty: Some(DEFAULT_MAX_DIFFICULTY),
            difficulty_change_interval: Duration::from_secs(5),
            share_interval: Duration::from_secs(10),
            version_mask: 0x1fff_e000,
            max_clients: 0,
            limits: LimitSettings::default(),
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
            block_dir: None,
            block_retry_max: Duration::from_secs(10),
            block_follow_interval: Duration::from_secs(30),
            block_maturity: 100,
            tls: None,
            sv2: None,
        }
    }
}

/// The settings a running pool takes on a reload (SIGHUP), by field name.
/// Everything else (network, stratum bind, extranonce sizes, version mask,
/// write timeout, the size of the source table) stays as the pool started:
/// changing it under connected miners would break their sessions.
pub const LIVE_SETTINGS: &[&str] = &[
    "pool_tag",
    "min_difficulty",
    "start_difficulty",
    "max_difficulty",
    "share_interval",
    "max_clients",
    "limits",
    "authorize_timeout",
    "idle_timeout",
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
        // The source table keeps its size (it is allocated at start).
        let limits = LimitSettings {
            ip_table_size: next.limits.ip_table_size,
            ..new.limits.clone()
        };
        take(
            &mut changes,
            "limits",
            &mut next.limits,
            &limits,
            LimitSettings::to_string,
        );
        take(
            &mut changes,
            "authorize_timeout",
            &mut next.authorize_timeout,
            &new.authorize_timeout,
            |v| format!("{v:?}"),
        );
        take(
            &mut changes,
            "idle_timeout",
            &mut next.idle_timeout,
            &new.idle_timeout,
            |v| format!("{v:?}"),
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
        // Limits and timeouts are live, the source table's size is not.
        file.limits.submits_per_minute = 5;
        file.limits.ip_table_size = 8;
        file.idle_timeout = Duration::from_secs(30);
        let (next, changes) = running.with_live_from(&file);
        assert_eq!(next.limits.submits_per_minute, 5);
        assert_eq!(next.limits.ip_table_size, running.limits.ip_table_size);
        assert_eq!(next.idle_timeout, Duration::from_secs(30));
        let limits = changes.iter().find(|c| c.name == "limits").unwrap();
        assert!(limits.new.contains("submits/min 5"), "{limits}");
    }
}
