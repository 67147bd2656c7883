//! From journal events to notices: which events are worth a message, and
//! which workers went quiet. Pure: no I/O, the time is an input.

use std::collections::HashMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tbg_events::{Event, EventData};

/// One message for the endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// `webhook-id`: the event id, or for a derived notice a digest of what
    /// it is about, so a notice delivered again (after a restart) carries
    /// the same id and a receiver can drop it.
    pub id: String,
    /// One of `tbg_config::NOTICE_TYPES`.
    pub kind: &'static str,
    /// The payout address it is about.
    pub user: String,
    /// Unix seconds of what it reports.
    pub ts: f64,
    /// `data` of the payload.
    pub data: Value,
}

impl Notice {
    /// The body: `{"type", "timestamp", "data"}` as the Standard Webhooks
    /// specification suggests.
    pub fn body(&self) -> Vec<u8> {
        json!({
            "type": self.kind,
            "timestamp": rfc3339(self.ts),
            "data": self.data,
        })
        .to_string()
        .into_bytes()
    }
}

pub fn rfc3339(ts: f64) -> String {
    // Event times have microsecond resolution; more digits are float noise.
    let nanos = (ts * 1e6).round() as i128 * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The notice an event is, if any.
pub fn notice_of(event: &Event) -> Option<Notice> {
    let (kind, user) = match &event.data {
        EventData::BlockFound { user, .. } => ("block_found", user),
        EventData::BlockSubmitted { user, .. } => ("block_submitted", user),
        EventData::BlockConfirmed { user, .. } => ("block_confirmed", user),
        EventData::BlockOrphaned { user, .. } => ("block_orphaned", user),
        _ => return None,
    };
    // The event's own fields, plus where and when it happened.
    let mut data = serde_json::to_value(&event.data)
        .ok()
        .and_then(|mut v| v.get_mut("data").map(Value::take))
        .unwrap_or(Value::Null);
    if let Value::Object(map) = &mut data {
        map.insert("region".into(), json!(event.region));
        map.insert("event_id".into(), json!(event.id));
    }
    Some(Notice {
        id: event.id.clone(),
        kind,
        user: user.clone(),
        ts: event.ts,
        data,
    })
}

/// Workers by their last accepted share; each quiet for `after` seconds is
/// reported once, then forgotten until it submits again. Bounded: when
/// full, the worker quiet the longest is dropped unreported.
#[derive(Debug)]
pub struct OfflineTracker {
    after: f64,
    capacity: usize,
    last_share: HashMap<(String, String), f64>,
    /// Workers dropped because the table was full (for the log).
    pub dropped: u64,
}

impl OfflineTracker {
    pub fn new(after_s: u64, capacity: usize) -> OfflineTracker {
        OfflineTracker {
            after: after_s as f64,
            capacity: capacity.max(1),
            last_share: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.after > 0.0
    }

    pub fn len(&self) -> usize {
        self.last_share.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_share.is_empty()
    }

    /// Takes an accepted share into account; `wanted` says whether the
    /// endpoint cares about this address at all.
    pub fn observe(&mut self, event: &Event, wanted: impl Fn(&str) -> bool) {
        if !self.enabled() {
            return;
        }
        let EventData::ShareSubmitted {
            user,
            worker,
            accepted: true,
            ..
        } = &event.data
        else {
            return;
        };
        if !wanted(user) {
            return;
        }
        if let Some(last) = self.last_share.get_mut(&(user.clone(), worker.clone())) {
            *last = last.max(event.ts);
            return;
        }
        if self.last_share.len() >= self.capacity {
            if let Some(oldest) = self
                .last_share
                .iter()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(key, _)| key.clone())
            {
                self.last_share.remove(&oldest);
                self.dropped += 1;
            }
        }
        self.last_share
            .insert((user.clone(), worker.clone()), event.ts);
    }

    /// The workers quiet for `after` seconds at `now` (unix seconds), each
    /// reported once; oldest first.
    pub fn due(&mut self, now: f64) -> Vec<Notice> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut quiet: Vec<((String, String), f64)> = self
            .last_share
            .iter()
            .filter(|(_, last)| now - **last >= self.after)
            .map(|(key, last)| (key.clone(), *last))
            .collect();
        quiet.sort_by(|a, b| a.1.total_cmp(&b.1));
        quiet
            .into_iter()
            .map(|((user, worker), last)| {
                self.last_share.remove(&(user.clone(), worker.clone()));
                let digest = Sha256::digest(format!("{user}\n{worker}\n{last}").as_bytes());
                Notice {
                    id: format!("worker_offline_{}", &hex::encode(digest)[..32]),
                    kind: "worker_offline",
                    ts: last + self.after,
                    data: json!({
                        "user": user,
                        "worker": worker,
                        "last_share_at": rfc3339(last),
                        "offline_after_s": self.after,
                    }),
                    user,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: EventData, ts: f64) -> Event {
        Event {
            data,
            id: format!("id-{ts}"),
            ts,
            source: "hosted".into(),
            region: "eu".into(),
        }
    }

    fn share(user: &str, worker: &str, accepted: bool, ts: f64) -> Event {
        event(
            EventData::ShareSubmitted {
                user: user.into(),
                worker: worker.into(),
                client_id: 1,
                diff: 1.0,
                sdiff: 2.0,
                accepted,
                reject_reason: None,
                ip: "127.0.0.1".into(),
            },
            ts,
        )
    }

    #[test]
    fn block_events_are_notices_with_their_fields_and_shares_are_not() {
        let found = event(
            EventData::BlockFound {
                user: "bc1qfinder".into(),
                worker: "rig".into(),
                height: 900_000,
                hash: "00ab".into(),
                diff: 1e12,
                network_diff: 1e14,
                reward_sats: 312_500_000,
                coinbase_sig: "/tbg/".into(),
            },
            1_700_000_000.25,
        );
        let notice = notice_of(&found).unwrap();
        assert_eq!(notice.kind, "block_found");
        assert_eq!(notice.id, found.id);
        assert_eq!(notice.user, "bc1qfinder");
        let body: Value = serde_json::from_slice(&notice.body()).unwrap();
        assert_eq!(body["type"], "block_found");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.25Z");
        assert_eq!(body["data"]["height"], 900_000);
        assert_eq!(body["data"]["reward_sats"], 312_500_000);
        assert_eq!(body["data"]["region"], "eu");
        assert!(notice_of(&share("a", "w", true, 1.0)).is_none());
    }

    #[test]
    fn a_quiet_worker_is_reported_once_and_again_only_after_it_came_back() {
        let mut tracker = OfflineTracker::new(60, 10);
        tracker.observe(&share("a", "w1", true, 100.0), |_| true);
        tracker.observe(&share("a", "w2", true, 100.0), |_| true);
        tracker.observe(&share("a", "w2", true, 150.0), |_| true);
        // Rejected shares and unwanted addresses keep no one online.
        tracker.observe(&share("a", "w3", false, 150.0), |_| true);
        tracker.observe(&share("b", "w1", true, 150.0), |user| user == "a");
        assert!(tracker.due(159.0).is_empty());
        let due = tracker.due(160.0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].data["worker"], "w1");
        assert_eq!(due[0].data["last_share_at"], "1970-01-01T00:01:40Z");
        assert!(tracker.due(170.0).is_empty(), "once");
        assert_eq!(tracker.due(210.0)[0].data["worker"], "w2");
        tracker.observe(&share("a", "w1", true, 300.0), |_| true);
        let again = tracker.due(400.0);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, due[0].id, "a new outage, a new id");
        // The same outage seen twice (a restart) has the same id.
        let mut other = OfflineTracker::new(60, 10);
        other.observe(&share("a", "w1", true, 100.0), |_| true);
        assert_eq!(other.due(500.0)[0].id, due[0].id);
    }

    #[test]
    fn the_table_is_bounded_and_off_means_off() {
        let mut tracker = OfflineTracker::new(60, 2);
        for (index, worker) in ["w1", "w2", "w3"].iter().enumerate() {
            tracker.observe(&share("a", worker, true, index as f64), |_| true);
        }
        assert_eq!(tracker.len(), 2);
        assert_eq!(tracker.dropped, 1);
        let mut off = OfflineTracker::new(0, 2);
        off.observe(&share("a", "w", true, 0.0), |_| true);
        assert!(off.is_empty() && off.due(1e9).is_empty());
    }
}
