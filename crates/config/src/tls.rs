//! `[stratum_tls]`: Stratum V1 over TLS (`stratum+ssl://`) on a port of its
//! own, beside the plain TCP port of `[pool]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StratumTlsSection {
    /// Where TLS miners connect, e.g. `[::]:4333`; empty (the default):
    /// no TLS port.
    pub bind: String,
    /// PEM certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// A connection that has not finished its TLS handshake within this
    /// many seconds is closed.
    pub handshake_timeout_s: u64,
}

impl Default for StratumTlsSection {
    fn default() -> StratumTlsSection {
        StratumTlsSection {
            bind: String::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            handshake_timeout_s: 10,
        }
    }
}

impl StratumTlsSection {
    /// A TLS port is configured.
    pub fn enabled(&self) -> bool {
        !self.bind.is_empty()
    }

    pub(crate) fn check(&self, stratum_bind: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        crate::validate::check_socket_addr("stratum_tls.bind", &self.bind)?;
        let port = |addr: &str| addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
        if port(&self.bind).is_some_and(|p| p != 0) && port(&self.bind) == port(stratum_bind) {
            return Err(ConfigError::new(
                "stratum_tls.bind",
                format!("{:?}", self.bind),
                "must differ from pool.bind: TLS miners need a port of their own",
            ));
        }
        for (key, path) in [
            ("stratum_tls.cert_file", &self.cert_file),
            ("stratum_tls.key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    key,
                    "\"\"",
                    "must name a PEM file when stratum_tls.bind is set",
                ));
            }
        }
        if !(1..=120).contains(&self.handshake_timeout_s) {
            return Err(ConfigError::new(
                "stratum_tls.handshake_timeout_s",
                self.handshake_timeout_s,
                "must be 1..=120",
            ));
        }
        Ok(())
    }
}
