//! Checks every value, naming the key of the first bad one.

use std::net::SocketAddr;
use std::str::FromStr;

use crate::error::ConfigError;
use crate::model::{redact_url, Config, NodeConfig};

/// Longest pool tag: the coinbase scriptSig is limited to 100 bytes and also
/// holds the height (up to 5 bytes), the extranonces (up to 17 bytes) and a
/// per-user signature (up to 21 bytes), plus push opcodes.
pub const MAX_POOL_TAG_LEN: usize = 40;

/// Version bits a miner may roll (BIP320).
pub const VERSION_MASK_ALLOWED: u32 = 0x1fff_e000;

/// The hard ceiling of any difficulty (the same as `tbg_work::MAX_DIFFICULTY`,
/// which the pool applies): ~430 EH/s at one share per 10 s.
pub const MAX_DIFFICULTY: f64 = 1e12;

const NONCE_LENGTHS: std::ops::RangeInclusive<u8> = 2..=8;
const MAX_BLOCKPOLL_MS: u64 = 60_000;
const MAX_UPDATE_INTERVAL_S: u64 = 3_600;
const MIN_LINE_BYTES: usize = 1024;
const MAX_LINE_BYTES: usize = 1024 * 1024;
const MAX_TAG_LEN: usize = 64;
const MIN_IP_TABLE: u32 = 16;
const MAX_IP_TABLE: u32 = 10_000_000;
/// A week: bans and timeouts longer than that are a typo.
const MAX_LIMIT_SECONDS: u64 = 7 * 24 * 3600;
/// Longest wake-up coalescing window: past it a busy pool's answers and
/// jobs wait long enough for a miner to notice.
const MAX_WAKEUP_COALESCING_US: u64 = 10_000;

