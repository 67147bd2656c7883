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
    /// Where each address's best shares of the last 7 days and of all time
    /// are kept across restarts (written at each sample); relative paths
    /// are from the working directory (/var/lib/tbg under systemd).
    pub state_file: std::path::PathBuf,
}

impl Default for WebSection {
    fn default() -> WebSection {
        WebSection {
            enabled: true,
            bind: "127.0.0.1:8080".to_owned(),
            sample_interval_s: 300,
            state_file: "dashboard-best.json".into(),
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
            if self.state_file.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "web.state_file",
                    "\"\"",
                    "must name a file (the best shares of the week and of all time)",
                ));
            }
        }
        Ok(())
    }
}
