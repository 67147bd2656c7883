//! `[stratum_v2]`: the Stratum V2 Mining Protocol on a port of its own
//! beside the V1 port of `[pool]`, or on that port with V1 (each
//! connection told apart by its first bytes), encrypted with Noise NX
//! under the pool's authority key.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StratumV2Section {
    /// Where V2 miners and proxies connect, e.g. `[::]:3336`; empty (the
    /// default): no V2 port.
    pub bind: String,
    /// V2 on the V1 port (`pool.bind`) instead: both protocols on one
    /// port, each connection told apart by its first bytes. `bind` stays
    /// empty then.
    pub on_v1_port: bool,
    /// The authority secret key, base58check (`tbg sv2-keygen` makes a
    /// pair). A secret: set it with `TBG_SV2_SECRET_KEY` rather than here.
    pub authority_secret_key: String,
    /// The authority public key miners are given, base58check; optional,
    /// checked against the secret key when set.
    pub authority_public_key: String,
    /// How long each connection's Noise certificate is valid, seconds.
    pub cert_validity_s: u64,
    /// The handshake and `SetupConnection` must be done within this many
    /// seconds.
    pub handshake_timeout_s: u64,
}

impl std::fmt::Debug for StratumV2Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StratumV2Section")
            .field("bind", &self.bind)
            .field("on_v1_port", &self.on_v1_port)
            .field("authority_public_key", &self.authority_public_key)
            .field("cert_validity_s", &self.cert_validity_s)
            .field("handshake_timeout_s", &self.handshake_timeout_s)
            .finish_non_exhaustive()
    }
}

impl Default for StratumV2Section {
    fn default() -> StratumV2Section {
        StratumV2Section {
            bind: String::new(),
            on_v1_port: false,
            authority_secret_key: String::new(),
            authority_public_key: String::new(),
            cert_validity_s: 3600,
            handshake_timeout_s: 10,
        }
    }
}

impl StratumV2Section {
    /// V2 is served, on a port of its own or on the V1 port.
    pub fn enabled(&self) -> bool {
        !self.bind.is_empty() || self.on_v1_port
    }

    pub(crate) fn check(&self, stratum_bind: &str, tls_bind: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.on_v1_port && !self.bind.is_empty() {
            return Err(ConfigError::new(
                "stratum_v2.bind",
                format!("{:?}", self.bind),
                "must be empty with stratum_v2.on_v1_port = true (V2 is then on pool.bind)",
            ));
        }
        if !self.on_v1_port {
            self.check_bind(stratum_bind, tls_bind)?;
        }
        if self.authority_secret_key.is_empty() {
            return Err(ConfigError::new(
                "stratum_v2.authority_secret_key",
                "\"\"",
                "must be set when V2 is on (TBG_SV2_SECRET_KEY; `tbg sv2-keygen` prints a pair)",
            ));
        }
        if !(60..=365 * 86_400).contains(&self.cert_validity_s) {
            return Err(ConfigError::new(
                "stratum_v2.cert_validity_s",
                self.cert_validity_s,
                "must be 60..=31536000",
            ));
        }
        if !(1..=120).contains(&self.handshake_timeout_s) {
            return Err(ConfigError::new(
                "stratum_v2.handshake_timeout_s",
                self.handshake_timeout_s,
                "must be 1..=120",
            ));
        }
        Ok(())
    }

    /// A port of its own: an address, not the V1 or the TLS port.
    fn check_bind(&self, stratum_bind: &str, tls_bind: &str) -> Result<(), ConfigError> {
        crate::validate::check_socket_addr("stratum_v2.bind", &self.bind)?;
        let port = |addr: &str| addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
        if port(&self.bind).is_some_and(|p| p != 0) && port(&self.bind) == port(stratum_bind) {
            return Err(ConfigError::new(
                "stratum_v2.bind",
                format!("{:?}", self.bind),
                "must differ from pool.bind (for one port, set stratum_v2.on_v1_port = true and leave bind empty)",
            ));
        }
        if port(&self.bind).is_some_and(|p| p != 0) && port(&self.bind) == port(tls_bind) {
            return Err(ConfigError::new(
                "stratum_v2.bind",
                format!("{:?}", self.bind),
                "must differ from stratum_tls.bind",
            ));
        }
        Ok(())
    }
}
