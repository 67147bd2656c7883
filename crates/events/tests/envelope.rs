//! The JSON envelope: exact field names, microsecond timestamps, no forgery, unique ids.

use std::collections::HashSet;

use serde_json::{json, Value};
use tbg_events::*;

fn share(worker: &str) -> EventData {
    EventData::ShareSubmitted {
        user: "bc1qexampleaddress".into(),
        worker: worker.into(),
        client_id: 42,
        diff: 1024.0,
        sdiff: 2048.5,
        accepted: false,
        reject_reason: Some("Stale".into()),
        ip: "203.0.113.7".into(),
    }
}

fn all_events() -> Vec<EventData> {
    let user = || "bc1quser".to_string();
    let worker = || "rig1".to_string();
    vec![
        share("rig1"),
        EventData::BlockFound {
            user: user(),
            worker: worker(),
            height: 102,
            hash: "00ab".into(),
            diff: 5.5,
            network_diff: 4.6e-10,
            reward_sats: 5_000_000_000,
            coinbase_sig: "/tbg/".into(),
        },
        EventData::BlockSubmitted {
            user: user(),
            worker: worker(),
            height: 102,
            hash: "00ab".into(),
            accepted: true,
            answers: vec!["http://127.0.0.1:8332: accepted".into()],
            status: "accepted".into(),
        },
        EventData::BlockConfirmed {
            user: user(),
            worker: worker(),
            height: 102,
            hash: "00ab".into(),
            confirmations: 100,
        },
        EventData::BlockOrphaned {
            user: user(),
            worker: worker(),
            height: 102,
            hash: "00ab".into(),
            replaced_by: "00cd".into(),
        },
        EventData::MinerConnected {
            user: user(),
            worker: worker(),
            client_id: 1,
            ip: "::1".into(),
            useragent: "cpuminer/2.5.1".into(),
            initial_diff: 1.0,
        },
        EventData::MinerDisconnected {
            user: user(),
            worker: worker(),
            client_id: 1,
            ip: "::1".into(),
            session_duration: 12.5,
            shares_session: 9,
        },
        EventData::DiffUpdated {
            user: user(),
            worker: worker(),
            client_id: 1,
            old_diff: 1.0,
            new_diff: 0.0001,
        },
        EventData::HashrateUpdate {
            user: user(),
            worker: worker(),
            hashrate_1m: 1.0,
            hashrate_5m: 2.0,
            hashrate_1h: 3.0,
            hashrate_1d: 4.0,
        },
        EventData::NewBlockNetwork {
            height: 103,
            hash: "00cd".into(),
            diff: 1.0,
            prev_hash: "00ab".into(),
        },
        EventData::ShareBestDiff {
            user: user(),
            worker: worker(),
            new_best: 10.0,
            prev_best: 5.0,
            timeframe: "week".into(),
        },
        EventData::AsicboostDetected {
            user: user(),
            worker: worker(),
            pool_mask: "1fffe000".into(),
            miner_mask: "ffffffff".into(),
        },
        EventData::RegionFailover {
            primary: "us-east".into(),
            silent_s: 10.0,
            reason: "no word from the primary for 10 s".into(),
        },
        EventData::RegionFailback {
            primary: "us-east".into(),
            failed_over_s: 95.5,
            steady_s: 30.0,
        },
    ]
}

fn expected_fields(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "share_submitted" => &[
            "user",
            "worker",
            "client_id",
            "diff",
            "sdiff",
            "accepted",
            "reject_reason",
            "ip",
        ],
        "block_found" => &[
            "user",
            "worker",
            "height",
            "hash",
            "diff",
            "network_diff",
            "reward_sats",
            "coinbase_sig",
        ],
        "miner_connected" => &[
            "user",
            "worker",
            "client_id",
            "ip",
            "useragent",
            "initial_diff",
        ],
        "miner_disconnected" => &[
            "user",
            "worker",
            "client_id",
            "ip",
            "session_duration",
            "shares_session",
        ],
        "diff_updated" => &["user", "worker", "client_id", "old_diff", "new_diff"],
        "hashrate_update" => &[
            "user",
            "worker",
            "hashrate_1m",
            "hashrate_5m",
            "hashrate_1h",
            "hashrate_1d",
        ],
        "new_block_network" => &["height", "hash", "diff", "prev_hash"],
        "share_best_diff" => &["user", "worker", "new_best", "prev_best", "timeframe"],
        "asicboost_detected" => &["user", "worker", "pool_mask", "miner_mask"],
        // Our addition: the nodes' verdict on a found block.
        "block_submitted" => &[
            "user", "worker", "height", "hash", "accepted", "answers", "status",
        ],
        // Our additions: a found block's life on the best chain.
        "block_confirmed" => &["user", "worker", "height", "hash", "confirmations"],
        "block_orphaned" => &["user", "worker", "height", "hash", "replaced_by"],
        // Our additions (issue 17): a relay region's switches.
        "region_failover" => &["primary", "silent_s", "reason"],
        "region_failback" => &["primary", "failed_over_s", "steady_s"],
        other => panic!("unexpected event type {other}"),
    }
}

