//! `tbg-collector`: tails the pool's event journal and delivers every event
//! to PostgreSQL and Redis Streams, each sink with its own cursor stored
//! atomically with its data, so nothing is lost or written twice.

#![forbid(unsafe_code)]

mod error;
pub mod migrations;
mod parse;
pub mod postgres;
pub mod redis_sink;
mod runner;
pub mod source;

pub use error::CollectorError;
pub use parse::{parse_record, ParsedRecord, Unparsable};
pub use runner::{
    replay_from, BackoffConfig, BatchConfig, Collector, CollectorConfig, PostgresConfig,
    RedisConfig, SinkKind, SinkStats,
};
pub use source::{resolve_replay_from, EventSource, JournalRecord, MemorySource};
