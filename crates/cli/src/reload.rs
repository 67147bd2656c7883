//! SIGHUP: re-read the same config file (and the environment), validate it,
//! apply what a running process can take, and name what needs a restart.
//! A file that does not load or validate changes nothing: the process keeps
//! running on the configuration it has.

use anyhow::Result;
use serde_json::Value;
use tbg_config::Config;
use tbg_pool::settings::redact_url_password;

use crate::observability::RunningPool;
use crate::ConfigArgs;

/// Config keys a running pool applies on SIGHUP. New miners get the new
/// difficulties and limits; connected miners keep theirs; the pool tag goes
/// into the next job; a new Redis URL restarts the signature lookups; the
/// node polling periods count from the last poll; the next event goes to a
/// new datagram socket path.
pub const POOL_LIVE_KEYS: &[&str] = &[
    "pool.pool_tag",
    "pool.mindiff",
    "pool.startdiff",
    "pool.maxdiff",
    "pool.share_interval_s",
    "pool.maxclients",
    "pool.max_invalid_shares_per_minute",
    "pool.max_connections_per_ip",
    "pool.max_connects_per_minute_per_ip",
    "pool.ban_after_refusals_per_minute",
    "pool.ban_duration_s",
    "pool.allow_list",
    "pool.max_subscribes_per_minute",
    "pool.max_authorizes_per_minute",
    "pool.max_submits_per_minute",
    "pool.max_other_requests_per_minute",
    "pool.max_protocol_errors_per_minute",
    "pool.authorize_timeout_s",
    "pool.idle_timeout_s",
    "pool.wakeup_coalescing_us",
    "pool.blockpoll_ms",
    "pool.update_interval_s",
    "events.socket_path",
    "redis.url",
    "stratum_tls.cert_file",
    "stratum_tls.key_file",
];

/// Keys (or key prefixes, ending in '.') the pool process does not read.
const NOT_USED_BY_POOL: &[&str] = &[
    "collector.",
    "metrics.collector_bind",
    "metrics.max_collector_lag",
    "pool.btcaddress",
    "pool.donation",
    "logdir",
];

/// Keys the collector does not read (the pool's side of the file).
const NOT_USED_BY_COLLECTOR: &[&str] = &[
    "pool.",
    "nodes",
    "events.",
    "network",
    "metrics.bind",
    "metrics.max_template_age_secs",
    "journal.durability",
    "journal.retention_days",
    "journal.retention_max_mb",
    "journal.stage_mb",
    "journal.writer_cpus",
    "journal.enabled",
    "logdir",
];

/// How a changed key is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    Live,
    NeedsRestart,
    NotUsed,
}

/// One changed config key.
#[derive(Debug, Clone)]
pub struct KeyChange {
    pub key: String,
    pub old: String,
    pub new: String,
    pub class: KeyClass,
}

/// Which process reloads: decides which keys are live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pool,
    Collector,
}

fn matches(key: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|pattern| {
        if pattern.ends_with('.') {
            key.starts_with(pattern)
        } else {
            key == *pattern || key.starts_with(&format!("{pattern}."))
        }
    })
}

fn classify(role: Role, key: &str) -> KeyClass {
    match role {
        Role::Pool if POOL_LIVE_KEYS.contains(&key) => KeyClass::Live,
        Role::Pool if matches(key, NOT_USED_BY_POOL) => KeyClass::NotUsed,
        Role::Collector if matches(key, NOT_USED_BY_COLLECTOR) => KeyClass::NotUsed,
        _ => KeyClass::NeedsRestart,
    }
}

