//! [`Request`] -> typed [`ClientMessage`], with ckpool's checks and bounds on
//! every miner-supplied string and number.

use serde_json::{Map, Value};

use crate::hexutil;
use crate::parse::Request;
use crate::reject::RejectReason;

/// Longest worker name (the part after the first '.' of a username).
pub const MAX_WORKER_NAME_CHARS: usize = 128;
/// Longest payout address part of a username.
pub const MAX_ADDRESS_CHARS: usize = 90;
/// Longest whole username: `address.worker`.
pub const MAX_USERNAME_CHARS: usize = MAX_ADDRESS_CHARS + 1 + MAX_WORKER_NAME_CHARS;
/// User agents are cut to this many printable characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;
/// Passwords (often "x" or "d=1024") are cut to this many printable characters.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Longest job id accepted in a submit (ours are 16 hex chars).
pub const MAX_JOB_ID_CHARS: usize = 64;
/// Longest extranonce2 a submit may carry; the session's own size is checked by the pool.
pub const MAX_EXTRANONCE2_BYTES: usize = 16;
/// Most extensions accepted in one mining.configure.
pub const MAX_EXTENSIONS: usize = 16;
const MAX_EXTENSION_NAME_CHARS: usize = 64;
/// A resumable session id is at most this many hex characters (ours are 16:
/// a random 64-bit token).
const MAX_SESSION_ID_CHARS: usize = 16;

/// Typed client messages (from a [`Request`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `session_id` is only kept when it is a short hex string (a resume token).
    Subscribe {
        user_agent: Option<String>,
        session_id: Option<String>,
    },
    Authorize {
        username: String,
        password: Option<String>,
    },
    Submit(Submit),
    /// BIP310; see [`ConfigureRequest::from_parts`] for the typed view.
    Configure {
        extensions: Vec<String>,
        params: Map<String, Value>,
    },
    /// Finite and > 0; the pool clamps it to its own bounds.
    SuggestDifficulty(f64),
    ExtranonceSubscribe,
    /// Method name (at most [`crate::MAX_METHOD_BYTES`], control characters removed).
    Unknown(String),
}

/// mining.submit, validated for presence and hex syntax. Values are kept as sent;
/// the numeric helpers read them big-endian as the miner wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: String,
    pub ntime: String,
    pub nonce: String,
    pub version_bits: Option<String>,
}

impl Submit {
    /// ntime as the miner's hex (e.g. "6b0710cf" -> 0x6b0710cf).
    pub fn ntime_u32(&self) -> Result<u32, RejectReason> {
        hexutil::parse_u32(&self.ntime).ok_or(RejectReason::InvalidNtimeHex)
    }

    /// nonce as the miner's hex; the block header stores it little-endian.
    pub fn nonce_u32(&self) -> Result<u32, RejectReason> {
        hexutil::parse_u32(&self.nonce).ok_or(RejectReason::InvalidNonceHex)
    }

    /// Rolled version bits (BIP310), if the miner sent a 6th parameter.
    pub fn version_bits_u32(&self) -> Result<Option<u32>, RejectReason> {
        match &self.version_bits {
            None => Ok(None),
            Some(bits) => hexutil::parse_u32(bits)
                .map(Some)
                .ok_or(RejectReason::InvalidVersionMask),
        }
    }

    /// extranonce2 bytes in the order they go into the coinbase.
    pub fn extranonce2_bytes(&self) -> Result<Vec<u8>, RejectReason> {
        hexutil::decode(&self.extranonce2).ok_or(RejectReason::InvalidNonce2Hex)
    }
}

/// Typed view of a mining.configure request (BIP310).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigureRequest {
    pub version_rolling: Option<VersionRollingRequest>,
    /// `minimum-difficulty.value` when finite and > 0.
    pub minimum_difficulty: Option<f64>,
    /// Extensions we do not know, answered by omission.
    pub unknown_extensions: Vec<String>,
}

/// The miner's version-rolling wishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRollingRequest {
    /// Bits the miner wants to roll; BIP310 says all bits when absent.
    pub mask: u32,
    pub min_bit_count: u32,
}

impl VersionRollingRequest {
    /// The mask to grant: the intersection with the pool's mask.
    pub fn negotiate(&self, pool_mask: u32) -> u32 {
        self.mask & pool_mask
    }
}

