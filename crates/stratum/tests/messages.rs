//! Typed messages, every reject path, and the server line builders.

use serde_json::{json, Value};
use tbg_stratum::*;

fn request(method: &str, params: Value) -> Request {
    let line = serde_json::to_vec(&json!({"id": 7, "method": method, "params": params}))
        .expect("serializable");
    parse_request(&line).expect("valid request line")
}

fn message(method: &str, params: Value) -> Result<ClientMessage, RejectReason> {
    ClientMessage::from_request(&request(method, params))
}

fn line_json(line: &str) -> Value {
    assert!(line.ends_with('\n'));
    assert_eq!(line.matches('\n').count(), 1, "one line only: {line:?}");
    serde_json::from_str(line.trim_end()).expect("JSON line")
}

const ADDR: &str = "bcrt1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es";

fn submit_params() -> Value {
    json!([
        format!("{ADDR}.rig1"),
        "6b07109300000003",
        "0000000000000000",
        "6b0710cf",
        "ae95368c"
    ])
}

#[test]
fn submit_with_version_bits() {
    let mut params = submit_params();
    params
        .as_array_mut()
        .expect("array")
        .push(json!("1fffe000"));
    let Ok(ClientMessage::Submit(submit)) = message("mining.submit", params) else {
        panic!("not a submit")
    };
    assert_eq!(submit.version_bits.as_deref(), Some("1fffe000"));
    assert_eq!(submit.version_bits_u32(), Ok(Some(0x1fffe000)));
    // A null 6th parameter means no rolling.
    let mut params = submit_params();
    params.as_array_mut().expect("array").push(Value::Null);
    let Ok(ClientMessage::Submit(submit)) = message("mining.submit", params) else {
        panic!("not a submit")
    };
    assert_eq!(submit.version_bits, None);
}

#[test]
fn every_submit_reject_path() {
    let with = |index: usize, value: Value| {
        let mut params = submit_params();
        params[index] = value;
        params
    };
    let cases: Vec<(Value, RejectReason)> = vec![
        (json!({"worker": "x"}), RejectReason::ParamsNotArray),
        (json!("string"), RejectReason::ParamsNotArray),
        (Value::Null, RejectReason::ParamsNotArray),
        (json!(["a", "b", "c", "d"]), RejectReason::InvalidArraySize),
        (
            json!(["a", "b", "c", "d", "e", "f", "g"]),
            RejectReason::InvalidArraySize,
        ),
        (with(0, json!("")), RejectReason::NoUsername),
        (with(0, json!(5)), RejectReason::NoUsername),
        (
            with(0, json!("a".repeat(MAX_USERNAME_CHARS + 1))),
            RejectReason::WorkerMismatch,
        ),
        (with(1, json!("")), RejectReason::NoJobId),
        (with(1, Value::Null), RejectReason::NoJobId),
        (
            with(1, json!("x".repeat(MAX_JOB_ID_CHARS + 1))),
            RejectReason::InvalidJobId,
        ),
        (with(1, json!("job id")), RejectReason::InvalidJobId),
        (with(2, json!("")), RejectReason::NoNonce2),
        (with(2, json!(0)), RejectReason::NoNonce2),
        (
            with(2, json!("zz00000000000000")),
            RejectReason::InvalidNonce2Hex,
        ),
        (with(2, json!("000")), RejectReason::InvalidNonce2Hex),
        (
            with(2, json!("00".repeat(MAX_EXTRANONCE2_BYTES + 1))),
            RejectReason::InvalidNonce2Length,
        ),
        (with(3, json!("")), RejectReason::NoNtime),
        (with(3, json!(1700000000)), RejectReason::NoNtime),
        (with(3, json!("6b0710c")), RejectReason::InvalidNtimeHex),
        (with(3, json!("6b0710cg")), RejectReason::InvalidNtimeHex),
        (with(4, json!("")), RejectReason::NoNonce),
        (with(4, json!(true)), RejectReason::NoNonce),
        (with(4, json!("ae95368c00")), RejectReason::InvalidNonceHex),
        (with(4, json!("-1")), RejectReason::InvalidNonceHex),
    ];
    for (params, expected) in cases {
        assert_eq!(
            message("mining.submit", params.clone()),
            Err(expected),
            "params {params}"
        );
    }
    let mut bad_bits = submit_params();
    bad_bits.as_array_mut().expect("array").push(json!("xyz"));
    assert_eq!(
        message("mining.submit", bad_bits),
        Err(RejectReason::InvalidVersionMask)
    );
}

