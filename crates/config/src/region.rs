//! `[region]` and `[nats]`: multi-region roles, the relay link, and the
//! events' way to the primary over NATS JetStream.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// A region's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionMode {
    /// The primary region: its own nodes' templates, the relay link's
    /// listening side, the collector into Redis and PostgreSQL.
    #[default]
    Primary,
    /// A relay region: the primary's templates while it is heard, its own
    /// node's when the primary is silent for `failover_timeout_s`.
    Relay,
}

impl RegionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionMode::Primary => "primary",
            RegionMode::Relay => "relay",
        }
    }
}

/// Multi-region settings. A single pool is a primary with no relays: the
/// defaults change nothing for it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionSection {
    /// `primary` or `relay` (the reference system's `mode`).
    pub mode: RegionMode,
    /// This pool's instance number, 0..=255: the first byte of every
    /// extranonce1 it hands out, so that two regions never give the same
    /// user the same work. Each region of one deployment needs its own;
    /// required with a relay link or NATS, unset (the whole extranonce1
    /// for sessions) for a single pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<u8>,
    /// Primary: where the relay link listens (the reference system's relay
    /// port, 8881), when `relay_secret` is set (no secret, no link: a
    /// single region). Loopback by default: the link is for relays reached
    /// over a private network or a tunnel, never open to the internet
    /// unless an operator binds it so.
    pub relay_bind: String,
    /// Relay: the primary's relay link, `host:port` (the reference system's
    /// primary URL).
    pub primary_url: Option<String>,
    /// Shared secret of the relay link (HMAC-SHA256 of every message), at
    /// least 16 characters; better given as TBG_RELAY_SECRET.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_secret: Option<String>,
    /// The primary sends a heartbeat this often, seconds (3).
    pub heartbeat_s: u64,
    /// A relay mines on its own node's templates after this long without a
    /// word from the primary, seconds (10).
    pub failover_timeout_s: u64,
    /// A relay goes back to the primary's templates once the primary has
    /// been heard steadily for this long, seconds.
    pub failback_after_s: u64,
}

impl Default for RegionSection {
    fn default() -> RegionSection {
        RegionSection {
            mode: RegionMode::Primary,
            instance_id: None,
            relay_bind: "127.0.0.1:8881".to_owned(),
            primary_url: None,
            relay_secret: None,
            heartbeat_s: 3,
            failover_timeout_s: 10,
            failback_after_s: 30,
        }
    }
}

impl fmt::Debug for RegionSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionSection")
            .field("mode", &self.mode)
            .field("instance_id", &self.instance_id)
            .field("relay_bind", &self.relay_bind)
            .field("primary_url", &self.primary_url)
            .field(
                "relay_secret",
                &self.relay_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("heartbeat_s", &self.heartbeat_s)
            .field("failover_timeout_s", &self.failover_timeout_s)
            .field("failback_after_s", &self.failback_after_s)
            .finish()
    }
}

/// The shortest relay secret accepted.
pub const MIN_RELAY_SECRET_CHARS: usize = 16;

impl RegionSection {
    /// Whether this pool is one region of several (a relay, or a primary
    /// with a relay link).
    pub fn is_multi_region(&self) -> bool {
        self.mode == RegionMode::Relay || self.relay_secret.is_some()
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=60).contains(&self.heartbeat_s) {
            return Err(ConfigError::new(
                "region.heartbeat_s",
                self.heartbeat_s.to_string(),
                "must be 1..=60",
            ));
        }
        if self.failover_timeout_s <= self.heartbeat_s || self.failover_timeout_s > 600 {
            return Err(ConfigError::new(
                "region.failover_timeout_s",
                self.failover_timeout_s.to_string(),
                format!(
                    "must be more than heartbeat_s ({}) and at most 600: a relay must hear at \
                     least one heartbeat before it gives the primary up",
                    self.heartbeat_s
                ),
            ));
        }
        if self.failback_after_s > 3_600 {
            return Err(ConfigError::new(
                "region.failback_after_s",
                self.failback_after_s.to_string(),
                "must be at most 3600",
            ));
        }
        if let Some(secret) = &self.relay_secret {
            if secret.chars().count() < MIN_RELAY_SECRET_CHARS {
                return Err(ConfigError::new(
                    "region.relay_secret",
                    "<redacted>",
                    format!("must be at least {MIN_RELAY_SECRET_CHARS} characters"),
                ));
            }
        }
        match self.mode {
            RegionMode::Primary => {
                if self.relay_bind.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::new(
                        "region.relay_bind",
                        format!("{:?}", self.relay_bind),
                        "must be ip:port",
                    ));
                }
            }
            RegionMode::Relay => {
                let Some(url) = self.primary_url.as_deref() else {
                    return Err(ConfigError::new(
                        "region.primary_url",
                        "unset",
                        "a relay needs the primary's relay link, host:port",
                    ));
                };
                if url
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    return Err(ConfigError::new(
                        "region.primary_url",
                        format!("{url:?}"),
                        "must be host:port",
                    ));
                }
                if self.relay_secret.is_none() {
                    return Err(ConfigError::new(
                        "region.relay_secret",
                        "unset",
                        "a relay needs the link's shared secret (or TBG_RELAY_SECRET)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// NATS JetStream: each region's events published to
/// `events.<region>.<type>`, consumed by the primary's collector.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// `nats://host:port` (several comma-separated for a cluster); unset =
    /// no NATS (a single region).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The JetStream stream of every region's events.
    pub stream: String,
    /// Stream replicas: 1 on a single server, 3 on a cluster (R3).
    pub replicas: usize,
    /// Stream limits (the reference system's: 24 h, 1 GiB).
    pub max_age_s: u64,
    pub max_bytes: i64,
    /// JetStream's duplicate window on the event id (2 min); the collector
    /// is idempotent beyond it (a region cut off for an hour).
    pub duplicate_window_s: u64,
    /// The primary collector's durable consumer.
    pub consumer: String,
    /// How often a relay's publisher asks the primary for its receipts
    /// (what it holds of the relay's events), seconds.
    pub receipts_interval_s: u64,
    /// How long a gap in the primary's receipts must last before the relay
    /// publishes those events again, seconds: longer than a leader election
    /// or a primary's pause while catching up.
    pub resend_after_s: u64,
    /// PEM CA of the NATS servers' certificates (a private CA); set, the
    /// connection must be TLS. Unset: `tls://` URLs trust the system's CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// This region's client certificate chain and key (PEM), for servers
    /// that verify their clients (`tls { verify: true }`); both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and nkey seed), for servers run with
    /// accounts; a user and password or a token go in the URL instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
}

impl Default for NatsSection {
    fn default() -> NatsSection {
        NatsSection {
            url: None,
            stream: "EVENTS".to_owned(),
            replicas: 1,
            max_age_s: 24 * 3600,
            max_bytes: 1 << 30,
            duplicate_window_s: 120,
            consumer: "tbg-collector".to_owned(),
            receipts_interval_s: 15,
            resend_after_s: 60,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            creds_file: None,
        }
    }
}

impl fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSection")
            .field("url", &self.url.as_deref().map(crate::model::redact_url))
            .field("stream", &self.stream)
            .field("replicas", &self.replicas)
            .field("max_age_s", &self.max_age_s)
            .field("max_bytes", &self.max_bytes)
            .field("duplicate_window_s", &self.duplicate_window_s)
            .field("consumer", &self.consumer)
            .field("receipts_interval_s", &self.receipts_interval_s)
            .field("resend_after_s", &self.resend_after_s)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("creds_file", &self.creds_file)
            .finish()
    }
}

