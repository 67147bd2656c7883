//! `[web]`: the public dashboard the pool serves (pages of the pool and of
//! each address), apart from the operator endpoints of `[metrics]`.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve the dashboard (true).
    pub enabled: bool,
    /// Where it listens: loopback by default; `[::]:8080` (or a reverse
    /// proxy in front) puts it before the miners. It shows no operator
    /// detail, so it may face the internet while `metrics.bind` does not.
    pub bind: String,
    /// Seconds between two points of the hashrate charts (300: 288 a day).
    pub sample_interval_s: u64,
}

impl Default for WebSection {
    fn default() -> WebSection {
        WebSection {
            enabled: true,
            bind: "127.0.0.1:8080".to_owned(),
            sample_interval_s: 300,
        }
    }
}

impl WebSection {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=3_600).contains(&self.sample_interval_s) {
            return Err(ConfigError::new(
                "web.sample_interval_s",
                self.sample_interval_s,
                "must be 1..=3600",
            ));
        }
        if self.enabled {
            crate::validate::check_socket_addr("web.bind", &self.bind)?;
        }
        Ok(())
    }
}
