//! `[health_monitor]`: `tbg health-monitor`, one URL that tells the
//! on-call engineer which region is down.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// One region the monitor polls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoredRegion {
    /// The region's name, as in its `events.region`.
    pub name: String,
    /// Base URL of the region pool's HTTP endpoints (its `metrics.bind`),
    /// e.g. `http://10.1.0.5:9100`.
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthMonitorSection {
    /// Where `GET /health` and `/metrics` listen (the reference system's
    /// 8090). Loopback by default: put it behind the operators' proxy.
    pub bind: String,
    /// Seconds between two polls of every region (15).
    pub interval_s: u64,
    /// Seconds a region (or NATS) has to answer a poll (5).
    pub timeout_s: u64,
    /// Every region, the primary included.
    pub regions: Vec<MonitoredRegion>,
    /// The NATS the regions' events go through, polled too; unset: `nats.url`
    /// (a monitor's own config need not be a pool's, so it has its own key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
}

impl Default for HealthMonitorSection {
    fn default() -> HealthMonitorSection {
        HealthMonitorSection {
            bind: "127.0.0.1:8090".to_owned(),
            interval_s: 15,
            timeout_s: 5,
            regions: Vec::new(),
            nats_url: None,
        }
    }
}

impl HealthMonitorSection {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=3_600).contains(&self.interval_s) {
            return Err(ConfigError::new(
                "health_monitor.interval_s",
                self.interval_s.to_string(),
                "must be 1..=3600",
            ));
        }
        if self.timeout_s == 0 || self.timeout_s > self.interval_s {
            return Err(ConfigError::new(
                "health_monitor.timeout_s",
                self.timeout_s.to_string(),
                "must be 1..=interval_s",
            ));
        }
        for (index, region) in self.regions.iter().enumerate() {
            if region.name.is_empty() || self.regions[..index].iter().any(|r| r.name == region.name)
            {
                return Err(ConfigError::new(
                    "health_monitor.regions.name",
                    format!("{:?}", region.name),
                    "every region needs a name of its own",
                ));
            }
            let host = region.url.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    "health_monitor.regions.url",
                    format!("{:?}", region.url),
                    "must be http://host:port of the region pool's metrics.bind",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, url: &str) -> MonitoredRegion {
        MonitoredRegion {
            name: name.into(),
            url: url.into(),
        }
    }

    #[test]
    fn bad_regions_and_timings_are_named() {
        let mut section = HealthMonitorSection::default();
        assert!(section.check().is_ok());
        section.regions = vec![
            region("us", "http://10.0.0.1:9100"),
            region("us", "http://10.0.0.2:9100"),
        ];
        assert!(section
            .check()
            .unwrap_err()
            .to_string()
            .contains("health_monitor.regions.name"));
        section.regions = vec![region("us", "10.0.0.1:9100")];
        assert!(section
            .check()
            .unwrap_err()
            .to_string()
            .contains("health_monitor.regions.url"));
        section.regions.clear();
        section.timeout_s = 20;
        assert!(section
            .check()
            .unwrap_err()
            .to_string()
            .contains("health_monitor.timeout_s"));
    }
}
