//! What the tests of the `tbg` binary share: running it, signalling it,
//! reading its log.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn tbg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tbg"))
}

/// `tbg devnet` on free ports with `config`, logging at info to a piped
/// stderr (read it with [`LogLines`]); add arguments, then spawn.
pub fn devnet(config: &std::path::Path) -> Command {
    let mut command = tbg();
    command
        .args(["devnet", "--stratum", "127.0.0.1:0", "--rpc", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// `kill -<name> <pid>`, as an operator sends it.
pub fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The exit code, or `None` (and the process killed) after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            kill_and_reap(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pool's stderr, line by line, readable while it runs.
pub struct LogLines {
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: String,
}

impl LogLines {
    pub fn of(child: &mut Child) -> LogLines {
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LogLines {
            lines,
            seen: String::new(),
        }
    }

    /// The next line, if one comes within `timeout`.
    pub fn lines_recv(
        &self,
        timeout: Duration,
    ) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(timeout)
    }

    /// The first new line containing `text` (panics with the log after 20 s).
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {text:?}; log so far:\n{}", self.seen),
            }
        }
    }
}