impl ConfigureRequest {
    /// Reads the BIP310 parameters of the extensions the miner listed.
    pub fn from_parts(
        extensions: &[String],
        params: &Map<String, Value>,
    ) -> Result<ConfigureRequest, RejectReason> {
        let mut request = ConfigureRequest::default();
        for extension in extensions {
            match extension.as_str() {
                "version-rolling" => {
                    let mask = match params.get("version-rolling.mask") {
                        None | Some(Value::Null) => u32::MAX,
                        Some(Value::String(hex)) => {
                            hexutil::parse_u32(hex).ok_or(RejectReason::InvalidVersionMask)?
                        }
                        Some(_) => return Err(RejectReason::InvalidVersionMask),
                    };
                    let min_bit_count = match params.get("version-rolling.min-bit-count") {
                        None | Some(Value::Null) => 0,
                        Some(value) => value
                            .as_u64()
                            .filter(|&bits| bits <= 32)
                            .and_then(|bits| u32::try_from(bits).ok())
                            .ok_or(RejectReason::InvalidVersionMask)?,
                    };
                    request.version_rolling = Some(VersionRollingRequest {
                        mask,
                        min_bit_count,
                    });
                }
                "minimum-difficulty" => {
                    request.minimum_difficulty = params
                        .get("minimum-difficulty.value")
                        .and_then(positive_finite);
                }
                other => request.unknown_extensions.push(other.to_owned()),
            }
        }
        Ok(request)
    }
}

impl ClientMessage {
    /// Checks the params of a known method; unknown methods are `Unknown`, not an error.
    pub fn from_request(req: &Request) -> Result<ClientMessage, RejectReason> {
        match req.method.as_str() {
            "mining.subscribe" => parse_subscribe(&req.params),
            "mining.authorize" => parse_authorize(&req.params),
            "mining.submit" => parse_submit(&req.params).map(ClientMessage::Submit),
            "mining.configure" => parse_configure(&req.params),
            "mining.suggest_difficulty" => parse_suggest_difficulty(&req.params),
            "mining.extranonce.subscribe" => Ok(ClientMessage::ExtranonceSubscribe),
            other => Ok(ClientMessage::Unknown(sanitize_printable(
                other,
                crate::parse::MAX_METHOD_BYTES,
            ))),
        }
    }

    /// The stratum method this message came from.
    pub fn method(&self) -> &str {
        match self {
            ClientMessage::Subscribe { .. } => "mining.subscribe",
            ClientMessage::Authorize { .. } => "mining.authorize",
            ClientMessage::Submit(_) => "mining.submit",
            ClientMessage::Configure { .. } => "mining.configure",
            ClientMessage::SuggestDifficulty(_) => "mining.suggest_difficulty",
            ClientMessage::ExtranonceSubscribe => "mining.extranonce.subscribe",
            ClientMessage::Unknown(method) => method,
        }
    }
}

/// Splits `address.worker` at the first '.'; the worker part is `None` when absent or empty.
pub fn split_username(username: &str) -> (&str, Option<&str>) {
    match username.split_once('.') {
        Some((address, worker)) if !worker.is_empty() => (address, Some(worker)),
        Some((address, _)) => (address, None),
        None => (username, None),
    }
}

/// Characters no name may carry: control characters (newlines, escapes,
/// NUL: forged log lines), the Unicode line and paragraph separators
/// (U+2028, U+2029: line breaks to JavaScript and some log viewers), the
/// bidirectional overrides, embeddings, isolates and marks (which make a
/// name display as another, e.g. U+202E), and invisible ones (zero-width
/// space, word joiner, BOM) that make two names look alike. Emoji joiners
/// and variation selectors stay allowed.
pub fn is_unsafe_in_names(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200B}'
                | '\u{2060}'
                | '\u{FEFF}'
        )
}

/// Drops the characters of [`is_unsafe_in_names`] and keeps at most `max_chars`.
pub fn sanitize_printable(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !is_unsafe_in_names(*c))
        .take(max_chars)
        .collect()
}

/// Params of methods whose params are optional: absent/null means none.
fn optional_array(params: &Value) -> Result<&[Value], RejectReason> {
    match params {
        Value::Null => Ok(&[]),
        Value::Array(items) => Ok(items),
        _ => Err(RejectReason::ParamsNotArray),
    }
}

fn required_array(params: &Value) -> Result<&[Value], RejectReason> {
    match params {
        Value::Array(items) => Ok(items),
        _ => Err(RejectReason::ParamsNotArray),
    }
}

/// A non-empty string param, else `missing`.
fn non_empty_str(
    items: &[Value],
    index: usize,
    missing: RejectReason,
) -> Result<&str, RejectReason> {
    match items.get(index) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(missing),
    }
}

fn positive_finite(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s.len() <= 32 => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (number.is_finite() && number > 0.0).then_some(number)
}

fn parse_subscribe(params: &Value) -> Result<ClientMessage, RejectReason> {
    let items = optional_array(params)?;
    let user_agent = match items.first() {
        Some(Value::String(agent)) => {
            Some(sanitize_printable(agent, MAX_USER_AGENT_CHARS)).filter(|a| !a.is_empty())
        }
        _ => None,
    };
    let session_id = match items.get(1) {
        Some(Value::String(id)) if id.len() <= MAX_SESSION_ID_CHARS && hexutil::is_hex(id) => {
            Some(id.to_ascii_lowercase())
        }
        _ => None,
    };
    Ok(ClientMessage::Subscribe {
        user_agent,
        session_id,
    })
}

