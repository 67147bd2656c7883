//! Event payloads and the envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Every event type name, in the order of [`EventData`].
pub const EVENT_TYPES: [&str; 14] = [
    "share_submitted",
    "block_found",
    "block_submitted",
    "block_confirmed",
    "block_orphaned",
    "miner_connected",
    "miner_disconnected",
    "diff_updated",
    "hashrate_update",
    "new_block_network",
    "share_best_diff",
    "asicboost_detected",
    "region_failover",
    "region_failback",
];

/// One event as it travels: envelope fields plus the typed payload.
///
/// Serializes as `{"event":..,"data":{..},"id":..,"ts":..,"source":..,"region":..}`
/// (JSON key order carries no meaning) and parses back from the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Provides the `event` (type name) and `data` keys of the envelope.
    #[serde(flatten)]
    pub data: EventData,
    /// UUIDv7: unique and time-ordered; consumers de-duplicate on it.
    pub id: String,
    /// Unix time in seconds with microsecond resolution.
    pub ts: f64,
    /// "hosted" for this pool.
    pub source: String,
    pub region: String,
}

/// Event payloads with the seed system's field names. Difficulties and hash
/// rates are f64 (hashes per second); durations are seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum EventData {
    ShareSubmitted {
        user: String,
        worker: String,
        client_id: u64,
        /// The target difficulty the share was judged against.
        #[serde(deserialize_with = "f64_or_nan")]
        diff: f64,
        /// The share's own difficulty.
        #[serde(deserialize_with = "f64_or_nan")]
        sdiff: f64,
        accepted: bool,
        /// Stratum reject wording (e.g. "Stale"), null when accepted.
        reject_reason: Option<String>,
        ip: String,
    },
    BlockFound {
        user: String,
        worker: String,
        height: u64,
        hash: String,
        /// The share's own difficulty.
        #[serde(deserialize_with = "f64_or_nan")]
        diff: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        network_diff: f64,
        reward_sats: u64,
        coinbase_sig: String,
    },
    /// What the nodes answered to a found block (an addition to the
    /// plan's types: `block_found` is emitted the moment the share arrives,
    /// this once `submitblock` has been answered).
    BlockSubmitted {
        user: String,
        worker: String,
        height: u64,
        hash: String,
        /// A node took it (`null`/`duplicate`, or its chain has it at `height`).
        accepted: bool,
        /// Each node's answer, as `url: answer`.
        answers: Vec<String>,
        /// `accepted`, `stale` (the chain passed it: lost the race or no
        /// node could be reached) or `rejected` (a node refused the block
        /// itself). Empty in events journaled before it existed.
        #[serde(default)]
        status: String,
    },
    /// A found block reached the maturity depth on the best chain (an
    /// addition to the plan's types: the reward can be spent).
    BlockConfirmed {
        user: String,
        worker: String,
        height: u64,
        hash: String,
        confirmations: u64,
    },
    /// A found block that a node had accepted is no longer on the best
    /// chain: another block at its height won (an addition to the plan's
    /// types; the plan's "orphaned block" alert follows it).
    BlockOrphaned {
        user: String,
        worker: String,
        height: u64,
        hash: String,
        /// The block at that height on the best chain.
        replaced_by: String,
    },
    /// A relay region stopped mining the primary's templates: the primary
    /// was silent for `silent_s` (at least the failover timeout).
    RegionFailover {
        /// The primary region given up.
        primary: String,
        /// Seconds since the primary was last heard (0: never heard since start).
        silent_s: f64,
        /// Why, in words ("no heartbeat for 10 s", "link refused: ...").
        reason: String,
    },
    /// A relay region is back on the primary's templates after the primary
    /// was heard steadily for `steady_s`.
    RegionFailback {
        primary: String,
        /// Seconds the relay mined on its own node's templates.
        failed_over_s: f64,
        steady_s: f64,
    },
    MinerConnected {
        user: String,
        worker: String,
        client_id: u64,
        ip: String,
        useragent: String,
        #[serde(deserialize_with = "f64_or_nan")]
        initial_diff: f64,
    },
    MinerDisconnected {
        user: String,
        worker: String,
        client_id: u64,
        ip: String,
        /// Seconds.
        #[serde(deserialize_with = "f64_or_nan")]
        session_duration: f64,
        shares_session: u64,
    },
    DiffUpdated {
        user: String,
        worker: String,
        client_id: u64,
        #[serde(deserialize_with = "f64_or_nan")]
        old_diff: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        new_diff: f64,
    },
    HashrateUpdate {
        user: String,
        worker: String,
        #[serde(deserialize_with = "f64_or_nan")]
        hashrate_1m: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        hashrate_5m: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        hashrate_1h: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        hashrate_1d: f64,
    },
    NewBlockNetwork {
        height: u64,
        hash: String,
        #[serde(deserialize_with = "f64_or_nan")]
        diff: f64,
        prev_hash: String,
    },
    ShareBestDiff {
        user: String,
        worker: String,
        #[serde(deserialize_with = "f64_or_nan")]
        new_best: f64,
        #[serde(deserialize_with = "f64_or_nan")]
        prev_best: f64,
        /// e.g. "session", "week", "all".
        timeframe: String,
    },
    AsicboostDetected {
        user: String,
        worker: String,
        /// Hex, as in mining.configure ("1fffe000").
        pool_mask: String,
        miner_mask: String,
    },
}

