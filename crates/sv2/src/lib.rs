//! Stratum V2 on the wire, for the pool and for our own V2 client.
//!
//! The protocol itself is the reference implementation's crates
//! (`stratum-core`: codec, Noise NX, framing, messages); this crate adds
//! what they leave to their user: the authority key as operators write it
//! ([`keys`]), the handshake and framed, size-bounded reads and writes over
//! tokio ([`transport`]), the work arithmetic of both channel kinds
//! ([`work`]) and a mining client ([`client`]) that tests and the load
//! tool drive.

pub mod client;
pub mod keys;
pub mod transport;
pub mod work;

pub use keys::{encode_public_key, parse_public_key, AuthorityKey, KeyError};
pub use stratum_core;
pub use stratum_core::{binary_sv2, common_messages_sv2, mining_sv2, parsers_sv2};
pub use transport::{FrameReader, FrameWriter, TransportError};
