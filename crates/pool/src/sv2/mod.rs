//! Stratum V2 beside V1: the Mining Protocol's pool side, standard and
//! extended channels, over Noise NX with the pool's authority key.
//!
//! The protocol crates are the reference implementation's (`tbg_sv2`
//! wraps them); each channel is a [`crate::session::Session`], so a V2
//! miner's shares go through the same validator, accounting, events,
//! limits and durable block path as a V1 miner's. Out of scope: the
//! Template Distribution and Job Declaration protocols (work comes from
//! the pool's own node, as for V1) and group channels beyond the one group
//! every connection's channels are in.

mod connection;
pub(crate) mod wire;

use std::time::Duration;

pub(crate) use connection::serve_connection;
pub(crate) use wire::ChannelWire;

/// The V2 port's settings (`[stratum_v2]`).
#[derive(Debug, Clone)]
pub struct Sv2Settings {
    /// A port of its own; `None`: the V1 port, shared, each connection
    /// told apart by its first bytes (`crate::sniff`).
    pub bind: Option<std::net::SocketAddr>,
    pub key: tbg_sv2::AuthorityKey,
    /// How long each connection's certificate is valid (SRI's default,
    /// one hour; the miner checks it against its clock at the handshake).
    pub cert_validity: Duration,
    /// A connection's handshake and `SetupConnection` must be done by then.
    pub handshake_timeout: Duration,
}

impl Sv2Settings {
    /// V2 on a port of its own.
    pub fn new(bind: std::net::SocketAddr, key: tbg_sv2::AuthorityKey) -> Sv2Settings {
        Sv2Settings {
            bind: Some(bind),
            key,
            cert_validity: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// V2 on the V1 port, beside V1.
    pub fn on_v1_port(key: tbg_sv2::AuthorityKey) -> Sv2Settings {
        Sv2Settings {
            bind: None,
            ..Sv2Settings::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), key)
        }
    }
}