#[test]
fn envelope_and_data_fields_match_the_seed_system() {
    let factory = EventFactory::new("eu-west", "hosted");
    let events = all_events();
    assert_eq!(events.len(), EVENT_TYPES.len());
    for (data, type_name) in events.into_iter().zip(EVENT_TYPES) {
        let event = factory.make(data);
        assert_eq!(event.event_type(), type_name);
        let json: Value = serde_json::from_str(&event.to_json()).expect("json");
        let envelope = json.as_object().expect("object");
        let mut keys: Vec<&str> = envelope.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "event", "id", "region", "source", "ts"]);
        assert_eq!(json["event"], type_name);
        assert_eq!(json["source"], "hosted");
        assert_eq!(json["region"], "eu-west");
        assert_eq!(json["id"], event.id.as_str());
        let mut data_keys: Vec<&str> = json["data"]
            .as_object()
            .expect("data object")
            .keys()
            .map(String::as_str)
            .collect();
        data_keys.sort_unstable();
        let mut wanted = expected_fields(type_name).to_vec();
        wanted.sort_unstable();
        assert_eq!(data_keys, wanted, "{type_name}");
        // Parses back to the same event.
        assert_eq!(
            Event::from_json(&event.to_json()).expect("parse back"),
            event
        );
    }
}

#[test]
fn share_submitted_exact_json() {
    let factory = EventFactory::new("eu-west", "hosted");
    let event = factory.make_at(share("rig1"), 1_764_089_796.123_456);
    let json: Value = serde_json::from_str(&event.to_json()).expect("json");
    assert_eq!(
        json,
        json!({
            "event": "share_submitted",
            "id": event.id,
            "ts": 1_764_089_796.123_456,
            "source": "hosted",
            "region": "eu-west",
            "data": {"user": "bc1qexampleaddress", "worker": "rig1", "client_id": 42,
                     "diff": 1024.0, "sdiff": 2048.5, "accepted": false,
                     "reject_reason": "Stale", "ip": "203.0.113.7"}
        })
    );
    assert!(event.to_json().contains("\"ts\":1764089796.123456"));
}

#[test]
fn timestamps_are_now_with_microseconds() {
    let factory = EventFactory::new("r", "hosted");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let mut saw_fraction = false;
    for _ in 0..50 {
        let event = factory.make(share("w"));
        assert!(event.ts >= before - 1e-6 && event.ts < before + 60.0);
        let micros = event.ts * 1e6;
        assert!(
            (micros - micros.round()).abs() < 0.01,
            "ts {} not at µs",
            event.ts
        );
        saw_fraction |= event.ts.fract() != 0.0;
    }
    assert!(saw_fraction, "ts carries sub-second precision");
}

#[test]
fn crafted_worker_names_cannot_forge_fields() {
    let factory = EventFactory::new("r", "hosted");
    for worker in [
        r#"","event":"block_found"#,
        "rig\n{\"event\":\"block_found\"}",
        r#"a"b\"c\\"#,
        "\u{0}\u{1b}[31m",
        "'; DROP TABLE shares; --",
    ] {
        let event = factory.make(share(worker));
        let text = event.to_json();
        assert!(!text.contains('\n'), "one line per event");
        let parsed: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(parsed["event"], "share_submitted");
        assert_eq!(parsed["data"]["worker"], worker);
        assert_eq!(parsed.as_object().expect("object").len(), 6);
        assert_eq!(Event::from_json(&text).expect("parse back"), event);
    }
}

#[test]
fn ids_are_unique_and_time_ordered_over_100k_events() {
    let factory = EventFactory::new("r", "hosted");
    let mut seen = HashSet::with_capacity(100_000);
    let mut previous = String::new();
    for _ in 0..100_000 {
        let event = factory.make(EventData::NewBlockNetwork {
            height: 1,
            hash: String::new(),
            diff: 1.0,
            prev_hash: String::new(),
        });
        let parsed = uuid::Uuid::parse_str(&event.id).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert!(event.id > previous, "ids increase");
        previous.clone_from(&event.id);
        assert!(seen.insert(event.id));
    }
}

#[test]
fn unknown_event_type_does_not_parse() {
    let text = r#"{"event":"forged","id":"x","ts":1.0,"source":"s","region":"r","data":{}}"#;
    assert!(Event::from_json(text).is_err());
}

#[test]
fn non_finite_numbers_still_parse_back() {
    let factory = EventFactory::new("r", "hosted");
    let event = factory.make(EventData::HashrateUpdate {
        user: "u".into(),
        worker: "w".into(),
        hashrate_1m: f64::NAN,
        hashrate_5m: f64::INFINITY,
        hashrate_1h: 3.0,
        hashrate_1d: 4.0,
    });
    let text = event.to_json();
    assert!(text.contains("\"hashrate_1m\":null"));
    let parsed = Event::from_json(&text).expect("parses despite nulls");
    let EventData::HashrateUpdate {
        hashrate_1m,
        hashrate_5m,
        hashrate_1h,
        ..
    } = parsed.data
    else {
        panic!("wrong type")
    };
    assert!(hashrate_1m.is_nan() && hashrate_5m.is_nan());
    assert_eq!(hashrate_1h, 3.0);
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let text = r#"{"event":"new_block_network","id":"x","ts":1.5,"source":"hosted","region":"r","v":2,
                   "data":{"height":5,"hash":"h","diff":1.0,"prev_hash":"p","extra":true}}"#;
    let event = Event::from_json(text).expect("parses");
    assert_eq!(event.event_type(), "new_block_network");
    assert_eq!(event.ts, 1.5);
}
