//! The relay link between a primary region and its relays (issue 17).
//!
//! - [`protocol`]: the frames, free of I/O so that it can be tested and
//!   fuzzed alone: line-delimited JSON, a mutual challenge-response
//!   handshake on a shared secret, and every later frame sealed with an
//!   HMAC-SHA256 of a session key over its direction, its sequence number
//!   and its body, so that a frame cannot be forged, altered, replayed,
//!   reordered or reflected back to its sender.
//! - [`failover`]: when a relay mines the primary's templates and when its
//!   own node's (time alone, no I/O).
//! - [`primary`]: the listening side; [`relay_side`]: the connecting side.

pub mod failover;
pub mod primary;
mod protocol;
pub mod relay_side;
mod wire;

pub use failover::{Failover, Source, Switch};
pub use primary::{PrimaryConfig, PrimaryCounters, PrimaryLink, RelayPeer};
pub use protocol::{
    Body, Hello, LinkError, LinkSession, PrimaryHandshake, RelayHandshake, Role, MAX_FRAME_BYTES,
    NONCE_BYTES,
};
pub use relay_side::{RelayConfig, RelayLink, RelayStatus};
