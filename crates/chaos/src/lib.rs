//! The chaos suite's building blocks (used by `crates/cli/tests/chaos.rs`):
//!
//! - [`proxy::FaultProxy`]: a TCP proxy whose mode (pass, refuse, blackhole,
//!   delay) changes at run time, to cut the pool from its node;
//! - [`process::ManagedProcess`] and [`process::RestartPolicy`]: the `tbg`
//!   binary as a child process, killed on drop, restarted the way its systemd
//!   unit would;
//! - [`stack::Stack`]: one fresh set per scenario (embedded node, private
//!   PostgreSQL and Redis, `tbg pool`, `tbg collector`);
//! - [`load`]: paced miners that find real shares and a cheap event load
//!   whose answer latency is recorded;
//! - [`ledger`]: event ids of the journal against PostgreSQL and every Redis
//!   stream (lost, duplicated);
//! - [`report`]: per-scenario figures, the final table and its JSON;
//! - [`netns`] and [`regions`]: three regions on hosts of their own
//!   (network namespaces), a 3-server NATS cluster, the links cut for real.

pub mod gossip;
pub mod ledger;
pub mod load;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod regions;
pub mod report;
pub mod stack;

use std::time::{Duration, Instant};

/// What can go wrong in the chaos tools themselves (not in the system under test).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{0}")]
    Failed(String),
}

impl ChaosError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ChaosError {
        ChaosError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Polls `check` every 50 ms until it holds; the time it took, or a timeout error.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration, ChaosError> {
    let started = Instant::now();
    loop {
        if check() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Err(ChaosError::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
