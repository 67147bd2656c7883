//! The `tbg` binary as a child process: logs to a file, killed on drop, and
//! restarted the way its systemd unit says (the harness is the supervisor).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ChaosError;

/// `Restart=` and `RestartSec=` of a systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// `Restart=` (`always`, `on-failure`, `no`, ...).
    pub restart: String,
    pub restart_sec: Duration,
    /// Where it was read from.
    pub source: PathBuf,
}

impl RestartPolicy {
    /// Reads `Restart=` and `RestartSec=` from a unit file (systemd's default
    /// RestartSec is 100 ms).
    pub fn from_unit_file(path: &Path) -> Result<RestartPolicy, ChaosError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChaosError::io(format!("reading {}", path.display()), e))?;
        let mut restart = "no".to_string();
        let mut restart_sec = Duration::from_millis(100);
        for line in text.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("Restart=") {
                restart = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("RestartSec=") {
                restart_sec = parse_systemd_timespan(value.trim()).ok_or_else(|| {
                    ChaosError::Failed(format!("{}: bad RestartSec={value}", path.display()))
                })?;
            }
        }
        Ok(RestartPolicy {
            restart,
            restart_sec,
            source: path.to_path_buf(),
        })
    }

    /// Whether a process killed by a signal is restarted.
    pub fn restarts_after_kill(&self) -> bool {
        matches!(
            self.restart.as_str(),
            "always" | "on-failure" | "on-abnormal" | "on-abort"
        )
    }
}

/// systemd time spans as units use them: `500ms`, `2s`, `1min`, `3` (seconds).
pub fn parse_systemd_timespan(text: &str) -> Option<Duration> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "second" | "seconds" => number,
        "ms" | "msec" => number / 1000.0,
        "us" | "usec" => number / 1_000_000.0,
        "m" | "min" | "minute" | "minutes" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// One `tbg` child process, restartable, its stderr appended to a log file.
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Every pid it has run as, in order.
    pids: Vec<u32>,
    last_exit: Option<ExitStatus>,
    /// The scenario's directory: files a config names relatively (the
    /// dashboard's state) stay in it.
    work_dir: PathBuf,
}

impl ManagedProcess {
    /// Prepares the process; nothing runs until [`ManagedProcess::spawn`].
    pub fn new(name: &str, program: &Path, args: &[&str], log_dir: &Path) -> ManagedProcess {
        ManagedProcess {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            log: log_dir.join(format!("{name}.log")),
            work_dir: log_dir.to_path_buf(),
            child: None,
            pids: Vec::new(),
            last_exit: None,
        }
    }

    /// An extra environment variable for the next spawns.
    pub fn env(mut self, key: &str, value: &str) -> ManagedProcess {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spawn(&mut self) -> Result<u32, ChaosError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ChaosError::io(format!("opening {}", self.log.display()), e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| ChaosError::io(format!("spawning {}", self.name), e))?;
        let pid = child.id();
        self.pids.push(pid);
        self.child = Some(child);
        tracing::info!(name = %self.name, pid, "process started");
        Ok(pid)
    }

    /// The pid while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// Every pid it has run as.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Starts after the first one.
    pub fn restarts(&self) -> usize {
        self.pids.len().saturating_sub(1)
    }

    /// Reaps the child if it exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::info!(name = %self.name, %status, "process exited");
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// How it last exited (`None` while running or never exited).
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Sends a signal by number through kill(1), as an operator or the OOM killer would.
    pub fn signal(&mut self, signal: &str) -> Result<(), ChaosError> {
        let Some(pid) = self.pid() else {
            return Err(ChaosError::Failed(format!("{} is not running", self.name)));
        };
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|e| ChaosError::io("running kill", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(ChaosError::Failed(format!("kill -{signal} {pid} failed")))
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.last_exit = Some(status);
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; true if it stopped on SIGTERM.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.last_exit = Some(status);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        if let Ok(status) = child.wait() {
            self.last_exit = Some(status);
        }
        false
    }

    /// The supervisor's job once: waits for the process to exit (up to
    /// `timeout`), waits `RestartSec`, starts it again. Returns the new pid.
    pub async fn restart_on_exit(
        &mut self,
        policy: &RestartPolicy,
        timeout: Duration,
    ) -> Result<u32, ChaosError> {
        let started = Instant::now();
        while self.is_running() {
            if started.elapsed() > timeout {
                return Err(ChaosError::Timeout(
                    timeout,
                    format!("{} to exit", self.name),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !policy.restarts_after_kill() {
            return Err(ChaosError::Failed(format!(
                "Restart={} in {}: the unit would not be restarted",
                policy.restart,
                policy.source.display()
            )));
        }
        tokio::time::sleep(policy.restart_sec).await;
        self.spawn()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The address the process logged for its HTTP endpoints, from the last start.
    pub fn logged_http_addr(&self) -> Option<SocketAddr> {
        let text = strip_ansi(&self.log_text());
        text.lines()
            .rev()
            .filter(|line| line.contains("endpoints listening"))
            .find_map(|line| {
                let rest = &line[line.find("local_addr=")? + "local_addr=".len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill9();
        // libfaketime (the clock-skew scenario preloads it) keeps its state
        // in shared memory named after the process, removed only by a clean
        // exit: a killed process leaves it in /dev/shm. The names carry our
        // children's pids, so nothing else's is touched.
        for pid in &self.pids {
            for name in [
                format!("faketime_shm_{pid}"),
                format!("sem.faketime_sem_{pid}"),
            ] {
                let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
            }
        }
    }
}

/// Removes terminal colour sequences (in case a logger ignores NO_COLOR).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_as_systemd_writes_them() {
        assert_eq!(
            parse_systemd_timespan("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_systemd_timespan("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_systemd_timespan("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_systemd_timespan("1min"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_systemd_timespan("soon"), None);
    }

    #[test]
    fn the_pool_unit_restarts_after_a_kill() {
        let unit =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/tbg-pool.service");
        let policy = RestartPolicy::from_unit_file(&unit).unwrap();
        assert!(policy.restarts_after_kill(), "{policy:?}");
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[3mlocal_addr\u{1b}[0m=1"), "local_addr=1");
    }
}
