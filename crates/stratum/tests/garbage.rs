//! Hostile and random input: always a typed error or a valid message, never a panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tbg_stratum::*;

const VALID_LINES: [&str; 6] = [
    r#"{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}"#,
    r#"{"id":2,"method":"mining.authorize","params":["bcrt1qaddr.w","x"]}"#,
    r#"{"params":["bcrt1qaddr.w","6b07109300000003","0000000000000000","6b0710cf","ae95368c"],"id":4,"method":"mining.submit"}"#,
    r#"{"id":3,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#,
    r#"{"id":5,"method":"mining.suggest_difficulty","params":[512]}"#,
    r#"{"id":6,"method":"mining.extranonce.subscribe","params":[]}"#,
];

/// Runs the whole miner-facing path; returns whether the line became a message.
fn full_path(line: &[u8]) -> bool {
    match parse_request(line) {
        Ok(req) => {
            let outcome = ClientMessage::from_request(&req);
            // Whatever came in, the answer line stays one valid JSON line.
            let answer = match &outcome {
                Ok(_) => response_ok(&req.id, json!(true)),
                Err(reason) => response_reject(&req.id, *reason),
            };
            assert!(answer.ends_with('\n') && answer.matches('\n').count() == 1);
            assert!(serde_json::from_str::<Value>(answer.trim_end()).is_ok());
            outcome.is_ok()
        }
        Err(error) => {
            assert!(error.code() == -32700 || error.code() == -32600);
            assert!(!error.to_string().is_empty());
            false
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..3000 {
        let len = rng.gen_range(0..512);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        full_path(&bytes);
    }
}

#[test]
fn mutated_valid_lines_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    let alphabet = b"{}[]\",:\\0123456789abcdefnulltrue-+.eE \x00\xff\xef\xbb\xbf";
    let mut accepted = 0;
    for round in 0..5000 {
        let base = VALID_LINES[round % VALID_LINES.len()];
        let mut line = base.as_bytes().to_vec();
        for _ in 0..rng.gen_range(1..4) {
            if line.is_empty() {
                break;
            }
            let at = rng.gen_range(0..line.len());
            match rng.gen_range(0..4) {
                0 => line[at] = alphabet[rng.gen_range(0..alphabet.len())],
                1 => line.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                2 => {
                    line.remove(at);
                }
                _ => line.truncate(at),
            }
        }
        if full_path(&line) {
            accepted += 1;
        }
    }
    // Sanity: the mutator is not so destructive that nothing valid is exercised.
    assert!(
        accepted > 100,
        "only {accepted} mutated lines were accepted"
    );
}

#[test]
fn random_json_params_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    let methods = [
        "mining.subscribe",
        "mining.authorize",
        "mining.submit",
        "mining.configure",
        "mining.suggest_difficulty",
    ];
    let atoms = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1e300),
        json!(""),
        json!("6b0710cf"),
        json!("zz"),
        json!("\u{0}\n"),
        json!({}),
        json!([]),
        json!(["version-rolling"]),
    ];
    for _ in 0..3000 {
        let params: Vec<Value> = (0..rng.gen_range(0..8))
            .map(|_| atoms[rng.gen_range(0..atoms.len())].clone())
            .collect();
        let line =
            json!({"id": 1, "method": methods[rng.gen_range(0..methods.len())], "params": params});
        full_path(line.to_string().as_bytes());
    }
}