#[test]
fn authorize_paths() {
    assert_eq!(
        message("mining.authorize", json!([format!("{ADDR}.rig1"), "x"])),
        Ok(ClientMessage::Authorize {
            username: format!("{ADDR}.rig1"),
            password: Some("x".into())
        })
    );
    assert_eq!(
        message("mining.authorize", json!([ADDR])),
        Ok(ClientMessage::Authorize {
            username: ADDR.into(),
            password: None
        })
    );
    let cases: Vec<(Value, RejectReason)> = vec![
        (json!("user"), RejectReason::ParamsNotArray),
        (json!([]), RejectReason::NoUsername),
        (json!([""]), RejectReason::NoUsername),
        (json!([42]), RejectReason::NoUsername),
        (
            json!([format!("{ADDR}.rig\n2026-01-01 INFO forged")]),
            RejectReason::InvalidUsername,
        ),
        // Bidi override: "rig\u{202E}1gir" displays as another name.
        (
            json!([format!("{ADDR}.rig\u{202E}1gir")]),
            RejectReason::InvalidUsername,
        ),
        (
            json!([format!("{ADDR}.rig\u{2066}x\u{2069}")]),
            RejectReason::InvalidUsername,
        ),
        // U+2028: a line break to JavaScript and some log viewers.
        (
            json!([format!("{ADDR}.rig\u{2028}2026-01-01 INFO forged")]),
            RejectReason::InvalidUsername,
        ),
        // Invisible: "rig" and "r\u{200B}ig" must not be two look-alikes.
        (
            json!([format!("{ADDR}.r\u{200B}ig")]),
            RejectReason::InvalidUsername,
        ),
        (
            json!([format!("{ADDR}.{}", "w".repeat(MAX_WORKER_NAME_CHARS + 1))]),
            RejectReason::InvalidUsername,
        ),
        (
            json!(["a".repeat(MAX_ADDRESS_CHARS + 1)]),
            RejectReason::InvalidAddress,
        ),
        (json!([".worker"]), RejectReason::InvalidAddress),
    ];
    for (params, expected) in cases {
        assert_eq!(
            message("mining.authorize", params.clone()),
            Err(expected),
            "{params}"
        );
    }
    // Longest accepted worker name.
    let longest = format!("{ADDR}.{}", "w".repeat(MAX_WORKER_NAME_CHARS));
    assert!(message("mining.authorize", json!([longest])).is_ok());
}

#[test]
fn hostile_but_printable_worker_names_are_plain_data() {
    for worker in [
        "'; DROP TABLE shares; --",
        "%s%s%s%n",
        "⛏️🚀矿工",
        "\",\"event\":\"block_found",
    ] {
        let username = format!("{ADDR}.{worker}");
        assert_eq!(
            message("mining.authorize", json!([username])),
            Ok(ClientMessage::Authorize {
                username: username.clone(),
                password: None
            })
        );
        // Echoing it back can only ever produce the same string.
        let line = show_message(&username);
        assert_eq!(line_json(&line)["params"][0], json!(username));
    }
}

#[test]
fn subscribe_paths() {
    assert_eq!(
        message("mining.subscribe", Value::Null),
        Ok(ClientMessage::Subscribe {
            user_agent: None,
            session_id: None
        })
    );
    assert_eq!(
        message("mining.subscribe", json!(["bmminer/2.0", "6B071094"])),
        Ok(ClientMessage::Subscribe {
            user_agent: Some("bmminer/2.0".into()),
            session_id: Some("6b071094".into())
        })
    );
    // Control characters are dropped and the agent is cut to 256 chars;
    // a non-hex session id is ignored (no resume), not an error.
    let agent = format!("evil\u{1b}[31m\nagent{}", "x".repeat(1000));
    let Ok(ClientMessage::Subscribe {
        user_agent: Some(sanitized),
        session_id: None,
    }) = message("mining.subscribe", json!([agent, "not hex"]))
    else {
        panic!("subscribe expected")
    };
    assert!(sanitized.starts_with("evil[31magent"));
    assert_eq!(sanitized.chars().count(), MAX_USER_AGENT_CHARS);
    assert!(!sanitized.chars().any(char::is_control));
    let Ok(ClientMessage::Subscribe {
        user_agent: Some(agent),
        ..
    }) = message(
        "mining.subscribe",
        json!(["cgminer\u{202E}/4.12\u{2028}\u{2029}\u{FEFF} ⛏️ 👨‍👩‍👧"]),
    )
    else {
        panic!("subscribe expected")
    };
    assert_eq!(
        agent, "cgminer/4.12 ⛏️ 👨‍👩‍👧",
        "emoji joiners and variation selectors stay"
    );
    assert_eq!(
        message("mining.subscribe", json!({"agent": 1})),
        Err(RejectReason::ParamsNotArray)
    );
}

