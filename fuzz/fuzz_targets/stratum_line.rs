//! One miner line, as the connection layer hands it in: parse it, type it,
//! decode the submit fields, build the answer.
//!
//! Asserts, besides "never panics": a parsed request's method is 1..=128
//! bytes and its line passed the size, NUL and UTF-8 checks; every error has
//! a JSON-RPC code and a label; a typed message keeps the crate's bounds
//! (usernames, workers, user agents, passwords, job ids, extensions,
//! difficulties); a typed submit's fields all decode, and the decoders agree
//! with a reference (`u32::from_str_radix`, `hex`); every answer built from
//! the miner's id is one JSON line that carries that id back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tbg_stratum::{
    parse_request, parse_request_with_limit, response_error, response_ok, response_reject,
    set_difficulty, split_username, ClientMessage, ConfigureRequest, ParseError, Submit,
    MAX_ADDRESS_CHARS, MAX_EXTENSIONS, MAX_EXTRANONCE2_BYTES, MAX_JOB_ID_CHARS, MAX_LINE_BYTES,
    MAX_METHOD_BYTES, MAX_PASSWORD_CHARS, MAX_USERNAME_CHARS, MAX_USER_AGENT_CHARS,
    MAX_WORKER_NAME_CHARS,
};

const POOL_MASK: u32 = 0x1fff_e000;

fuzz_target!(|data: &[u8]| {
    check_line(data);
    check_decoders(data);
});

/// The line as the parser sees it: BOM stripped, then ASCII-trimmed.
fn trimmed(line: &[u8]) -> &[u8] {
    line.strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(line)
        .trim_ascii()
}

fn check_line(data: &[u8]) {
    let body = trimmed(data);
    match parse_request(data) {
        Ok(request) => {
            assert!(body.len() <= MAX_LINE_BYTES);
            assert!(!body.contains(&0), "NUL accepted");
            assert!(std::str::from_utf8(body).is_ok(), "bad UTF-8 accepted");
            assert!(!request.method.is_empty() && request.method.len() <= MAX_METHOD_BYTES);
            // A limit below the line's length refuses it, whatever it holds.
            if !body.is_empty() {
                let shorter = parse_request_with_limit(data, body.len() - 1);
                assert!(matches!(shorter, Err(ParseError::TooLong { .. })));
            }
            echo(&request.id, &response_ok(&request.id, Value::Bool(true)));
            check_message(&request);
        }
        Err(error) => {
            assert!(matches!(error.code(), -32600 | -32700));
            assert!(!error.label().is_empty());
            let message = error.to_string();
            assert!(!message.is_empty());
            let id = error.request_id().cloned().unwrap_or(Value::Null);
            echo(&id, &response_error(&id, error.code(), &message));
        }
    }
}

/// `line` is one JSON object, terminated by its only newline, whose `id` is `id`.
fn echo(id: &Value, line: &str) {
    let body = line.strip_suffix('\n').expect("answer ends in a newline");
    assert!(
        !body.contains('\n') && !body.contains('\r'),
        "answer spans lines"
    );
    let parsed: Value = serde_json::from_str(body).expect("answer is JSON");
    assert_eq!(parsed.get("id"), Some(id), "id not echoed unchanged");
}

fn printable_within(text: &str, max_chars: usize) -> bool {
    !text.chars().any(char::is_control) && text.chars().count() <= max_chars
}