/// The config as `section.key -> value` (arrays such as `nodes` whole).
fn flatten(config: &Config) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) => {
                for (name, inner) in map {
                    let key = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    walk(&key, inner, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    match serde_json::to_value(config) {
        Ok(value) => walk("", &value, &mut out),
        Err(error) => tracing::error!(%error, "cannot compare configurations"),
    }
    out
}

/// A value for the log: node entries (passwords) are not shown, URLs lose
/// their password.
fn display(key: &str, value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "(unset)".to_string(),
        Some(_) if key == "nodes" => "(node list)".to_string(),
        Some(Value::String(text)) if key.ends_with("url") => redact_url_password(text),
        Some(Value::String(text)) => format!("{text:?}"),
        Some(other) => other.to_string(),
    }
}

/// The keys whose values differ between `old` and `new`.
pub fn changed_keys(role: Role, old: &Config, new: &Config) -> Vec<KeyChange> {
    let old_flat = flatten(old);
    let new_flat = flatten(new);
    let mut keys: Vec<&String> = old_flat
        .iter()
        .chain(new_flat.iter())
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    keys.dedup();
    let find = |flat: &[(String, Value)], key: &str| {
        flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    keys.into_iter()
        .filter_map(|key| {
            let before = find(&old_flat, key);
            let after = find(&new_flat, key);
            (before != after).then(|| KeyChange {
                key: key.clone(),
                old: display(key, before.as_ref()),
                new: display(key, after.as_ref()),
                class: classify(role, key),
            })
        })
        .collect()
}

/// Re-reads the config of a running process on SIGHUP.
pub struct Reloader {
    args: ConfigArgs,
    embedded_node: bool,
    role: Role,
    /// Applied after loading, as at start (the devnet's embedded node,
    /// stratum address, journal in its data dir).
    adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// As started: the reference for keys that need a restart.
    started: Config,
    /// As last loaded: the reference for live keys.
    current: Config,
}

impl Reloader {
    pub fn new(
        args: ConfigArgs,
        embedded_node: bool,
        role: Role,
        started: Config,
        adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
    ) -> Reloader {
        Reloader {
            args,
            embedded_node,
            role,
            adjust,
            current: started.clone(),
            started,
        }
    }

    fn load(&self) -> Result<Config> {
        let mut config = crate::load_config(&self.args, self.embedded_node)?;
        (self.adjust)(&mut config);
        // The adjustment may settle what the file left open (the network).
        if self.embedded_node {
            config.validate_embedded_node()?;
        } else {
            config.validate()?;
        }
        Ok(config)
    }

    /// Loads and checks the file; logs the outcome. `apply` gets the new
    /// config when it loaded and validated; an error from it also keeps the
    /// old configuration.
    fn reload_with(&mut self, apply: impl FnOnce(&Config) -> Result<()>) -> Option<Vec<KeyChange>> {
        let source = self
            .args
            .config
            .as_ref()
            .or(self.args.ckpool_conf.as_ref())
            .map_or("(defaults)".to_string(), |p| p.display().to_string());
        tracing::info!(file = %source, "SIGHUP: reloading the configuration");
        let new = match self
            .load()
            .and_then(|config| apply(&config).map(|()| config))
        {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    file = %source,
                    error = %format!("{error:#}"),
                    "configuration reload failed; still running on the previous configuration"
                );
                return None;
            }
        };
        let live: Vec<KeyChange> = changed_keys(self.role, &self.current, &new)
            .into_iter()
            .filter(|change| change.class == KeyClass::Live)
            .collect();
        let pending: Vec<KeyChange> = changed_keys(self.role, &self.started, &new)
            .into_iter()
            .filter(|change| change.class == KeyClass::NeedsRestart)
            .collect();
        let unused: Vec<KeyChange> = changed_keys(self.role, &self.current, &new)
            .into_iter()
            .filter(|change| change.class == KeyClass::NotUsed)
            .collect();
        for change in &live {
            tracing::info!(key = %change.key, old = %change.old, new = %change.new, "configuration reload: applied");
        }
        for change in &pending {
            tracing::warn!(
                key = %change.key,
                running = %change.old,
                file = %change.new,
                "configuration reload: {} cannot change while running; restart to apply it",
                change.key
            );
        }
        for change in &unused {
            tracing::info!(key = %change.key, "configuration reload: not used by this process");
        }
        tracing::info!(
            applied = live.len(),
            needs_restart = pending.len(),
            keys = %live.iter().map(|c| c.key.as_str()).collect::<Vec<_>>().join(","),
            restart_keys = %pending.iter().map(|c| c.key.as_str()).collect::<Vec<_>>().join(","),
            "configuration reloaded"
        );
        self.current = new;
        Some(live)
    }

    /// The pool: live keys go into the running pool, its node watcher and
    /// its event socket; the TLS port reads its certificate and key again
    /// (renewed in place by certbot and the like, or at new paths).
    pub async fn reload_pool(&mut self, running: &RunningPool) {
        let mut tls = None;
        let reloaded = self.reload_with(|config| {
            let settings = crate::settings::pool_settings(config)?;
            tbg_pool::coalesce::set_window(std::time::Duration::from_micros(
                config.pool.wakeup_coalescing_us,
            ));
            for change in running.pool.reload(&settings) {
                tracing::debug!(%change, "pool setting changed");
            }
            running.set_watcher_intervals(&crate::settings::node_settings(config).watcher);
            running.event_socket().set_path(&config.events.socket_path);
            tls = settings.tls;
            Ok(())
        });
        if reloaded.is_none() {
            return;
        }
        match running.pool.reload_tls(tls.as_ref()).await {
            Ok(None) => {}
            Ok(Some(fingerprint)) => tracing::info!(%fingerprint,
                "stratum TLS: certificate loaded; new TLS connections get it, connected miners keep theirs"),
            Err(error) => tracing::error!(error = %error,
                "stratum TLS: the certificate and key do not load; the TLS port keeps serving the previous ones"),
        }
    }

    /// The collector: its sinks are built at start, so every key it reads
    /// needs a restart; the reload checks the file and says so.
    pub fn reload_collector(&mut self) {
        self.reload_with(|_| Ok(()));
    }
}

/// SIGHUP as a stream; `None` where signals are not available. Created
/// before the service starts so an early SIGHUP cannot kill the process.
pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; configuration reload disabled");
            None
        }
    }
}

/// Waits for the next SIGHUP (forever without a handler).
pub async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_classified_and_secrets_hidden() {
        let old = Config::default();
        let mut new = old.clone();
        new.pool.startdiff = 0.5;
        new.pool.bind = "127.0.0.1:4444".into();
        new.redis.url = Some("redis://:secret@127.0.0.1:6379/0".into());
        new.collector.batch_max += 1;
        let changes = changed_keys(Role::Pool, &old, &new);
        let find = |key: &str| changes.iter().find(|c| c.key == key).unwrap();
        assert_eq!(find("pool.startdiff").class, KeyClass::Live);
        assert_eq!(find("pool.bind").class, KeyClass::NeedsRestart);
        assert_eq!(find("redis.url").class, KeyClass::Live);
        assert_eq!(find("redis.url").new, "redis://:***@127.0.0.1:6379/0");
        assert_eq!(find("collector.batch_max").class, KeyClass::NotUsed);
        assert_eq!(changes.len(), 4, "{changes:?}");
        let collector = changed_keys(Role::Collector, &old, &new);
        assert!(collector
            .iter()
            .all(|c| c.key != "pool.startdiff" || c.class == KeyClass::NotUsed));
        assert!(changed_keys(Role::Pool, &old, &old).is_empty());
    }
}
