//! The pool's configuration: one TOML file with documented defaults,
//! environment overrides for secrets, and import of a ckpool JSON config.
//!
//! Typical use by the binary:
//! ```no_run
//! # fn main() -> Result<(), tbg_config::ConfigError> {
//! let env = |name: &str| std::env::var(name).ok();
//! let config = tbg_config::load(Some(std::path::Path::new("tbg.toml")), &env)?;
//! # let _ = config; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod blocks;
mod ckpool;
mod error;
mod model;
mod monitor;
mod notify;
mod region;
mod sv2;
mod tls;
mod validate;
mod web;

pub use blocks::BlocksSection;
pub use ckpool::CKPOOL_KEYS;
pub use error::ConfigError;
pub use model::redact_url;
pub use model::{
    CollectorSection, Config, EventsSection, JournalDurability, JournalSection, MetricsSection,
    NetworkName, NodeConfig, PoolSection, RedisSection, DEFAULT_MAXDIFF,
};
pub use monitor::{HealthMonitorSection, MonitoredRegion};
pub use notify::{webhook_key, NotifySection, WebhookConfig, NOTICE_TYPES};
pub use region::{NatsSection, RegionMode, RegionSection, MIN_RELAY_SECRET_CHARS};
pub use sv2::StratumV2Section;
pub use tls::StratumTlsSection;
pub use validate::{MAX_DIFFICULTY, MAX_POOL_TAG_LEN, VERSION_MASK_ALLOWED};
pub use web::WebSection;

use std::path::Path;

/// Reads a config, applies environment overrides, validates it.
///
/// `path`: `None` gives the defaults; a file ending in `.json` (or whose
/// text starts with `{`) is read as a ckpool config, anything else as TOML.
/// Warnings of a ckpool import are dropped here: call
/// [`Config::from_ckpool_json`] to see them.
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut config = match path {
        None => Config::default(),
        Some(path) => {
            let text = read_file(path)?;
            let is_json =
                path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
            if is_json {
                Config::from_ckpool_json(&text)?.0
            } else {
                Config::from_toml_str(&text)?
            }
        }
    };
    config.apply_env(env);
    config.validate()?;
    Ok(config)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: "config file".to_owned(),
        value: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

impl Config {
    /// Parses TOML; missing keys take their defaults, unknown keys are
    /// errors. Does not validate values: call [`Config::validate`].
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| error::from_toml(text, e))
    }

    /// Reads and parses a TOML file (no env overrides, no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Config::from_toml_str(&text).map_err(|mut e| {
            if e.key.is_empty() {
                e.key = path.display().to_string();
            }
            e
        })
    }

    /// The config as TOML text (passwords included: it is for files).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError {
            key: "config".to_owned(),
            value: String::new(),
            reason: format!("cannot serialize: {e}"),
        })
    }

    /// Applies secrets from the environment; `env` looks a variable up
    /// (pass `|n| std::env::var(n).ok()` in the binary). Returns the names
    /// of the variables applied, never their values.
    ///
    /// - `TBG_NODE_<N>_USER`, `TBG_NODE_<N>_PASS`: node `N` (0-based, as in
    ///   `nodes[N]`).
    /// - `TBG_NODE_USER`, `TBG_NODE_PASS`: every node without its own.
    /// - `TBG_REDIS_URL`: `redis.url`.
    /// - `TBG_POSTGRES_URL`: `collector.postgres_url`.
    /// - `TBG_RELAY_SECRET`: `region.relay_secret`.
    /// - `TBG_NATS_URL`: `nats.url`.
    /// - `TBG_METRICS_TOKEN`: `metrics.token`.
    /// - `TBG_SV2_SECRET_KEY`: `stratum_v2.authority_secret_key`.
    /// - `TBG_WEBHOOK_<N>_SECRET`: `notify.webhooks[N].secret`.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        let mut applied = Vec::new();
        let mut lookup = |name: String| {
            let value = env(&name).filter(|v| !v.is_empty());
            if value.is_some() {
                applied.push(name);
            }
            value
        };
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if let Some(user) = lookup(format!("TBG_NODE_{index}_USER"))
                .or_else(|| lookup("TBG_NODE_USER".to_owned()))
            {
                node.user = Some(user);
            }
            if let Some(pass) = lookup(format!("TBG_NODE_{index}_PASS"))
                .or_else(|| lookup("TBG_NODE_PASS".to_owned()))
            {
                node.pass = Some(pass);
            }
        }
        if let Some(url) = lookup("TBG_REDIS_URL".to_owned()) {
            self.redis.url = Some(url);
        }
        if let Some(url) = lookup("TBG_POSTGRES_URL".to_owned()) {
            self.collector.postgres_url = Some(url);
        }
        if let Some(secret) = lookup("TBG_RELAY_SECRET".to_owned()) {
            self.region.relay_secret = Some(secret);
        }
        if let Some(url) = lookup("TBG_NATS_URL".to_owned()) {
            self.nats.url = Some(url);
        }
        if let Some(secret) = lookup("TBG_SV2_SECRET_KEY".to_owned()) {
            self.stratum_v2.authority_secret_key = secret;
        }
        if let Some(token) = lookup("TBG_METRICS_TOKEN".to_owned()) {
            self.metrics.token = Some(token);
        }
        for (index, hook) in self.notify.webhooks.iter_mut().enumerate() {
            if let Some(secret) = lookup(format!("TBG_WEBHOOK_{index}_SECRET")) {
                hook.secret = Some(secret);
            }
        }
        applied.sort();
        applied.dedup();
        applied
    }
}
