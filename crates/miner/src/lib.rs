//! A Stratum V1 CPU miner and client.
//!
//! `StratumClient` speaks the protocol line by line (tests use it to provoke
//! each reject reason); `run_miner` is a complete miner that hashes real
//! shares at whatever difficulty the pool sets, fractional ones included.
#![forbid(unsafe_code)]

pub mod client;
pub mod cpu;
pub mod job;
pub mod transport;

pub use client::{Reply, StratumClient};
pub use cpu::{meets_nbits, mine_shares, run_miner, MinerConfig, MinerEvent, MinerSummary};
pub use job::{hash_difficulty, sha256d, MinerJob};
pub use transport::{MinerTls, Transport};

#[derive(Debug, thiserror::Error)]
pub enum MinerError {
    #[error("connection error: {0}")]
    Io(#[source] std::io::Error),
    #[error("the pool closed the connection")]
    Closed,
    #[error("timed out waiting for the pool")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the pool refused: {0}")]
    Rejected(String),
    #[error("TLS: {0}")]
    Tls(String),
}
