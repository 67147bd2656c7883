//! The recorded ckpool <-> cpuminer session parses and rebuilds byte-compatibly.

use serde_json::{json, Value};
use tbg_stratum::*;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/stratum-ckpool-cpuminer-regtest.json"
));

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

fn line_of(value: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("serializable");
    line.push(b'\n');
    line
}

fn parse_line_json(line: &str) -> Value {
    assert!(
        line.ends_with('\n'),
        "line must end with a newline: {line:?}"
    );
    assert_eq!(line.matches('\n').count(), 1, "exactly one line: {line:?}");
    serde_json::from_str(line.trim_end()).expect("builder output is JSON")
}

#[test]
fn subscribe_request_parses_to_subscribe_with_user_agent() {
    let fixture = fixture();
    let req = parse_request(&line_of(&fixture["subscribe_request"])).expect("parses");
    assert_eq!(req.id, json!(1));
    assert_eq!(
        ClientMessage::from_request(&req),
        Ok(ClientMessage::Subscribe {
            user_agent: Some("cpuminer/2.5.1".into()),
            session_id: None
        })
    );
}

#[test]
fn subscribe_result_has_ckpool_shape() {
    let fixture = fixture();
    let recorded = &fixture["subscribe_result"];
    let result = subscribe_result("6b071094", "9410076b", 8);
    assert_eq!(&result, &recorded["result"]);
    let line = response_ok(&json!(1), result);
    assert_eq!(&parse_line_json(&line), recorded);
}

#[test]
fn set_difficulty_matches_recording() {
    let fixture = fixture();
    let line = set_difficulty(1.0);
    let parsed = parse_line_json(&line);
    assert_eq!(parsed["method"], "mining.set_difficulty");
    assert_eq!(parsed["id"], Value::Null);
    assert_eq!(parsed["params"], json!([fixture["set_difficulty"]]));
}

#[test]
fn notify_rebuilds_recorded_notifies() {
    let fixture = fixture();
    for case in fixture["cases"].as_array().expect("cases") {
        let recorded = &case["notify"];
        let p = recorded["params"].as_array().expect("params");
        let s = |i: usize| p[i].as_str().expect("string").to_owned();
        let params = NotifyParams {
            job_id: s(0),
            prevhash: s(1),
            coinb1: s(2),
            coinb2: s(3),
            merkle_branch: p[4]
                .as_array()
                .expect("branch")
                .iter()
                .map(|h| h.as_str().expect("hex").to_owned())
                .collect(),
            version: s(5),
            nbits: s(6),
            ntime: s(7),
            clean_jobs: p[8].as_bool().expect("bool"),
        };
        assert_eq!(&parse_line_json(&notify(&params)), recorded);
    }
}

#[test]
fn recorded_submits_parse_to_submit() {
    let fixture = fixture();
    let expected = [
        (
            "6b07109300000003",
            "6b0710cf",
            0x6b0710cf_u32,
            0xae95368c_u32,
        ),
        ("6b07109300000006", "6b071115", 0x6b071115, 0x6a401e02),
    ];
    for (case, (job_id, ntime, ntime_value, nonce_value)) in fixture["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .zip(expected)
    {
        let req = parse_request(&line_of(&case["submit"])).expect("parses");
        assert_eq!(req.id, json!(4));
        let ClientMessage::Submit(submit) = ClientMessage::from_request(&req).expect("valid")
        else {
            panic!("not a submit")
        };
        assert_eq!(
            submit.worker,
            format!("{}.vec", fixture["payout_address"].as_str().expect("addr"))
        );
        assert_eq!(submit.job_id, job_id);
        assert_eq!(submit.extranonce2, "0000000000000000");
        assert_eq!(submit.extranonce2_bytes(), Ok(vec![0u8; 8]));
        assert_eq!(submit.ntime, ntime);
        assert_eq!(submit.ntime_u32(), Ok(ntime_value));
        assert_eq!(submit.nonce_u32(), Ok(nonce_value));
        assert_eq!(submit.version_bits, None);
        let (address, worker) = split_username(&submit.worker);
        assert_eq!(address, fixture["payout_address"]);
        assert_eq!(worker, Some("vec"));
    }
}

#[test]
fn nonce_reads_as_header_little_endian_bytes() {
    // The accepted block header ends with the nonce as it sits in the block:
    // "8c3695ae" for the submitted "ae95368c".
    let fixture = fixture();
    let case = &fixture["cases"][0];
    let header_hex = &case["accepted_block_hex"].as_str().expect("hex")[..160];
    let req = parse_request(&line_of(&case["submit"])).expect("parses");
    let Ok(ClientMessage::Submit(submit)) = ClientMessage::from_request(&req) else {
        panic!("not a submit")
    };
    let nonce = submit.nonce_u32().expect("hex");
    let le: String = nonce
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(&header_hex[152..160], le);
}
