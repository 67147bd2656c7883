//! Process metrics read from `/proc/self` (Linux); absent elsewhere.

use std::fmt::Error;

use prometheus_client::encoding::DescriptorEncoder;

use crate::encode;

/// `/proc` reports CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: Option<f64>,
    pub virtual_memory_bytes: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub threads: Option<f64>,
}

/// Reads this process's stats; fields that cannot be read are `None`.
pub fn read() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_kb = |key: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line (11 and 12 after it).
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace().skip(11);
            let utime: f64 = fields.next()?.parse().ok()?;
            let stime: f64 = fields.next()?.parse().ok()?;
            Some((utime + stime) / USER_HZ)
        });
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as f64);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<f64>().ok())
        });
    ProcessStats {
        resident_memory_bytes: status_kb("VmRSS:").map(|kb| kb * 1024.0),
        virtual_memory_bytes: status_kb("VmSize:").map(|kb| kb * 1024.0),
        cpu_seconds,
        open_fds,
        max_fds,
        threads: status_kb("Threads:"),
    }
}

/// Encodes the process metrics (`ckpool_process_*`).
pub fn encode(enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let stats = read();
    if let Some(value) = stats.resident_memory_bytes {
        encode::gauge(
            enc,
            "ckpool_process_resident_memory_bytes",
            "Resident memory of this process.",
            value,
        )?;
    }
    if let Some(value) = stats.virtual_memory_bytes {
        encode::gauge(
            enc,
            "ckpool_process_virtual_memory_bytes",
            "Virtual memory of this process.",
            value,
        )?;
    }
    if let Some(value) = stats.cpu_seconds {
        encode::counter(
            enc,
            "ckpool_process_cpu_seconds",
            "User and system CPU time of this process.",
            value,
        )?;
    }
    if let Some(value) = stats.open_fds {
        encode::gauge(
            enc,
            "ckpool_process_open_fds",
            "Open file descriptors.",
            value,
        )?;
    }
    if let Some(value) = stats.max_fds {
        encode::gauge(
            enc,
            "ckpool_process_max_fds",
            "Soft limit of open file descriptors.",
            value,
        )?;
    }
    if let Some(value) = stats.threads {
        encode::gauge(
            enc,
            "ckpool_process_threads",
            "OS threads of this process.",
            value,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_process() {
        let stats = super::read();
        let rss = stats.resident_memory_bytes.unwrap();
        assert!(rss > 1_000_000.0 && rss < 10e9, "rss {rss}");
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fds = stats.open_fds.unwrap();
        assert!(fds >= 4.0, "fds {fds}");
        drop(file);
        assert!(stats.cpu_seconds.unwrap() >= 0.0);
        assert!(stats.max_fds.unwrap() >= fds);
    }
}