impl Config {
    /// Checks every value; at least one node is required.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(true)
    }

    /// As [`Config::validate`], but allows an empty `nodes` list, for a pool
    /// that runs with an embedded node.
    pub fn validate_embedded_node(&self) -> Result<(), ConfigError> {
        self.check(false)
    }

    fn check(&self, nodes_required: bool) -> Result<(), ConfigError> {
        if nodes_required && self.nodes.is_empty() {
            return Err(ConfigError::new(
                "nodes",
                "[]",
                "at least one [[nodes]] entry is required",
            ));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            check_node(index, node)?;
        }
        if self.logdir.as_os_str().is_empty() {
            return Err(ConfigError::new("logdir", "\"\"", "must not be empty"));
        }
        self.check_pool()?;
        self.blocks.check()?;
        self.region.check()?;
        self.nats.check()?;
        self.health_monitor.check()?;
        self.web.check()?;
        self.stratum_tls.check(&self.pool.bind)?;
        self.stratum_v2
            .check(&self.pool.bind, &self.stratum_tls.bind)?;
        self.notify.check()?;
        if !self.notify.webhooks.is_empty() && !self.journal.enabled {
            return Err(ConfigError::new(
                "notify.webhooks",
                format!("{} endpoint(s)", self.notify.webhooks.len()),
                "notices are delivered from the journal: journal.enabled must be true",
            ));
        }
        if (self.region.is_multi_region() || self.nats.url.is_some())
            && self.region.instance_id.is_none()
        {
            return Err(ConfigError::new(
                "region.instance_id",
                "unset",
                "every region of a deployment needs its own instance id (0..=255): two regions \
                 must never hand the same user the same extranonce1",
            ));
        }
        if self.region.instance_id.is_some() && self.pool.nonce1length < 3 {
            return Err(ConfigError::new(
                "pool.nonce1length",
                self.pool.nonce1length.to_string(),
                "must be at least 3 with region.instance_id: its first byte is the instance's, \
                 the rest must hold every session",
            ));
        }
        let events = &self.events;
        if events.socket_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "events.socket_path",
                "\"\"",
                "must not be empty",
            ));
        }
        check_tag("events.region", &events.region)?;
        // The region is a NATS subject token (`events.<region>.<type>`).
        if self.nats.url.is_some()
            && !events
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::new(
                "events.region",
                format!("{:?}", events.region),
                "with [nats] the region is part of a subject: letters, digits, '_' or '-'",
            ));
        }
        check_tag("events.source", &events.source)?;
        let journal = &self.journal;
        if journal.path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "journal.path",
                "\"\"",
                "must not be empty",
            ));
        }
        if journal.retention_days == 0 {
            return Err(ConfigError::new(
                "journal.retention_days",
                0,
                "must be at least 1",
            ));
        }
        if journal.retention_max_mb < 16 {
            return Err(ConfigError::new(
                "journal.retention_max_mb",
                journal.retention_max_mb,
                "must be at least 16",
            ));
        }
        if journal.stage_mb == 0 || journal.stage_mb > 16 * 1024 {
            return Err(ConfigError::new(
                "journal.stage_mb",
                journal.stage_mb,
                "must be between 1 and 16384",
            ));
        }
        if journal
            .stage_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(ConfigError::new(
                "journal.stage_dir",
                "\"\"",
                "must name a directory (leave it unset for the default)",
            ));
        }
        if let Some(cpus) = &journal.writer_cpus {
            if cpus.is_empty() || cpus.iter().any(|&cpu| cpu >= 1024) {
                return Err(ConfigError::new(
                    "journal.writer_cpus",
                    format!("{cpus:?}"),
                    "must list CPU numbers below 1024 (leave it unset for the pool's CPUs)",
                ));
            }
        }
        let collector = &self.collector;
        if collector.batch_max == 0 || collector.batch_max > 100_000 {
            return Err(ConfigError::new(
                "collector.batch_max",
                collector.batch_max,
                "must be between 1 and 100000",
            ));
        }
        if collector.stream_maxlen == 0 {
            return Err(ConfigError::new(
                "collector.stream_maxlen",
                0,
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.redis.url {
            let known = ["redis://", "rediss://", "unix://", "redis+unix://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(ConfigError::new(
                    "redis.url",
                    redact_url(url),
                    "must start with redis://, rediss:// or unix://",
                ));
            }
        }
        check_socket_addr("metrics.bind", &self.metrics.bind)?;
        check_socket_addr("metrics.collector_bind", &self.metrics.collector_bind)?;
        if let Some(token) = &self.metrics.token {
            check_bearer_token("metrics.token", token)?;
        }
        Ok(())
    }

    fn check_pool(&self) -> Result<(), ConfigError> {
        let pool = &self.pool;
        check_socket_addr("pool.bind", &pool.bind)?;
        if pool.pool_tag.len() > MAX_POOL_TAG_LEN {
            return Err(ConfigError::new(
                "pool.pool_tag",
                format!("{:?}", pool.pool_tag),
                format!("must be at most {MAX_POOL_TAG_LEN} bytes to fit the 100-byte coinbase scriptSig"),
            ));
        }
        if !pool.pool_tag.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ConfigError::new(
                "pool.pool_tag",
                format!("{:?}", pool.pool_tag),
                "must be printable ASCII",
            ));
        }
        if let Some(address) = &pool.btcaddress {
            let network = self.network.to_bitcoin();
            // The network not known yet (a ckpool file; the node says it):
            // an address of any network for now, checked again after.
            let from_node = self.network_from_node;
            let valid = bitcoin::Address::from_str(address)
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    if from_node {
                        Ok(a.assume_checked())
                    } else {
                        a.require_network(network).map_err(|e| e.to_string())
                    }
                });
            if let Err(reason) = valid {
                return Err(ConfigError::new(
                    "pool.btcaddress",
                    address,
                    format!("not a {} address: {reason}", self.network.as_str()),
                ));
            }
        }
        if pool.blockpoll_ms == 0 || pool.blockpoll_ms > MAX_BLOCKPOLL_MS {
            return Err(ConfigError::new(
                "pool.blockpoll_ms",
                pool.blockpoll_ms,
                format!("must be between 1 and {MAX_BLOCKPOLL_MS}"),
            ));
        }
        if pool.update_interval_s == 0 || pool.update_interval_s > MAX_UPDATE_INTERVAL_S {
            return Err(ConfigError::new(
                "pool.update_interval_s",
                pool.update_interval_s,
                format!("must be between 1 and {MAX_UPDATE_INTERVAL_S}"),
            ));
        }
        if !(pool.mindiff.is_finite() && pool.mindiff > 0.0) {
            return Err(ConfigError::new(
                "pool.mindiff",
                pool.mindiff,
                "must be a finite number above 0",
            ));
        }
        if pool.mindiff > MAX_DIFFICULTY {
            return Err(ConfigError::new(
                "pool.mindiff",
                pool.mindiff,
                format!("must be at most {MAX_DIFFICULTY:e}"),
            ));
        }
        let maxdiff_in_range =
            pool.maxdiff == 0.0 || (pool.maxdiff >= pool.mindiff && pool.maxdiff <= MAX_DIFFICULTY);
        if !(pool.maxdiff.is_finite() && maxdiff_in_range) {
            return Err(ConfigError::new(
                "pool.maxdiff",
                pool.maxdiff,
                format!(
                    "must be 0 (no explicit limit) or between mindiff ({}) and {MAX_DIFFICULTY:e}",
                    pool.mindiff
                ),
            ));
        }
        let upper = if pool.maxdiff == 0.0 {
            MAX_DIFFICULTY
        } else {
            pool.maxdiff
        };
        let startdiff_in_range =
            pool.startdiff.is_finite() && pool.startdiff >= pool.mindiff && pool.startdiff <= upper;
        if !startdiff_in_range {
            return Err(ConfigError::new(
                "pool.startdiff",
                pool.startdiff,
                format!("must be between mindiff and maxdiff ({upper})"),
            ));
        }
        check_version_mask(&pool.version_mask)?;
        for (key, value) in [
            ("pool.nonce1length", pool.nonce1length),
            ("pool.nonce2length", pool.nonce2length),
        ] {
            if !NONCE_LENGTHS.contains(&value) {
                return Err(ConfigError::new(
                    key,
                    value,
                    format!(
                        "must be between {} and {}",
                        NONCE_LENGTHS.start(),
                        NONCE_LENGTHS.end()
                    ),
                ));
            }
        }
        if !(pool.share_interval_s.is_finite() && pool.share_interval_s > 0.0) {
            return Err(ConfigError::new(
                "pool.share_interval_s",
                pool.share_interval_s,
                "must be a finite number of seconds above 0",
            ));
        }
        if !(MIN_LINE_BYTES..=MAX_LINE_BYTES).contains(&pool.max_line_bytes) {
            return Err(ConfigError::new(
                "pool.max_line_bytes",
                pool.max_line_bytes,
                format!("must be between {MIN_LINE_BYTES} and {MAX_LINE_BYTES}"),
            ));
        }
        if !(pool.donation.is_finite() && (0.0..=99.9).contains(&pool.donation)) {
            return Err(ConfigError::new(
                "pool.donation",
                pool.donation,
                "must be a percentage between 0 and 99.9",
            ));
        }
        self.check_limits()
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let pool = &self.pool;
        for (index, entry) in pool.allow_list.iter().enumerate() {
            check_cidr(&format!("pool.allow_list[{index}]"), entry)?;
        }
        if !(MIN_IP_TABLE..=MAX_IP_TABLE).contains(&pool.ip_table_size) {
            return Err(ConfigError::new(
                "pool.ip_table_size",
                pool.ip_table_size,
                format!("must be between {MIN_IP_TABLE} and {MAX_IP_TABLE}"),
            ));
        }
        for (key, value, min) in [
            ("pool.ban_duration_s", pool.ban_duration_s, 0),
            ("pool.authorize_timeout_s", pool.authorize_timeout_s, 1),
            ("pool.idle_timeout_s", pool.idle_timeout_s, 1),
        ] {
            if !(min..=MAX_LIMIT_SECONDS).contains(&value) {
                return Err(ConfigError::new(
                    key,
                    value,
                    format!("must be between {min} and {MAX_LIMIT_SECONDS} seconds"),
                ));
            }
        }
        if pool.wakeup_coalescing_us > MAX_WAKEUP_COALESCING_US {
            return Err(ConfigError::new(
                "pool.wakeup_coalescing_us",
                pool.wakeup_coalescing_us,
                format!("must be at most {MAX_WAKEUP_COALESCING_US} (10 ms); 0 turns it off"),
            ));
        }
        Ok(())
    }
}