fn parse_authorize(params: &Value) -> Result<ClientMessage, RejectReason> {
    let items = required_array(params)?;
    let username = non_empty_str(items, 0, RejectReason::NoUsername)?;
    // Usernames are identities: refuse rather than silently rewrite them.
    if username.chars().any(is_unsafe_in_names) || username.chars().count() > MAX_USERNAME_CHARS {
        return Err(RejectReason::InvalidUsername);
    }
    let (address, worker) = split_username(username);
    if address.is_empty() || address.chars().count() > MAX_ADDRESS_CHARS {
        return Err(RejectReason::InvalidAddress);
    }
    if worker.is_some_and(|w| w.chars().count() > MAX_WORKER_NAME_CHARS) {
        return Err(RejectReason::InvalidUsername);
    }
    let password = match items.get(1) {
        Some(Value::String(p)) => Some(sanitize_printable(p, MAX_PASSWORD_CHARS)),
        _ => None,
    };
    Ok(ClientMessage::Authorize {
        username: username.to_owned(),
        password,
    })
}

fn parse_submit(params: &Value) -> Result<Submit, RejectReason> {
    let items = required_array(params)?;
    if !(5..=6).contains(&items.len()) {
        return Err(RejectReason::InvalidArraySize);
    }
    let worker = non_empty_str(items, 0, RejectReason::NoUsername)?;
    // Longer than any authorizable name, so it cannot be one of this session's workers.
    if worker.chars().count() > MAX_USERNAME_CHARS {
        return Err(RejectReason::WorkerMismatch);
    }
    let job_id = non_empty_str(items, 1, RejectReason::NoJobId)?;
    if job_id.len() > MAX_JOB_ID_CHARS || !job_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RejectReason::InvalidJobId);
    }
    let extranonce2 = non_empty_str(items, 2, RejectReason::NoNonce2)?;
    if extranonce2.len() > 2 * MAX_EXTRANONCE2_BYTES {
        return Err(RejectReason::InvalidNonce2Length);
    }
    if !hexutil::is_hex(extranonce2) || extranonce2.len() % 2 == 1 {
        return Err(RejectReason::InvalidNonce2Hex);
    }
    let ntime = non_empty_str(items, 3, RejectReason::NoNtime)?;
    if ntime.len() != 8 || !hexutil::is_hex(ntime) {
        return Err(RejectReason::InvalidNtimeHex);
    }
    let nonce = non_empty_str(items, 4, RejectReason::NoNonce)?;
    if nonce.len() != 8 || !hexutil::is_hex(nonce) {
        return Err(RejectReason::InvalidNonceHex);
    }
    let version_bits = match items.get(5) {
        None | Some(Value::Null) => None,
        Some(Value::String(bits)) if bits.len() <= 8 && hexutil::is_hex(bits) => Some(bits.clone()),
        Some(_) => return Err(RejectReason::InvalidVersionMask),
    };
    Ok(Submit {
        worker: worker.to_owned(),
        job_id: job_id.to_owned(),
        extranonce2: extranonce2.to_owned(),
        ntime: ntime.to_owned(),
        nonce: nonce.to_owned(),
        version_bits,
    })
}

fn parse_configure(params: &Value) -> Result<ClientMessage, RejectReason> {
    let items = required_array(params)?;
    let extension_values = match items.first() {
        Some(Value::Array(values)) => values,
        Some(_) => return Err(RejectReason::ParamsNotArray),
        None => return Err(RejectReason::InvalidArraySize),
    };
    if extension_values.len() > MAX_EXTENSIONS {
        return Err(RejectReason::InvalidArraySize);
    }
    let mut extensions = Vec::with_capacity(extension_values.len());
    for value in extension_values {
        match value {
            Value::String(name) if name.chars().count() <= MAX_EXTENSION_NAME_CHARS => {
                extensions.push(sanitize_printable(name, MAX_EXTENSION_NAME_CHARS));
            }
            _ => return Err(RejectReason::InvalidArraySize),
        }
    }
    let params = match items.get(1) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(RejectReason::ParamsNotArray),
    };
    Ok(ClientMessage::Configure { extensions, params })
}

fn parse_suggest_difficulty(params: &Value) -> Result<ClientMessage, RejectReason> {
    let items = required_array(params)?;
    let first = items.first().ok_or(RejectReason::InvalidArraySize)?;
    positive_finite(first)
        .map(ClientMessage::SuggestDifficulty)
        .ok_or(RejectReason::InvalidDifficulty)
}
