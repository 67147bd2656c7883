//! Raw line -> [`Request`]: size, encoding, nesting and shape checks before JSON.

use serde::Deserialize;
use serde_json::Value;

/// Default upper bound of one miner line, without its line terminator.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Deepest `[`/`{` nesting accepted. A stratum request needs 3 (mining.configure);
/// checking before serde_json runs keeps deep nesting a clean error, not a recursion.
pub const MAX_JSON_DEPTH: usize = 32;
/// Longest method name accepted; real methods are under 32 bytes.
pub const MAX_METHOD_BYTES: usize = 128;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One parsed line from a miner.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed back verbatim in the response (number, string or null in practice).
    pub id: Value,
    pub method: String,
    /// `Value::Null` when the miner sent no params.
    pub params: Value,
}

/// Why a line could not become a [`Request`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("line of {len} bytes exceeds the {max} byte limit")]
    TooLong { len: usize, max: usize },
    #[error("empty line")]
    Empty,
    #[error("line contains a nul byte at offset {offset}")]
    NulByte { offset: usize },
    #[error("line is not valid utf-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("json nesting deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("line is not a json object")]
    NotObject,
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("request has no method")]
    NoMethod { id: Value },
    #[error("request method is not a string of 1 to {max} bytes")]
    BadMethod { id: Value, max: usize },
}

impl ParseError {
    /// JSON-RPC error code: -32700 (parse error) for undecodable lines,
    /// -32600 (invalid request) for well-formed JSON that is not a request.
    pub fn code(&self) -> i32 {
        match self {
            ParseError::NotObject | ParseError::NoMethod { .. } | ParseError::BadMethod { .. } => {
                -32600
            }
            _ => -32700,
        }
    }

    /// The request id when the JSON was readable enough to have one, so the
    /// error response can still be matched by the miner.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            ParseError::NoMethod { id } | ParseError::BadMethod { id, .. } => Some(id),
            _ => None,
        }
    }

    /// snake_case name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::TooLong { .. } => "too_long",
            ParseError::Empty => "empty",
            ParseError::NulByte { .. } => "nul_byte",
            ParseError::NotUtf8 { .. } => "not_utf8",
            ParseError::TooDeep { .. } => "too_deep",
            ParseError::NotObject => "not_object",
            ParseError::Json(_) => "invalid_json",
            ParseError::NoMethod { .. } => "no_method",
            ParseError::BadMethod { .. } => "bad_method",
        }
    }
}

/// Parses one miner line with the default [`MAX_LINE_BYTES`] limit.
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    parse_request_with_limit(line, MAX_LINE_BYTES)
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Value,
    // Taken as a Value so a non-string method is our typed error, not a serde message.
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    params: Value,
}

/// Parses one miner line. A trailing `\n`/`\r\n` and surrounding whitespace are
/// ignored, a leading UTF-8 BOM is stripped; `max_line_bytes` applies to the rest.
pub fn parse_request_with_limit(line: &[u8], max_line_bytes: usize) -> Result<Request, ParseError> {
    let line = line.strip_prefix(UTF8_BOM).unwrap_or(line);
    let line = line.trim_ascii();
    if line.len() > max_line_bytes {
        return Err(ParseError::TooLong {
            len: line.len(),
            max: max_line_bytes,
        });
    }
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(offset) = line.iter().position(|&b| b == 0) {
        return Err(ParseError::NulByte { offset });
    }
    if let Err(e) = std::str::from_utf8(line) {
        return Err(ParseError::NotUtf8 {
            offset: e.valid_up_to(),
        });
    }
    check_nesting(line, MAX_JSON_DEPTH)?;
    if line.first() != Some(&b'{') {
        return Err(ParseError::NotObject);
    }
    let raw: RawRequest = serde_json::from_slice(line)?;
    let method = match raw.method {
        None | Some(Value::Null) => return Err(ParseError::NoMethod { id: raw.id }),
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_METHOD_BYTES => m,
        Some(_) => {
            return Err(ParseError::BadMethod {
                id: raw.id,
                max: MAX_METHOD_BYTES,
            })
        }
    };
    Ok(Request {
        id: raw.id,
        method,
        params: raw.params,
    })
}

/// Counts bracket depth outside string literals; only a bound, JSON validity is
/// serde_json's job afterwards.
fn check_nesting(line: &[u8], max_depth: usize) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in line {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ParseError::TooDeep { max: max_depth });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_inside_strings_is_not_counted() {
        let worker = "[".repeat(100);
        let line = format!(r#"{{"id":1,"method":"mining.authorize","params":["{worker}"]}}"#);
        let req = parse_request(line.as_bytes()).expect("brackets in a string are data");
        assert_eq!(req.params[0], Value::String(worker));
    }

    #[test]
    fn escaped_quote_does_not_end_string() {
        let line = r#"{"id":1,"method":"m","params":["a\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]}"#;
        assert!(parse_request(line.as_bytes()).is_ok());
    }
}