/// serde_json writes a non-finite float (a producer bug such as 0/0 hash rate)
/// as `null`; reading it back as NaN keeps the rest of the event usable.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(deserializer).map(|value| value.unwrap_or(f64::NAN))
}

impl EventData {
    /// The envelope's `event` value.
    pub fn event_type(&self) -> &'static str {
        match self {
            EventData::ShareSubmitted { .. } => "share_submitted",
            EventData::BlockFound { .. } => "block_found",
            EventData::MinerConnected { .. } => "miner_connected",
            EventData::MinerDisconnected { .. } => "miner_disconnected",
            EventData::DiffUpdated { .. } => "diff_updated",
            EventData::HashrateUpdate { .. } => "hashrate_update",
            EventData::NewBlockNetwork { .. } => "new_block_network",
            EventData::ShareBestDiff { .. } => "share_best_diff",
            EventData::AsicboostDetected { .. } => "asicboost_detected",
            EventData::BlockSubmitted { .. } => "block_submitted",
            EventData::BlockConfirmed { .. } => "block_confirmed",
            EventData::BlockOrphaned { .. } => "block_orphaned",
            EventData::RegionFailover { .. } => "region_failover",
            EventData::RegionFailback { .. } => "region_failback",
        }
    }
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        self.data.event_type()
    }

    /// The envelope as one JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serialization of this type cannot fail: string keys only, and serde_json
        // writes non-finite floats as null. The fallback keeps the call total.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"event\":\"{}\",\"id\":\"{}\",\"data\":null}}",
                self.event_type(),
                uuid::Uuid::now_v7()
            )
        })
    }

    /// Parses an envelope produced by [`Event::to_json`].
    pub fn from_json(text: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Stamps events with a fresh id, the current time, and this pool's source and region.
#[derive(Debug, Clone)]
pub struct EventFactory {
    region: String,
    source: String,
}

impl EventFactory {
    pub fn new(region: impl Into<String>, source: impl Into<String>) -> EventFactory {
        EventFactory {
            region: region.into(),
            source: source.into(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// An event stamped now.
    pub fn make(&self, data: EventData) -> Event {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros())
            .unwrap_or(0);
        // u128 -> f64: exact for any realistic date (< 2^53 µs ≈ year 2255).
        self.make_at(data, micros as f64 / 1_000_000.0)
    }

    /// An event with a given timestamp (seconds), e.g. for replays and tests.
    pub fn make_at(&self, data: EventData, ts: f64) -> Event {
        Event {
            data,
            // now_v7 keeps ids strictly increasing within the process.
            id: uuid::Uuid::now_v7().to_string(),
            ts,
            source: self.source.clone(),
            region: self.region.clone(),
        }
    }
}
