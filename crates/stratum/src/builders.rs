//! Server -> miner lines. Each builder returns one JSON object followed by '\n',
//! serialized by serde_json so miner-supplied ids or texts cannot break out.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::reject::RejectReason;

/// Fields of one mining.notify, already in the wire form miners expect
/// (hex strings; prevhash in stratum's word-swapped order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyParams {
    pub job_id: String,
    pub prevhash: String,
    pub coinb1: String,
    pub coinb2: String,
    pub merkle_branch: Vec<String>,
    pub version: String,
    pub nbits: String,
    pub ntime: String,
    pub clean_jobs: bool,
}

/// What to answer to a mining.configure (see [`configure_result`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigureResponse {
    /// `Some(mask)`: version rolling granted with this mask; `None`: refused.
    /// Only used when `version_rolling_requested`.
    pub version_mask: Option<u32>,
    pub version_rolling_requested: bool,
    /// `Some(accepted)` when the miner asked for minimum-difficulty.
    pub minimum_difficulty: Option<bool>,
}

#[derive(Serialize)]
struct Response<'a, E: Serialize> {
    id: &'a Value,
    result: &'a Value,
    error: E,
}

#[derive(Serialize)]
struct RejectResponse<'a> {
    id: &'a Value,
    result: bool,
    error: (i32, &'a str, Option<()>),
    #[serde(rename = "reject-reason")]
    reject_reason: &'a str,
}

#[derive(Serialize)]
struct Notification<'a, P: Serialize> {
    id: Option<()>,
    method: &'a str,
    params: P,
}

/// Serializes one line. serde_json cannot fail on these types (string keys,
/// no custom serializers); the fallback keeps the function total anyway.
fn to_line<T: Serialize>(message: &T) -> String {
    match serde_json::to_string(message) {
        Ok(mut line) => {
            line.push('\n');
            line
        }
        Err(_) => {
            String::from("{\"id\":null,\"result\":null,\"error\":[20,\"internal error\",null]}\n")
        }
    }
}

fn notification<P: Serialize>(method: &str, params: P) -> String {
    to_line(&Notification {
        id: None,
        method,
        params,
    })
}

/// `{"id":ID,"result":RESULT,"error":null}`
pub fn response_ok(id: &Value, result: Value) -> String {
    to_line(&Response {
        id,
        result: &result,
        error: Option::<()>::None,
    })
}

/// `{"id":ID,"result":null,"error":[CODE,"MESSAGE",null]}` (stratum style).
pub fn response_error(id: &Value, code: i32, message: &str) -> String {
    to_line(&Response {
        id,
        result: &Value::Null,
        error: (code, message, Option::<()>::None),
    })
}

/// A refused request or share: `result` false, the stratum error triple, and
/// ckpool's `reject-reason` so both cgminer-style and ckpool-style miners read it.
pub fn response_reject(id: &Value, reason: RejectReason) -> String {
    to_line(&RejectResponse {
        id,
        result: false,
        error: (reason.code(), reason.message(), None),
        reject_reason: reason.message(),
    })
}

/// `mining.notify` with its 9 params, id null.
pub fn notify(params: &NotifyParams) -> String {
    notification(
        "mining.notify",
        (
            &params.job_id,
            &params.prevhash,
            &params.coinb1,
            &params.coinb2,
            &params.merkle_branch,
            &params.version,
            &params.nbits,
            &params.ntime,
            params.clean_jobs,
        ),
    )
}

/// `mining.set_difficulty`. The number is written in plain decimal, never in
/// exponent form (some miners cannot read `1e-7`); integral values carry no
/// fraction. Non-finite or non-positive values (a caller bug) are sent as 1.
pub fn set_difficulty(diff: f64) -> String {
    let diff = if diff.is_finite() && diff > 0.0 {
        diff
    } else {
        1.0
    };
    // Rust's Display for f64 is the shortest round-trip decimal without exponent,
    // and is always a valid JSON number for finite values.
    format!("{{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[{diff}]}}\n")
}

/// `mining.set_extranonce` (for miners that sent mining.extranonce.subscribe).
pub fn set_extranonce(extranonce1_hex: &str, extranonce2_size: usize) -> String {
    notification("mining.set_extranonce", (extranonce1_hex, extranonce2_size))
}

/// `client.reconnect`. Params are positional, so each is only sent when all
/// before it are: `[]`, `[host]`, `[host, port]` or `[host, port, wait]`.
pub fn client_reconnect(host: Option<&str>, port: Option<u16>, wait_secs: Option<u32>) -> String {
    let mut params: Vec<Value> = Vec::with_capacity(3);
    if let Some(host) = host {
        params.push(Value::from(host));
        if let Some(port) = port {
            params.push(Value::from(port));
            if let Some(wait) = wait_secs {
                params.push(Value::from(wait));
            }
        }
    }
    notification("client.reconnect", params)
}

/// `client.show_message`.
pub fn show_message(message: &str) -> String {
    notification("client.show_message", (message,))
}

/// Result of mining.subscribe in ckpool's shape:
/// `[[["mining.notify", SESSION_ID]], EXTRANONCE1, EXTRANONCE2_SIZE]`.
pub fn subscribe_result(session_id: &str, extranonce1_hex: &str, extranonce2_size: usize) -> Value {
    json!([
        [["mining.notify", session_id]],
        extranonce1_hex,
        extranonce2_size
    ])
}

/// Result of mining.configure (BIP310): `{"version-rolling": true,
/// "version-rolling.mask": "1fffe000"}`; refused or unasked extensions say
/// `false` or are omitted.
pub fn configure_result(response: &ConfigureResponse) -> Value {
    let mut result = Map::new();
    if response.version_rolling_requested {
        match response.version_mask {
            Some(mask) => {
                result.insert("version-rolling".into(), Value::Bool(true));
                result.insert(
                    "version-rolling.mask".into(),
                    Value::String(format!("{mask:08x}")),
                );
            }
            None => {
                result.insert("version-rolling".into(), Value::Bool(false));
            }
        }
    }
    if let Some(accepted) = response.minimum_difficulty {
        result.insert("minimum-difficulty".into(), Value::Bool(accepted));
    }
    Value::Object(result)
}
