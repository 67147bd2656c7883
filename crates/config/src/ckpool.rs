//! Import of a ckpool JSON config (`ckpool.conf`), for drop-in migration.

use serde_json::Value;

use crate::error::ConfigError;
use crate::model::{Config, NetworkName, NodeConfig};

/// ckpool keys that are imported; any other key gives a warning.
pub const CKPOOL_KEYS: &[&str] = &[
    "btcd",
    "btcaddress",
    "btcsig",
    "blockpoll",
    "donation",
    "serverurl",
    "mindiff",
    "startdiff",
    "maxdiff",
    "update_interval",
    "version_mask",
    "nonce1length",
    "nonce2length",
    "logdir",
    "maxclients",
    "zmqblock",
    "event_socket_path",
    "metrics_port",
    "redis_url",
    "tbg_region",
    "mode",
    "relay_port",
    "primary_url",
    "failover_timeout",
    "heartbeat_interval",
    "instance_id",
];

impl Config {
    /// Reads a ckpool JSON config. Returns the config (defaults for what
    /// ckpool does not say) and warnings about keys that were ignored or
    /// guessed. Errors name the ckpool key. Does not validate: call
    /// [`Config::validate`].
    pub fn from_ckpool_json(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let root: Value = serde_json::from_str(text).map_err(|e| ConfigError {
            key: String::new(),
            value: String::new(),
            reason: format!(
                "ckpool json syntax error at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        })?;
        let Value::Object(root) = root else {
            return Err(ConfigError::new(
                "ckpool config",
                "",
                "must be a json object",
            ));
        };
        let mut config = Config::default();
        let mut warnings = Vec::new();
        for (key, value) in &root {
            import_key(&mut config, &mut warnings, key, value)?;
        }
        if let Some(value) = root.get("zmqblock") {
            let address = string("zmqblock", value)?;
            match config.nodes.first_mut() {
                Some(first) => first.zmq_hashblock = Some(address),
                None => warnings.push("zmqblock ignored: no btcd node is defined".to_owned()),
            }
        }
        if root.contains_key("network") {
            // Ours, not ckpool's: taken as the TOML key is (the pool checks
            // that its nodes agree).
        } else {
            // As ckpool itself: the network is the node's. The pool asks it
            // before it validates addresses; the rpc port's guess stands in
            // for `check-config`.
            config.network_from_node = true;
            if let Some(network) = guess_network(&config) {
                config.network = network;
            }
            warnings.push(format!(
                "ckpool has no network key: the network is the node's (getblockchaininfo), {} by the rpc port until it answers",
                config.network.as_str()
            ));
        }
        Ok((config, warnings))
    }
}

fn import_key(
    config: &mut Config,
    warnings: &mut Vec<String>,
    key: &str,
    value: &Value,
) -> Result<(), ConfigError> {
    let pool = &mut config.pool;
    match key {
        "btcd" => config.nodes = import_nodes(value)?,
        "btcaddress" => pool.btcaddress = Some(string(key, value)?),
        "btcsig" => pool.pool_tag = string(key, value)?,
        // Not a ckpool key (ckpool's network is its node's): ours, for a
        // file that wants the pool to check its node is on that network.
        "network" => {
            let name = string(key, value)?;
            config.network = serde_json::from_value(Value::String(name.clone())).map_err(|_| {
                ConfigError::new(
                    key,
                    format!("{name:?}"),
                    "must be mainnet, testnet, testnet4, signet or regtest",
                )
            })?;
        }
        "blockpoll" => pool.blockpoll_ms = integer(key, value)?,
        "donation" => pool.donation = number(key, value)?,
        "serverurl" => {
            let urls = match value {
                Value::Array(items) => items
                    .iter()
                    .map(|item| string(key, item))
                    .collect::<Result<Vec<_>, _>>()?,
                other => vec![string(key, other)?],
            };
            let Some(first) = urls.first() else {
                return Err(ConfigError::new(key, "[]", "needs at least one host:port"));
            };
            pool.bind = first.clone();
            if urls.len() > 1 {
                warnings.push(format!(
                    "serverurl: only the first address ({first}) is used, {} more ignored",
                    urls.len() - 1
                ));
            }
        }
        "mindiff" => pool.mindiff = number(key, value)?,
        "startdiff" => pool.startdiff = number(key, value)?,
        // 0 keeps ckpool's meaning, no explicit limit (the pool still caps
        // at the network difficulty and MAX_DIFFICULTY); without the key
        // the default (DEFAULT_MAXDIFF) applies.
        "maxdiff" => pool.maxdiff = number(key, value)?,
        "update_interval" => pool.update_interval_s = integer(key, value)?,
        "version_mask" => pool.version_mask = string(key, value)?,
        "nonce1length" => pool.nonce1length = integer(key, value)?,
        "nonce2length" => pool.nonce2length = integer(key, value)?,
        "logdir" => config.logdir = string(key, value)?.into(),
        "maxclients" => pool.maxclients = integer(key, value)?,
        // Applied after `btcd`, whatever the key order.
        "zmqblock" => {}
        "event_socket_path" => config.events.socket_path = string(key, value)?.into(),
        "metrics_port" => {
            let port: u16 = integer(key, value)?;
            config.metrics.bind = format!("0.0.0.0:{port}");
        }
        "redis_url" => config.redis.url = Some(string(key, value)?),
        "tbg_region" => config.events.region = string(key, value)?,
        // The reference system's multi-region keys.
        "mode" => {
            config.region.mode = match string(key, value)?.as_str() {
                "primary" => crate::RegionMode::Primary,
                "relay" => crate::RegionMode::Relay,
                other => {
                    return Err(ConfigError::new(
                        key,
                        format!("{other:?}"),
                        "must be \"primary\" or \"relay\"",
                    ))
                }
            }
        }
        // Asked for explicitly: listening on every interface, as the
        // reference system did; the link still needs its secret.
        "relay_port" => {
            let port: u16 = integer(key, value)?;
            config.region.relay_bind = format!("0.0.0.0:{port}");
        }
        "primary_url" => config.region.primary_url = Some(string(key, value)?),
        "failover_timeout" => config.region.failover_timeout_s = integer(key, value)?,
        "heartbeat_interval" => config.region.heartbeat_s = integer(key, value)?,
        "instance_id" => config.region.instance_id = Some(integer(key, value)?),
        other => warnings.push(format!("ignored ckpool key `{other}`")),
    }
    Ok(())
}

fn import_nodes(value: &Value) -> Result<Vec<NodeConfig>, ConfigError> {
    let Value::Array(entries) = value else {
        return Err(ConfigError::new(
            "btcd",
            kind(value),
            "must be a list of {url, auth, pass, notify}",
        ));
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let key = |field: &str| format!("btcd[{index}].{field}");
            let Value::Object(fields) = entry else {
                return Err(ConfigError::new(
                    format!("btcd[{index}]"),
                    kind(entry),
                    "must be an object",
                ));
            };
            let mut node = NodeConfig::default();
            for (field, value) in fields {
                match field.as_str() {
                    "url" => node.url = string(&key("url"), value)?,
                    "auth" => node.user = Some(string(&key("auth"), value)?),
                    "pass" => node.pass = Some(string(&key("pass"), value).map_err(hide_value)?),
                    "notify" => node.notify = boolean(&key("notify"), value)?,
                    "cookie_file" => {
                        node.cookie_file = Some(string(&key("cookie_file"), value)?.into())
                    }
                    "zmq_hashblock" => {
                        node.zmq_hashblock = Some(string(&key("zmq_hashblock"), value)?)
                    }
                    other => {
                        return Err(ConfigError::new(key(other), "", "unknown btcd field"));
                    }
                }
            }
            Ok(node)
        })
        .collect()
}

/// The network implied by the first node's RPC port, if it is one of
/// Bitcoin Core's defaults for a test network.
fn guess_network(config: &Config) -> Option<NetworkName> {
    let url = &config.nodes.first()?.url;
    let port: u16 = url.trim_end_matches('/').rsplit_once(':')?.1.parse().ok()?;
    [
        NetworkName::Mainnet,
        NetworkName::Testnet,
        NetworkName::Testnet4,
        NetworkName::Signet,
        NetworkName::Regtest,
    ]
    .into_iter()
    .find(|network| network.default_rpc_port() == port)
}

fn hide_value(mut error: ConfigError) -> ConfigError {
    error.value = String::new();
    error
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
    .to_owned()
}

fn string(key: &str, value: &Value) -> Result<String, ConfigError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ConfigError::new(key, value, "must be a string"))
}

fn number(key: &str, value: &Value) -> Result<f64, ConfigError> {
    value
        .as_f64()
        .ok_or_else(|| ConfigError::new(key, value, "must be a number"))
}

fn boolean(key: &str, value: &Value) -> Result<bool, ConfigError> {
    value
        .as_bool()
        .ok_or_else(|| ConfigError::new(key, value, "must be true or false"))
}

fn integer<T: TryFrom<u64>>(key: &str, value: &Value) -> Result<T, ConfigError> {
    value
        .as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ConfigError::new(key, value, "must be a whole number in range"))
}
