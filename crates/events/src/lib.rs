//! Pool events: the typed payloads, the JSON envelope consumers read, and the
//! sinks that carry them out of the pool without ever blocking it.
//!
//! Envelope: `{"event": TYPE, "id": UUIDv7, "ts": unix seconds (µs), "source":
//! "hosted", "region": REGION, "data": {...}}`, always built by serde_json so a
//! miner-chosen worker name cannot forge fields.
#![forbid(unsafe_code)]

mod event;
mod sink;

pub use event::{Event, EventData, EventFactory, EVENT_TYPES};
pub use sink::{
    DatagramSink, EventSink, FanoutSink, MemorySink, NullSink, SinkError, SinkStats,
    DEFAULT_MAX_DATAGRAM_BYTES,
};