#[test]
fn line_limits() {
    let worker = "w".repeat(1024 * 1024);
    let line = format!(r#"{{"id":1,"method":"mining.authorize","params":["addr.{worker}"]}}"#);
    assert!(matches!(
        parse_request(line.as_bytes()),
        Err(ParseError::TooLong {
            max: MAX_LINE_BYTES,
            ..
        })
    ));
    // With a larger limit the line parses, and the name is then too long to authorize.
    let req = parse_request_with_limit(line.as_bytes(), 2 * 1024 * 1024).expect("within limit");
    assert_eq!(
        ClientMessage::from_request(&req),
        Err(RejectReason::InvalidUsername)
    );
    // Exactly at the limit is fine, one byte over is not; the newline does not count.
    let pad = MAX_LINE_BYTES - r#"{"id":1,"method":"x","params":[""]}"#.len();
    let at_limit = format!(
        r#"{{"id":1,"method":"x","params":["{}"]}}"#,
        "p".repeat(pad)
    );
    assert_eq!(at_limit.len(), MAX_LINE_BYTES);
    assert!(parse_request(format!("{at_limit}\r\n").as_bytes()).is_ok());
    let over = format!(
        r#"{{"id":1,"method":"x","params":["{}"]}}"#,
        "p".repeat(pad + 1)
    );
    assert!(matches!(
        parse_request(over.as_bytes()),
        Err(ParseError::TooLong { .. })
    ));
}

#[test]
fn encoding_problems() {
    assert!(matches!(parse_request(b""), Err(ParseError::Empty)));
    assert!(matches!(parse_request(b"\r\n"), Err(ParseError::Empty)));
    assert!(matches!(
        parse_request(b"{\"id\":1,\0\"method\":\"x\"}"),
        Err(ParseError::NulByte { offset: 8 })
    ));
    assert!(matches!(
        parse_request(b"{\"id\":1,\"method\":\"\xff\xfe\"}"),
        Err(ParseError::NotUtf8 { offset: 18 })
    ));
    // UTF-16 with its BOM is not UTF-8.
    assert!(parse_request(b"\xff\xfe{\0\"\0").is_err());
    // A UTF-8 BOM is tolerated.
    let req = parse_request(b"\xEF\xBB\xBF{\"id\":1,\"method\":\"mining.subscribe\"}\n")
        .expect("BOM stripped");
    assert_eq!(req.method, "mining.subscribe");
    assert_eq!(req.params, Value::Null);
    // Emoji are valid UTF-8 and plain data.
    let req = parse_request(
        "{\"id\":\"⛏\",\"method\":\"mining.authorize\",\"params\":[\"a.🚀\"]}".as_bytes(),
    )
    .expect("emoji ok");
    assert_eq!(req.id, json!("⛏"));
}

#[test]
fn shape_problems() {
    let cases: [(&[u8], &str); 10] = [
        (b"[1,2,3]", "not_object"),
        (b"\"mining.subscribe\"", "not_object"),
        (b"42", "not_object"),
        (b"{\"id\":1}", "no_method"),
        (b"{\"id\":1,\"method\":null}", "no_method"),
        (b"{\"id\":1,\"method\":5}", "bad_method"),
        (b"{\"id\":1,\"method\":\"\"}", "bad_method"),
        (b"{\"id\":1,\"method\":\"x\"", "invalid_json"),
        (b"{\"id\":NaN,\"method\":\"x\"}", "invalid_json"),
        (b"{\"id\":1e400,\"method\":\"x\"}", "invalid_json"),
    ];
    for (line, label) in cases {
        let error = parse_request(line).expect_err("must be rejected");
        assert_eq!(error.label(), label, "{}", String::from_utf8_lossy(line));
    }
    let long_method = format!(
        r#"{{"id":9,"method":"{}"}}"#,
        "m".repeat(MAX_METHOD_BYTES + 1)
    );
    let error = parse_request(long_method.as_bytes()).expect_err("too long method");
    assert_eq!(
        error.request_id(),
        Some(&json!(9)),
        "id kept for the error reply"
    );
    assert_eq!(error.code(), -32600);
    assert_eq!(
        parse_request(b"{oops").expect_err("bad json").code(),
        -32700
    );
}

#[test]
fn deep_nesting_is_a_clean_error() {
    for depth in [MAX_JSON_DEPTH + 1, 129, 10_000] {
        let line = format!(
            r#"{{"id":1,"method":"x","params":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let limit = line.len() + 1;
        assert!(matches!(
            parse_request_with_limit(line.as_bytes(), limit),
            Err(ParseError::TooDeep {
                max: MAX_JSON_DEPTH
            })
        ));
    }
    // Unbalanced opening brackets only (no closing) are caught as well.
    assert!(matches!(
        parse_request("{".repeat(5000).as_bytes()),
        Err(ParseError::TooDeep { .. })
    ));
    // Nesting within the limit is fine.
    let ok_depth = MAX_JSON_DEPTH - 1;
    let line = format!(
        r#"{{"id":1,"method":"x","params":{}{}}}"#,
        "[".repeat(ok_depth),
        "]".repeat(ok_depth)
    );
    assert!(parse_request(line.as_bytes()).is_ok());
}

#[test]
fn extreme_ids_are_echoed_exactly() {
    for id in [
        json!(i64::MAX),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!("id\"\n"),
        json!(null),
    ] {
        let line = json!({"id": id, "method": "mining.subscribe", "params": []}).to_string();
        let req = parse_request(line.as_bytes()).expect("valid");
        assert_eq!(req.id, id);
        let answer: Value =
            serde_json::from_str(response_ok(&req.id, json!(true)).trim_end()).expect("json");
        assert_eq!(answer["id"], id);
    }
}