#[test]
fn configure_bip310() {
    let msg = message(
        "mining.configure",
        json!([
            ["version-rolling", "minimum-difficulty", "subscribe-extranonce"],
            {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2,
             "minimum-difficulty.value": 2048}
        ]),
    )
    .expect("valid");
    let ClientMessage::Configure { extensions, params } = msg else {
        panic!("configure expected")
    };
    let request = ConfigureRequest::from_parts(&extensions, &params).expect("valid");
    let rolling = request.version_rolling.expect("version rolling asked");
    assert_eq!(
        rolling,
        VersionRollingRequest {
            mask: 0xffffffff,
            min_bit_count: 2
        }
    );
    assert_eq!(rolling.negotiate(0x1fffe000), 0x1fffe000);
    assert_eq!(request.minimum_difficulty, Some(2048.0));
    assert_eq!(
        request.unknown_extensions,
        vec!["subscribe-extranonce".to_owned()]
    );

    let bad_mask = ConfigureRequest::from_parts(
        &["version-rolling".into()],
        &json!({"version-rolling.mask": "nothex"})
            .as_object()
            .cloned()
            .expect("map"),
    );
    assert_eq!(bad_mask, Err(RejectReason::InvalidVersionMask));
    let bad_bits = ConfigureRequest::from_parts(
        &["version-rolling".into()],
        &json!({"version-rolling.min-bit-count": -1})
            .as_object()
            .cloned()
            .expect("map"),
    );
    assert_eq!(bad_bits, Err(RejectReason::InvalidVersionMask));

    for (params, expected) in [
        (json!("x"), RejectReason::ParamsNotArray),
        (json!([]), RejectReason::InvalidArraySize),
        (json!(["version-rolling"]), RejectReason::ParamsNotArray),
        (json!([[1, 2]]), RejectReason::InvalidArraySize),
        (
            json!([["version-rolling"], "mask"]),
            RejectReason::ParamsNotArray,
        ),
    ] {
        assert_eq!(
            message("mining.configure", params.clone()),
            Err(expected),
            "{params}"
        );
    }

    let granted = configure_result(&ConfigureResponse {
        version_mask: Some(0x1fffe000),
        version_rolling_requested: true,
        minimum_difficulty: Some(false),
    });
    assert_eq!(
        granted,
        json!({"version-rolling": true, "version-rolling.mask": "1fffe000", "minimum-difficulty": false})
    );
    let refused = configure_result(&ConfigureResponse {
        version_mask: None,
        version_rolling_requested: true,
        minimum_difficulty: None,
    });
    assert_eq!(refused, json!({"version-rolling": false}));
}

#[test]
fn suggest_difficulty_extremes() {
    assert_eq!(
        message("mining.suggest_difficulty", json!([0.0001])),
        Ok(ClientMessage::SuggestDifficulty(0.0001))
    );
    assert_eq!(
        message("mining.suggest_difficulty", json!(["1024"])),
        Ok(ClientMessage::SuggestDifficulty(1024.0))
    );
    // INT64_MAX is finite: accepted here, the pool clamps to its maximum.
    assert_eq!(
        message("mining.suggest_difficulty", json!([i64::MAX])),
        Ok(ClientMessage::SuggestDifficulty(i64::MAX as f64))
    );
    for bad in [
        json!([-1]),
        json!([0]),
        json!(["NaN"]),
        json!(["inf"]),
        json!([null]),
        json!([[1]]),
    ] {
        assert_eq!(
            message("mining.suggest_difficulty", bad.clone()),
            Err(RejectReason::InvalidDifficulty),
            "{bad}"
        );
    }
    assert_eq!(
        message("mining.suggest_difficulty", json!([])),
        Err(RejectReason::InvalidArraySize)
    );
    assert_eq!(
        message("mining.suggest_difficulty", json!(5)),
        Err(RejectReason::ParamsNotArray)
    );
}

