//! The abuse limits' metrics: refusals by kind, bans, tracked sources, and
//! the TLS port's failed handshakes.

use std::fmt::Error;

use prometheus_client::encoding::DescriptorEncoder;
use tbg_pool::limits::LimitKind;
use tbg_pool::PoolCounters;

use crate::encode::{self, Labels};

pub(crate) fn encode_limits(c: &PoolCounters, enc: &mut DescriptorEncoder) -> Result<(), Error> {
    // Every kind is exported, zeros included, so that a rate() over a kind
    // exists before its first refusal.
    let by_kind: Vec<(Labels, u64)> = LimitKind::ALL
        .iter()
        .map(|kind| {
            (
                vec![("kind", kind.label().to_owned())],
                c.limit_refusals(*kind),
            )
        })
        .collect();
    encode::counter_family(
        enc,
        "ckpool_limit_refusals",
        "Connections and requests refused by the abuse limits, by kind.",
        &by_kind,
    )?;
    encode::counter_u64(
        enc,
        "ckpool_ip_bans",
        "Soft bans started (sources that kept breaking the limits).",
        PoolCounters::get(&c.ip_bans),
    )?;
    encode::counter_u64(
        enc,
        "tbg_stratum_tls_handshake_failures",
        "Connections to the stratum TLS port that failed or timed out in the TLS handshake.",
        PoolCounters::get(&c.tls_handshake_failures),
    )?;
    encode::counter_u64(
        enc,
        "tbg_stratum_v2_handshake_failures",
        "Connections to the Stratum V2 port that failed or timed out in the Noise handshake.",
        PoolCounters::get(&c.sv2_handshake_failures),
    )?;
    encode::gauge(
        enc,
        "ckpool_ip_sources",
        "Sources (IPv4 addresses, IPv6 /64s) in the per-source limit table.",
        PoolCounters::get(&c.ip_sources) as f64,
    )
}
