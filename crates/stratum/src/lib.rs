//! Stratum V1 messages as spoken by miners and ckpool: parsing of miner lines,
//! typed client messages with ckpool's reject wording, and server line builders.
//!
//! No I/O here: the connection layer hands in raw lines and writes out the
//! strings built by [`builders`]. Every function is total on untrusted input
//! (errors, never panics).
#![forbid(unsafe_code)]

pub mod builders;
mod hexutil;
pub mod message;
pub mod parse;
pub mod reject;

pub use builders::{
    client_reconnect, configure_result, notify, response_error, response_ok, response_reject,
    set_difficulty, set_extranonce, show_message, subscribe_result, ConfigureResponse,
    NotifyParams,
};
pub use message::{
    is_unsafe_in_names, sanitize_printable, split_username, ClientMessage, ConfigureRequest,
    Submit, VersionRollingRequest, MAX_ADDRESS_CHARS, MAX_EXTENSIONS, MAX_EXTRANONCE2_BYTES,
    MAX_JOB_ID_CHARS, MAX_PASSWORD_CHARS, MAX_USERNAME_CHARS, MAX_USER_AGENT_CHARS,
    MAX_WORKER_NAME_CHARS,
};
pub use parse::{
    parse_request, parse_request_with_limit, ParseError, Request, MAX_JSON_DEPTH, MAX_LINE_BYTES,
    MAX_METHOD_BYTES,
};
pub use reject::RejectReason;
