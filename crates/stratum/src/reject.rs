//! Why a miner request was refused, in ckpool's exact wording where ckpool has one.

use std::fmt;

/// A refused request or share. `message()` is what the miner sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidNonce2Length,
    WorkerMismatch,
    NoNonce,
    NoNtime,
    NoNonce2,
    NoJobId,
    NoUsername,
    InvalidArraySize,
    ParamsNotArray,
    InvalidJobId,
    Stale,
    NtimeOutOfRange,
    Duplicate,
    AboveTarget,
    InvalidVersionMask,
    Unauthorized,
    NotSubscribed,
    UnknownMethod,
    InvalidAddress,
    InvalidUsername,
    InvalidNonceHex,
    InvalidNtimeHex,
    InvalidNonce2Hex,
    InvalidDifficulty,
    /// A valid share the pool could not record (its event journal is full):
    /// refused so the miner is never told "accepted" for an unrecorded share.
    JournalFull,
}

impl RejectReason {
    /// Every variant, e.g. to pre-register metric label values.
    pub const ALL: [RejectReason; 25] = [
        RejectReason::InvalidNonce2Length,
        RejectReason::WorkerMismatch,
        RejectReason::NoNonce,
        RejectReason::NoNtime,
        RejectReason::NoNonce2,
        RejectReason::NoJobId,
        RejectReason::NoUsername,
        RejectReason::InvalidArraySize,
        RejectReason::ParamsNotArray,
        RejectReason::InvalidJobId,
        RejectReason::Stale,
        RejectReason::NtimeOutOfRange,
        RejectReason::Duplicate,
        RejectReason::AboveTarget,
        RejectReason::InvalidVersionMask,
        RejectReason::Unauthorized,
        RejectReason::NotSubscribed,
        RejectReason::UnknownMethod,
        RejectReason::InvalidAddress,
        RejectReason::InvalidUsername,
        RejectReason::InvalidNonceHex,
        RejectReason::InvalidNtimeHex,
        RejectReason::InvalidNonce2Hex,
        RejectReason::InvalidDifficulty,
        RejectReason::JournalFull,
    ];

    /// Text sent to the miner (ckpool's wording for ckpool's reasons).
    pub fn message(&self) -> &'static str {
        match self {
            RejectReason::InvalidNonce2Length => "Invalid nonce2 length",
            RejectReason::WorkerMismatch => "Worker mismatch",
            RejectReason::NoNonce => "No nonce",
            RejectReason::NoNtime => "No ntime",
            RejectReason::NoNonce2 => "No nonce2",
            RejectReason::NoJobId => "No job_id",
            RejectReason::NoUsername => "No username",
            RejectReason::InvalidArraySize => "Invalid array size",
            RejectReason::ParamsNotArray => "Params not array",
            RejectReason::InvalidJobId => "Invalid JobID",
            RejectReason::Stale => "Stale",
            RejectReason::NtimeOutOfRange => "Ntime out of range",
            RejectReason::Duplicate => "Duplicate",
            RejectReason::AboveTarget => "Above target",
            RejectReason::InvalidVersionMask => "Invalid version mask",
            RejectReason::Unauthorized => "Unauthorized worker",
            RejectReason::NotSubscribed => "Not subscribed",
            RejectReason::UnknownMethod => "Unknown method",
            RejectReason::InvalidAddress => "Invalid address",
            RejectReason::InvalidUsername => "Invalid username",
            RejectReason::InvalidNonceHex => "Invalid nonce hex",
            RejectReason::InvalidNtimeHex => "Invalid ntime hex",
            RejectReason::InvalidNonce2Hex => "Invalid nonce2 hex",
            RejectReason::InvalidDifficulty => "Invalid difficulty",
            RejectReason::JournalFull => "Journal full",
        }
    }

    /// Customary stratum error code: 20 other, 21 job not found, 22 duplicate,
    /// 23 low difficulty, 24 unauthorized, 25 not subscribed, -32601 no such method.
    pub fn code(&self) -> i32 {
        match self {
            RejectReason::Stale | RejectReason::InvalidJobId => 21,
            RejectReason::Duplicate => 22,
            RejectReason::AboveTarget => 23,
            RejectReason::Unauthorized | RejectReason::WorkerMismatch => 24,
            RejectReason::NotSubscribed => 25,
            RejectReason::UnknownMethod => -32601,
            _ => 20,
        }
    }

    /// snake_case name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::InvalidNonce2Length => "invalid_nonce2_length",
            RejectReason::WorkerMismatch => "worker_mismatch",
            RejectReason::NoNonce => "no_nonce",
            RejectReason::NoNtime => "no_ntime",
            RejectReason::NoNonce2 => "no_nonce2",
            RejectReason::NoJobId => "no_job_id",
            RejectReason::NoUsername => "no_username",
            RejectReason::InvalidArraySize => "invalid_array_size",
            RejectReason::ParamsNotArray => "params_not_array",
            RejectReason::InvalidJobId => "invalid_job_id",
            RejectReason::Stale => "stale",
            RejectReason::NtimeOutOfRange => "ntime_out_of_range",
            RejectReason::Duplicate => "duplicate",
            RejectReason::AboveTarget => "above_target",
            RejectReason::InvalidVersionMask => "invalid_version_mask",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::NotSubscribed => "not_subscribed",
            RejectReason::UnknownMethod => "unknown_method",
            RejectReason::InvalidAddress => "invalid_address",
            RejectReason::InvalidUsername => "invalid_username",
            RejectReason::InvalidNonceHex => "invalid_nonce_hex",
            RejectReason::InvalidNtimeHex => "invalid_ntime_hex",
            RejectReason::InvalidNonce2Hex => "invalid_nonce2_hex",
            RejectReason::InvalidDifficulty => "invalid_difficulty",
            RejectReason::JournalFull => "journal_full",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}