/// An address, or address/prefix with no host bits set.
fn check_cidr(key: &str, text: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::new(key, format!("{text:?}"), reason);
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address = std::net::IpAddr::from_str(address)
        .map_err(|_| bad("must be an IP address or address/prefix, e.g. 10.0.0.0/8"))?;
    let (bits, max) = match address {
        std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
        std::net::IpAddr::V6(v6) => (u128::from(v6), 128u32),
    };
    let length = match prefix {
        None => max,
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|length| *length <= max)
            .ok_or_else(|| bad(&format!("the prefix must be 0 to {max}")))?,
    };
    let host_bits = if length == 0 {
        bits
    } else {
        bits & ((1u128 << (max - length)) - 1)
    };
    if host_bits != 0 {
        return Err(bad("has host bits set: give the network address"));
    }
    Ok(())
}

fn check_node(index: usize, node: &NodeConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("nodes[{index}].{field}");
    let host_port = node
        .url
        .strip_prefix("http://")
        .unwrap_or(&node.url)
        .trim_end_matches('/');
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(ConfigError::new(
            key("url"),
            format!("{:?}", node.url),
            "must be host:port or http://host:port",
        ));
    }
    match (&node.user, &node.pass, &node.cookie_file) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => {}
        (None, None, None) => {
            return Err(ConfigError::new(
                key("user"),
                "",
                "needs user and pass (or TBG_NODE_PASS), or cookie_file",
            ))
        }
        (Some(_) | None, Some(_) | None, Some(_)) => {
            return Err(ConfigError::new(
                key("cookie_file"),
                "",
                "set either user/pass or cookie_file, not both",
            ))
        }
        (Some(_), None, None) => {
            return Err(ConfigError::new(
                key("pass"),
                "",
                "missing (set it or TBG_NODE_PASS)",
            ))
        }
        (None, Some(_), None) => {
            return Err(ConfigError::new(
                key("user"),
                "",
                "missing: pass is set without user",
            ))
        }
    }
    if let Some(zmq) = &node.zmq_hashblock {
        if !zmq.starts_with("tcp://") {
            return Err(ConfigError::new(
                key("zmq_hashblock"),
                zmq,
                "must be tcp://host:port",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_socket_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    SocketAddr::from_str(value)
        .map(|_| ())
        .map_err(|_| ConfigError::new(key, format!("{value:?}"), "must be an ip:port address"))
}

fn check_version_mask(mask: &str) -> Result<(), ConfigError> {
    let parsed =
        if mask.is_empty() || mask.len() > 8 || !mask.bytes().all(|b| b.is_ascii_hexdigit()) {
            None
        } else {
            u32::from_str_radix(mask, 16).ok()
        };
    match parsed {
        None => Err(ConfigError::new(
            "pool.version_mask",
            format!("{mask:?}"),
            "must be 1 to 8 hex digits",
        )),
        Some(bits) if bits & !VERSION_MASK_ALLOWED != 0 => Err(ConfigError::new(
            "pool.version_mask",
            format!("{mask:?}"),
            format!("must stay inside the BIP320 bits {VERSION_MASK_ALLOWED:08x}"),
        )),
        Some(_) => Ok(()),
    }
}

fn check_tag(key: &str, value: &str) -> Result<(), ConfigError> {
    let printable = value.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if value.is_empty() || value.len() > MAX_TAG_LEN || !printable {
        return Err(ConfigError::new(
            key,
            format!("{value:?}"),
            format!("must be 1 to {MAX_TAG_LEN} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// A bearer token must be long enough not to be guessed and fit in an HTTP
/// header unchanged (RFC 6750's token68 characters). The error never
/// quotes it.
pub(crate) fn check_bearer_token(key: &str, token: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.len() < 16 {
        return Err(ConfigError::new(
            key,
            "<redacted>",
            "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    if !token.chars().all(allowed) {
        return Err(ConfigError::new(
            key,
            "<redacted>",
            "may hold only letters, digits and - . _ ~ + / =",
        ));
    }
    Ok(())
}
