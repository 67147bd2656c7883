//! Load during a scenario, from the miners' side:
//!
//! - [`PacedMiner`]: finds real shares (hashing at the pool's difficulty) at
//!   a bounded rate, so that two of them leave the 2 cores to the pool; it
//!   reconnects by itself whenever the connection ends (`tbg_miner::run_miner`
//!   has no reconnect logic, so this reconnect loop is the harness's);
//! - [`EventLoad`]: cheap submits for an unknown job, answered (rejected) and
//!   journaled like any share: a steady event stream for the lost/duplicate
//!   accounting, and the answer latency for the CPU-stress scenario.
//!
//! Both speak through [`StratumConn`], which scenarios also use directly.

mod event_load;
mod miner;
mod stratum;

use std::time::Duration;

pub use event_load::{load_usernames, EventLoad, LatencyLog};
pub use miner::{MinerStats, PacedMiner};
pub use stratum::{Answer, StratumConn};

/// Waits for a stopping task; one that does not end within `timeout` is
/// left running (detached), with a warning.
async fn join_within(task: tokio::task::JoinHandle<()>, timeout: Duration, what: &str) {
    if tokio::time::timeout(timeout, task).await.is_err() {
        tracing::warn!("{what} did not stop in time");
    }
}