#[test]
fn other_methods() {
    assert_eq!(
        message("mining.extranonce.subscribe", json!([])),
        Ok(ClientMessage::ExtranonceSubscribe)
    );
    assert_eq!(
        message("mining.get_transactions", json!([])),
        Ok(ClientMessage::Unknown("mining.get_transactions".into()))
    );
    assert_eq!(
        message("evil\u{7}\nmethod", json!([])),
        Ok(ClientMessage::Unknown("evilmethod".into()))
    );
}

#[test]
fn reject_reasons_have_ckpool_wording_codes_and_labels() {
    let wording = [
        (
            RejectReason::InvalidNonce2Length,
            "Invalid nonce2 length",
            20,
        ),
        (RejectReason::WorkerMismatch, "Worker mismatch", 24),
        (RejectReason::NoNonce, "No nonce", 20),
        (RejectReason::NoNtime, "No ntime", 20),
        (RejectReason::NoNonce2, "No nonce2", 20),
        (RejectReason::NoJobId, "No job_id", 20),
        (RejectReason::NoUsername, "No username", 20),
        (RejectReason::InvalidArraySize, "Invalid array size", 20),
        (RejectReason::ParamsNotArray, "Params not array", 20),
        (RejectReason::InvalidJobId, "Invalid JobID", 21),
        (RejectReason::Stale, "Stale", 21),
        (RejectReason::NtimeOutOfRange, "Ntime out of range", 20),
        (RejectReason::Duplicate, "Duplicate", 22),
        (RejectReason::AboveTarget, "Above target", 23),
        (RejectReason::InvalidVersionMask, "Invalid version mask", 20),
        (RejectReason::Unauthorized, "Unauthorized worker", 24),
        (RejectReason::NotSubscribed, "Not subscribed", 25),
        (RejectReason::UnknownMethod, "Unknown method", -32601),
    ];
    for (reason, text, code) in wording {
        assert_eq!(reason.message(), text);
        assert_eq!(reason.to_string(), text);
        assert_eq!(reason.code(), code, "{text}");
    }
    let mut labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.label()).collect();
    assert!(labels.iter().all(|l| l
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), RejectReason::ALL.len(), "labels are distinct");
}

#[test]
fn response_lines() {
    let ok = line_json(&response_ok(&json!(3), json!(true)));
    assert_eq!(ok, json!({"id": 3, "result": true, "error": null}));

    let err = line_json(&response_error(&json!("a\"b\n"), 21, "Stale"));
    assert_eq!(
        err,
        json!({"id": "a\"b\n", "result": null, "error": [21, "Stale", null]})
    );

    let reject = line_json(&response_reject(&json!(i64::MAX), RejectReason::Duplicate));
    assert_eq!(
        reject,
        json!({"id": i64::MAX, "result": false, "error": [22, "Duplicate", null],
               "reject-reason": "Duplicate"})
    );
    assert!(
        response_reject(&json!(i64::MAX), RejectReason::Duplicate).contains("9223372036854775807")
    );
}

#[test]
fn push_lines() {
    assert_eq!(
        line_json(&set_extranonce("9410076b", 8)),
        json!({"id": null, "method": "mining.set_extranonce", "params": ["9410076b", 8]})
    );
    assert_eq!(
        line_json(&client_reconnect(None, Some(3333), Some(5)))["params"],
        json!([])
    );
    assert_eq!(
        line_json(&client_reconnect(Some("pool.example"), Some(3333), Some(5))),
        json!({"id": null, "method": "client.reconnect", "params": ["pool.example", 3333, 5]})
    );
    assert_eq!(
        line_json(&client_reconnect(Some("pool.example"), None, Some(5)))["params"],
        json!(["pool.example"])
    );
    let text = "maintenance\n{\"id\":1,\"result\":true}";
    assert_eq!(
        line_json(&show_message(text)),
        json!({"id": null, "method": "client.show_message", "params": [text]})
    );
}

#[test]
fn set_difficulty_never_uses_exponent_form() {
    let cases = [
        (1.0, "[1]"),
        (1024.0, "[1024]"),
        (0.0001, "[0.0001]"),
        (0.00000001, "[0.00000001]"),
        (1.5, "[1.5]"),
        (1e20, "[100000000000000000000]"),
        (f64::NAN, "[1]"),
        (f64::INFINITY, "[1]"),
        (-5.0, "[1]"),
        (0.0, "[1]"),
    ];
    for (diff, params) in cases {
        let line = set_difficulty(diff);
        assert_eq!(
            line,
            format!("{{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":{params}}}\n")
        );
        let parsed = line_json(&line);
        assert!(parsed["params"][0].as_f64().is_some_and(|d| d > 0.0));
    }
}
