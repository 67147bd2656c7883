//! The region's part of `/metrics` and `/status`: the relay link (either
//! side) and the primary's NATS ingest. A single region has none of them
//! and shows nothing here.

use std::fmt::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;
use serde_json::{json, Value};
use tbg_nats::IngestStats;
use tbg_relay::{PrimaryLink, RelayLink};

use crate::encode;

/// What this pool is among the regions.
#[derive(Clone, Default)]
pub struct RegionSources {
    /// `primary` or `relay`.
    pub mode: &'static str,
    /// This region's name (`events.region`).
    pub name: String,
    /// A primary's listening side of the relay link.
    pub primary: Option<Arc<PrimaryLink>>,
    /// A relay's link to its primary.
    pub relay: Option<Arc<RelayLink>>,
    /// A primary's consumer of the other regions' events.
    pub ingest: Option<Arc<IngestStats>>,
}

impl RegionSources {
    fn is_multi_region(&self) -> bool {
        self.primary.is_some() || self.relay.is_some() || self.ingest.is_some()
    }

    /// The `region` object of `/status` (`null` for a single region).
    pub fn status(&self) -> Value {
        if !self.is_multi_region() {
            return Value::Null;
        }
        json!({
            "mode": self.mode,
            "name": self.name,
            "relays": self.primary.as_ref().map(|link| link.relays()),
            "relay_link": self.relay.as_ref().map(|link| link.status()),
            "ingest": self.ingest.as_ref().map(|stats| json!({
                "ingested": stats.ingested.load(Ordering::Relaxed),
                "pending": stats.pending.load(Ordering::Relaxed),
                "malformed": stats.malformed.load(Ordering::Relaxed),
                "failures": stats.failures.load(Ordering::Relaxed),
                "receipts_answered": stats.receipts_answered.load(Ordering::Relaxed),
                "stall_stepdowns": stats.stall_stepdowns.load(Ordering::Relaxed),
            })),
        })
    }
}

pub(crate) fn encode_region(
    region: &RegionSources,
    enc: &mut DescriptorEncoder,
) -> Result<(), Error> {
    if let Some(link) = &region.primary {
        let counters = link.counters();
        encode::gauge(
            enc,
            "ckpool_region_relays_connected",
            "Relay regions connected to this primary's relay link.",
            link.relays().len() as f64,
        )?;
        encode::counter_u64(
            enc,
            "ckpool_region_relay_blocks_received",
            "Blocks relay regions sent over the link (stored and submitted here).",
            counters.blocks_received.load(Ordering::Relaxed),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_region_relay_blocks_refused",
            "Blocks from relays that did not check out (not a block, wrong hash, no proof of work).",
            counters.blocks_refused.load(Ordering::Relaxed),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_region_relay_handshakes_failed",
            "Connections to the relay link that did not authenticate.",
            counters.handshakes_failed.load(Ordering::Relaxed),
        )?;
    }
    if let Some(link) = &region.relay {
        let status = link.status();
        encode::gauge(
            enc,
            "ckpool_region_on_primary",
            "1 while this relay mines the primary's templates, 0 while on its own node's.",
            if status.source == "primary" { 1.0 } else { 0.0 },
        )?;
        encode::gauge(
            enc,
            "ckpool_region_primary_behind_blocks",
            "Blocks the primary's template is behind this relay's own node (its miners get the local node's work meanwhile).",
            status.primary_behind_blocks as f64,
        )?;
        encode::gauge(
            enc,
            "ckpool_region_primary_connected",
            "1 while the relay link to the primary is up.",
            if status.connected { 1.0 } else { 0.0 },
        )?;
        encode::gauge(
            enc,
            "ckpool_region_primary_silent_seconds",
            "Seconds since the primary was last heard (NaN before it ever was).",
            status.primary_silent_s.unwrap_or(f64::NAN),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_region_failovers",
            "Switches to the local node's templates.",
            status.failovers,
        )?;
        encode::counter_u64(
            enc,
            "ckpool_region_failbacks",
            "Switches back to the primary's templates.",
            status.failbacks,
        )?;
        encode::gauge(
            enc,
            "ckpool_region_blocks_unconfirmed",
            "Blocks found here the primary has not yet said it stored.",
            status.blocks_unconfirmed as f64,
        )?;
    }
    if let Some(stats) = &region.ingest {
        encode::counter_u64(
            enc,
            "ckpool_nats_ingested",
            "Other regions' events appended to this primary's journal from NATS.",
            stats.ingested.load(Ordering::Relaxed),
        )?;
        encode::gauge(
            enc,
            "ckpool_nats_ingest_pending",
            "Messages JetStream holds for this primary's consumer.",
            stats.pending.load(Ordering::Relaxed) as f64,
        )?;
        encode::counter_u64(
            enc,
            "ckpool_nats_ingest_failures",
            "Ingest rounds that failed (NATS down, the journal refusing); each retried.",
            stats.failures.load(Ordering::Relaxed),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_nats_ingest_malformed",
            "Messages on the events stream that were not events of their subject's region and type (dropped).",
            stats.malformed.load(Ordering::Relaxed),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_nats_ingest_receipts_answered",
            "Receipt requests of relay publishers answered (what this primary holds of their events).",
            stats.receipts_answered.load(Ordering::Relaxed),
        )?;
        encode::counter_u64(
            enc,
            "ckpool_nats_ingest_stall_stepdowns",
            "Times the consumer stood still short of the stream's end and its leader was stepped down.",
            stats.stall_stepdowns.load(Ordering::Relaxed),
        )?;
    }
    Ok(())
}