fn check_message(request: &tbg_stratum::Request) {
    let message = match ClientMessage::from_request(request) {
        Ok(message) => message,
        Err(reason) => {
            assert!(!reason.message().is_empty() && !reason.label().is_empty());
            let line = response_reject(&request.id, reason);
            echo(&request.id, &line);
            let parsed: Value = serde_json::from_str(line.trim_end()).expect("reject is JSON");
            assert_eq!(parsed["reject-reason"], reason.message());
            return;
        }
    };
    if !matches!(message, ClientMessage::Unknown(_)) {
        assert_eq!(message.method(), request.method);
    }
    match &message {
        ClientMessage::Subscribe {
            user_agent,
            session_id,
        } => {
            if let Some(agent) = user_agent {
                assert!(!agent.is_empty() && printable_within(agent, MAX_USER_AGENT_CHARS));
            }
            if let Some(id) = session_id {
                assert!(
                    id.len() <= 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                );
            }
        }
        ClientMessage::Authorize { username, password } => {
            assert!(printable_within(username, MAX_USERNAME_CHARS));
            let (address, worker) = split_username(username);
            assert!(!address.is_empty() && address.chars().count() <= MAX_ADDRESS_CHARS);
            if let Some(worker) = worker {
                assert!(!worker.is_empty() && worker.chars().count() <= MAX_WORKER_NAME_CHARS);
            }
            if let Some(password) = password {
                assert!(printable_within(password, MAX_PASSWORD_CHARS));
            }
        }
        ClientMessage::Submit(submit) => check_submit(submit),
        ClientMessage::Configure { extensions, params } => {
            assert!(extensions.len() <= MAX_EXTENSIONS);
            assert!(extensions.iter().all(|name| printable_within(name, 64)));
            if let Ok(configure) = ConfigureRequest::from_parts(extensions, params) {
                if let Some(rolling) = configure.version_rolling {
                    assert!(rolling.min_bit_count <= 32);
                    assert_eq!(rolling.negotiate(POOL_MASK) & !POOL_MASK, 0);
                }
                if let Some(difficulty) = configure.minimum_difficulty {
                    assert!(difficulty.is_finite() && difficulty > 0.0);
                }
            }
        }
        ClientMessage::SuggestDifficulty(difficulty) => {
            assert!(difficulty.is_finite() && *difficulty > 0.0);
            // The answer writes it in plain decimal; it must read back as sent.
            let line = set_difficulty(*difficulty);
            let parsed: Value = serde_json::from_str(line.trim_end()).expect("set_difficulty");
            assert_eq!(parsed["params"][0].as_f64(), Some(*difficulty));
        }
        ClientMessage::ExtranonceSubscribe => {}
        ClientMessage::Unknown(method) => assert!(printable_within(method, MAX_METHOD_BYTES)),
    }
}

/// A typed submit passed the syntax checks: every field decodes.
fn check_submit(submit: &Submit) {
    assert!(!submit.worker.is_empty() && submit.worker.chars().count() <= MAX_USERNAME_CHARS);
    assert!(!submit.job_id.is_empty() && submit.job_id.len() <= MAX_JOB_ID_CHARS);
    assert!(submit.job_id.bytes().all(|b| b.is_ascii_graphic()));
    assert_eq!(submit.ntime_u32().ok(), reference_u32(&submit.ntime));
    assert!(submit.ntime_u32().is_ok() && submit.nonce_u32().is_ok());
    assert!(submit.version_bits_u32().is_ok());
    let extranonce2 = submit
        .extranonce2_bytes()
        .expect("checked extranonce2 decodes");
    assert!(!extranonce2.is_empty() && extranonce2.len() <= MAX_EXTRANONCE2_BYTES);
    assert_eq!(
        hex::encode(&extranonce2),
        submit.extranonce2.to_ascii_lowercase()
    );
}

/// The decoders on arbitrary text, against reference implementations: the
/// submit fields are split from the input at '|'.
fn check_decoders(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('|').map(str::to_owned);
    let mut field = || fields.next().unwrap_or_default();
    let submit = Submit {
        worker: String::new(),
        job_id: String::new(),
        extranonce2: field(),
        ntime: field(),
        nonce: field(),
        version_bits: Some(field()),
    };
    assert_eq!(submit.ntime_u32().ok(), reference_u32(&submit.ntime));
    assert_eq!(submit.nonce_u32().ok(), reference_u32(&submit.nonce));
    let bits = submit.version_bits.as_deref().unwrap_or_default();
    assert_eq!(
        submit.version_bits_u32().ok(),
        reference_u32(bits).map(Some)
    );
    assert_eq!(
        submit.extranonce2_bytes().ok(),
        hex::decode(&submit.extranonce2).ok()
    );
}

/// 1..=8 hex digits, big-endian; nothing else (no sign, no prefix).
fn reference_u32(text: &str) -> Option<u32> {
    let plain = (1..=8).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
    plain.then(|| u32::from_str_radix(text, 16).ok()).flatten()
}
