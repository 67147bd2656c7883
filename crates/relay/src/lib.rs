//! The relay link between a primary region and its relays (issue 17).
//!
//! This crate holds the link's protocol, free of I/O so that it can be
//! tested and fuzzed alone: line-delimited JSON frames, a mutual
//! challenge-response handshake on a shared secret, and every later frame
//! sealed with an HMAC-SHA256 of a session key over its direction, its
//! sequence number and its body, so that a frame cannot be forged, altered,
//! replayed, reordered or reflected back to its sender. The transport (TCP,
//! reconnects, failover) is built on it.

mod protocol;

pub use protocol::{
    Body, Hello, LinkError, LinkSession, PrimaryHandshake, RelayHandshake, Role, MAX_FRAME_BYTES,
    NONCE_BYTES,
};