impl NatsSection {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let token = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !token(&self.stream) {
            return Err(ConfigError::new(
                "nats.stream",
                format!("{:?}", self.stream),
                "must be letters, digits, '_' or '-'",
            ));
        }
        if !token(&self.consumer) {
            return Err(ConfigError::new(
                "nats.consumer",
                format!("{:?}", self.consumer),
                "must be letters, digits, '_' or '-'",
            ));
        }
        if let Some(url) = &self.url {
            if let Some(reason) = url
                .split(',')
                .find_map(|entry| nats_entry_error(entry.trim()))
            {
                return Err(ConfigError::new(
                    "nats.url",
                    crate::model::redact_url(url),
                    format!("{reason}: one nats://host:port, or several separated by commas"),
                ));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::new(
                "nats.tls_cert_file",
                format!("{:?}", self.tls_cert_file),
                "nats.tls_cert_file and nats.tls_key_file go together (mutual TLS)",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::new(
                "nats.replicas",
                self.replicas.to_string(),
                "must be 1..=5 (3 on a cluster)",
            ));
        }
        if self.duplicate_window_s == 0 || self.duplicate_window_s > self.max_age_s {
            return Err(ConfigError::new(
                "nats.duplicate_window_s",
                self.duplicate_window_s.to_string(),
                "must be 1..=max_age_s",
            ));
        }
        if !(1..=3_600).contains(&self.receipts_interval_s) {
            return Err(ConfigError::new(
                "nats.receipts_interval_s",
                self.receipts_interval_s.to_string(),
                "must be 1..=3600",
            ));
        }
        if !(1..=86_400).contains(&self.resend_after_s) {
            return Err(ConfigError::new(
                "nats.resend_after_s",
                self.resend_after_s.to_string(),
                "must be 1..=86400",
            ));
        }
        if self.max_bytes < 1 << 20 {
            return Err(ConfigError::new(
                "nats.max_bytes",
                self.max_bytes.to_string(),
                "must be at least 1 MiB",
            ));
        }
        Ok(())
    }
}

/// Why one entry of `nats.url` is not a server the NATS client can dial
/// (`[nats|tls|ws|wss://][user[:pass]@]host[:port]`), or `None`.
fn nats_entry_error(entry: &str) -> Option<String> {
    if entry.is_empty() {
        return Some("an empty entry".to_owned());
    }
    let rest = match entry.split_once("://") {
        Some((scheme, rest)) => {
            if !["nats", "tls", "ws", "wss"].contains(&scheme) {
                return Some(format!("scheme {scheme:?} (nats, tls, ws or wss)"));
            }
            rest
        }
        None => entry,
    };
    // After the userinfo (up to the last '@': a secret may hold '/'),
    // never quoted in the reason.
    let after_userinfo = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = after_userinfo.split('/').next().unwrap_or_default();
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, _)) if !host.ends_with(']') && host.contains(':') => (host_port, None),
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Some("no host".to_owned());
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Some("a port that is not 1-65535".to_owned());
        }
    }
    None
}

#[cfg(test)]
mod nats_url_tests {
    use super::nats_entry_error;

    #[test]
    fn dialable_entries_pass_and_others_say_why() {
        for good in [
            "nats://10.0.0.1:4222",
            "tls://user:pass@nats.example:4443",
            "nats://u:se/cr@t@n1:4222",
            "n1:4222",
            "nats://[::1]:4222",
            "nats://localhost",
        ] {
            assert_eq!(nats_entry_error(good), None, "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("http://n1:4222", "scheme"),
            ("nats://:4222", "no host"),
            ("nats://n1:42x2", "port"),
            ("nats://n1:0", "port"),
        ] {
            let error = nats_entry_error(bad).unwrap_or_default();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
